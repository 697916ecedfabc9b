"""Simulated annealing with the SAFS move, as a sequential alternative to LAHC."""

from __future__ import annotations

import math
from typing import Any

from safs.search.base import (
    FAILED,
    AskTellOptimizer,
    Genome,
    GenomeSpace,
    check_start,
    decode_score,
    encode_score,
    initial_genome,
    neighbour,
)


class SimulatedAnnealing(AskTellOptimizer):
    """Simulated annealing over genomes; one candidate outstanding at a time.

    The initial genome is scored, then ``steps`` moves follow (``steps + 1`` evaluations).
    Temperatures are in score units, i.e. fractions of validation accuracy: a candidate worse
    than the current one by ``delta > 0`` is accepted with probability ``exp(-delta / T)``,
    so at ``T = 0.02`` a drop of 2 accuracy points is accepted with probability ``1/e``, and
    at ``T = 0.0005`` practically never. Better or equal candidates are always accepted,
    failed ones (``-inf``) never. Cooling is exponential,
    ``T_k = t_start * (t_end / t_start) ** (k / (steps - 1))`` for move ``k = 0 .. steps-1``.

    The rng draws the move first, then one ``random()`` for the acceptance test, only when
    the candidate is finite and worse.
    """

    name = "sa"

    def __init__(self, space: GenomeSpace, seed: int, *, steps: int = 20, t_start: float = 0.02,
                 t_end: float = 0.0005, start: str = "random") -> None:
        super().__init__(space, seed)
        if steps < 0:
            raise ValueError("sa: steps must be >= 0")
        if not (t_start > 0 and t_end > 0):
            raise ValueError("sa: t_start and t_end must be > 0")
        self.steps = int(steps)
        self.t_start = float(t_start)
        self.t_end = float(t_end)
        self.start = check_start(start, space)
        self.current: Genome | None = None
        self.current_score = FAILED
        self.step = 0  # moves completed
        self._pending: Genome | None = None

    def max_parallel(self) -> int | None:
        return 1

    def temperature(self, k: int) -> float:
        """Temperature of move ``k`` (0-based)."""
        if self.steps <= 1:
            return self.t_start
        return self.t_start * (self.t_end / self.t_start) ** (k / (self.steps - 1))

    # --- hooks --------------------------------------------------------------------------
    def _propose(self) -> Genome | None:
        if self._pending is not None or self._finished():
            return None
        if self.current is None:
            self._pending = initial_genome(self.start, self.space, self.rng)
        else:
            self._pending = neighbour(self.space, self.current, self.rng)
        return self._pending

    def _observe(self, genome: Genome, score: float, cached: bool) -> None:
        if self._pending is None or self.space.key(genome) != self.space.key(self._pending):
            return
        self._pending = None
        if self.current is None:
            self.current, self.current_score = genome, score
            return
        if score == FAILED:
            accept = False
        elif score >= self.current_score:
            accept = True
        else:
            delta = self.current_score - score
            accept = self.rng.random() < math.exp(-delta / self.temperature(self.step))
        if accept:
            self.current, self.current_score = genome, score
        self.step += 1

    def _finished(self) -> bool:
        return self.current is not None and self._pending is None and self.step >= self.steps

    def _state(self) -> dict[str, Any]:
        return {"current": self.current, "current_score": encode_score(self.current_score),
                "step": self.step, "pending": self._pending}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.current = state["current"]
        self.current_score = decode_score(state["current_score"])
        self.step = int(state["step"])
        self._pending = state["pending"]
