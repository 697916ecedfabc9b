"""A search stage's trials as a table (``trials.parquet``) and the choice of its best trial.

One row per candidate the searcher handed to Tune, in ask order: token, Tune trial id,
genome (activation search) or config (HPO) as JSON, status (``done``; ``stopped`` early by successive halving; ``failed``),
epochs trained, validation accuracy per epoch, score (best validation accuracy), the test
accuracy at that epoch, wall seconds and the error, if any.
"""

from __future__ import annotations

import json
import math

TRIAL_COLUMNS = ["token", "trial_id", "genome", "config", "status", "epochs", "val_acc_per_epoch", "score", "best_epoch",
                 "test_acc", "wall_s", "error"]


def _per_epoch(result) -> list[dict]:
    """The trial's epoch reports, one per epoch (a resumed trial may have repeated some)."""
    df = result.metrics_dataframe
    if df is None or df.empty or "val_acc" not in df:
        return []
    df = df[df["val_acc"].notna()].drop_duplicates("epoch", keep="last").sort_values("epoch")
    return df.to_dict("records")


def trial_row(result, epochs_per_candidate: int) -> dict:
    cand = (result.config or {}).get("candidate", {})
    metrics = result.metrics or {}
    epochs = _per_epoch(result)
    best = max(epochs, key=lambda e: (e["val_acc"], -e["epoch"])) if epochs else None
    error = None
    if result.error is not None:
        lines = [ln.strip() for ln in str(result.error).splitlines() if ln.strip()]
        error = lines[-1] if lines else type(result.error).__name__
    elif metrics.get("failed"):
        error = str(metrics["failed"])
    if error is not None or best is None or not math.isfinite(best["val_acc"]):
        status = "failed"
    elif len(epochs) < epochs_per_candidate:
        status = "stopped"
    else:
        status = "done"
    return {
        "token": cand.get("token"),
        "trial_id": metrics.get("trial_id") or result.path.rsplit("trial_", 1)[-1],
        "genome": json.dumps(cand["genome"]) if "genome" in cand else None,
        "config": json.dumps(cand["config"]) if "config" in cand else None,
        "status": status,
        "epochs": len(epochs),
        "val_acc_per_epoch": [float(e["val_acc"]) for e in epochs],
        "score": float(best["val_acc"]) if best else float("nan"),
        "best_epoch": int(best["epoch"]) if best else 0,
        "test_acc": float(best["test_acc"]) if best else float("nan"),
        "wall_s": float(metrics.get("time_total_s") or 0.0),
        "error": error,
    }


def candidate_epochs(stage: dict, candidate: dict) -> int:
    """Epochs a candidate is meant to train: its budget (multi-fidelity HPO) or the stage's."""
    if "budget" in candidate.get("config", {}):
        return max(1, round(candidate["config"]["budget"]))
    return stage.get("epochs_per_candidate") or stage["epochs_per_trial"]


def trials_frame(grid):
    import pandas as pd

    rows = [trial_row(r, candidate_epochs(r.config["spec"]["stage"], r.config.get("candidate", {}))) for r in grid]
    return pd.DataFrame(rows, columns=TRIAL_COLUMNS).sort_values("token", kind="stable").reset_index(drop=True)


def best_trial(grid):
    """The finished (not early-stopped, not failed) trial with the highest score; ties go to
    the earliest candidate. ``None`` when no candidate finished."""
    best, key = None, None
    for r in grid:
        row = trial_row(r, candidate_epochs(r.config["spec"]["stage"], r.config.get("candidate", {})))
        if row["status"] != "done" or r.checkpoint is None:
            continue
        k = (row["score"], -row["token"])
        if key is None or k > key:
            best, key = r, k
    return best
