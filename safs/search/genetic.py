"""A generational genetic algorithm: a population-based alternative that parallelises well."""

from __future__ import annotations

from typing import Any

from safs.search.base import AskTellOptimizer, Genome, GenomeSpace, decode_score, encode_score


class GeneticAlgorithm(AskTellOptimizer):
    """Generational GA with tournament selection, one-point crossover and per-gene mutation.

    Generation 0 is ``population`` uniform random genomes; ``generations`` counts the
    generations evaluated including that one (the defaults, 5 x 2, match the budget of the
    original SAFS search). ``ask`` hands out every individual of the current generation, so
    all may train at once, then returns ``None`` until all are told; only then is the next
    generation bred:

    - elitism: the best individual of the previous generation (ties: the first) is copied
      unchanged; the memo answers it without retraining;
    - the rest come in pairs: two tournament winners (``tournament_size`` individuals drawn
      with replacement, the best wins, ties to the first drawn), crossed at a cut uniform in
      ``1 .. L-1`` with ``crossover_probability`` (never when ``L == 1``), otherwise copied;
      then every gene of each child is replaced by a uniformly random operator with
      probability ``mutation_rate`` (default ``1 / L``).

    ``best()`` is the best genome ever scored.
    """

    name = "ga"

    def __init__(self, space: GenomeSpace, seed: int, *, population: int = 5, generations: int = 2,
                 crossover_probability: float = 0.8, mutation_rate: float | None = None,
                 tournament_size: int = 2, elitism: bool = True) -> None:
        super().__init__(space, seed)
        if population < 1 or generations < 1 or tournament_size < 1:
            raise ValueError("ga: population, generations and tournament_size must be >= 1")
        if not 0 <= crossover_probability <= 1:
            raise ValueError("ga: crossover_probability must be in [0, 1]")
        if mutation_rate is None:
            mutation_rate = 1 / len(space.slots)
        if not 0 <= mutation_rate <= 1:
            raise ValueError("ga: mutation_rate must be in [0, 1]")
        self.population = int(population)
        self.generations = int(generations)
        self.crossover_probability = float(crossover_probability)
        self.mutation_rate = float(mutation_rate)
        self.tournament_size = int(tournament_size)
        self.elitism = bool(elitism)
        self.generation = 0  # index of the generation being evaluated
        self.individuals: list[Genome] = []  # the current generation
        self.individual_scores: list[float | None] = []  # None: not told yet
        self._proposed = 0

    def max_parallel(self) -> int | None:
        return self.population

    # --- hooks --------------------------------------------------------------------------
    def _propose(self) -> Genome | None:
        if self.generation >= self.generations:
            return None
        if not self.individuals:
            self.individuals = [self.space.random_genome(self.rng) for _ in range(self.population)]
            self.individual_scores = [None] * self.population
        if self._proposed >= self.population:
            return None  # wait for the whole generation
        self._proposed += 1
        return dict(self.individuals[self._proposed - 1])

    def _observe(self, genome: Genome, score: float, cached: bool) -> None:
        key = self.space.key(genome)
        for i in range(self._proposed):
            if self.individual_scores[i] is None and self.space.key(self.individuals[i]) == key:
                self.individual_scores[i] = score
                break
        if self._proposed < self.population or any(s is None for s in self.individual_scores):
            return
        self.generation += 1
        if self.generation < self.generations:
            self.individuals = self._breed()
            self.individual_scores = [None] * self.population
            self._proposed = 0

    def _finished(self) -> bool:
        return self.generation >= self.generations

    # --- operators ----------------------------------------------------------------------
    def _score(self, i: int) -> float:
        score = self.individual_scores[i]
        assert score is not None
        return score

    def _breed(self) -> list[Genome]:
        parents = self.individuals
        children: list[Genome] = []
        if self.elitism:
            elite = max(range(len(parents)), key=self._score)  # first of equal scores
            children.append(dict(parents[elite]))
        while len(children) < self.population:
            a, b = parents[self._tournament()], parents[self._tournament()]
            first, second = self._crossover(a, b)
            children.append(self._mutate(first))
            if len(children) < self.population:
                children.append(self._mutate(second))
        return children

    def _tournament(self) -> int:
        winner = self.rng.randrange(self.population)
        for _ in range(self.tournament_size - 1):
            rival = self.rng.randrange(self.population)
            if self._score(rival) > self._score(winner):
                winner = rival
        return winner

    def _crossover(self, a: Genome, b: Genome) -> tuple[Genome, Genome]:
        slots = self.space.slots
        if len(slots) > 1 and self.rng.random() < self.crossover_probability:
            cut = self.rng.randint(1, len(slots) - 1)
            first = {s: (a if i < cut else b)[s] for i, s in enumerate(slots)}
            second = {s: (b if i < cut else a)[s] for i, s in enumerate(slots)}
            return first, second
        return dict(a), dict(b)

    def _mutate(self, genome: Genome) -> Genome:
        out = dict(genome)
        for slot in self.space.slots:
            if self.rng.random() < self.mutation_rate:
                out[slot] = self.rng.choice(self.space.choices)
        return out

    # --- checkpointing ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "individuals": self.individuals,
            "scores": [None if s is None else {"score": encode_score(s)} for s in self.individual_scores],
            "proposed": self._proposed,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.generation = int(state["generation"])
        self.individuals = state["individuals"]
        # told scores are wrapped so a failure (encoded None) differs from "not told yet"
        self.individual_scores = [None if s is None else decode_score(s["score"]) for s in state["scores"]]
        self._proposed = int(state["proposed"])
