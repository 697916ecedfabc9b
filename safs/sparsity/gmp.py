"""GMP: gradual magnitude pruning with the cubic schedule of Zhu & Gupta (2017).

Reference: the sparse-methods reference specification §4.1 (not the STR repository's GMP
conv type of §2.5, which recomputes its masks every forward at epoch granularity).

**Schedule.** Over a training stage of ``T`` optimizer steps (``on_train_start``: steps per
epoch × epochs), pruning starts at step ``t0 = round(start·T)`` and updates the masks every
``Δt = frequency`` steps, ``n`` times, so it ends at ``t0 + n·Δt <= round(end·T)``::

    s_t = s_f + (s_i − s_f) · (1 − (t_k − t0) / (n·Δt))³,   t_k = t0 + Δt·min(n, ⌊(t − t0)/Δt⌋)

``s_i`` = ``initial_sparsity`` (also the sparsity before ``t0``), ``s_f`` = the target. ``t``
counts the optimizer steps done in the stage, so ``s_t`` is the sparsity of the masks the
forward of step ``t + 1`` uses; the masks are recomputed in ``after_step``. ``start`` and
``end`` are **fractions of the stage** (0 <= start <= end <= 1), so the same options fit a
one-epoch search candidate and a long final stage. ``Δt`` is clipped to the schedule's span
(a short stage still prunes, at least in one step: ``n >= 1``).

**Masks.** At each update, in every conv/linear layer (first conv and classifier included),
the round(s_t·n) smallest-|w| weights are masked (``pruned_count``, the package's one
rule); a masked weight stays exactly zero (gradients are masked before the optimizer step
and weights after it, ``MaskKeeper``), so masks only grow. After ``t0 + n·Δt`` the masks
are fixed at exactly round(s_f·n) pruned weights per layer.

**Options** beyond the schedule's: ``layer_targets: {layer: sparsity}`` gives the layers
named their own ``s_f`` (the schedule of such a layer ends at its target; its ``s_i`` is
``min(initial_sparsity, its target)``); ``exclude: [glob, ...]`` leaves layers dense.

**Stages.** GMP is a during-training method: it sparsifies a dense model in a train stage
with ``sparse: true``. A model that arrives already sparse (its ``weight_mask`` buffers
have zeros: an earlier stage sparsified it) is fine-tuned with those masks fixed: no
schedule, no mask change. ``prune()`` (for direct use; the pipeline runs no prune stage for
GMP) applies the schedule's end state at once.

**Resume.** ``state_dict`` holds the step and whether the masks are fixed; masks are
``weight_mask`` buffers of the model.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from safs.sparsity.base import StepScheduled, exclude_option, layer_targets_option, pruned_count
from safs.sparsity.masks import MASK, MaskKeeper, has_pruned, set_mask


class GradualMagnitude(StepScheduled):
    name = "gmp"
    control = "exact"
    protocol = "during_training"

    def __init__(self, target: float, *, initial_sparsity: float = 0.0, start: float = 0.0, end: float = 0.5,
                 frequency: int = 100, exclude: list[str] | None = None,
                 layer_targets: dict[str, float] | None = None, **unknown: Any):
        super().__init__(target, **unknown)
        if not 0 <= target < 1:
            raise ValueError(f"sparsity.target: {target} must lie in [0, 1)")
        if not 0 <= initial_sparsity <= target:
            raise ValueError(f"sparsity.options.initial_sparsity: {initial_sparsity} must lie in [0, target={target}]")
        if not 0 <= start <= end <= 1:
            raise ValueError(f"sparsity.options: start={start}, end={end}: need 0 <= start <= end <= 1 "
                             "(fractions of the stage)")
        if int(frequency) != frequency or frequency < 1:
            raise ValueError(f"sparsity.options.frequency: {frequency} must be a positive integer (steps)")
        self.initial_sparsity, self.start, self.end, self.frequency = initial_sparsity, start, end, int(frequency)
        self.exclude = exclude_option(exclude)
        self.layer_targets = layer_targets_option(layer_targets)
        self.step = 0
        self.total_steps: int | None = None
        self._resume_step: int | None = None
        self._model: nn.Module | None = None
        self._applied: float | None = None  # schedule position (``_remaining``) the masks were last computed at
        # Whether the model arrived already sparse (masks fixed, no schedule): decided by the
        # first attach, which sees the stage's input also on resume; the attach after a
        # resume's load_state_dict sees the restored masks and must not decide again.
        self.fixed: bool | None = None

    # --- schedule --------------------------------------------------------------------------
    def _plan(self) -> tuple[int, int, int]:
        """(t0, Δt, n) for the current stage."""
        if self.total_steps is None:
            raise RuntimeError("gmp: on_train_start(steps_per_epoch, epochs) must run before the schedule")
        t0 = round(self.start * self.total_steps)
        span = max(1, round(self.end * self.total_steps) - t0)
        dt = min(self.frequency, span)
        return t0, dt, max(1, span // dt)

    def _remaining(self, step: int) -> float:
        """(1 − (t_k − t0)/(n·Δt))³ after ``step`` steps: exactly 1 up to the first update, 0 from the last."""
        t0, dt, n = self._plan()
        if step < t0:
            return 1.0
        return (1 - min(n, (step - t0) // dt) / n) ** 3

    def _sparsity(self, final: float, remaining: float) -> float:
        """A layer's schedule value for its final sparsity ``final``."""
        initial = min(self.initial_sparsity, final)  # a layer never starts above its own target
        if remaining == 1.0:
            return initial  # exactly, not up to rounding
        if remaining == 0.0:
            return final
        return final + (initial - final) * remaining

    def sparsity_at(self, step: int) -> float:
        """The schedule's sparsity after ``step`` optimizer steps of this stage (uniform target)."""
        return self._sparsity(self.target, self._remaining(step))

    @property
    def current_sparsity(self) -> float:
        return self.sparsity_at(self.step)

    # --- hooks -------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> nn.Module:
        layers = self.layers(model)
        self.layer_rates(layers, self.target)  # options that do not fit the model fail here
        if self.fixed is None:
            self.fixed = has_pruned(model)
        if not self.fixed:
            for module in layers.values():
                if not hasattr(module, MASK):
                    module.register_buffer(MASK, torch.ones_like(module.weight, dtype=torch.bool))
        self._model = model
        self._keeper = MaskKeeper(model)
        return model

    def prune(self, model: nn.Module, target: float | None = None) -> None:
        self._apply(model, 0.0, self.target if target is None else target)
        self._applied = None  # the schedule recomputes at its next position (masks only grow)

    @torch.no_grad()
    def _apply(self, model: nn.Module, remaining: float, uniform: float) -> None:
        layers = self.layers(model)
        for name, final in self.layer_rates(layers, uniform).items():
            module = layers[name]
            old = getattr(module, MASK, None)
            n = module.weight.numel()
            k = pruned_count(self._sparsity(final, remaining), n)
            score = module.weight.detach().abs()
            if old is not None:
                k = max(k, int((~old).sum()))  # masks only grow
                score = torch.where(old, score, -1.0)  # pruned entries first, whatever their value
            mask = torch.ones(n, dtype=torch.bool, device=score.device)
            if k > 0:
                mask[torch.argsort(score.flatten(), stable=True)[:k]] = False
            set_mask(module, mask.view(score.shape))
        self._keeper = MaskKeeper(model)
        self._applied = remaining

    def _update(self) -> None:
        if self.fixed:
            return
        r = self._remaining(self.step)
        if r != self._applied:
            if self._model is None:
                raise RuntimeError("gmp: attach(model) must run before training")
            self._apply(self._model, r, self.target)

    # --- export and resume -------------------------------------------------------------------
    @torch.no_grad()
    def finalize(self, model: nn.Module) -> nn.Module:
        final = copy.deepcopy(model)
        for module in self.layers(final).values():
            if hasattr(module, MASK):
                module.weight.mul_(getattr(module, MASK))
        return final

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "fixed": bool(self.fixed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "step" in state:
            self._resume_step = int(state["step"])
            self.step = self._resume_step
        if "fixed" in state:
            self.fixed = bool(state["fixed"])
