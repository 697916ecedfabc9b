"""ST-3 and ST-3σ: straight-through soft thresholding (Vanderschueren & De Vleeschouwer, WACV 2023).

Reference: the sparse-methods reference specification §3.1–§3.3.

**Layer.** Every conv/linear layer (first conv and classifier included) keeps its raw weight
``W`` and three buffers: a mask ``weight_mask`` (m), a threshold ``st3_threshold`` (θ_ℓ) and a
per-output-channel scale ``st3_scale`` (α). The forward uses

    Ŵ = α_c · sign(W) · ReLU(|W| − θ_ℓ) · m,     m = 1[criterion > θ]

(soft thresholding, then rescaling), and the backward is straight-through: ∂L/∂W := ∂L/∂Ŵ for
every weight, pruned ones included, so thresholding and rescaling act in the forward only.
With ``rescale``, ``α_c = 1.01 / (ρ_c + 0.01)`` where ρ_c = (mean_j |W_cj|·m_cj + 1e-6) /
(mean_j |W_cj| + 1e-6): it restores the L1 mass channel c lost to pruning. θ_ℓ = 0, α = 1
and m = 1 mean "nothing pruned" (Ŵ = W).

**Global threshold.** After every optimizer step (``after_step``, for the next forward), with
the schedule's target q_t: pool the criterion of all layers, θ = its round(q_t·N)-th smallest
value (N = all prunable weights; ``pruned_count``, the package's one rule; exact count,
``kthvalue`` instead of the reference's interpolated quantile, which has a size limit),
m = criterion > θ.

* ``st3`` (criterion ``l1``): |W|, θ_ℓ = θ.
* ``st3_sigma`` (criterion ``l1std``): |W| / σ_ℓ with σ_ℓ = 1/sqrt(Σ dims(W_ℓ)) (C_out + C_in
  + k_h + k_w for a conv, out + in for a linear: the "width" normalisation of the reference
  code, §3.2), θ_ℓ = θ·σ_ℓ. Pruning is more uniform across layers than with ``l1``.

**Schedule** (step granularity, update every step). Over a stage of ``T`` optimizer steps,
with t0 = round(start·T), t1 = round(end·T): q_t = 0 before t0, target · (1 − (1 − (t −
t0)/(t1 − t0))^power) between, target from t1 on; ``t`` counts the steps done, so q_t is what
the forward of step t + 1 uses. ``start``, ``end`` and ``fix_at`` are **fractions of the
stage** (defaults 5/160 and 80/160: the paper's CIFAR config, epochs 5 and 80 of 160). At
step round(fix_at·T) (default: ``end``, so the masks are fixed once the schedule ends) the
layers are *fixed*: W := Ŵ in storage, m kept, θ = 0, α = 1, and from then on gradients and
weights are masked around every optimizer step (the reference's fine-tuning phase). With
``fix_at = 1`` masks keep swapping at constant sparsity until the stage ends, as in the paper
(its ``fix_from`` = the last epoch; ``finalize`` is that fix).

**Stages.** ST-3 is a during-training method: it sparsifies a dense model in a train stage
with ``sparse: true``. A model that arrives already sparse (its ``weight_mask`` buffers have
zeros: an earlier stage sparsified it) is fine-tuned with its masks fixed: no schedule, no
mask change. ``prune()`` is for direct use (the pipeline runs no prune stage for ST-3): the
global threshold at the target, then the fix (soft threshold and rescale written into W); on
a model with fixed masks it only adds pruned weights (masks only grow).

**Option** ``exclude: [glob, ...]``: layers left dense (outside the global threshold, no mask).

**Resume.** ``state_dict`` holds the step and whether the layers are fixed; the buffers are
in the model's ``state_dict``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from safs.sparsity.base import StepScheduled, exclude_option, pruned_count
from safs.sparsity.masks import MASK, MaskKeeper, ReparamLayer, export_layer, has_pruned, reparametrize, set_mask, \
    straight_through

THRESHOLD, SCALE = "st3_threshold", "st3_scale"


class ST3Layer(ReparamLayer):
    def effective_weight(self) -> torch.Tensor:
        w = self.weight
        with torch.no_grad():
            value = getattr(self, SCALE) * torch.sign(w) * torch.relu(w.abs() - getattr(self, THRESHOLD)) \
                * getattr(self, MASK)
        return straight_through(w, value)


def _scale_shape(w: torch.Tensor) -> tuple[int, ...]:
    return (w.shape[0],) + (1,) * (w.dim() - 1)


class SoftThreshold3(StepScheduled):
    name = "st3"
    control = "exact"
    protocol = "during_training"
    criterion = "l1"

    def __init__(self, target: float, *, start: float = 5 / 160, end: float = 0.5, power: float = 3.0,
                 fix_at: float | None = None, rescale: bool = True, exclude: list[str] | None = None,
                 **unknown: Any):
        super().__init__(target, **unknown)
        if not 0 <= target < 1:
            raise ValueError(f"sparsity.target: {target} must lie in [0, 1)")
        fix = end if fix_at is None else fix_at
        if not 0 <= start <= end <= fix <= 1:
            raise ValueError(f"sparsity.options: start={start}, end={end}, fix_at={fix_at}: need "
                             "0 <= start <= end <= fix_at <= 1 (fractions of the stage)")
        if not power > 0:
            raise ValueError(f"sparsity.options.power: {power} must be > 0")
        self.start, self.end, self.fix_at, self.power, self.rescale = start, end, fix, float(power), bool(rescale)
        self.exclude = exclude_option(exclude)
        self.step = 0
        self.total_steps: int | None = None
        self.fixed = False
        self._resume_step: int | None = None
        self._model: nn.Module | None = None
        self._off = False  # the layers hold "nothing pruned" (skip recomputing it before start)

    # --- schedule --------------------------------------------------------------------------
    def _steps(self) -> tuple[int, int, int]:
        if self.total_steps is None:
            raise RuntimeError(f"{self.name}: on_train_start(steps_per_epoch, epochs) must run before the schedule")
        t = self.total_steps
        return round(self.start * t), round(self.end * t), round(self.fix_at * t)

    def target_at(self, step: int) -> float:
        """The schedule's sparsity after ``step`` optimizer steps of this stage."""
        t0, t1, _ = self._steps()
        if step < t0:
            return 0.0
        if step >= t1:
            return self.target
        return self.target * (1 - (1 - (step - t0) / (t1 - t0)) ** self.power)

    @property
    def current_target(self) -> float:
        return self.target_at(self.step)

    # --- criterion and threshold -----------------------------------------------------------
    def inv_sigma(self, weight: torch.Tensor) -> float:
        """1/σ_ℓ: the criterion is |W| · inv_sigma."""
        return 1.0 if self.criterion == "l1" else math.sqrt(sum(weight.shape))

    @torch.no_grad()
    def _threshold(self, layers: list[nn.Module], q: float, grow: bool):
        """Per layer (mask, θ_ℓ, α) at global sparsity ``q``; None when nothing is pruned.
        ``grow``: pruned entries of the current masks stay pruned (fixed layers)."""
        crits, pruned = [], 0
        for m in layers:
            c = m.weight.detach().abs() * self.inv_sigma(m.weight)
            if grow and hasattr(m, MASK):
                c = torch.where(getattr(m, MASK), c, -1.0)
                pruned += int((~getattr(m, MASK)).sum())
            crits.append(c)
        flat = torch.cat([c.flatten() for c in crits])
        k = pruned_count(q, flat.numel())
        if grow:
            k = max(k, pruned)
        if k <= 0:
            return None
        theta = float(flat.kthvalue(k).values)
        if theta < 0:  # nothing beyond what the masks already prune
            return None
        out = []
        for m, c in zip(layers, crits):
            w = m.weight.detach()
            mask = c > theta
            if self.rescale:  # per output channel: the L1 mass the channel keeps, restored
                a = w.abs().flatten(1)
                rho = ((a * mask.flatten(1)).mean(1) + 1e-6) / (a.mean(1) + 1e-6)
                alpha = (1.01 / (rho + 0.01)).view(_scale_shape(w)).to(w.dtype)
            else:
                alpha = torch.ones(_scale_shape(w), dtype=w.dtype, device=w.device)
            out.append((mask, theta / self.inv_sigma(w), alpha))
        return out

    @torch.no_grad()
    def _set_state(self, layers: list[nn.Module], state) -> None:
        """Write (mask, θ_ℓ, α) into the layers' buffers (``None``: nothing pruned)."""
        for i, m in enumerate(layers):
            if state is None:
                getattr(m, MASK).fill_(True)
                getattr(m, THRESHOLD).zero_()
                getattr(m, SCALE).fill_(1.0)
            else:
                mask, th, alpha = state[i]
                getattr(m, MASK).copy_(mask)
                getattr(m, THRESHOLD).fill_(th)
                getattr(m, SCALE).copy_(alpha)
        self._off = state is None

    @torch.no_grad()
    def _fix(self, model: nn.Module, state) -> None:
        """W := Ŵ in storage for every layer, masks kept; then masks are fixed (MaskKeeper)."""
        for i, m in enumerate(self.layers(model).values()):
            if isinstance(m, ST3Layer):
                if state is not None:
                    self._set_state([m], [state[i]])
                m.weight.copy_(m.effective_weight())
                getattr(m, THRESHOLD).zero_()
                getattr(m, SCALE).fill_(1.0)
            elif state is not None:  # a plain layer (the model arrived sparse)
                mask, th, alpha = state[i]
                w = m.weight
                w.copy_(alpha * torch.sign(w) * torch.relu(w.abs() - th) * mask)
                set_mask(m, mask)
            elif not hasattr(m, MASK):
                set_mask(m, torch.ones_like(m.weight, dtype=torch.bool))
        self.fixed = True
        self._keeper = MaskKeeper(model)

    # --- hooks -------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> nn.Module:
        self._model = model
        layers = self.layers(model)
        if any(isinstance(m, ST3Layer) for m in layers.values()):  # attached already (resume)
            if self.fixed:
                self._keeper = MaskKeeper(model)
            return model
        if self.fixed or has_pruned(model):
            self.fixed = True  # fine-tune an already sparse model with its masks
            return super().attach(model)
        for m in layers.values():
            reparametrize(m, ST3Layer)
            w = m.weight
            if hasattr(m, MASK):
                getattr(m, MASK).fill_(True)
            else:
                m.register_buffer(MASK, torch.ones_like(w, dtype=torch.bool))
            m.register_buffer(THRESHOLD, torch.zeros((), dtype=w.dtype, device=w.device))
            m.register_buffer(SCALE, torch.ones(_scale_shape(w), dtype=w.dtype, device=w.device))
        self._off = True
        return model

    def prune(self, model: nn.Module, target: float | None = None) -> None:
        layers = list(self.layers(model).values())
        q = self.target if target is None else target
        self._fix(model, self._threshold(layers, q, grow=self.fixed))

    def _update(self) -> None:
        if self.fixed:
            return
        if self._model is None:
            raise RuntimeError(f"{self.name}: attach(model) must run before training")
        layers = list(self.layers(self._model).values())
        q = self.target_at(self.step)
        if q > 0 or not self._off:
            self._set_state(layers, self._threshold(layers, q, grow=False) if q > 0 else None)
        if self.step >= self._steps()[2]:
            self._fix(self._model, None)

    # --- export and resume -------------------------------------------------------------------
    def finalize(self, model: nn.Module) -> nn.Module:
        final = copy.deepcopy(model)
        for m in self.layers(final).values():
            if isinstance(m, ST3Layer) or hasattr(m, MASK):
                export_layer(m, extras=(THRESHOLD, SCALE))
        return final

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "fixed": self.fixed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "step" in state:
            self._resume_step = int(state["step"])
            self.step = self._resume_step
        self.fixed = bool(state.get("fixed", self.fixed))


class SoftThreshold3Sigma(SoftThreshold3):
    name = "st3_sigma"
    criterion = "l1std"
