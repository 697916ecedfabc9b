"""Every row is its model, checked as a reviewer would: rebuild each stage's ``model.pt``
with ``safs.load_model``, evaluate it on the test split with a loop of our own, count its
zeros, and compare with the row. And the same pipeline twice gives the same rows."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import our_own_check

pytestmark = pytest.mark.slow

GRADUAL = """
name: {name}
seed: 0
data: {{name: digits}}
model: {{name: lenet5}}
sparsity: {{method: {method}, target: {target}, options: {options}}}
resources: {{cpus_per_trial: 1, max_concurrent_trials: 2}}
defaults:
  train: {{batch_size: 64, optimizer: {{name: adam, lr: 0.003}}}}
stages:
  - {{name: dense, kind: train, epochs: 3}}
  - {{name: sparse, kind: train, epochs: 6, sparse: true}}
  - {{name: search, kind: activation_search, algorithm: random, options: {{samples: 2}}, epochs_per_candidate: 1}}
  - {{name: final, kind: train, epochs: 2}}
"""


def run(text: str, results: Path) -> Path:
    from safs import runner
    from safs.config import parse_pipeline

    cfg = parse_pipeline(yaml.safe_load(text))
    runner.run(cfg, results, quiet=True, echo=lambda *_: None)
    return results / cfg.name


def assert_rows_are_models(run_dir: Path) -> list[dict]:
    recs = [json.loads(f.read_text()) for f in sorted(run_dir.glob("*/stage.json"))]
    assert recs and all(r["status"] == "done" for r in recs)
    for rec, f in zip(recs, sorted(run_dir.glob("*/stage.json"))):
        row = rec["row"]
        acc, zeros = our_own_check(f.parent)
        assert acc == pytest.approx(row["test_acc"], abs=0.005), (rec["name"], acc, row["test_acc"])
        assert zeros == pytest.approx(row["achieved_sparsity"], abs=0.005), (rec["name"], zeros, row)
        chosen = next(h for h in rec["history"] if h["epoch"] == row["selected_epoch"])
        assert chosen["sparsity"] == pytest.approx(zeros, abs=1e-9)
        assert all("sparsity" in h for h in rec["history"])
    return recs


@pytest.mark.timeout(400)
@pytest.mark.parametrize("method,target,options", [("gmp", 0.97, {"end": 0.5}), ("dnw", 0.9, {}),
                                                       ("lwm", 0.9, {}), ("str", 0.95, {})])
def test_gradual_pruning_rows_are_their_models(method, target, options, tmp_path, ray_session):
    text = GRADUAL.format(name=f"rows_{method}", method=method, target=target, options=json.dumps(options))
    recs = assert_rows_are_models(run(text, tmp_path / "results"))
    sparse = next(r for r in recs if r["name"] == "sparse")
    # the kept epoch is at the final sparsity, not an earlier, denser one
    assert sparse["row"]["achieved_sparsity"] == pytest.approx(target, abs=0.002)
    final_sparsity = sparse["history"][-1]["sparsity"]
    chosen = next(h for h in sparse["history"] if h["epoch"] == sparse["row"]["selected_epoch"])
    assert chosen["sparsity"] >= final_sparsity - 0.001
    # the stages after it start from the kept weights: same masks, hence the same sparsity
    for name in ("search", "final"):
        rec = next(r for r in recs if r["name"] == name)
        assert rec["row"]["achieved_sparsity"] == pytest.approx(sparse["row"]["achieved_sparsity"], abs=1e-9)
    # the budget behind each model counts epochs along its lineage
    epochs = {r["name"]: r["row"]["finetune_epochs"] for r in recs}
    assert epochs == {"dense": 3, "sparse": 9, "search": 10, "final": 12}


@pytest.mark.timeout(400)
def test_the_same_nm_gumbel_pipeline_twice_gives_identical_rows(tmp_path, ray_session):
    text = GRADUAL.format(name="twice", method="nm_gumbel", target=0.5, options=json.dumps({"init": "uniform"}))
    text = text.replace("epochs: 6, sparse: true", "epochs: 2, sparse: true, optimizer: {name: adamw, lr: 1.0}")
    first = assert_rows_are_models(run(text, tmp_path / "a"))
    second = run(text, tmp_path / "b")
    varying = {"wall_s", "trial_id"}  # timings and Tune's ids are not results
    for a, f in zip(first, sorted(second.glob("*/stage.json"))):
        b = json.loads(f.read_text())
        assert {k: v for k, v in a["row"].items() if k not in varying} == \
            {k: v for k, v in b["row"].items() if k not in varying}, a["name"]
        assert a["model_sha256"] == b["model_sha256"], a["name"]
