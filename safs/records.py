"""A stage's record, ``stage.json``: written by the runner, read by everyone else.

``stage.json`` holds a stage's status, settings, hash, timings, versions and, once done, its
results row (key ``row``; one schema for every stage and trial, shrinkbench style) and the
SHA-256 of its ``model.pt``. Whether a stage is done, damaged or partial is read here, from
the record and the files beside it; nothing here runs anything.
"""

from __future__ import annotations

import json

from pathlib import Path

from safs.io import read_json, sha256, write_json
from safs.plan import MODEL, RECORD, SEARCH_STATE, StagePlan, digest, plan

CELLS = "cells"  # <run>/cells/<id>.json: the stages of one pipeline (matrix cell) as it last ran

ROW_COLUMNS = [
    "pipeline", "variant", "stage", "stage_index", "stage_kind", "label", "stage_hash", "trial_id", "status",
    "model", "dataset", "method", "target_sparsity", "achieved_sparsity", "params", "nnz", "macs",
    "nnz_macs", "val_acc", "test_acc", "selected_epoch", "select", "val_acc_last", "test_acc_last", "epochs",
    "finetune_epochs", "wall_s", "seed", "config",
]


def make_row(spec: dict, history: list[dict], m, *, wall_s: float, trial_id: str, status: str,
             finetune_epochs: int | None = None) -> dict:
    """The row of one finished stage/trial from its per-epoch history and the measurement of
    its ``model.pt``. Accuracies are those of the epoch whose weights ``model.pt`` holds
    (``selected_epoch``, chosen by the stage's ``select`` rule), so the row is its model;
    ``*_last`` are the last epoch's. ``finetune_epochs``: epochs of training behind the model
    since the last prune stage on its lineage (the budget a table column got)."""
    last = history[-1] if history else {}
    chosen = last.get("selected_epoch")
    best = next((h for h in history if h.get("epoch") == chosen), last)
    sp = spec.get("sparsity")
    row = {
        "pipeline": spec["pipeline"],
        "variant": spec.get("variant"),
        "stage": spec["name"],
        "stage_index": spec["index"],
        "stage_kind": spec["kind"],
        "label": spec["label"],
        "stage_hash": spec["hash"],
        "trial_id": trial_id,
        "status": status,
        "model": spec["model"]["name"],
        "dataset": spec["data"]["name"],
        "method": sp["method"] if sp else "dense",
        "target_sparsity": sp["target"] if sp else 0.0,
        "achieved_sparsity": m.sparsity,
        "params": m.params,
        "nnz": m.nnz,
        "macs": m.macs,
        "nnz_macs": m.nnz_macs,
        "val_acc": best.get("val_acc"),
        "test_acc": best.get("test_acc"),
        "selected_epoch": best.get("epoch"),
        "select": last.get("select", "best"),
        "val_acc_last": last.get("val_acc"),
        "test_acc_last": last.get("test_acc"),
        "epochs": last.get("epoch", 0),
        "finetune_epochs": finetune_epochs,
        "wall_s": wall_s,
        "seed": spec["seed"],
        "config": json.dumps(spec["stage"], sort_keys=True),
    }
    assert list(row) == ROW_COLUMNS
    return row


def read_record(stage: StagePlan) -> dict | None:
    return read_json(stage.record_path)


def is_done(stage: StagePlan) -> bool:
    rec = read_record(stage)
    return bool(rec) and rec.get("status") == "done" and rec.get("hash") == stage.hash and stage.model_path.is_file()


def epochs_completed(stage: StagePlan) -> int:
    """Epochs a (possibly interrupted) stage has reported, from its Tune trial logs."""
    from safs.tune.trials import result_lines, trial_dirs

    return max((int(x.get("epoch", 0)) for d in trial_dirs(stage.dir) for x in result_lines(d / "result.json")),
               default=0)


def damage(stage: StagePlan) -> str | None:
    """Why a finished stage's ``model.pt`` cannot be trusted (``None`` when it can): its
    SHA-256 must match the one ``stage.json`` recorded when the stage finished."""
    expected = (read_record(stage) or {}).get("model_sha256")
    if not stage.model_path.is_file():
        return f"{MODEL} is missing"
    actual = sha256(stage.model_path)
    if expected and actual != expected:
        return (f"{MODEL} does not match its checksum in {RECORD} (sha256 {actual[:12]}, recorded "
                f"{expected[:12]}): truncated or corrupt")
    return None


def stage_status(stage: StagePlan) -> str:
    if is_done(stage):
        why = damage(stage)
        return f"corrupt ({why}; the next run reruns it)" if why else "done"
    if not stage.dir.exists():
        return "pending"
    rec = read_record(stage) or {}
    if rec.get("status") == "failed":
        return f"failed ({rec.get('error', 'see stage.json')})"
    if stage.kind == "train":
        return f"partial (epoch {epochs_completed(stage)} of {stage.epochs})"
    if stage.is_search:
        told = len(((read_json(stage.dir / SEARCH_STATE) or {}).get("told") or {}))
        return f"partial ({told} candidates finished)"
    return "partial"


# --------------------------------------------------------------------------- cells

def _cell_path(run_dir: Path, variant: str | None) -> Path:
    return Path(run_dir) / CELLS / f"{digest(variant or '')}.json"


def write_cell(run_dir: Path, variant: str | None, plans: list[StagePlan]) -> None:
    """Record which stage directories make up this pipeline (matrix cell), so readers find
    its stages without planning again (planning reads search-space files, which may since
    have been edited or deleted)."""
    stages = [{"index": st.index, "name": st.name, "kind": st.kind, "label": st.label, "hash": st.hash,
               "dir": st.dir.name, "input_index": st.input_index, "spec": st.spec} for st in plans]
    write_json(_cell_path(run_dir, variant), {"variant": variant, "stages": stages})


def read_cell(run_dir: Path, variant: str | None) -> list[StagePlan] | None:
    """The stages recorded for a cell by :func:`write_cell`; ``None`` when there is no record."""
    rec = read_json(_cell_path(run_dir, variant))
    if not rec or rec.get("variant") != variant:
        return None
    return [StagePlan(s["index"], s["name"], s["kind"], s["label"], s["hash"], Path(run_dir) / s["dir"], s["spec"],
                      s["input_index"]) for s in rec["stages"]]


def recorded_stages(run_dir: Path, cfg) -> list[StagePlan]:
    """The stages of pipeline ``cfg`` in its run directory: as recorded when it ran, else (runs
    recorded before cells existed, or never run) as planned now. ``ValueError``, with a
    one-line message, when neither is possible (e.g. a search-space file that is gone)."""
    stages = read_cell(run_dir, cfg.variant)
    if stages is not None:
        return stages
    try:
        return plan(cfg, Path(run_dir).parent)
    except ValueError as e:
        cell = f" (cell {cfg.variant})" if cfg.variant else ""
        raise ValueError(f"{run_dir}{cell}: no record of its stages, and they cannot be planned again: {e}") from None
