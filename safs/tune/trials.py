"""A search stage's trials, read from its trial directories: ``trials.parquet`` and the best one.

A candidate (one token) usually runs as one Tune trial; a candidate that was running when
the stage stopped runs again in the next attempt, resuming from its last epoch checkpoint.
Its row merges all its trials: one row per candidate, in token order, with the genome
(activation search) or config (HPO) as JSON, its origin, status (``done``; ``stopped`` early
by successive halving; ``failed``), epochs trained, validation accuracy per epoch, score (best
validation accuracy), the test accuracy at that epoch, wall seconds and the error, if any.

``origin`` says where an HPO candidate's configuration came from (``default``: the stage's
own settings, always token 0; ``initial_design``, ``model`` or ``random`` under SMAC;
``sampler`` under Optuna; see ``safs.search.base.ORIGINS``). It is read from the candidate
the trial carried, so it survives a resume with the trial directories; it is null for the
genome searches, which do not label their proposals, and for trials run before it existed.

Only JSON is read (``params.json``, ``result.json``, ``error.txt``): nothing is unpickled.
"""

from __future__ import annotations

import json
import re
import math
from dataclasses import dataclass
from pathlib import Path

TRIAL_COLUMNS = ["token", "trial_id", "genome", "config", "origin", "status", "epochs", "val_acc_per_epoch", "score",
                 "best_epoch", "test_acc", "wall_s", "error"]


@dataclass(frozen=True)
class TrialRun:
    """One Tune trial directory of a search stage."""

    path: Path
    trial_id: str
    config: dict
    results: list[dict]
    error: str | None  # the last failure Tune recorded for it, if any

    @property
    def candidate(self) -> dict:
        return self.config.get("candidate", {})

    @property
    def last(self) -> dict:
        return self.results[-1] if self.results else {}


_ATTEMPT = re.compile(r"attempt-(\d+)(?:-[0-9a-f]+)?")


def attempt_number(name: str) -> int | None:
    """N of a Tune experiment directory ``attempt-N-<stage hash>`` (or ``attempt-N``, as
    stages written before the hash joined the name are); None for anything else."""
    m = _ATTEMPT.fullmatch(name)
    return int(m.group(1)) if m else None


def attempt_dirs(stage_dir: Path) -> list[Path]:
    """The stage's Tune experiments (``tune/attempt-N-<hash>``), oldest first."""
    dirs = [d for d in (Path(stage_dir) / "tune").glob("attempt-*") if d.is_dir() and attempt_number(d.name)]
    return sorted(dirs, key=lambda d: attempt_number(d.name))


def trial_dirs(stage_dir: Path, trial_ids: list[str] | None = None) -> list[Path]:
    """Trial directories of every attempt, oldest attempt first (only ``trial_ids``, if given)."""
    out = []
    for a in attempt_dirs(stage_dir):
        found = sorted(a.glob("trial_*"))
        if trial_ids is not None:
            wanted = {f"trial_{t}" for t in trial_ids}
            found = [d for d in found if d.name in wanted]
        out.extend(found)
    return out


def result_lines(path: Path) -> list[dict]:
    """A trial's ``result.json`` reports (JSON lines), skipping a line a kill cut short."""
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill
    return out


def _last_error(path: Path) -> str | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Failure # ")]
    return lines[-1] if lines else None


def read_runs(stage_dir: Path) -> list[TrialRun]:
    runs = []
    for d in trial_dirs(stage_dir):
        try:
            config = json.loads((d / "params.json").read_text())
        except (OSError, ValueError):
            continue  # created, never started
        runs.append(TrialRun(d, d.name.removeprefix("trial_"), config, result_lines(d / "result.json"),
                             _last_error(d / "error.txt")))
    return runs


def candidate_epochs(stage: dict, candidate: dict) -> int:
    """Epochs a candidate is meant to train: its budget (multi-fidelity HPO) or the stage's."""
    if "budget" in candidate.get("config", {}):
        return max(1, round(candidate["config"]["budget"]))
    return stage.get("epochs_per_candidate") or stage["epochs_per_trial"]


def _per_epoch(runs: list[TrialRun]) -> list[dict]:
    """One report per epoch over a candidate's trials; a later trial's report wins. Epochs
    whose report line a kill cut off come from the newest checkpoint's ``history.json``."""
    by_epoch = {}
    for r in runs:
        for x in r.results:
            if isinstance(x.get("val_acc"), (int, float)) and "epoch" in x:
                by_epoch[int(x["epoch"])] = x
    for x in _checkpoint_history(runs):
        by_epoch.setdefault(int(x["epoch"]), x)
    return [by_epoch[e] for e in sorted(by_epoch)]


