"""The sparse-method plugin interface.

A method is one object per trial. The training loop calls its hooks; nothing outside
``safs/sparsity`` knows which method runs. Sparsity and MACs are measured by
``safs.training.measure`` on the finalized model, never by the method itself.

Hook order in a training stage::

    attach() [load_state_dict() on resume] on_train_start()
    per epoch: on_epoch_start() ... on_epoch_end(); finalize() after the last
    per step:  forward -> loss -> backward -> before_step() -> optimizer.step() -> after_step()

A schedule that changes masks or thresholds "before the next forward" does so in
``after_step`` (GMP, ST-3).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import nn

from safs.models import prunable_layers
from safs.sparsity.masks import MaskKeeper

Control = Literal["exact", "indirect", "fixed"]


class SparseMethod:
    """Base class with no-op hooks; a method overrides what it needs."""

    name: ClassVar[str]
    control: ClassVar[Control]  # how the achieved sparsity relates to the target
    changes_architecture: ClassVar[bool] = False

    def __init__(self, target: float, **options: Any):
        if options:
            raise ValueError(f"sparsity.options: unknown option(s) {', '.join(sorted(options))} for method '{self.name}'")
        self.target = target
        self._keeper: MaskKeeper | None = None

    # --- setup ------------------------------------------------------------------------
    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """The layers this method may touch."""
        return prunable_layers(model)

    def attach(self, model: nn.Module) -> nn.Module:
        """Prepare ``model`` for training with this method (called once per stage)."""
        self._keeper = MaskKeeper(model)
        return model

    def prune(self, model: nn.Module, target: float | None = None) -> None:
        """One-shot mask computation (the ``prune`` stage). Training-time methods may no-op."""

    def param_groups(self, model: nn.Module, groups: list[dict]) -> list[dict]:
        return groups

    # --- training hooks -----------------------------------------------------------------
    def on_train_start(self, steps_per_epoch: int, epochs: int, start_epoch: int = 0) -> None:
        """Once per training stage (and again on resume, with the epoch it resumes from),
        after ``attach`` and ``load_state_dict``: lets schedules count in steps."""

    def on_epoch_start(self, epoch: int) -> None: ...

    def on_epoch_end(self, epoch: int) -> None: ...

    def before_step(self) -> None:
        if self._keeper:
            self._keeper.mask_grads()

    def after_step(self) -> None:
        if self._keeper:
            self._keeper.mask_weights()

    # --- export -------------------------------------------------------------------------
    def finalize(self, model: nn.Module) -> nn.Module:
        """Plain modules with zeros in ``weight`` and a ``weight_mask`` buffer per sparse layer."""
        return model

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@torch.no_grad()
def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep all but the floor(sparsity * n) smallest-|w| entries (exact count, ties by index)."""
    n = weight.numel()
    k = int(sparsity * n)
    mask = torch.ones(n, dtype=torch.bool, device=weight.device)
    if k > 0:
        idx = torch.argsort(weight.detach().abs().flatten(), stable=True)[:k]
        mask[idx] = False
    return mask.view_as(weight)


class StepScheduled(SparseMethod):
    """A method whose masks follow a schedule over the stage's optimizer steps (GMP, ST-3).

    ``step`` counts steps within the stage; a resumed stage continues from the saved step
    (``_resume_step``, set by ``load_state_dict``) or from its resume epoch. ``_update()``
    applies the schedule at the current step: at the start and after every step, so the
    next forward sees it.
    """

    total_steps: int | None = None
    step: int = 0
    _resume_step: int | None = None

    def on_train_start(self, steps_per_epoch: int, epochs: int, start_epoch: int = 0) -> None:
        self.total_steps = steps_per_epoch * epochs
        self.step = self._resume_step if self._resume_step is not None else start_epoch * steps_per_epoch
        self._resume_step = None
        self._update()

    def after_step(self) -> None:
        super().after_step()
        self.step += 1
        self._update()

    def _update(self) -> None:
        raise NotImplementedError
