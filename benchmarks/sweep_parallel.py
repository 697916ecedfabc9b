"""How much faster does a matrix sweep finish with its cells in parallel?

Runs the same sweep twice with ``safs run``, into fresh results directories: once with
``--parallel 1`` (cells one after another) and once with the default (as many cells as the
cluster's CPUs fit: 2 on a 2-CPU machine with 1 CPU per trial). The cells are independent
(one per seed: dense -> prune -> retrain of LeNet-5 on mnist5k), so nothing is shared
between them. Figure: wall time sequential / parallel, both measured in this one command.

    python benchmarks/sweep_parallel.py [--seeds 4] [--epochs 3] [--num-cpus 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SWEEP = {
    "name": "sweep_bench",
    "data": {"name": "mnist5k"},
    "model": {"name": "lenet5"},
    "sparsity": {"method": "lwm", "target": 0.9},
    "defaults": {"train": {"batch_size": 64, "optimizer": {"name": "adam", "lr": 0.003}}},
    "stages": [{"name": "dense", "kind": "train"}, {"name": "prune", "kind": "prune"},
               {"name": "retrain", "kind": "train"}],
}


def run(pipeline: Path, results: Path, num_cpus: int, parallel: int | None) -> float:
    cmd = [sys.executable, "-m", "safs.cli", "run", str(pipeline), "--results", str(results), "--quiet",
           "--num-cpus", str(num_cpus)] + ([] if parallel is None else ["--parallel", str(parallel)])
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"safs run failed:\n{p.stdout}\n{p.stderr}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=4, help="cells (one per seed)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the dense and retrain stages")
    ap.add_argument("--num-cpus", type=int, default=2)
    args = ap.parse_args()
    raw = dict(SWEEP, matrix={"seed": list(range(args.seeds))})
    for st in raw["stages"]:
        if st["kind"] == "train":
            st["epochs"] = args.epochs
    with tempfile.TemporaryDirectory(prefix="safs-sweep-bench-") as tmp:
        f = Path(tmp) / "sweep.yaml"
        f.write_text(yaml.safe_dump(raw, sort_keys=False))
        sequential = run(f, Path(tmp) / "sequential", args.num_cpus, 1)
        parallel = run(f, Path(tmp) / "parallel", args.num_cpus, None)
    print(f"{args.seeds} cells x (dense {args.epochs} epochs, prune, retrain {args.epochs} epochs), "
          f"{args.num_cpus} CPUs")
    print(f"sequential (--parallel 1): {sequential:6.1f} s")
    print(f"parallel (default):        {parallel:6.1f} s")
    print(f"sequential / parallel:     {sequential / parallel:6.2f}x")


if __name__ == "__main__":
    main()
