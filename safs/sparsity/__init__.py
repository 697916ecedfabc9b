"""Sparse-training methods: one module per method, one registry line each.

The registry maps a method name to ``module:Class`` inside this package, so listing methods
(and validating a pipeline) does not import torch. Plugins are never imported from arbitrary
strings taken from a pipeline file: an installed package provides methods through the
``safs.methods`` entry-point group (a :class:`~safs.sparsity.base.SparseMethod` subclass; its
``protocol`` attribute is read from the class, loaded when the name is first used), a script
with ``register_method`` (see :mod:`safs.entry_points` and :mod:`safs.plugins`).
"""

from __future__ import annotations

import importlib

# How a method sparsifies, which decides the stages it may run in (checked before anything runs):
#   one_shot:        a prune stage computes the masks once (or a ``sparse: true`` train stage
#                    from a dense model, at its start); later training keeps them fixed;
#   during_training: a train stage with ``sparse: true`` sparsifies from the dense model on the
#                    method's own schedule; a prune stage is refused (it would make it one-shot);
#   architecture:    a prune stage (or ``sparse: true``) transforms the architecture.
# Each method class declares the same value as its ``protocol`` (a test keeps the two equal);
# this table has it so that checking a pipeline does not import torch.
PROTOCOLS = ("one_shot", "during_training", "architecture")

# name -> (module in safs.sparsity, class name, protocol, one-line description)
_REGISTRY: dict[str, tuple[str, str, str, str]] = {
    "lwm": ("lwm", "LayerwiseMagnitude", "one_shot", "one-shot layer-wise L1 magnitude pruning, masks fixed afterwards (SAFS)"),
    "gmp": ("gmp", "GradualMagnitude", "during_training", "gradual magnitude pruning with the Zhu & Gupta cubic schedule"),
    "str": ("soft_threshold", "SoftThresholdReparam", "during_training", "STR: learnable per-layer soft threshold (Kusupati et al. 2020)"),
    "st3": ("st3", "SoftThreshold3", "during_training", "ST-3: straight-through soft thresholding, global l1 threshold, cubic schedule"),
    "st3_sigma": ("st3", "SoftThreshold3Sigma", "during_training", "ST-3σ: ST-3 with the width-normalised (l1/std) criterion"),
    "dnw": ("dnw", "DiscoveringNeuralWirings", "during_training", "DNW: per-layer top-k with straight-through gradients"),
    "nm_magnitude": ("nm", "NMMagnitude", "one_shot", "2:4 semi-structured masks by magnitude (ASP-style), fixed afterwards"),
    "nm_gumbel": ("nm", "NMGumbel", "during_training", "2:4 masks learned with straight-through Gumbel-softmax over the 6 patterns"),
    "sas": ("sas", "StructuredActivationSparsification", "architecture", "SAS 1:2: sign-split inputs, 2x-wide layers (ReLU CNNs)"),
}


# Methods registered in-process, and plugin methods already loaded: name -> class.
_LOCAL: dict[str, type] = {}
_LOADED: dict[str, type] = {}


def _plugins() -> dict:
    from safs.entry_points import BUILTIN, entries, provider

    return entries("methods", {**dict.fromkeys(_REGISTRY, BUILTIN), **{n: provider(c) for n, c in _LOCAL.items()}})


def register_method(name: str):
    """Decorator registering a :class:`~safs.sparsity.base.SparseMethod` subclass under ``name``."""

    def decorator(cls: type) -> type:
        from safs.entry_points import BUILTIN, clash, provider

        plugins = _plugins()
        if name in _REGISTRY or name in _LOCAL or name in plugins:
            first = BUILTIN if name in _REGISTRY else provider(_LOCAL[name]) if name in _LOCAL \
                else plugins[name].provider
            raise clash("methods", name, first, provider(cls))
        _check_protocol(name, cls)
        _LOCAL[name] = cls
        return cls

    return decorator


def _check_protocol(name: str, cls) -> str:
    protocol = getattr(cls, "protocol", None)
    if protocol not in PROTOCOLS:
        from safs.entry_points import PluginError

        raise PluginError(f"sparse method '{name}': its class must declare protocol, one of "
                          f"{', '.join(PROTOCOLS)}; got {protocol!r}")
    return protocol


def plugin_dist(name: str) -> str | None:
    """The distribution providing method ``name`` when a plugin does (``None``: it is not one)."""
    plugin = None if name in _REGISTRY or name in _LOCAL else _plugins().get(name)
    return None if plugin is None else plugin.dist


def list_methods() -> list[str]:
    return sorted({*_REGISTRY, *_LOCAL, *_plugins()})


def method_info(name: str) -> str:
    if name in _REGISTRY:
        return _REGISTRY[name][3]
    doc = (method_class(name).__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def method_protocol(name: str) -> str:
    """``one_shot``, ``during_training`` or ``architecture`` (see ``PROTOCOLS``), without importing
    torch for a built-in method (a plugin's comes from its class)."""
    if name in _REGISTRY:
        return _REGISTRY[name][2]
    return _check_protocol(name, method_class(name))


def method_class(name: str):
    if name in _LOCAL:
        return _LOCAL[name]
    if name in _LOADED:
        return _LOADED[name]
    if name not in _REGISTRY:
        plugin = _plugins().get(name) if isinstance(name, str) else None
        if plugin is None:
            raise ValueError(f"sparsity.method: unknown method '{name}'; accepted: {', '.join(list_methods())}")
        cls = plugin.load()
        _check_protocol(name, cls)
        _LOADED[name] = cls
        return cls
    module, cls, _, _ = _REGISTRY[name]
    return getattr(importlib.import_module(f"safs.sparsity.{module}"), cls)


def create_method(name: str, target: float, options: dict | None = None):
    """One method instance per trial."""
    return method_class(name)(target=target, **(options or {}))


def _transforms() -> list[str]:
    return [name for name in list_methods() if method_protocol(name) == "architecture"]


def architecture(model) -> dict | None:
    """The architecture transform ``model`` went through, as ``model.pt`` records it (``None``:
    none), asked of each ``architecture`` method: a stage that runs another method, or none,
    still keeps the transform an earlier stage applied."""
    for name in _transforms():
        record = method_class(name).architecture(model)
        if record is not None:
            return record
    return None


def rebuild(model, record: dict) -> None:
    """Replay a recorded transform on a freshly built model, through the method it names."""
    name = record.get("transform")
    if name not in _transforms():
        raise ValueError(f"unknown architecture transform {name!r} (version {record.get('version')!r}); "
                         f"this safs knows {', '.join(repr(n) for n in _transforms())}")
    method_class(name).rebuild(model, record)
