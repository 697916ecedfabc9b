"""LWM: layer-wise magnitude pruning (the SAFS paper's pruning).

One-shot and local: every conv and linear weight (first conv and classifier included) loses
the same fraction ``r`` of its smallest-|w| entries, ``round(r·n)`` of its ``n`` weights, as
``torch.nn.utils.prune.l1_unstructured`` (the original code's pruning) counts them; biases
and BN are never pruned. The masks then stay fixed through all later training
(``SparseMethod``'s mask keeper).

Options:

* ``exclude: [glob, ...]``: layers left dense (no mask, not prunable). The original SAFS
  code leaves EfficientNet-B0's SE ``fc2`` and its 1×1 shortcut convs dense:
  ``exclude: ["blocks.*.se.fc2", "blocks.*.shortcut.conv"]``.
* ``layer_targets: {layer: sparsity}``: those layers lose that fraction instead of ``r``
  (a transferred per-layer budget).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from safs.sparsity.base import SparseMethod, exclude_option, layer_targets_option, magnitude_mask
from safs.sparsity.masks import MASK, MaskKeeper, set_mask


class LayerwiseMagnitude(SparseMethod):
    name = "lwm"
    control = "exact"
    protocol = "one_shot"

    def __init__(self, target: float, *, exclude: list[str] | None = None,
                 layer_targets: dict[str, float] | None = None, **unknown: Any):
        super().__init__(target, **unknown)
        self.exclude = exclude_option(exclude)
        self.layer_targets = layer_targets_option(layer_targets)

    def attach(self, model: nn.Module) -> nn.Module:
        self.layer_rates(self.layers(model), self.target)  # options that do not fit the model fail here
        return super().attach(model)

    def prune(self, model: nn.Module, target: float | None = None) -> None:
        layers = self.layers(model)
        rates = self.layer_rates(layers, self.target if target is None else target)
        for name, module in layers.items():
            mask = magnitude_mask(module.weight * getattr(module, MASK, 1), rates[name])
            if hasattr(module, MASK):
                mask &= getattr(module, MASK)  # iterative pruning never revives a weight
            set_mask(module, mask)
        self._keeper = MaskKeeper(model)
