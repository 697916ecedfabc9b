"""Registry entries from installed packages: the entry-point groups (:data:`GROUPS`), read
without importing any plugin, and the one rule for names two providers claim.

An entry point's name is the registry name, its value the object (``pkg.module:attr``) the
registry loads when that name is first used. A name two providers claim (a plugin and a
built-in or in-process entry, or two plugins) is a :class:`PluginError` naming both, raised
when that registry is read. The registries import this module; in-process registration
(:mod:`safs.plugins`) imports the registries, so imports run one way.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable, Mapping
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
