"""What does Stage 1 cost, and what does it buy? LAHC vs random search vs one-shot.

On mnist5k with LeNet-5 pruned to 99 % by LWM (the quickstart's dense -> prune -> retrain
prefix and training settings, experiments/quickstart.yaml), three Stage 1 searches, each
followed by the quickstart's Stage 1 retrain of the genome it found:

- ``lahc``: the quickstart's search (LAHC, ``steps_minimum: 10``, 5 epochs per candidate);
- ``oneshot``: one mixture-training run of ``--oneshot-epochs`` epochs, then the argmax per slot;
- ``random``: random search with oneshot's epoch budget (``--oneshot-epochs / 5`` candidates).

Every search is a pipeline run through ``safs.run`` into ``--results``; the three pipelines of
one seed share their run directory, so the prefix trains once per seed. The table is read
from the stage records (``stage.json``): the retrain's test accuracy (mean ± std over seeds)
and the search's ``search_epochs``. Goal: oneshot within one std of LAHC (or better) with at
most 1/5 of LAHC's search epochs.

    python benchmarks/search_cost.py [--seeds 0 1 2] [--results DIR] [--oneshot-epochs 10] [--tabulate-only]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EPOCHS_PER_CANDIDATE = 5  # the quickstart's


def searches(oneshot_epochs: int) -> dict[str, dict]:
    base = {"name": "search", "kind": "activation_search", "space": "safs13"}
    return {
        "lahc": {**base, "algorithm": "lahc", "options": {"steps_minimum": 10},
                 "epochs_per_candidate": EPOCHS_PER_CANDIDATE},
        "random": {**base, "algorithm": "random",
                   "options": {"samples": max(1, oneshot_epochs // EPOCHS_PER_CANDIDATE)},
                   "epochs_per_candidate": EPOCHS_PER_CANDIDATE},
        "oneshot": {**base, "algorithm": "oneshot", "options": {"warmup_epochs": 2},
                    "epochs_per_candidate": oneshot_epochs},
    }


def pipeline(seed: int, search: dict) -> dict:
    raw = yaml.safe_load((ROOT / "experiments" / "quickstart.yaml").read_text())
    raw["name"] = f"search_cost_seed{seed}"
    raw["seed"] = seed
    stages = {s["name"]: s for s in raw["stages"]}
    raw["stages"] = [copy.deepcopy(stages[n]) for n in ("dense", "prune", "retrain")] + [
        copy.deepcopy(search), copy.deepcopy(stages["stage1"])]
    return raw


def records_of(raw: dict, results: Path) -> tuple[dict, dict]:
    """The search's and the retrain's stage.json for one pipeline (by its planned directories)."""
    from safs.config import parse_pipeline
    from safs.plan import plan

    plans = {p.name: p for p in plan(parse_pipeline(raw, source="search_cost"), results)}
    read = lambda p: json.loads(p.record_path.read_text()) if p.record_path.is_file() else {}  # noqa: E731
    return read(plans["search"]), read(plans["stage1"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--results", type=Path, default=ROOT / "results" / "search_cost")
    ap.add_argument("--oneshot-epochs", type=int, default=10)
    ap.add_argument("--methods", nargs="+", default=["lahc", "random", "oneshot"])
    ap.add_argument("--tabulate-only", action="store_true", help="only read the records already there")
    args = ap.parse_args(argv)

    import safs

    specs = searches(args.oneshot_epochs)
    if not args.tabulate_only:
        for seed in args.seeds:
            for m in args.methods:
                print(f"== seed {seed}: {m}", flush=True)
                safs.run(pipeline(seed, specs[m]), results=args.results, quiet=True)

    rows = []
    for m in args.methods:
        accs, epochs = [], []
        for seed in args.seeds:
            search, stage1 = records_of(pipeline(seed, specs[m]), args.results)
            if stage1.get("status") != "done":
                continue
            accs.append(stage1["row"]["test_acc"] * 100)
            epochs.append((search.get("search") or {}).get("search_epochs"))
        if not accs:
            continue
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append((m, statistics.mean(accs), std, len(accs), statistics.mean(e for e in epochs if e is not None)))
    print(f"\n{'search':<8} {'Stage 1 test acc (%)':>22} {'seeds':>5} {'search epochs':>14}")
    for m, mean, std, n, ep in rows:
        print(f"{m:<8} {mean:>14.2f} ± {std:<5.2f} {n:>5} {ep:>14.1f}")
    by = {r[0]: r for r in rows}
    if "lahc" in by and "oneshot" in by:
        ratio = by["oneshot"][4] / by["lahc"][4]
        within = by["oneshot"][1] >= by["lahc"][1] - max(by["lahc"][2], by["oneshot"][2])
        print(f"\noneshot/lahc search epochs: {ratio:.3f} (goal <= 0.2); accuracy within one std or better: {within}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
