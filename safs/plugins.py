"""Plugins: registry entries from installed packages and from the running script.

An installed package provides entries through entry-point groups (:data:`GROUPS`): an entry
point's name is the registry name, its value the object (``pkg.module:attr``) the registry
loads when that name is first used. Listing names and validating a pipeline read the entry
points' metadata only; they import no plugin (a method's protocol, which decides the stages
it may run in, comes from its class: checking a pipeline that names a plugin method loads it).

A script or notebook registers in-process with ``safs.register_model(name)``,
``safs.register_dataset(name, ...)``, ``safs.register_method(name)``,
``safs.register_algorithm(name)`` and ``safs.register_operator(name)``. Those registrations
are recorded here (:func:`registered`) and travel to the Ray workers with each stage's
trainable, through Ray's own serialisation (``tune.with_parameters``): an object of an
importable module goes by reference (the worker imports that module), one defined in the
driver's ``__main__`` (a notebook cell) by value. The worker replays them (:func:`install`)
before the trial starts. Nothing is ever imported from a name written in a pipeline file.

A name two providers claim (a plugin and a built-in or in-process entry, or two plugins) is a
:class:`PluginError` naming both, raised when that registry is read.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

#: registry -> entry-point group.
GROUPS = {
    "models": "safs.models",
    "datasets": "safs.datasets",
    "methods": "safs.methods",
    "algorithms": "safs.algorithms",
    "operators": "safs.operators",
    "hpo_backends": "safs.hpo_backends",
}

#: What an error names as the provider of a built-in entry.
BUILTIN = "safs (built-in)"

_KINDS = {"models": "model", "datasets": "dataset", "methods": "sparse method", "algorithms": "search algorithm",
          "operators": "activation operator", "hpo_backends": "HPO backend"}


class PluginError(ValueError):
    """A plugin that cannot be used: a name clash, or an object not following its protocol."""


@dataclass(frozen=True)
class Plugin:
    name: str
    value: str  # "pkg.module:attr"
    dist: str  # the distribution providing it
    group: str

    @property
    def provider(self) -> str:
        return f"plugin {self.dist} ({self.value})"

    def load(self) -> Any:
        module, _, attr = self.value.partition(":")
        obj: Any = importlib.import_module(module.strip())
        for part in filter(None, attr.strip().split(".")):
            obj = getattr(obj, part)
        return obj


@functools.lru_cache(maxsize=None)
def _discovered(group: str) -> tuple[Plugin, ...]:
    found = []
    for ep in metadata.entry_points(group=group):
        dist = getattr(ep, "dist", None)
        found.append(Plugin(ep.name, ep.value, dist.name if dist is not None else "unknown", group))
    return tuple(found)


def clash(kind: str, name: str, first: str, second: str) -> PluginError:
    return PluginError(f"{_KINDS[kind]} '{name}' is already registered: provided by {first} and by {second}; "
                       "uninstall or rename one of them")


def provider(obj: Any) -> str:
    """How an error names the provider of a registered object: built-in, or in-process."""
    module = getattr(obj, "__module__", None) or ""
    if module == "safs" or module.startswith("safs."):
        return BUILTIN
    return f"in-process registration ({module}.{getattr(obj, '__qualname__', type(obj).__name__)})"


def entries(kind: str, taken: Mapping[str, str] | Iterable[str] = ()) -> dict[str, Plugin]:
    """The plugins of registry ``kind`` by name, none loaded. ``taken``: the names the registry
    holds already, each with its provider (a plain iterable: built-in names); a name claimed
    twice raises :class:`PluginError`."""
    if not isinstance(taken, Mapping):
        taken = dict.fromkeys(taken, BUILTIN)
    found: dict[str, Plugin] = {}
    for p in _discovered(GROUPS[kind]):
        other = found.get(p.name)
        if other is not None and (other.dist, other.value) == (p.dist, p.value):
            continue
        if other is not None:
            raise clash(kind, p.name, other.provider, p.provider)
        if p.name in taken:
            raise clash(kind, p.name, taken[p.name], p.provider)
        found[p.name] = p
    return found


def refresh() -> None:
    """Read the entry points again (after installing a plugin into the running process)."""
    _discovered.cache_clear()


# --- in-process registration -----------------------------------------------------------------
_REGISTERED: list[tuple[str, str, Any, dict]] = []  # (kind, name, object, registration options)


def _registrar(kind: str) -> Callable[..., Callable[[Any], Any]]:
    if kind == "models":
        from safs.models.registry import register_model

        return register_model
    if kind == "datasets":
        from safs.data import register_dataset

        return register_dataset
    if kind == "methods":
        from safs.sparsity import register_method

        return register_method
    if kind == "algorithms":
        from safs.search import register_algorithm

        return register_algorithm
    if kind == "operators":
        from safs.activations.operators import register_operator

        return register_operator
    raise ValueError(f"no in-process registration for {kind!r}")


def register(kind: str, name: str, **options: Any) -> Callable[[Any], Any]:
    """Decorator registering ``obj`` under ``name`` in registry ``kind`` for this process and
    the Ray workers of the stages it runs."""

    def decorator(obj: Any) -> Any:
        for k, n, o, _ in _REGISTERED:
            if (k, n) == (kind, name) and o is obj:
                return obj  # the same object again: a replay of what importing its module registered
        _registrar(kind)(name, **options)(obj)
        _REGISTERED.append((kind, name, obj, dict(options)))
        return obj

    return decorator


def registered() -> tuple[tuple[str, str, Any, dict], ...]:
    """This process's in-process registrations, in order, for the workers (see :func:`install`)."""
    return tuple(_REGISTERED)


def install(records: Iterable[tuple[str, str, Any, dict]]) -> None:
    """Replay the driver's in-process registrations in a worker (those the worker made already,
    by importing the module that defines them, are skipped)."""
    for kind, name, obj, options in records:
        register(kind, name, **options)(obj)
