"""One results-row schema for every stage and trial (shrinkbench style).

Rows live in each stage's ``stage.json`` (key ``row``); tables are built from rows only,
never parsed from logs.
"""

from __future__ import annotations

import json
from pathlib import Path

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


def stage_records(*paths: str | Path) -> list[dict]:
    """Every ``stage.json`` under the given run directories, results roots or stage directories."""
    out, seen = [], set()
    for p in map(Path, paths):
        candidates = [p] if p.name == "stage.json" else sorted(p.glob("**/stage.json"))
        for f in candidates:
            inner = f.parts[len(p.parts):]  # not Tune's files, not stages set aside (.replaced)
            if f.resolve() in seen or "tune" in inner or any(x.startswith(".") for x in inner):
                continue
            seen.add(f.resolve())
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
    return out


def run_rows(run_dir: str | Path) -> list[dict] | None:
    """The rows of a run directory, stage by stage of each of its pipelines (each matrix cell:
    a stage shared by several cells is one record but one row per cell). ``None`` when the
    directory holds no readable ``pipeline.yaml``."""
    from safs.config import ConfigError, load_pipelines
    from safs.pipeline import is_done, plan, read_record

    run_dir = Path(run_dir)
    try:
        cfgs, _ = load_pipelines(run_dir / "pipeline.yaml")
    except (ConfigError, ValueError, OSError):
        return None
    rows = []
    for cfg in cfgs:
        for st in plan(cfg, run_dir.parent):
            if is_done(st):
                rows.append(dict(read_record(st)["row"], variant=cfg.variant))
    return rows


def load_results(*paths: str | Path):
    """All results rows under ``paths`` (run directories, results roots or stage directories)
    as a pandas DataFrame with ``ROW_COLUMNS``."""
    import pandas as pd

    rows: list[dict] = []
    for p in map(Path, paths):
        runs = [p] if (p / "pipeline.yaml").is_file() else sorted(d for d in p.glob("*") if (d / "pipeline.yaml").is_file())
        from_runs = [run_rows(d) for d in runs]
        if runs and all(r is not None for r in from_runs):
            rows += [row for r in from_runs for row in r]
        else:  # not a run directory (or an unreadable one): every finished stage record
            rows += [r["row"] for r in stage_records(p) if r.get("status") == "done" and r.get("row")]
    df = pd.DataFrame(rows, columns=ROW_COLUMNS)
    return df.sort_values(["pipeline", "variant", "stage_index"], kind="stable", na_position="first").reset_index(drop=True)
