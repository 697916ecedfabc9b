"""LWM: layer-wise magnitude pruning (the SAFS paper's pruning).

One-shot and local: every conv and linear weight (first conv and classifier included) loses
the same fraction ``r`` of its smallest-|w| entries; biases and BN are never pruned. The
masks then stay fixed through all later training (``SparseMethod``'s mask keeper).
"""

from __future__ import annotations

from torch import nn

from safs.sparsity.base import SparseMethod, magnitude_mask
from safs.sparsity.masks import MASK, MaskKeeper, set_mask


class LayerwiseMagnitude(SparseMethod):
    name = "lwm"
    control = "exact"

    def prune(self, model: nn.Module, target: float | None = None) -> None:
        rate = self.target if target is None else target
        for module in self.layers(model).values():
            mask = magnitude_mask(module.weight * getattr(module, MASK, 1), rate)
            if hasattr(module, MASK):
                mask &= getattr(module, MASK)  # iterative pruning never revives a weight
            set_mask(module, mask)
        self._keeper = MaskKeeper(model)
