"""Sparse-training methods: one module per method, one registry line each.

The registry maps a method name to ``module:Class`` inside this package, so listing methods
(and validating a pipeline) does not import torch. Plugins are never imported from arbitrary
strings taken from a pipeline file.
"""

from __future__ import annotations

import importlib

# name -> (module in safs.sparsity, class name, one-line description)
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "lwm": ("lwm", "LayerwiseMagnitude", "one-shot layer-wise L1 magnitude pruning, masks fixed afterwards (SAFS)"),
    "gmp": ("gmp", "GradualMagnitude", "gradual magnitude pruning with the Zhu & Gupta cubic schedule"),
    "str": ("soft_threshold", "SoftThresholdReparam", "STR: learnable per-layer soft threshold (Kusupati et al. 2020)"),
    "st3": ("st3", "SoftThreshold3", "ST-3: straight-through soft thresholding, global l1 threshold, cubic schedule"),
    "st3_sigma": ("st3", "SoftThreshold3Sigma", "ST-3σ: ST-3 with the width-normalised (l1/std) criterion"),
    "dnw": ("dnw", "DiscoveringNeuralWirings", "DNW: per-layer top-k with straight-through gradients"),
    "nm_magnitude": ("nm", "NMMagnitude", "2:4 semi-structured masks by magnitude (ASP-style), fixed afterwards"),
    "nm_gumbel": ("nm", "NMGumbel", "2:4 masks learned with straight-through Gumbel-softmax over the 6 patterns"),
    "sas": ("sas", "StructuredActivationSparsification", "SAS 1:2: sign-split inputs, 2x-wide layers (ReLU CNNs)"),
}


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def method_info(name: str) -> str:
    return _REGISTRY[name][2]


def method_class(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"sparsity.method: unknown method '{name}'; accepted: {', '.join(list_methods())}")
    module, cls, _ = _REGISTRY[name]
    return getattr(importlib.import_module(f"safs.sparsity.{module}"), cls)


def create_method(name: str, target: float, options: dict | None = None):
    """One method instance per trial."""
    return method_class(name)(target=target, **(options or {}))
