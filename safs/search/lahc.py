"""Late acceptance hill climbing, the activation search of the original SAFS.

SAFS used the ``lahc`` 1.0.5 library, which minimises an energy (there ``1 / accuracy``).
This is the same algorithm on maximised scores; the comments give the library's form.
"""

from __future__ import annotations

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


class LAHC(AskTellOptimizer):
    """Late acceptance hill climbing over genomes.

    After scoring the initial genome (``S0``; ``current = initial``, ``late_scores = [S0] *
    history_length``), every step moves from ``current`` (see ``base.neighbour``) and scores
    the candidate ``S``:

    - idle counting: ``S <= current_score`` (library: ``E >= E_prev``) → ``idle += 1``,
      otherwise ``idle = 0``;
    - with ``v = step % history_length``, the candidate is accepted when
      ``S > late_scores[v]`` or ``S >= current_score``, which lets the search walk downhill
      as long as it beats the score it had ``history_length`` steps ago;
    - ``late_scores[v] = current_score`` only when that improves it (the library's variant);
    - it stops before the next move once ``step > steps_minimum and idle > idle_fraction *
      step`` (with the defaults: at least 21 moves, then the first non-improving one), or at
      ``max_steps`` as a safety cap.

    ``neighbours=k > 1`` parallelises a step: ``k`` independent moves from ``current`` are
    outstanding at once, and when all are told the best of them (ties: the first proposed,
    i.e. the lowest token) is the step's candidate and goes through the rule above once.
    ``k = 1`` is exactly the sequential algorithm. Genomes answered from the memo count as
    steps like any other, they are just not retrained.
    """

    name = "lahc"

    def __init__(self, space: GenomeSpace, seed: int, *, history_length: int = 3, steps_minimum: int = 20,
                 idle_fraction: float = 0.02, max_steps: int = 200, start: str = "random",
                 neighbours: int = 1) -> None:
        super().__init__(space, seed)
        if history_length < 1 or neighbours < 1 or steps_minimum < 0 or max_steps < 0 or idle_fraction < 0:
            raise ValueError("lahc: history_length and neighbours must be >= 1; steps_minimum, max_steps "
                             "and idle_fraction >= 0")
        self.history_length = int(history_length)
        self.steps_minimum = int(steps_minimum)
        self.idle_fraction = float(idle_fraction)
        self.max_steps = int(max_steps)
        self.start = check_start(start, space)
        self.neighbours = int(neighbours)
        self.current: Genome | None = None
        self.current_score = FAILED
        self.late_scores: list[float] = []
        self.step = 0
        self.idle = 0
        self.stopped = False
        # proposals of the running batch: the initial genome, then ``neighbours`` moves per step
        self._batch: list[dict[str, Any]] = []  # {"genome", "score", "told"}

    def max_parallel(self) -> int | None:
        return self.neighbours

    # --- hooks --------------------------------------------------------------------------
    def _propose(self) -> Genome | None:
        size = 1 if self.current is None else self.neighbours
        if self.stopped or len(self._batch) >= size:
            return None
        if self.current is None:
            genome = initial_genome(self.start, self.space, self.rng)
        else:
            genome = neighbour(self.space, self.current, self.rng)
        self._batch.append({"genome": genome, "score": FAILED, "told": False})
        return genome

    def _observe(self, genome: Genome, score: float, cached: bool) -> None:
        key = self.space.key(genome)
        for entry in self._batch:
            if not entry["told"] and self.space.key(entry["genome"]) == key:
                entry["score"], entry["told"] = score, True
                break
        size = 1 if self.current is None else self.neighbours
        if len(self._batch) < size or not all(entry["told"] for entry in self._batch):
            return
        # best of the batch; max() keeps the first of equal scores, i.e. the lowest token
        chosen = max(self._batch, key=lambda entry: entry["score"])
        self._batch = []
        if self.current is None:
            self.current, self.current_score = chosen["genome"], chosen["score"]
            self.late_scores = [chosen["score"]] * self.history_length
        else:
            self._step(chosen["genome"], chosen["score"])
        if (self.step > self.steps_minimum and self.idle > self.idle_fraction * self.step) \
                or self.step >= self.max_steps:
            self.stopped = True

    def _step(self, candidate: Genome, score: float) -> None:
        self.step += 1
        self.idle = self.idle + 1 if score <= self.current_score else 0
        v = self.step % self.history_length
        if score > self.late_scores[v] or score >= self.current_score:
            self.current, self.current_score = candidate, score
        if self.current_score > self.late_scores[v]:
            self.late_scores[v] = self.current_score

    def _finished(self) -> bool:
        return self.stopped

    def _state(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "current_score": encode_score(self.current_score),
            "late_scores": [encode_score(s) for s in self.late_scores],
            "step": self.step,
            "idle": self.idle,
            "stopped": self.stopped,
            "batch": [{"genome": e["genome"], "score": encode_score(e["score"]), "told": e["told"]}
                      for e in self._batch],
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.current = state["current"]
        self.current_score = decode_score(state["current_score"])
        self.late_scores = [decode_score(s) for s in state["late_scores"]]
        self.step, self.idle, self.stopped = int(state["step"]), int(state["idle"]), bool(state["stopped"])
        self._batch = [{"genome": e["genome"], "score": decode_score(e["score"]), "told": e["told"]}
                       for e in state["batch"]]
