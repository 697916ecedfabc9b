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

from collections.abc import Callable, Iterable
from typing import Any

# The entry-point side, re-exported: what plugin authors and the registries use.
from safs.entry_points import BUILTIN, GROUPS, Plugin, PluginError, clash, entries, provider, refresh  # noqa: F401

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
