"""Which epoch a training run keeps: the weights behind its results row and its ``model.pt``.

``best`` (the default): the best validation accuracy among the epochs at the run's final
sparsity. When a method's sparsity changes during the run (GMP's schedule, STR's thresholds,
DNW's top-k), an early, denser epoch often has the best accuracy; keeping it would pair a
dense network's accuracy with the final network's sparsity. So a sparser epoch (by more than
``TOLERANCE``) supersedes the kept one whatever its accuracy, and among epochs at the same
sparsity (within ``TOLERANCE``) the better validation accuracy wins. With a monotone schedule
the kept epoch is therefore the best one within ``TOLERANCE`` of the final sparsity; with
fixed masks or a dense model it is simply the best-validation epoch.

``last``: the last epoch, whatever its accuracy.

Selection never looks at the test split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Select = Literal["best", "last"]
SELECT_MODES = ("best", "last")
TOLERANCE = 0.001  # 0.1 point of sparsity: "the same sparsity" for the rule above


@dataclass
class EpochSelector:
    mode: Select = "best"
    epoch: int | None = None  # the kept epoch (1-based), None before the first
    val_acc: float = float("-inf")
    sparsity: float = 0.0

    def offer(self, epoch: int, val_acc: float, sparsity: float) -> bool:
        """Consider an epoch's weights; True when they become the kept ones."""
        take = (self.epoch is None or self.mode == "last"
                or sparsity > self.sparsity + TOLERANCE
                or (sparsity >= self.sparsity - TOLERANCE and val_acc > self.val_acc))
        if take:
            self.epoch, self.val_acc, self.sparsity = epoch, val_acc, sparsity
        return take

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict | None, mode: Select) -> "EpochSelector":
        if not state:
            return cls(mode)
        return cls(**{**state, "mode": mode})
