"""Random search: the baseline every smarter search has to beat at equal budget."""

from __future__ import annotations

from typing import Any

from safs.search.base import AskTellOptimizer, Genome, GenomeSpace


class RandomSearch(AskTellOptimizer):
    """True random search: ``samples`` independent uniform genomes, all of which may train at once.

    Proposals never depend on scores. A draw the memo already knows does not count as a
    sample and is redrawn, so ``samples`` is the number of distinct genomes trained (or the
    whole space when it is smaller). ``include_baseline`` makes the first sample the
    baseline genome, so the result can be read as an improvement over the plain model.
    """

    name = "random"

    def __init__(self, space: GenomeSpace, seed: int, *, samples: int = 21, include_baseline: bool = False) -> None:
        super().__init__(space, seed)
        if samples < 1:
            raise ValueError("random: samples must be >= 1")
        if include_baseline:
            space.baseline_genome()  # raises when the space has no baseline
        self.samples = int(samples)
        self.include_baseline = bool(include_baseline)
        self._issued = 0  # samples handed out or pending, not counting duplicates
        self._baseline_proposed = False

    def max_parallel(self) -> int | None:
        return None

    def _propose(self) -> Genome | None:
        if self._issued >= self.samples:
            return None
        self._issued += 1
        if self.include_baseline and not self._baseline_proposed:
            self._baseline_proposed = True
            return self.space.baseline_genome()
        return self.space.random_genome(self.rng)

    def _observe(self, genome: Genome, score: float, cached: bool) -> None:
        if cached:
            self._issued -= 1  # a duplicate is not a sample: draw again

    def _finished(self) -> bool:
        return self._issued >= self.samples

    def _state(self) -> dict[str, Any]:
        return {"issued": self._issued, "baseline_proposed": self._baseline_proposed}

    def _load_state(self, state: dict[str, Any]) -> None:
        self._issued = int(state["issued"])
        self._baseline_proposed = bool(state["baseline_proposed"])