def _checkpoint_history(runs: list[TrialRun]) -> list[dict]:
    best: list[dict] = []
    for r in runs:
        for c in r.path.glob("checkpoint_*/history.json"):
            try:
                history = json.loads(c.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(history, list) and len(history) > len(best):
                best = history
    return best


def candidate_row(runs: list[TrialRun], stage: dict) -> dict:
    """The row of one candidate from its trials (oldest first)."""
    cand, last = runs[-1].candidate, runs[-1]
    target = candidate_epochs(stage, cand)
    epochs = _per_epoch(runs)
    best = max(epochs, key=lambda e: (e["val_acc"], -e["epoch"])) if epochs else None
    reached = bool(epochs) and epochs[-1]["epoch"] >= target
    error = None
    if last.last.get("failed"):
        error = str(last.last["failed"])
    elif not reached and last.error:
        error = last.error
    if error is not None or best is None or not math.isfinite(best["val_acc"]):
        status = "failed"
        error = error or "no epoch reported"
    elif not reached:
        status = "stopped"
    else:
        status = "done"
    return {
        "token": cand.get("token"),
        "trial_id": last.trial_id,
        "genome": json.dumps(cand["genome"]) if "genome" in cand else None,
        "config": json.dumps(cand["config"]) if "config" in cand else None,
        "origin": cand.get("origin"),
        "status": status,
        "epochs": len(epochs),
        "val_acc_per_epoch": [float(e["val_acc"]) for e in epochs],
        "score": float(best["val_acc"]) if best else float("nan"),
        "best_epoch": int(best["epoch"]) if best else 0,
        "test_acc": _test_acc(epochs, best),
        "wall_s": float(sum(r.last.get("time_total_s") or 0.0 for r in runs)),
        "error": error,
    }


def _test_acc(epochs: list[dict], best: dict | None) -> float:
    """The candidate's test accuracy: of the weights it kept (its last report's
    ``selected_test_acc``; a candidate evaluates the test split once, at its end), else, in
    older records, of its best epoch."""
    if not epochs or best is None:
        return float("nan")
    last = epochs[-1]
    kept = last.get("selected_test_acc")
    if kept is not None:
        return float(kept)
    value = best.get("test_acc")
    return float("nan") if value is None else float(value)


def by_token(runs: list[TrialRun], tokens: set[int] | None = None) -> dict[int, list[TrialRun]]:
    out: dict[int, list[TrialRun]] = {}
    for r in runs:
        t = r.candidate.get("token")
        if t is not None and (tokens is None or t in tokens):
            out.setdefault(int(t), []).append(r)
    return out


def trials_frame(stage_dir: Path, stage: dict, tokens: set[int] | None = None):
    """One row per candidate (``tokens``: only those, e.g. the ones the searcher was told)."""
    import pandas as pd

    groups = by_token(read_runs(stage_dir), tokens)
    rows = [candidate_row(groups[t], stage) for t in sorted(groups)]
    return pd.DataFrame(rows, columns=TRIAL_COLUMNS)


def _budget(config: str | float | None) -> float:
    """A candidate's multi-fidelity budget (its config's ``budget``); 0 when it has none, so
    every candidate of a search without budgets ranks alike. A genome search has no config:
    pandas holds its missing values as None or as NaN."""
    if not isinstance(config, str) or not config:
        return 0.0
    budget = json.loads(config).get("budget")
    return 0.0 if budget is None else float(budget)


def final_checkpoint(stage_dir: Path, trial_id: str) -> Path | None:
    """The newest checkpoint of a trial that holds a finished model (``model.pt``)."""
    for d in reversed(trial_dirs(stage_dir, [trial_id])):
        for c in sorted(d.glob("checkpoint_*"), reverse=True):
            if (c / "model.pt").is_file() and (c / "history.json").is_file():
                return c
    return None


def best_candidate(frame, stage_dir: Path) -> tuple[dict, Path] | None:
    """The finished (not early-stopped, not failed) candidate with the highest score and its
    final checkpoint; ties go to the earliest candidate. ``None`` when none finished.

    Under multi-fidelity HPO every (configuration, budget) is a finished candidate; as SMAC's
    incumbent, the best is taken at the highest budget first (a 1-epoch score does not beat a
    9-epoch one), falling back to lower budgets only when no higher one left a checkpoint."""
    done = frame[frame["status"] == "done"].assign(_budget=lambda f: f["config"].map(_budget))
    done = done.sort_values(["_budget", "score", "token"], ascending=[False, False, True])
    for row in done.drop(columns="_budget").to_dict("records"):
        ckpt = final_checkpoint(stage_dir, row["trial_id"])
        if ckpt is not None:
            # a candidate has a genome or a config; pandas may hold the missing one as NaN
            row.update({k: None for k in ("genome", "config") if not isinstance(row.get(k), str)})
            return row, ckpt
    return None
