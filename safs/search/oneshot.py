"""One-shot activation search: the whole search is one training run of a relaxed network.

This class is the search's ask/tell face, so the stage keeps one path through Tune (one
trial, resumable from its epoch checkpoints, one row in ``trials.parquet``): it proposes one
candidate and is done once it is told. The trial itself (``safs.stages.oneshot``) turns every
activation slot into a mixture over the space's choices, trains weights and architecture
logits, and discretizes each slot to its largest weight. The constructor's keyword arguments
are the algorithm's options; they are validated here, without torch.
"""

from __future__ import annotations

from typing import Any

from safs.search.base import AskTellOptimizer, Genome, GenomeSpace

RELAXATIONS = ("softmax", "gumbel")
ARCH_SPLITS = ("val", "train")


class OneShot(AskTellOptimizer):
    """Mixture training over every slot's operators, then the argmax per slot.

    ``relaxation``: ``softmax`` mixture or ``gumbel`` (Gumbel-softmax, temperature annealed
    geometrically from ``tau_start`` to ``tau_end`` over the epochs). ``arch_split``: ``val``
    alternates a logit step on a validation batch with a weight step on a training batch
    (first-order bilevel); ``train`` steps both on the same training batch. The logits have
    their own Adam optimizer (``arch_lr``, ``arch_weight_decay``); the first
    ``warmup_epochs`` train the weights only.
    """

    name = "oneshot"
    #: the stage runs one mixture-training trial instead of training proposed genomes
    one_trial = True

    def __init__(self, space: GenomeSpace, seed: int, *, relaxation: str = "softmax", tau_start: float = 5.0,
                 tau_end: float = 0.5, arch_split: str = "val", arch_lr: float = 3e-3,
                 arch_weight_decay: float = 1e-3, warmup_epochs: int = 0) -> None:
        super().__init__(space, seed)
        if relaxation not in RELAXATIONS:
            raise ValueError(f"oneshot: relaxation must be one of {', '.join(RELAXATIONS)}, got {relaxation!r}")
        if arch_split not in ARCH_SPLITS:
            raise ValueError(f"oneshot: arch_split must be one of {', '.join(ARCH_SPLITS)}, got {arch_split!r}")
        if not (float(tau_start) > 0 and float(tau_end) > 0):
            raise ValueError("oneshot: tau_start and tau_end must be > 0")
        if not float(arch_lr) > 0:
            raise ValueError("oneshot: arch_lr must be > 0")
        if float(arch_weight_decay) < 0:
            raise ValueError("oneshot: arch_weight_decay must be >= 0")
        if int(warmup_epochs) < 0 or int(warmup_epochs) != warmup_epochs:
            raise ValueError("oneshot: warmup_epochs must be a non-negative integer")
        self.options = {"relaxation": relaxation, "tau_start": float(tau_start), "tau_end": float(tau_end),
                        "arch_split": arch_split, "arch_lr": float(arch_lr),
                        "arch_weight_decay": float(arch_weight_decay), "warmup_epochs": int(warmup_epochs)}
        self._proposed = False

    def _propose(self) -> Genome | None:
        if self._proposed:
            return None
        self._proposed = True
        # A placeholder: the trial mixes every choice; the genome it ends with is its result.
        if self.space.baseline is not None:
            return self.space.baseline_genome()
        return {slot: self.space.choices[0] for slot in self.space.slots}

    def _observe(self, genome: Genome, score: float, cached: bool) -> None:
        pass

    def _finished(self) -> bool:
        return self._proposed

    def _state(self) -> dict[str, Any]:
        return {"proposed": self._proposed}

    def _load_state(self, state: dict[str, Any]) -> None:
        self._proposed = bool(state["proposed"])
