"""Activation search algorithms: seeded, deterministic ask/tell optimizers over genomes.

Only the pure-Python algorithms are imported here, so listing and validating search options
needs neither torch nor ray. Options are checked against each constructor's signature, so a
new keyword argument is a new option with no second list to keep in sync.

Installed packages add algorithms through the ``safs.algorithms`` entry-point group (an
:class:`AskTellOptimizer` subclass, imported when its name is first used); a script adds them
with ``register_algorithm`` (see :mod:`safs.entry_points` and :mod:`safs.plugins`).
"""

from __future__ import annotations

import inspect
from typing import Any

from safs.search.annealing import SimulatedAnnealing
from safs.search.base import AskTellOptimizer, Genome, GenomeSpace
from safs.search.genetic import GeneticAlgorithm
from safs.search.lahc import LAHC
from safs.search.oneshot import OneShot
from safs.search.random_search import RandomSearch

OPTIMIZERS: dict[str, type[AskTellOptimizer]] = {
    "lahc": LAHC,
    "random": RandomSearch,
    "ga": GeneticAlgorithm,
    "sa": SimulatedAnnealing,
    "oneshot": OneShot,
}

_NOT_OPTIONS = ("self", "space", "seed")


_LOADED: dict[str, type[AskTellOptimizer]] = {}  # plugin algorithms already loaded


def _plugins() -> dict:
    from safs.entry_points import entries, provider

    return entries("algorithms", {n: provider(c) for n, c in OPTIMIZERS.items()})


def register_algorithm(name: str):
    """Decorator registering an :class:`AskTellOptimizer` subclass under ``name``."""

    def decorator(cls: type[AskTellOptimizer]) -> type[AskTellOptimizer]:
        from safs.entry_points import PluginError, clash, provider

        plugins = _plugins()
        if name in OPTIMIZERS or name in plugins:
            first = provider(OPTIMIZERS[name]) if name in OPTIMIZERS else plugins[name].provider
            raise clash("algorithms", name, first, provider(cls))
        if not (isinstance(cls, type) and issubclass(cls, AskTellOptimizer)):
            raise PluginError(f"search algorithm '{name}': {cls!r} is not an AskTellOptimizer subclass")
        OPTIMIZERS[name] = cls
        return cls

    return decorator


def plugin_dist(name: str) -> str | None:
    """The distribution providing algorithm ``name`` when a plugin does (``None``: it is not one)."""
    plugin = None if name in OPTIMIZERS else _plugins().get(name)
    return None if plugin is None else plugin.dist


def list_optimizers() -> list[str]:
    return sorted({*OPTIMIZERS, *_plugins()})


def optimizer_class(name: str) -> type[AskTellOptimizer]:
    if name in OPTIMIZERS:
        return OPTIMIZERS[name]
    if name not in _LOADED:
        plugin = _plugins().get(name) if isinstance(name, str) else None
        if plugin is None:
            raise ValueError(f"unknown search algorithm '{name}'; accepted: {', '.join(list_optimizers())}")
        cls = plugin.load()
        if not (isinstance(cls, type) and issubclass(cls, AskTellOptimizer)):
            from safs.entry_points import PluginError

            raise PluginError(f"search algorithm '{name}': {plugin.provider} is not an AskTellOptimizer subclass")
        _LOADED[name] = cls
    return _LOADED[name]


def optimizer_options(name: str) -> dict[str, Any]:
    """Option name -> default, in constructor order."""
    parameters = inspect.signature(optimizer_class(name).__init__).parameters.values()
    return {p.name: p.default for p in parameters
            if p.name not in _NOT_OPTIONS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def create_optimizer(name: str, space: GenomeSpace, seed: int, options: dict[str, Any] | None = None) -> AskTellOptimizer:
    options = dict(options or {})
    accepted = optimizer_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(repr(o) for o in unknown)} for search algorithm "
                         f"'{name}'; accepted: {', '.join(accepted)}")
    return optimizer_class(name)(space, seed, **options)


def is_one_trial(name: str) -> bool:
    """Whether the algorithm runs as one training trial (``oneshot``) rather than training the
    genomes it proposes."""
    return bool(getattr(optimizer_class(name), "one_trial", False))


__all__ = [
    "OPTIMIZERS",
    "AskTellOptimizer",
    "GeneticAlgorithm",
    "Genome",
    "GenomeSpace",
    "LAHC",
    "OneShot",
    "RandomSearch",
    "SimulatedAnnealing",
    "create_optimizer",
    "is_one_trial",
    "list_optimizers",
    "optimizer_class",
    "optimizer_options",
    "register_algorithm",
]
