"""The sparse method: a ``SparseMethod`` subclass; its ``protocol`` decides the stages that may
run it (``one_shot``: a prune stage computes the masks, later training keeps them fixed)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from safs.sparsity.base import SparseMethod, pruned_count
from safs.sparsity.masks import MASK, MaskKeeper, set_mask


class RandomPruning(SparseMethod):
    """One-shot random pruning: each layer loses a random fraction of its weights, masks fixed afterwards"""

    name = "random_prune"
    control = "exact"
    protocol = "one_shot"

    def __init__(self, target: float, *, seed: int = 0, **unknown: Any):
        if unknown:
            raise ValueError(f"sparsity.options: unknown option(s) {', '.join(sorted(unknown))} for method "
                             f"'{self.name}'; accepted: seed")
        super().__init__(target)
        self.seed = seed

    @torch.no_grad()
    def prune(self, model: nn.Module, target: float | None = None) -> None:
        rate = self.target if target is None else target
        generator = torch.Generator().manual_seed(self.seed)
        for module in self.layers(model).values():
            n = module.weight.numel()
            mask = torch.ones(n, dtype=torch.bool)
            mask[torch.randperm(n, generator=generator)[:pruned_count(rate, n)]] = False
            mask = mask.view_as(module.weight).to(module.weight.device)
            if hasattr(module, MASK):
                mask &= getattr(module, MASK)
            set_mask(module, mask)
        self._keeper = MaskKeeper(model)
