"""Does successive halving on epochs make the activation search cheaper?

Runs, on mnist5k with LeNet-5 pruned to 99% (the quickstart's dense -> prune -> retrain
prefix, trained once and shared through the stage cache), two LAHC searches whose
candidates start from the pruned network (as in the original SAFS code):

- plain: every candidate fine-tunes ``--epochs`` epochs;
- multi-fidelity: the same LAHC, but candidates below the top 1/3 at the epoch rungs
  3, 9 stop early (ASHA, ``fidelity: {min_epochs: 3, reduction_factor: 3}``), with a
  larger step budget since steps are cheaper.

Figure of merit: training epochs spent until the search first holds a fully trained
candidate at least as good as plain LAHC's best (for plain LAHC: until it found that best).
The ratio multi-fidelity / plain should be <= 1/3. Epochs, not seconds, so the figure does
not depend on the machine's load. Each search seed is one repetition.

    python benchmarks/search_fidelity.py [--seeds 0 1 2] [--epochs 27] [--min-epochs 3] [--results DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def pipeline(search: dict) -> dict:
    raw = yaml.safe_load((ROOT / "experiments" / "quickstart.yaml").read_text())
    raw["name"] = "search_fidelity"
    prefix = [s for s in raw["stages"] if s["kind"] != "activation_search"][:3]
    raw["stages"] = copy.deepcopy(prefix) + [search]
    return raw


def epochs_to_reach(trials, target: float) -> int | None:
    """Epochs spent, in ask order, until the first fully trained candidate scoring >= target."""
    spent = 0
    for _, t in trials.sort_values("token").iterrows():
        spent += int(t["epochs"])
        if t["status"] == "done" and t["score"] >= target - 1e-12:
            return spent
    return None


def run_search(root: Path, search: dict):
    import pandas as pd

    from safs.config import parse_pipeline
    from safs.plan import TRIALS
    from safs.runner import run

    cfg = parse_pipeline(pipeline(search), source="search_fidelity")
    plans = run(cfg, root, quiet=True, echo=lambda *_: None)
    stage = plans[-1]
    return pd.read_parquet(stage.dir / TRIALS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=27, help="epochs per fully trained candidate")
    ap.add_argument("--min-epochs", type=int, default=3, help="first successive-halving rung")
    ap.add_argument("--steps", type=int, default=20, help="plain LAHC steps_minimum (the original's)")
    ap.add_argument("--mf-steps", type=int, default=60, help="multi-fidelity LAHC steps_minimum")
    ap.add_argument("--results", type=Path, default=None, help="results root (default: a temporary directory)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    root = args.results or Path(tempfile.mkdtemp(prefix="safs-bench-"))
    # Candidates start from the pruned, not yet retrained network, as in the original SAFS.
    base = {"name": "search", "kind": "activation_search", "algorithm": "lahc", "space": "safs13",
            "epochs_per_candidate": args.epochs, "start_from": "pruned"}
    rows = []
    for seed in args.seeds:
        plain = run_search(root, {**base, "seed": seed, "options": {"steps_minimum": args.steps}})
        mf = run_search(root, {**base, "seed": seed, "options": {"steps_minimum": args.mf_steps},
                               "fidelity": {"min_epochs": args.min_epochs, "reduction_factor": 3}})
        best = float(plain.loc[plain["status"] == "done", "score"].max())
        e_plain = epochs_to_reach(plain, best)
        e_mf = epochs_to_reach(mf, best)
        row = {"seed": seed, "plain_best": best, "plain_candidates": len(plain),
               "plain_epochs_total": int(plain["epochs"].sum()), "plain_epochs_to_best": e_plain,
               "mf_best": float(mf.loc[mf["status"] == "done", "score"].max()), "mf_candidates": len(mf),
               "mf_stopped": int((mf["status"] == "stopped").sum()), "mf_epochs_total": int(mf["epochs"].sum()),
               "mf_epochs_to_plain_best": e_mf, "ratio": (e_mf / e_plain) if e_mf is not None else None}
        rows.append(row)
        print(json.dumps(row), flush=True)

    reached = [r for r in rows if r["ratio"] is not None]
    print(f"\nmnist5k, LeNet-5, LWM 99%, LAHC, {args.epochs} epochs per full candidate, "
          f"rungs from {args.min_epochs} epochs, seeds {args.seeds}")
    print(f"{'seed':>4} {'plain best':>10} {'epochs':>7} {'MF best':>8} {'epochs':>7} {'ratio':>6}")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "n/r"
        e_mf = r["mf_epochs_to_plain_best"] if r["mf_epochs_to_plain_best"] is not None else f">{r['mf_epochs_total']}"
        print(f"{r['seed']:>4} {r['plain_best']:>10.4f} {r['plain_epochs_to_best']:>7} {r['mf_best']:>8.4f} "
              f"{e_mf:>7} {ratio:>6}")
    # A seed where multi-fidelity never reached plain LAHC's best counts with all the epochs
    # it spent: a lower bound on what it would have needed.
    mf = sum(r["mf_epochs_to_plain_best"] or r["mf_epochs_total"] for r in rows)
    plain = sum(r["plain_epochs_to_best"] for r in rows)
    print(f"reached plain LAHC's best in {len(reached)}/{len(rows)} seeds; epochs MF / plain over all seeds: "
          f">= {mf / plain:.2f} (target <= 0.33)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
