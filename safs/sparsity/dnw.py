"""DNW: Discovering Neural Wirings (Wortsman et al. 2019), as the DNW conv type of the STR
repository (reference the sparse-methods reference specification §2.5).

Every conv/linear layer (first conv and classifier included) keeps its dense weight ``W``.
Its forward uses ``W`` with the ⌊p·n⌋ smallest-|w| entries of the layer zeroed, recomputed
from the current weights in every forward (``p`` = the target, fixed from the start, no
schedule). The backward is straight-through: the identity gradient reaches *all* weights,
so the dense weights keep learning and a pruned edge swaps back in once its magnitude
overtakes a kept one. The sparsity of every layer is exactly ⌊p·n⌋/n at every step.

``prune()`` sets the rate (a prune stage's own target) and ``finalize`` exports the top-k
weights (plain layers, zeros in ``weight``, ``weight_mask``). DNW has no schedule, so a
stage after the one that sparsified keeps doing DNW: the zeros a finalized model arrives
with are just small weights that may swap back in (its incoming ``weight_mask`` is dropped
while attached and re-created at finalize). No options.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from safs.sparsity.base import SparseMethod
from safs.sparsity.masks import MASK, ReparamLayer, export_layer, reparametrize, straight_through


def topk_mask(weight: torch.Tensor, prune: int) -> torch.Tensor:
    """Keep all but the ``prune`` smallest-|w| entries (exactly ``numel − prune`` kept)."""
    n = weight.numel()
    mask = torch.zeros(n, dtype=torch.bool, device=weight.device)
    keep = n - prune
    if keep > 0:
        mask[torch.topk(weight.detach().abs().flatten(), keep, sorted=False).indices] = True
    return mask.view(weight.shape)


class DNWLayer(ReparamLayer):
    dnw_rate: float

    def effective_weight(self) -> torch.Tensor:
        w = self.weight
        with torch.no_grad():
            value = torch.where(topk_mask(w, int(self.dnw_rate * w.numel())), w, 0.0)
        return straight_through(w, value)


class DiscoveringNeuralWirings(SparseMethod):
    name = "dnw"
    control = "exact"

    def __init__(self, target: float, **unknown: Any):
        if unknown:
            raise ValueError(f"sparsity.options: unknown option(s) {', '.join(sorted(unknown))} for method "
                             f"'{self.name}'; accepted: (none)")
        super().__init__(target)
        if not 0 <= target < 1:
            raise ValueError(f"sparsity.target: {target} must lie in [0, 1)")
        self.rate = target

    def attach(self, model: nn.Module) -> nn.Module:
        for module in self.layers(model).values():
            if reparametrize(module, DNWLayer) and hasattr(module, MASK):
                delattr(module, MASK)
            module.dnw_rate = self.rate
        return model

    def prune(self, model: nn.Module, target: float | None = None) -> None:
        if target is not None:
            self.rate = target
        self.attach(model)

    # no per-step work: the mask is computed in the forward, no weight is ever zeroed in storage
    def before_step(self) -> None: ...

    def after_step(self) -> None: ...

    def finalize(self, model: nn.Module) -> nn.Module:
        final = copy.deepcopy(model)
        for module in self.layers(final).values():
            export_layer(module, extras=("dnw_rate",))
        return final

    def state_dict(self) -> dict[str, Any]:
        return {"rate": self.rate}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rate = float(state.get("rate", self.rate))
