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
- ``save``/``restore`` carry the optimizer state and the ``trial_id -> token`` map: trials
  that were running at a crash keep their ids when Tune resumes them, and their results
  must still reach the optimizer. The state is written as JSON (nothing to unpickle).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from safs.search.base import AskTellOptimizer, finite_score

STATE_VERSION = 1


class AskTellSearcher(Searcher):
    def __init__(self, optimizer: AskTellOptimizer, max_concurrent: int = 1):
        super().__init__(metric=None, mode=None)  # set by Tune from TuneConfig(metric, mode)
        self.optimizer = optimizer
        self.max_concurrent = max(1, int(max_concurrent))
        self.live: dict[str, int] = {}  # Tune trial id -> optimizer token
        self.told: dict[str, dict] = {}  # Tune trial id -> {"token", "score"} once complete
        self.finished = False

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
        out = self.optimizer.ask()
        if out is None:
            if self.live and not self.optimizer.done():
                return None  # e.g. a GA generation still running
            if not self.live:
                self.finished = True
                return Searcher.FINISHED
            return None
        token, value = out
        self.live[trial_id] = token
        # Genome optimizers propose a genome, HPO backends a configuration.
        return {"candidate": {"token": token, getattr(self.optimizer, "payload", "genome"): dict(value)}}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        token = self.live.pop(trial_id, None)
        if token is None:  # unknown or already told (Tune may repeat after a restore)
            return
        score = self.score_of(result, error)
        self.told[trial_id] = {"token": token, "score": score}
        if score is not None and self._mode == "min":
            score = -score  # optimizers maximise
        self.optimizer.tell(token, score)

    def score_of(self, result: dict | None, error: bool) -> float | None:
        if error or not result or result.get("failed"):
            return None
        return finite_score(result.get(self._metric or "score"))

    # -- persistence ---------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "metric": self._metric, "mode": self._mode,
                "max_concurrent": self.max_concurrent, "live": dict(self.live), "told": dict(self.told),
                "finished": self.finished, "optimizer": self.optimizer.state_dict(),
                "best": _best_json(self.optimizer), "done": self.optimizer.done()}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"searcher state version {state.get('version')!r}; expected {STATE_VERSION}")
        self._metric, self._mode = state["metric"], state["mode"]
        self.max_concurrent = state["max_concurrent"]
        self.live = {k: int(v) for k, v in state["live"].items()}
        self.told = dict(state["told"])
        self.finished = bool(state["finished"])
        self.optimizer.load_state_dict(state["optimizer"])

    def save(self, checkpoint_path: str) -> None:
        tmp = Path(f"{checkpoint_path}.tmp")
        tmp.write_text(json.dumps(self.get_state()))
        tmp.replace(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text()))


def _best_json(optimizer: AskTellOptimizer) -> dict | None:
    best = optimizer.best()
    return None if best is None else {getattr(optimizer, "payload", "genome"): dict(best[0]), "score": best[1]}


def read_saved_state(experiment_dir: Path) -> dict | None:
    """The newest searcher state Tune saved in ``experiment_dir`` (None if there is none)."""
    # One file per Tune session; the session string is a timestamp, so name order is time
    # order (modification times are not: a restore copies old sessions' files back).
    files = sorted(Path(experiment_dir).glob(Searcher.CKPT_FILE_TMPL.format("*")), key=lambda p: p.name)
    for f in reversed(files):
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError):
            continue
    return None
