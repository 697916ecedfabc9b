"""Stage overhead: what each stage costs beyond its training epochs.

Runs the quickstart (``experiments/quickstart.yaml``) into a fresh results directory, or reads
an existing run with ``--run RUN_DIR``, and reports per stage, from its ``stage.json``: the
stage's wall time (``wall_s``: Tune start-up, data loading, trial scheduling, evaluation and
saving included), the sum of its epochs' times (``epoch_s`` of every history entry; for a
search, of every candidate's, from ``trials.parquet``) and the difference, the overhead.
Goal on a 2-core CPU: a median overhead of at most 1.5 s per stage and the whole quickstart
in at most 90 s (the wall time of the command).

    python benchmarks/stage_overhead.py [--run RUN_DIR] [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def epoch_seconds(stage_dir: Path, record: dict) -> float:
    """Seconds spent in epochs: the stage's own history, or every candidate's for a search."""
    trials = stage_dir / "trials.parquet"
    if trials.is_file():
        import pandas as pd

        seconds = 0.0
        for d in stage_dir.glob("tune/*/trial_*"):
            for line in (d / "result.json").read_text().splitlines() if (d / "result.json").is_file() else []:
                try:
                    seconds += float(json.loads(line).get("epoch_s") or 0.0)
                except ValueError:
                    continue
        return seconds if seconds else float(pd.read_parquet(trials)["wall_s"].sum())
    return sum(float(h.get("epoch_s") or 0.0) for h in record.get("history", []))


def overheads(run_dir: Path) -> list[dict]:
    rows = []
    for f in sorted(Path(run_dir).glob("[0-9][0-9]-*/stage.json")):
        rec = json.loads(f.read_text())
        if rec.get("status") != "done":
            continue
        epochs = epoch_seconds(f.parent, rec)
        rows.append({"stage": rec["name"], "wall_s": rec["wall_s"], "epoch_s": epochs,
                     "overhead_s": rec["wall_s"] - epochs})
    return rows


def report(rows: list[dict], command_s: float | None = None) -> dict:
    print(f"{'stage':<12} {'wall s':>8} {'epochs s':>9} {'overhead s':>11}")
    for r in rows:
        print(f"{r['stage']:<12} {r['wall_s']:8.1f} {r['epoch_s']:9.1f} {r['overhead_s']:11.1f}")
    median = statistics.median(r["overhead_s"] for r in rows)
    total = sum(r["wall_s"] for r in rows)
    print(f"median overhead per stage: {median:.1f} s (goal <= 1.5 s); stages' wall time: {total:.1f} s"
          + (f"; the whole command: {command_s:.1f} s (goal <= 90 s)" if command_s is not None else ""))
    return {"median_overhead_s": median, "stages_wall_s": total, "command_s": command_s}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="an existing run directory to read instead of running the quickstart")
    ap.add_argument("--results", type=Path, help="where to run the quickstart (default: a temporary directory)")
    args = ap.parse_args(argv)
    if args.run:
        return report(overheads(args.run))
    results = args.results or Path(tempfile.mkdtemp(prefix="safs-overhead-"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "safs.cli", "run", str(ROOT / "experiments" / "quickstart.yaml"),
                    "--results", str(results), "--quiet"], check=True)
    return report(overheads(results / "quickstart"), time.perf_counter() - t0)


if __name__ == "__main__":
    main()
