"""The genome space and the ask/tell protocol shared by every activation search.

Why ask/tell: a Ray Tune ``Searcher`` pulls one configuration at a time and reports results
asynchronously, possibly out of order, possibly twice after a restore. Writing each algorithm
as a pure-Python state machine (no torch, no ray) keeps it testable in milliseconds and makes
its checkpoint a plain dict.

Why the memo lives here and not in each algorithm: training a genome costs minutes, proposing
it costs nothing. Every algorithm (hill climbing revisits, GA elites, random duplicates) would
otherwise retrain genomes it has already seen, so the base class answers repeats from the memo
and never hands the same genome out twice.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from typing import Any, ClassVar

Genome = dict[str, str]
Key = tuple[str, ...]

FAILED = -math.inf  # the score of a failed candidate: worse than anything, never the best

#: Where a proposal came from, as an optimizer's ``origin(token)`` says (``None``: not labelled).
#: ``default``: the stage's own configuration; ``initial_design``: SMAC's space-filling start;
#: ``model``: SMAC's surrogate model; ``sampler``: Optuna's sampler; ``random``: SMAC's random
#: interleaving. The genome optimizers label nothing: a hill climber's, a GA's or an
#: annealer's proposals are neither a user's default nor a model's, and a label that only
#: restates the algorithm would add nothing to the ``algorithm`` of the stage.
ORIGINS = ("default", "initial_design", "model", "sampler", "random")


@dataclass(frozen=True)
class GenomeSpace:
    """Which activation slots a model has and which operators each may take.

    ``baseline`` is the model's own operator (e.g. ``"relu"``); it may lie outside ``choices``
    because a search may start from the unmodified model without ever proposing it again.
    """

    slots: tuple[str, ...]
    choices: tuple[str, ...]
    baseline: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "slots", tuple(self.slots))
        object.__setattr__(self, "choices", tuple(self.choices))
        if not self.slots:
            raise ValueError("GenomeSpace: the model has no activation slots")
        if not self.choices:
            raise ValueError("GenomeSpace: choices must not be empty")
        for name, values in (("slots", self.slots), ("choices", self.choices)):
            if len(set(values)) != len(values):
                raise ValueError(f"GenomeSpace: duplicate entries in {name}")

    @property
    def size(self) -> int:
        """Number of genomes made only of ``choices`` (what 'the space is exhausted' counts)."""
        return len(self.choices) ** len(self.slots)

    def baseline_genome(self) -> Genome:
        if self.baseline is None:
            raise ValueError("GenomeSpace: no baseline operator given, cannot start from the baseline")
        return {slot: self.baseline for slot in self.slots}

    def random_genome(self, rng: random.Random) -> Genome:
        return {slot: rng.choice(self.choices) for slot in self.slots}

    def key(self, genome: Genome) -> Key:
        return tuple(genome[slot] for slot in self.slots)

    def in_choices(self, genome: Genome) -> bool:
        return all(genome[slot] in self.choices for slot in self.slots)

    def check(self, genome: Genome) -> Genome:
        """A copy in slot order; rejects missing slots and unknown operators."""
        missing = [slot for slot in self.slots if slot not in genome]
        if missing:
            raise ValueError(f"genome lacks slot(s) {', '.join(missing)}")
        out = {slot: genome[slot] for slot in self.slots}
        bad = sorted({op for op in out.values() if op not in self.choices and op != self.baseline})
        if bad:
            raise ValueError(f"genome uses operator(s) outside the space: {', '.join(bad)}")
        return out


def neighbour(space: GenomeSpace, genome: Genome, rng: random.Random) -> Genome:
    """The SAFS move: set one random slot to a random operator (maybe the same one), then swap
    the operators of two random slots (maybe the same slot). The rng is used in exactly this
    order so runs are reproducible across implementations of the same spec."""
    out = dict(genome)
    slots = space.slots
    out[slots[rng.randrange(len(slots))]] = rng.choice(space.choices)
    i, j = rng.randrange(len(slots)), rng.randrange(len(slots))
    out[slots[i]], out[slots[j]] = out[slots[j]], out[slots[i]]
    return out


def finite_score(score: Any) -> float | None:
    """A reported score as a float; ``None`` when it means the trial failed (``None``,
    non-numbers, a bool, NaN, ±inf). The one rule for what counts as a score."""
    if score is None or isinstance(score, bool):  # True is no accuracy of 1.0
        return None
    try:
        value = float(score)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def sanitize(score: Any) -> float:
    """A score for the genome optimizers: a failure is ``FAILED`` (-inf)."""
    value = finite_score(score)
    return FAILED if value is None else value


def encode_score(score: float) -> float | None:
    """JSON has no -inf: a failure is stored as ``None``."""
    return None if score == FAILED else score


def decode_score(score: float | None) -> float:
    return FAILED if score is None else float(score)


class AskTellOptimizer:
    """Base of every search algorithm: tokens, the memo, history, best, checkpointing.

    A subclass implements four small hooks:

    - ``_propose() -> Genome | None``: the next genome it wants scored, or ``None`` to wait
      (it still expects observations) or because it has nothing more to propose;
    - ``_observe(genome, score, cached)``: the score of a genome it proposed (``-inf`` when
      the trial failed); ``cached`` says the score came from the memo, not from training;
    - ``_finished() -> bool``: it will propose nothing more;
    - ``_state()`` / ``_load_state(state)``: its own JSON-compatible state.

    Memo rules, applied to every proposal:

    - a genome already scored is answered from the memo at once (no token, recorded in
      ``history`` with ``cached=True``) and the subclass is asked again;
    - a genome currently outstanding is attached to that outstanding token: when its score
      arrives the subclass observes it once per attachment (``cached=True``). Batch algorithms
      (GA generations, LAHC neighbour batches) thus keep duplicates inside a batch without
      training them twice, and sequential ones never meet the case;
    - once every genome over ``space.choices`` has been scored the optimizer is finished, and
      while all the remaining ones are outstanding it waits, so tiny spaces never loop.
    """

    name: ClassVar[str] = ""
    #: proposals in a row that yield no new token before ``ask`` gives up (see ``ask``)
    max_duplicate_proposals: ClassVar[int] = 1000

    def __init__(self, space: GenomeSpace, seed: int) -> None:
        if not isinstance(space, GenomeSpace):
            raise TypeError("space must be a GenomeSpace")
        self.space = space
        self.seed = int(seed)
        self.rng = random.Random(self.seed)
        self.history: list[dict[str, Any]] = []
        self._next_token = 0
        self._outstanding: dict[int, tuple[Genome, int]] = {}  # token -> (genome, attached duplicates)
        self._outstanding_keys: dict[Key, int] = {}
        self._memo: dict[Key, float] = {}
        self._scored_in_space = 0
        self._outstanding_in_space = 0
        self._best: tuple[Genome, float] | None = None
        self._stalled = False

    # --- the protocol -------------------------------------------------------------------
    def ask(self) -> tuple[int, Genome] | None:
        """``(token, genome)`` to train next, or ``None`` to wait for tells or when finished."""
        if self._stalled:
            return None
        for _ in range(self.max_duplicate_proposals):
            if self._exhausted() or self._scored_in_space + self._outstanding_in_space >= self.space.size:
                return None  # everything left is outstanding: wait, never spin
            proposal = self._propose()
            if proposal is None:
                return None
            genome = self.space.check(proposal)
            key = self.space.key(genome)
            if key in self._memo:
                score = self._memo[key]
                self._record(None, genome, score, cached=True)
                self._observe(dict(genome), score, True)
            elif key in self._outstanding_keys:
                token = self._outstanding_keys[key]
                held, attached = self._outstanding[token]
                self._outstanding[token] = (held, attached + 1)
            else:
                token = self._next_token
                self._next_token += 1
                self._outstanding[token] = (genome, 0)
                self._outstanding_keys[key] = token
                self._outstanding_in_space += self.space.in_choices(genome)
                return token, dict(genome)
        # A subclass that only repeats known genomes for this long has converged; stop it
        # rather than spin (with trials still running, wait for them instead).
        if not self._outstanding:
            self._stalled = True
        return None

    def tell(self, token: int, score: float | None) -> None:
        """Report a trial's score (maximised). Unknown or already told tokens are ignored."""
        try:
            token = int(token)
        except (TypeError, ValueError):
            return
        entry = self._outstanding.pop(token, None)
        if entry is None:
            return
        genome, attached = entry
        key = self.space.key(genome)
        del self._outstanding_keys[key]
        value = sanitize(score)
        self._memo[key] = value
        if self.space.in_choices(genome):
            self._outstanding_in_space -= 1
            self._scored_in_space += 1
        self._record(token, genome, value, cached=False)
        self._observe(dict(genome), value, False)
        for _ in range(attached):
            self._record(None, genome, value, cached=True)
            self._observe(dict(genome), value, True)

    def done(self) -> bool:
        """Nothing outstanding and nothing more will be asked."""
        if self._outstanding:
            return False
        return self._stalled or self._exhausted() or self._finished()

    def best(self) -> tuple[Genome, float] | None:
        """Best genome told so far with a finite score (ties: the first told)."""
        if self._best is None:
            return None
        return dict(self._best[0]), self._best[1]

    def outstanding(self) -> dict[int, Genome]:
        """Asked, not yet told (for the bridge and tests)."""
        return {token: dict(genome) for token, (genome, _) in self._outstanding.items()}

    def max_parallel(self) -> int | None:
        """How many candidates can usefully train at once; ``None`` means unlimited."""
        return 1

    def origin(self, token: int) -> str | None:
        """Where the proposal of an asked ``token`` came from (one of ``ORIGINS``), or ``None``
        when the optimizer does not label its proposals, as the genome optimizers do not."""
        return None

    # --- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly; JSON-compatible (``json.dumps(allow_nan=False)``)."""
        version, internal, gauss = self.rng.getstate()
        return {
            "algorithm": self.name,
            "space": {"slots": list(self.space.slots), "choices": list(self.space.choices),
                      "baseline": self.space.baseline},
            "seed": self.seed,
            "rng": [version, list(internal), gauss],
            "next_token": self._next_token,
            "outstanding": [{"token": t, "genome": dict(g), "attached": n}
                            for t, (g, n) in self._outstanding.items()],
            "history": copy.deepcopy(self.history),
            "stalled": self._stalled,
            "algorithm_state": copy.deepcopy(self._state()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("algorithm") != self.name:
            raise ValueError(f"state is for search algorithm '{state.get('algorithm')}', not '{self.name}'")
        space = state["space"]
        if (tuple(space["slots"]), tuple(space["choices"]), space["baseline"]) != (
                self.space.slots, self.space.choices, self.space.baseline):
            raise ValueError("state was saved for a different genome space")
        version, internal, gauss = state["rng"]
        self.seed = int(state["seed"])
        self.rng.setstate((version, tuple(internal), gauss))
        self._next_token = int(state["next_token"])
        self._stalled = bool(state["stalled"])
        self._outstanding, self._outstanding_keys = {}, {}
        self._outstanding_in_space = 0
        for entry in state["outstanding"]:
            genome = self.space.check(entry["genome"])
            token = int(entry["token"])
            self._outstanding[token] = (genome, int(entry["attached"]))
            self._outstanding_keys[self.space.key(genome)] = token
            self._outstanding_in_space += self.space.in_choices(genome)
        # The memo and best are derived from history, so they cannot disagree with it.
        self.history, self._memo, self._best, self._scored_in_space = [], {}, None, 0
        for record in state["history"]:
            genome = self.space.check(record["genome"])
            value = decode_score(record["score"])
            key = self.space.key(genome)
            if key not in self._memo:
                self._memo[key] = value
                self._scored_in_space += self.space.in_choices(genome)
            self._record(record["token"], genome, value, cached=bool(record.get("cached", False)))
        self._load_state(copy.deepcopy(state["algorithm_state"]))

    # --- internals ----------------------------------------------------------------------
    def _exhausted(self) -> bool:
        return self._scored_in_space >= self.space.size

    def _record(self, token: int | None, genome: Genome, score: float, cached: bool) -> None:
        self.history.append({"token": token, "genome": dict(genome), "score": encode_score(score),
                             "cached": cached})
        if score != FAILED and (self._best is None or score > self._best[1]):
            self._best = (dict(genome), score)

    # --- subclass hooks -----------------------------------------------------------------
    def _propose(self) -> Genome | None:
        raise NotImplementedError

    def _observe(self, genome: Genome, score: float, cached: bool) -> None:
        raise NotImplementedError

    def _finished(self) -> bool:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        """Restore what ``_state`` returned."""


def check_start(start: str, space: GenomeSpace) -> str:
    """Validate a ``start`` option of the local searches ("random" or "baseline")."""
    if start not in ("random", "baseline"):
        raise ValueError(f"start must be 'random' or 'baseline', not {start!r}")
    if start == "baseline":
        space.baseline_genome()  # raises when the space has no baseline
    return start


def initial_genome(start: str, space: GenomeSpace, rng: random.Random) -> Genome:
    return space.baseline_genome() if start == "baseline" else space.random_genome(rng)
