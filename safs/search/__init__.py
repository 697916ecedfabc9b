"""Activation search algorithms: seeded, deterministic ask/tell optimizers over genomes.

Only the pure-Python algorithms are imported here, so listing and validating search options
needs neither torch nor ray. Options are checked against each constructor's signature, so a
new keyword argument is a new option with no second list to keep in sync.
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


def list_optimizers() -> list[str]:
    return sorted(OPTIMIZERS)


def optimizer_class(name: str) -> type[AskTellOptimizer]:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown search algorithm '{name}'; accepted: {', '.join(list_optimizers())}")
    return OPTIMIZERS[name]


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
]
