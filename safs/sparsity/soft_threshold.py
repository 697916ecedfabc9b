"""STR: Soft Threshold weight Reparameterization (Kusupati et al., ICML 2020).

Reference: the sparse-methods reference specification §2.1–§2.4.

Every conv/linear layer ℓ (first conv and classifier included, as in STR's configs) gets one
learnable scalar ``s_ℓ`` (the parameter ``sparse_threshold``, fp32, initialised to
``s_init``) and computes with

    Ŵ = sign(W) · ReLU(|W| − g(s_ℓ)),   g = sigmoid.

Plain autograd, no straight-through: a weight below the threshold gets no loss gradient (only
weight decay), and the loss gradient reaches ``s_ℓ`` through the kept weights. The ``s_ℓ``
sit in their own optimizer group (``param_groups``) with weight decay ``weight_decay`` (λ on
s; ``None``: the stage optimizer's weight decay, STR's default). Since s starts negative,
decay pulls it toward 0, which raises g(s): that drift is the sparsification schedule, so
the sparsity is set **indirectly** by (s_init, λ, the optimizer and the run length)
(``control = "indirect"``; the pipeline's target is only recorded).

**Defaults for small CNNs.** STR's ImageNet configs use s_init = −3200 with 500 k steps; on
a stage of a few hundred to a few thousand steps that threshold would never activate (§2.1).
g(s) must reach the weight scale of the layers to prune them (LeNet-5: |w| ≈ 0.02–0.2, i.e.
s ≈ −4 … −1.5). While g(s) is negligible s only feels its weight decay: under SGD with
momentum β, s_t ≈ s_init · exp(−λ/(1−β) · Σ lr); under Adam (L2 decay through the moments)
s moves by about lr per step whatever λ is. Defaults: ``s_init = -5`` (g ≈ 0.007: a few
percent of a freshly initialised LeNet-5 at once) and ``weight_decay = 5e-3``. Measured on
LeNet-5 / mnist5k, batch 128 (28 steps per epoch), starting from scratch:

* Adam lr 0.01, 20 epochs: s_init −5 → 69 % sparse (val acc 0.970), −6 → 61 % (0.974),
  −8 → 29 % (0.970); the loss gradient balances the decay once the threshold is active.
* SGD lr 0.05, momentum 0.9, weight decay 5e-4 on W, 10 epochs: λ = 5e-3 → 50 % (0.944);
  λ = 5e-2 collapses (s → 0, everything pruned: once all weights of a layer are below g(s) no
  loss gradient holds s back).

Sparsity is a result, not a setting: tune (s_init, λ) per setting (the knobs an HPO stage
should search, §8.2), keeping λ·Σlr/(1−β) well below 1 under SGD.

**Export.** ``finalize`` writes the *shrunk* weight sign(W)·ReLU(|W| − g(s)) into a plain
layer's ``weight`` (not W ⊙ mask, §2.4), with ``weight_mask`` = its non-zeros, and drops s.

**Stages.** A model that arrives already sparse (its ``weight_mask`` buffers have zeros: an
earlier stage sparsified it) is fine-tuned with those masks fixed (no thresholds), so the
sparsity STR reached stays what it was through an activation search and a final stage.
``prune()`` does nothing (sparsity is learned, not set).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from safs.sparsity.base import SparseMethod
from safs.sparsity.masks import MASK, ReparamLayer, export_layer, has_pruned, reparametrize

THRESHOLD = "sparse_threshold"


class STRLayer(ReparamLayer):
    def effective_weight(self) -> torch.Tensor:
        w = self.weight
        g = torch.sigmoid(getattr(self, THRESHOLD)).to(w.dtype)
        return torch.sign(w) * torch.relu(w.abs() - g)


class SoftThresholdReparam(SparseMethod):
    name = "str"
    control = "indirect"

    def __init__(self, target: float, *, s_init: float = -5.0, weight_decay: float | None = 5e-3, **unknown: Any):
        if unknown:
            raise ValueError(f"sparsity.options: unknown option(s) {', '.join(sorted(unknown))} for method "
                             f"'{self.name}'; accepted: s_init, weight_decay")
        super().__init__(target)
        if weight_decay is not None and not weight_decay >= 0:
            raise ValueError(f"sparsity.options.weight_decay: {weight_decay} must be >= 0 (or null: the optimizer's)")
        self.s_init = float(s_init)
        self.weight_decay = weight_decay
        self.fixed = False  # the model arrived sparse: masks fixed, no thresholds

    def attach(self, model: nn.Module) -> nn.Module:
        layers = self.layers(model)
        if any(isinstance(m, STRLayer) for m in layers.values()):
            return model  # attached already (resume): parameters the optimizer holds stay
        if self.fixed or has_pruned(model):
            self.fixed = True
            return super().attach(model)  # MaskKeeper over the incoming masks
        for module in layers.values():
            reparametrize(module, STRLayer)
            module.register_parameter(THRESHOLD, nn.Parameter(
                torch.full((1,), self.s_init, dtype=torch.float32, device=module.weight.device)))
        return model

    def thresholds(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {n: getattr(m, THRESHOLD) for n, m in self.layers(model).items() if isinstance(m, STRLayer)}

    def param_groups(self, model: nn.Module, groups: list[dict]) -> list[dict]:
        s = list(self.thresholds(model).values())
        if not s:
            return groups
        ids = {id(p) for p in s}
        out = []
        for g in groups:
            params = [p for p in g["params"] if id(p) not in ids]
            if params:
                out.append({**g, "params": params})
        group: dict[str, Any] = {"params": s}
        if self.weight_decay is not None:
            group["weight_decay"] = self.weight_decay
        return out + [group]

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> nn.Module:
        final = copy.deepcopy(model)
        for module in self.layers(final).values():
            if isinstance(module, STRLayer) or hasattr(module, MASK):
                export_layer(module, extras=(THRESHOLD,))
        return final

    def state_dict(self) -> dict[str, Any]:
        return {"fixed": self.fixed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fixed = bool(state.get("fixed", self.fixed))


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of zeros of each STR layer's effective weight (STR's ``getSparsity``)."""
    with torch.no_grad():
        return {n: float((m.effective_weight() == 0).float().mean())
                for n, m in model.named_modules() if isinstance(m, STRLayer)}
