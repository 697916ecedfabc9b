"""STR: Soft Threshold weight Reparameterization (Kusupati et al., ICML 2020).

Reference: the sparse-methods reference specification §2.1–§2.4.

Every conv/linear layer ℓ (first conv and classifier included, as in STR's configs) gets one
learnable scalar ``s_ℓ`` (the parameter ``sparse_threshold``, fp32, initialised to
``s_init``) and computes with

    Ŵ = sign(W) · ReLU(|W| − g(s_ℓ)),   g = sigmoid.

Plain autograd, no straight-through: a weight below the threshold gets no loss gradient (only
weight decay), and the loss gradient reaches ``s_ℓ`` through the kept weights. The ``s_ℓ``
sit in their own optimizer group (``param_groups``) with weight decay ``weight_decay`` (λ on
s; ``None``: the stage optimizer's weight decay, STR's default).

**Target mode** (``mode: target``, the default; ``control = "exact"``): the stage ends at the
pipeline's ``sparsity.target``, counted over every conv/linear weight as the shared
measurement counts it. STR's users ask for exactly this (they cannot reach a sparsity by
tuning s_init and λ, STR issues #2 and #14). The mechanism is a level controller on one
common offset of the thresholds: after every optimizer step (and once at the start), the
same c is added to every s_ℓ, chosen so that exactly round(target·N) weights fall under
their layer's threshold (weight i of layer ℓ is zero iff c >= logit(|w_i|) − s_ℓ, so c is
an order statistic of those values: one ``kthvalue`` per step, no host sync). It replaces
the decay drift as the thing that sets the global level; the *differences* between the
s_ℓ are left to the loss gradient, as in STR, so the per-layer allocation (which layers
give up how many weights) is STR's own and non-uniform, not a uniform or a magnitude
budget imposed from outside. A common offset in logit space scales all thresholds g(s_ℓ)
by about the same factor while they are small. The kept weights are still shrunk by
g(s_ℓ) and a pruned weight comes back when its layer's threshold falls below it.

Schedule, in fractions of the stage's optimizer steps T (like gmp's options): before
``start`` the thresholds are free (STR from ``s_init``, decay included). At t0 = round(start·T)
the controller takes over. By default (``end`` = ``start``) it sets the target there at once,
a calibration of the common offset, and holds it to the last step. With ``end`` > ``start``
the level follows the cubic Zhu–Gupta ramp from the sparsity measured at t0 to the target at
round(end·T) and is held after it. Since the level is set after every step, the last step
included, every epoch after the ramp ends at the target (to a few weights' rounding), and
the finalized model is evaluated with exactly those zeros.

Why calibrate by default rather than ramp: under the soft threshold, a rising level shrinks
every kept weight by the rise. The kept weights then grow to compensate, the next weights
to prune are those grown ones, and the threshold has to climb faster still. In a short
stage this race ends with thresholds several times what a one-step calibration needs
(LeNet-5 at 98 %: g ≈ 0.49 after an 8-epoch ramp, 0.14 after calibration) and the network
is left no time to recover. Set once, the threshold stays where it is and the weights
regrow around it. Measured on mnist5k, batch 128, Adam lr 0.003 (dense, then a
``sparse: true`` stage from it; val accuracy of the finalized model at the last epoch; the
achieved sparsity equals the target to the fourth decimal in every row):

======================================  ======  ======  ======  ======
target                                    0.90    0.95    0.98    0.99
======================================  ======  ======  ======  ======
LeNet-5, dense 5 (0.948) + 8 epochs      0.942   0.934   0.878   0.518
LeNet-5, same, ``end: 0.5`` (ramp)       0.926   0.874   0.096   0.096
LeNet-5, dense 3 (0.904) + 6 epochs      0.922   0.910   0.864   0.516
VGG-11 w0.25, dense 3 (0.958) + 6        0.972   0.972   0.948   0.968
VGG-11 w0.25, same, ``end: 0.5``         0.964   0.974   0.976   0.958
VGG-11 w0.25, dense 5 (0.906) + 8        0.976   0.982   0.978   0.958
======================================  ======  ======  ======  ======

For comparison in the LeNet-5 5 + 8 setting, ST-3 reaches 0.954 / 0.948 / 0.912 / 0.824
and gmp (uniform per layer) 0.766 at 0.95, collapsing at 0.98. The LeNet-5 rows at 0.99
are still recovering when the stage ends: at 30 epochs calibration gives 0.842 and a ramp
``end: 0.5`` gives 0.880 (0.95: 0.950 vs 0.958, 0.98: 0.914 vs 0.938). So a ramp pays off
in long stages and the calibration in short ones. The learned allocation is non-uniform:
at 98 % LeNet-5 keeps 33 % of conv1 and 10 % of fc3 but 1 % of fc1, and VGG-11 keeps 76 % of
its first conv and 1 % of conv6–8. The thresholds' spread is small in a few epochs (Adam
moves every s_ℓ by about lr per step), so most of that allocation comes from the layers'
weight scales under nearly equal thresholds, as in STR early in training.

**Free mode** (``mode: free``, ``control = "indirect"``): STR as published. Since s starts
negative, decay pulls it toward 0, which raises g(s): that drift is the sparsification
schedule, so the sparsity is set **indirectly** by (s_init, λ, the optimizer and the run
length) and the pipeline's target is only recorded.

**Defaults for small CNNs.** STR's ImageNet configs use s_init = −3200 with 500 k steps; on
a stage of a few hundred to a few thousand steps that threshold would never activate (§2.1).
g(s) must reach the weight scale of the layers to prune them (LeNet-5: |w| ≈ 0.02–0.2, i.e.
s ≈ −4 … −1.5). While g(s) is negligible s only feels its weight decay: under SGD with
momentum β, s_t ≈ s_init · exp(−λ/(1−β) · Σ lr); under Adam (L2 decay through the moments)
s moves by about lr per step whatever λ is. Defaults: ``s_init = -5`` (g ≈ 0.007: a few
percent of a freshly initialised LeNet-5 at once) and ``weight_decay = 5e-3``. Measured in
free mode on LeNet-5 / mnist5k, batch 128 (28 steps per epoch), starting from scratch:

* Adam lr 0.01, 20 epochs: s_init −5 → 69 % sparse (val acc 0.970), −6 → 61 % (0.974),
  −8 → 29 % (0.970); the loss gradient balances the decay once the threshold is active.
* SGD lr 0.05, momentum 0.9, weight decay 5e-4 on W, 10 epochs: λ = 5e-3 → 50 % (0.944);
  λ = 5e-2 collapses (s → 0, everything pruned: once all weights of a layer are below g(s) no
  loss gradient holds s back).

In free mode sparsity is a result, not a setting: tune (s_init, λ) per setting (the knobs an
HPO stage should search, §8.2), keeping λ·Σlr/(1−β) well below 1 under SGD.

**Export.** ``finalize`` writes the *shrunk* weight sign(W)·ReLU(|W| − g(s)) into a plain
layer's ``weight`` (not W ⊙ mask, §2.4), with ``weight_mask`` = its non-zeros, and drops s.

**Stages.** A model that arrives already sparse (its ``weight_mask`` buffers have zeros: an
earlier stage sparsified it) is fine-tuned with those masks fixed (no thresholds, no
controller; ``control`` then reads ``"fixed"``), so the sparsity STR reached stays what it
was through an activation search and a final stage. ``prune()`` does nothing (STR sparsifies
while it trains; a one-shot prune would not be STR).

**Resume.** ``state_dict`` holds the step, the ramp's starting level, the step the controller
last set the level at and whether the masks are fixed; the s_ℓ are parameters of the model
and the optimizer, so a resumed stage continues bit for bit.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from safs.sparsity.base import StepScheduled, pruned_count
from safs.sparsity.masks import MASK, ReparamLayer, export_layer, has_pruned, reparametrize

THRESHOLD = "sparse_threshold"
MODES = ("target", "free")

# |w| is mapped to logit space for the level search; clamping keeps that finite for exact zeros
# (pruned at any threshold) and for |w| >= 1 (which no sigmoid threshold can reach anyway).
_TINY = 1e-30
_ONE = 1.0 - 2.0 ** -24


class STRLayer(ReparamLayer):
    def effective_weight(self) -> torch.Tensor:
        w = self.weight
        g = torch.sigmoid(getattr(self, THRESHOLD)).to(w.dtype)
        return torch.sign(w) * torch.relu(w.abs() - g)


class SoftThresholdReparam(StepScheduled):
    name = "str"
    protocol = "during_training"
    # The default mode's: exact. An instance reports its own: "indirect" in free mode, "fixed"
    # once attached to a model that arrived sparse.
    control = "exact"

    def __init__(self, target: float, *, mode: str = "target", start: float = 0.0, end: float | None = None,
                 s_init: float = -5.0, weight_decay: float | None = 5e-3, **unknown: Any):
        super().__init__(target, **unknown)
        if mode not in MODES:
            raise ValueError(f"sparsity.options.mode: {mode!r}; accepted: {', '.join(MODES)}")
        if mode == "target" and not 0 <= target < 1:
            raise ValueError(f"sparsity.target: {target} must lie in [0, 1)")
        if end is None:
            end = start  # no ramp: the level is set to the target at ``start`` and held from there
        if not 0 <= start <= end <= 1:
            raise ValueError(f"sparsity.options: start={start}, end={end}: need 0 <= start <= end <= 1 "
                             "(fractions of the stage)")
        if weight_decay is not None and not weight_decay >= 0:
            raise ValueError(f"sparsity.options.weight_decay: {weight_decay} must be >= 0 (or null: the optimizer's)")
        self.mode, self.start, self.end = mode, float(start), float(end)
        self.s_init = float(s_init)
        self.weight_decay = weight_decay
        self.control = "exact" if mode == "target" else "indirect"
        self.fixed = False  # the model arrived sparse: masks fixed, no thresholds
        self.step = 0
        self.total_steps: int | None = None
        self._resume_step: int | None = None
        self._model: nn.Module | None = None
        self.ramp_from: float | None = None  # sparsity measured when the ramp began
        self._applied: int | None = None  # the step the controller last set the level at

    # --- setup -------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> nn.Module:
        self._model = model
        layers = self.layers(model)
        if any(isinstance(m, STRLayer) for m in layers.values()):
            return model  # attached already (resume): parameters the optimizer holds stay
        if self.fixed or has_pruned(model):
            self.fixed = True
            self.control = "fixed"
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

    # --- target mode: the schedule and the level controller ------------------------------------
    def _span(self) -> tuple[int, int]:
        if self.total_steps is None:
            raise RuntimeError("str: on_train_start(steps_per_epoch, epochs) must run before the schedule")
        return round(self.start * self.total_steps), round(self.end * self.total_steps)

    def sparsity_at(self, step: int) -> float | None:
        """The level the controller holds after ``step`` optimizer steps; ``None`` before the ramp
        (thresholds free) or while its starting level is unknown."""
        t0, t1 = self._span()
        if step < t0:
            return None
        if step >= t1:
            return self.target
        if self.ramp_from is None:
            return None
        return self.target + (self.ramp_from - self.target) * (1 - (step - t0) / (t1 - t0)) ** 3

    def _update(self) -> None:
        if self.mode != "target" or self.fixed or self._model is None:
            return
        if self._applied == self.step:
            # Resumed at a step whose level was set before the checkpoint: setting it again
            # could move the s_ℓ by an ulp, and the resumed stage would drift from the original.
            return
        if self.step < self._span()[0]:
            return
        if self.ramp_from is None and self.step < self._span()[1]:
            self.ramp_from = self.measured_sparsity()  # one host sync per stage, only when there is a ramp
        self._steer(self.sparsity_at(self.step))
        self._applied = self.step

    @torch.no_grad()
    def measured_sparsity(self) -> float:
        """Fraction of zeros over every conv/linear weight the model computes with (the
        denominator of ``measure(...).sparsity``)."""
        zeros = total = 0
        for m in self._model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.effective_weight() if isinstance(m, ReparamLayer) else m.weight
                zeros += int((w == 0).sum())
                total += w.numel()
        return zeros / total

    @torch.no_grad()
    def _steer(self, level: float) -> None:
        """Add one offset c to every s_ℓ so that exactly ``pruned_count(level, N)`` weights fall under their
        layer's threshold (N: all conv/linear weights, as the shared measurement counts them).

        Weight i of layer ℓ is zero iff |w_i| <= sigmoid(s_ℓ + c), i.e. iff c >= logit(|w_i|) − s_ℓ,
        so the offset that prunes k weights lies between the k-th and (k+1)-th smallest of those
        values; the midpoint keeps rounding in sigmoid/logit from moving the count. The
        differences between the s_ℓ, which the loss gradient sets, are untouched: the layers'
        allocation stays STR's own, only the global level is steered.
        """
        str_layers, other_zeros, total = [], 0, 0
        for m in self._model.modules():
            if isinstance(m, STRLayer):
                str_layers.append(m)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                other_zeros += int((m.weight == 0).sum())  # a layer STR does not own counts as it is
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                total += m.weight.numel()
        if not str_layers:
            return
        crit = torch.cat([(m.weight.detach().abs().float().clamp(_TINY, _ONE).logit()
                           - getattr(m, THRESHOLD).detach()).flatten() for m in str_layers])
        n = crit.numel()
        k = min(max(pruned_count(level, total) - other_zeros, 0), n)
        if k == 0:
            c = torch.kthvalue(crit, 1).values - 1.0
        elif k == n:
            c = torch.kthvalue(crit, n).values + 1.0
        else:
            lo = torch.kthvalue(crit, k).values
            hi = torch.where(crit > lo, crit, torch.inf).min()  # the (k+1)-th, up to ties (then inf)
            c = torch.where(torch.isfinite(hi), (lo + hi) / 2, lo)
        for m in str_layers:
            getattr(m, THRESHOLD).add_(c)

    # --- export and resume -------------------------------------------------------------------
    @torch.no_grad()
    def finalize(self, model: nn.Module) -> nn.Module:
        final = copy.deepcopy(model)
        for module in self.layers(final).values():
            if isinstance(module, STRLayer) or hasattr(module, MASK):
                export_layer(module, extras=(THRESHOLD,))
        return final

    def state_dict(self) -> dict[str, Any]:
        return {"fixed": self.fixed, "step": self.step, "ramp_from": self.ramp_from, "applied": self._applied}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fixed = bool(state.get("fixed", self.fixed))
        if "step" in state:
            self._resume_step = self.step = int(state["step"])
        self.ramp_from = state.get("ramp_from", self.ramp_from)
        self._applied = state.get("applied", self._applied)


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of zeros of each STR layer's effective weight (STR's ``getSparsity``)."""
    with torch.no_grad():
        return {n: float((m.effective_weight() == 0).float().mean())
                for n, m in model.named_modules() if isinstance(m, STRLayer)}
