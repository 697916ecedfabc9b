"""The one Ray Tune ``Searcher`` for every ask/tell optimizer.

Tune asks for a trial config with ``suggest(trial_id)``; the optimizer answers with
``(token, genome)`` (or ``(token, configuration)`` for an HPO backend, whose ``payload``
attribute is ``"config"``); the trial sees ``config["candidate"]``. The bridge remembers which Tune trial carries which token, forwards
each finished trial's score with ``tell``, and limits how many candidates run at once.

Rules that keep a search alive and resumable (Ray 2.60 behaviour):
- ``suggest`` returns ``None`` ("ask again later") only while some trial is running;
  with nothing running, ``None`` would stall Tune forever, so it returns ``FINISHED``.
- A trial that errored, reported no score or a non-finite one is told as a failure; the
  search continues.
- The state (optimizer, ``trial_id -> token`` of the running trials and the candidate each
  one carries) is JSON, nothing to unpickle. With ``state_path`` it is rewritten after every
  change, so a SIGKILL loses nothing the optimizer was told.
- A candidate carries the optimizer's ``origin(token)`` (where its proposal came from, see
  ``safs.search.base.ORIGINS``) when the optimizer labels it. It thus lands in the trial's
  ``params.json``, which ``trials.parquet`` is built from, and travels with a requeued
  candidate, so a resumed search keeps the origins of its earlier candidates.
- A stopped stage restarts as a *new* Tune experiment (safs never unpickles Tune's own
  state): ``requeue_live`` turns the candidates that were running into the first ones the
  new experiment runs, each resuming from its last epoch checkpoint (``resume_from``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ray.tune.search import Searcher

from safs.io import plain, write_json
from safs.search.base import AskTellOptimizer, finite_score

STATE_VERSION = 2


class AskTellSearcher(Searcher):
    """``locate(trial_ids) -> [trial directories]`` finds the earlier trials of a requeued
    candidate, whose checkpoints it resumes from."""

    def __init__(self, optimizer: AskTellOptimizer, max_concurrent: int = 1, *, state_path: Path | None = None,
                 locate: Callable[[list[str]], list[str]] | None = None):
        super().__init__(metric=None, mode=None)  # set by Tune from TuneConfig(metric, mode)
        self.optimizer = optimizer
        self.max_concurrent = max(1, int(max_concurrent))
        self.live: dict[str, int] = {}  # Tune trial id -> optimizer token
        self.told: dict[str, dict] = {}  # Tune trial id -> {"token", "score"} once complete
        self.finished = False
        self.candidates: dict[str, dict] = {}  # live trial id -> the candidate it carries
        self.previous: dict[str, list[str]] = {}  # live trial id -> earlier trials of its candidate
        self.pending: list[dict] = []  # requeued candidates: {"candidate", "previous"}
        self.state_path = Path(state_path) if state_path else None
        self.locate = locate

    # -- Tune protocol -------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        # param_space holds constants only (the stage spec); the genome space is ours.
        if metric:
            self._metric = metric
        if mode:
            self._mode = mode
        return True

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max(1, int(max_concurrent))
        return True

    def suggest(self, trial_id: str) -> dict | None:
        if self.finished:
            return Searcher.FINISHED
        if len(self.live) >= self.max_concurrent:
            return None
        if self.pending:
            p = self.pending.pop(0)
            self._start(trial_id, p["candidate"], p["previous"])
            dirs = self.locate(p["previous"]) if self.locate else []
            return {"candidate": p["candidate"], "resume_from": dirs}
        out = self.optimizer.ask()
        if out is None:
            if self.live and not self.optimizer.done():
                return None  # e.g. a GA generation still running
            if not self.live:
                self.finished = True
                self.persist()
                return Searcher.FINISHED
            return None
        token, value = out
        # Genome optimizers propose a genome, HPO backends a configuration.
        candidate = {"token": token, getattr(self.optimizer, "payload", "genome"): plain(dict(value))}
        origin = _origin(self.optimizer, token)
        if origin is not None:  # unlabelled proposals keep the candidate as it always was
            candidate["origin"] = origin
        self._start(trial_id, candidate, [])
        return {"candidate": candidate}

    def _start(self, trial_id: str, candidate: dict, previous: list[str]) -> None:
        self.live[trial_id] = int(candidate["token"])
        self.candidates[trial_id] = candidate
        self.previous[trial_id] = list(previous)
        self.persist()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        token = self.live.pop(trial_id, None)
        if token is None:  # unknown or already told (Tune may repeat after a restore)
            return
        self.candidates.pop(trial_id, None)
        self.previous.pop(trial_id, None)
        score = self.score_of(result, error)
        self.told[trial_id] = {"token": token, "score": score}
        if score is not None and self._mode == "min":
            score = -score  # optimizers maximise
        self.optimizer.tell(token, score)
        self.persist()

    def requeue_live(self) -> list[int]:
        """Turn the trials that were running when the state was saved into candidates to run
        first (in token order), each remembering its earlier trials; return their tokens."""
        for trial_id, token in sorted(self.live.items(), key=lambda kv: kv[1]):
            if trial_id not in self.candidates:
                raise ValueError(f"searcher state has no candidate for running trial {trial_id}")
            self.pending.append({"candidate": self.candidates[trial_id],
                                 "previous": self.previous.get(trial_id, []) + [trial_id]})
        self.live, self.candidates, self.previous = {}, {}, {}
        self.persist()
        return [p["candidate"]["token"] for p in self.pending]

    def score_of(self, result: dict | None, error: bool) -> float | None:
        if error or not result or result.get("failed"):
            return None
        return finite_score(result.get(self._metric or "score"))

    # -- persistence ---------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "metric": self._metric, "mode": self._mode,
                "max_concurrent": self.max_concurrent, "live": dict(self.live), "told": dict(self.told),
                "finished": self.finished, "optimizer": self.optimizer.state_dict(),
                "candidates": dict(self.candidates), "previous": dict(self.previous), "pending": list(self.pending),
                "best": _best_json(self.optimizer), "done": self.optimizer.done()}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"searcher state version {state.get('version')!r}; expected {STATE_VERSION}")
        self._metric, self._mode = state["metric"], state["mode"]
        self.max_concurrent = state["max_concurrent"]
        self.live = {k: int(v) for k, v in state["live"].items()}
        self.told = dict(state["told"])
        self.finished = bool(state["finished"])
        self.candidates = dict(state["candidates"])
        self.previous = {k: list(v) for k, v in state["previous"].items()}
        self.pending = list(state["pending"])
        self.optimizer.load_state_dict(state["optimizer"])

    def persist(self) -> None:
        if self.state_path is not None:
            self.save(str(self.state_path))

    def save(self, checkpoint_path: str) -> None:
        write_json(Path(checkpoint_path), self.get_state())

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text()))


def _origin(optimizer: AskTellOptimizer, token: int) -> str | None:
    """The optimizer's label for ``token``; optimizers from plugins may not have ``origin``."""
    origin = getattr(optimizer, "origin", None)
    return None if origin is None else origin(token)


def _best_json(optimizer: AskTellOptimizer) -> dict | None:
    best = optimizer.best()
    return None if best is None else {getattr(optimizer, "payload", "genome"): dict(best[0]), "score": best[1]}
