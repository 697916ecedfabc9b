"""Results rows, read from the stages' ``stage.json`` records (key ``row``; the schema,
``ROW_COLUMNS``, is ``safs.records``'): tables are built from rows only, never parsed from logs.
"""

from __future__ import annotations

import json
from pathlib import Path

from safs.records import ROW_COLUMNS

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
    from safs.records import is_done, read_record, recorded_stages

    run_dir = Path(run_dir)
    try:
        cfgs, _ = load_pipelines(run_dir / "pipeline.yaml")
        cells = [(cfg, recorded_stages(run_dir, cfg)) for cfg in cfgs]
    except (ConfigError, ValueError, OSError):
        return None
    rows = []
    for cfg, stages in cells:
        for st in stages:
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
