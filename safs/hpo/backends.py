"""The HPO backends by name: SMAC and Optuna behind the ask/tell protocol of the Tune bridge.

Importing this module imports neither SMAC nor Optuna (listing backends and their options
stays instant); a backend's module imports its library only when the optimizer first needs
it. Installed packages add backends through the ``safs.hpo_backends`` entry-point group (the
entry point's value is the backend class, ``module:Class``, imported when first used).
Options are read from each constructor's signature, so a new keyword argument is a new
option with nothing else to keep in sync. Option values are checked by the constructors,
before any library work, with one-line ``ValueError``s.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from safs.io import digest

BACKENDS: dict[str, str] = {
    "smac": "safs.hpo.smac:SMACOptimizer",
    "optuna": "safs.hpo.optuna:OptunaOptimizer",
}

_NOT_OPTIONS = ("self", "configspace", "seed")


def _plugins() -> dict:
    from safs.entry_points import entries

    return entries("hpo_backends", list(BACKENDS))


def list_backends() -> list[str]:
    return sorted({*BACKENDS, *_plugins()})


def backend_class(name: str) -> type:
    if name not in BACKENDS:
        plugin = _plugins().get(name) if isinstance(name, str) else None
        if plugin is None:
            raise ValueError(f"unknown HPO backend '{name}'; accepted: {', '.join(list_backends())}")
        return plugin.load()
    module, _, attr = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def backend_options(name: str) -> dict[str, Any]:
    """Option name -> default, in constructor order (``n_trials`` first)."""
    parameters = inspect.signature(backend_class(name).__init__).parameters.values()
    return {p.name: p.default for p in parameters
            if p.name not in _NOT_OPTIONS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def create_backend(name: str, configspace: Any, seed: int, options: dict[str, Any] | None = None) -> Any:
    """The backend ``name`` over ``configspace``; ``options`` are its keyword arguments."""
    options = dict(options or {})
    accepted = backend_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(repr(o) for o in unknown)} for HPO backend "
                         f"'{name}'; accepted: {', '.join(accepted)}")
    return backend_class(name)(configspace, seed, **options)


# --- helpers shared by the backends -------------------------------------------------------
def space_digest(space: Any) -> str:
    """SHA-256 of the space's canonical JSON: recognises a state saved for another space.
    Stored in ``search_state.json`` (``settings.space_sha256``) with ``json.dumps``'s default
    separators, unlike the compact stage hash, so that saved states still resume."""
    return digest(space.to_serialized_dict(), separators=(", ", ": "))


__all__ = ["BACKENDS", "backend_class", "backend_options", "create_backend", "list_backends"]
