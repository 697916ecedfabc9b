"""DNW: Discovering Neural Wirings (Wortsman et al. 2019), as the DNW conv type of the STR
repository (reference the sparse-methods reference specification §2.5).

Every conv/linear layer (first conv and classifier included) keeps its dense weight ``W``.
Its forward uses ``W`` with the round(p·n) smallest-|w| entries of the layer zeroed
(``pruned_count``, the package's one rule; the reference's ⌊p·n⌋ differs by at most one
weight), recomputed from the current weights in every forward (``p`` = the target, fixed
from the start, no schedule). The backward is straight-through: the identity gradient
reaches *all* weights, so the dense weights keep learning and a pruned edge swaps back in
once its magnitude overtakes a kept one. The sparsity of every layer is exactly
round(p·n)/n at every step.

Options: ``layer_targets: {layer: sparsity}`` gives the layers named their own ``p`` (their
own top-k: a transferred per-layer budget, reference §2.6); ``exclude: [glob, ...]`` leaves
layers dense.

**Stages.** DNW is a during-training method: it sparsifies a dense model in a train stage
with ``sparse: true``, and ``finalize`` exports the top-k weights (plain layers, zeros in
``weight``, ``weight_mask``). A model that arrives already sparse (its ``weight_mask``
buffers have zeros: an earlier stage sparsified it) is fine-tuned with those masks fixed
(``MaskKeeper``, no rewiring), so the wiring a sparse stage found is the one later stages
train. ``prune()`` (for direct use; the pipeline runs no prune stage for DNW) sets the rate
and starts DNW on a dense model.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from safs.sparsity.base import SparseMethod, exclude_option, layer_targets_option, pruned_count
from safs.sparsity.masks import MASK, MaskKeeper, ReparamLayer, export_layer, has_pruned, reparametrize, \
    straight_through


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
            value = torch.where(topk_mask(w, pruned_count(self.dnw_rate, w.numel())), w, 0.0)
        return straight_through(w, value)


class DiscoveringNeuralWirings(SparseMethod):
    name = "dnw"
    control = "exact"
    protocol = "during_training"

    def __init__(self, target: float, *, exclude: list[str] | None = None,
                 layer_targets: dict[str, float] | None = None, **unknown: Any):
        super().__init__(target, **unknown)
        if not 0 <= target < 1:
            raise ValueError(f"sparsity.target: {target} must lie in [0, 1)")
        self.rate = target
        self.exclude = exclude_option(exclude)
        self.layer_targets = layer_targets_option(layer_targets)
        # Whether the model arrived already sparse (masks fixed, no DNW): decided by the first
        # attach, which sees the stage's input also on resume (see gmp.py).
        self.fixed: bool | None = None

    def attach(self, model: nn.Module) -> nn.Module:
        layers = self.layers(model)
        rates = self.layer_rates(layers, self.rate)
        if self.fixed is None:
            self.fixed = has_pruned(model)
        if self.fixed:
            self._keeper = MaskKeeper(model)  # the base step hooks keep the masked weights zero
            return model
        for name, module in layers.items():
            if reparametrize(module, DNWLayer) and hasattr(module, MASK):
                delattr(module, MASK)  # an all-ones mask: the forward's top-k is the mask now
            module.dnw_rate = rates[name]
        # no mask keeper: the mask is computed in the forward, no weight is ever zeroed in storage
        return model

    def prune(self, model: nn.Module, target: float | None = None) -> None:
        if target is not None:
            self.rate = target
        self.attach(model)

    def finalize(self, model: nn.Module) -> nn.Module:
        final = copy.deepcopy(model)
        for module in self.layers(final).values():
            if isinstance(module, DNWLayer):  # fixed layers already hold their zeros and masks
                export_layer(module, extras=("dnw_rate",))
        return final

    def state_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "fixed": bool(self.fixed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rate = float(state.get("rate", self.rate))
        if "fixed" in state:
            self.fixed = bool(state["fixed"])
