"""Trials that span workers (``resources.workers_per_trial``): the schema, the batch split,
and real 2-worker runs on Ray Train (gloo on this CPU) against the 1-worker run."""

import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from conftest import by_stage, kill_ray_leftovers, our_own_check, records, safs_cmd, subprocess_env
from safs.cli import main
from safs.config import parse_pipeline

BASE = """
name: t
data: {name: digits}
model: {name: lenet5}
stages:
  - {name: dense, kind: train, epochs: 1}
"""

# (resources block, a field the message must name, something else it must say)
BAD_RESOURCES = {
    "workers_0": ("{workers_per_trial: 0}", "resources.workers_per_trial", "greater than or equal to 1"),
    "gpus_1.5": ("{gpus_per_trial: 1.5}", "resources.gpus_per_trial", "whole number"),
    "worker_gpus_2.5": ("{workers_per_trial: 2, gpus_per_worker: 2.5}", "resources.gpus_per_worker", "whole number"),
    "negative_gpus": ("{gpus_per_trial: -1}", "resources.gpus_per_trial", "greater than or equal to 0"),
    "worker_cpus_alone": ("{cpus_per_worker: 2}", "cpus_per_worker", "workers_per_trial >= 2"),
    "trial_cpus_with_workers": ("{workers_per_trial: 2, cpus_per_trial: 2}", "cpus_per_trial", "cpus_per_worker"),
    "sync_bn_on_cpu": ("{workers_per_trial: 2, sync_bn: true}", "sync_bn", "gpus_per_worker > 0"),
    "unknown_key": ("{workers: 2}", "resources.workers", "workers_per_trial"),
}


@pytest.mark.parametrize("case", sorted(BAD_RESOURCES))
def test_bad_resources_exit_2_one_line(case, tmp_path):
    block, field, extra = BAD_RESOURCES[case]
    f = tmp_path / "p.yaml"
    f.write_text(BASE + f"resources: {block}\n")
    r = CliRunner().invoke(main, ["run", str(f), "--results", str(tmp_path / "results")])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and field in lines[0] and extra in lines[0], r.output
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("block", ["{gpus_per_trial: 0.25}", "{gpus_per_trial: 2}",
                                   "{workers_per_trial: 4, cpus_per_worker: 0.5, gpus_per_worker: 0.5}"])
def test_fractional_and_whole_shares_are_accepted(block):
    cfg = parse_pipeline(yaml.safe_load(BASE + f"resources: {block}\n"))
    assert cfg.resources.per_trial() in {(1.0, 0.25), (1.0, 2.0), (2.0, 2.0)}


def test_cells_fit_a_multi_worker_trial_by_all_its_workers():
    from safs.sweep import auto_parallel

    res = parse_pipeline(yaml.safe_load(BASE + "resources: {workers_per_trial: 2}\n")).resources.model_dump()
    assert auto_parallel(res, {"CPU": 4.0}, cells=8) == 2  # 2 workers x 1 CPU each
    quarter = parse_pipeline(yaml.safe_load(BASE + "resources: {gpus_per_trial: 0.25}\n")).resources.model_dump()
    assert auto_parallel(quarter, {"CPU": 16.0, "GPU": 1.0}, cells=8) == 4  # four to a GPU


def test_the_idle_stage_actor_makes_room_for_all_of_a_trials_workers(monkeypatch):
    """A prune stage runs on the run's actor even with workers set; before the next stage's
    Train run the actor must be given back if the workers do not fit beside it. Measured
    against the trial's 1 CPU instead of its workers' 2, it was kept, and the Train run waited
    for a CPU forever."""
    from safs.plan import trial_resources
    from safs.tune import direct

    res = parse_pipeline(yaml.safe_load(BASE + "resources: {workers_per_trial: 2, cpus_per_worker: 1}\n")
                         ).resources.model_dump()
    assert trial_resources({"kind": "train", "resources": res}) == (2.0, 0.0)
    assert trial_resources({"kind": "prune", "resources": res}) == (1.0, 0.0)  # trains nothing: one process
    released = []
    monkeypatch.setattr(direct, "_held", object())
    monkeypatch.setattr(direct, "release", lambda: released.append(True))
    import ray

    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 1.0})  # the actor holds the other
    direct.make_room(*trial_resources({"kind": "train", "resources": res}))
    assert released == [True]


def _dataset(n: int):
    from safs.data.base import Dataset, Split

    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    split = Split(x, torch.arange(n))
    return Dataset(name="toy", train=split, val=split, test=split, num_classes=n, input_shape=(1, 1, 1),
                   scale=1.0, mean=None, std=None, crop_padding=0, flip=False)


@pytest.mark.parametrize("n,batch", [(50, 8), (49, 8), (65, 8)])  # 65: a last batch of 1 < 2 workers
def test_batches_split_each_batch_into_disjoint_shares(n, batch):
    from safs.data import Batches

    ds = _dataset(n)
    one = [y.tolist() for _, y in Batches(ds, "train", batch, seed=3).epoch(2)]
    ranks = [Batches(ds, "train", batch, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    shares = [[y.tolist() for _, y in b.epoch(2)] for b in ranks]
    for step, (a, b) in enumerate(zip(*shares)):
        assert not set(a) & set(b) and abs(len(a) - len(b)) <= 1
        assert sorted(a + b) == sorted(one[step])  # together: the one-worker batch of that step
    assert len(shares[0]) == len(one) - (1 if n % batch == 1 else 0)
    with pytest.raises(ValueError, match="rank"):
        Batches(ds, "train", batch, rank=2, world_size=2)


# --------------------------------------------------------------------------- real runs

PIPELINE = """
name: {name}
seed: 0
data: {{name: digits}}
model: {{name: lenet5}}
sparsity: {{method: gmp, target: 0.9, options: {{end: 0.5}}}}
resources: {resources}
defaults:
  train: {{batch_size: 64, optimizer: {{name: adam, lr: 0.003}}}}
stages:
  - {{name: dense, kind: train, epochs: 2}}
  - {{name: sparse, kind: train, epochs: {sparse}, sparse: true}}
  - {{name: search, kind: activation_search, algorithm: random, options: {{samples: 2}}, epochs_per_candidate: 1}}
"""


def run(text: str, results: Path) -> Path:
    from safs import runner

    cfg = parse_pipeline(yaml.safe_load(text))
    runner.run(cfg, results, quiet=True, echo=lambda *_: None)
    return results / cfg.name


def result_lines(stage_dir: Path) -> list[dict]:
    from safs.tune.trials import result_lines as read

    return [r for f in sorted(stage_dir.glob("tune/*/trial_*/result.json")) for r in read(f)]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_gloo_workers_match_one_worker_with_the_same_masks(tmp_path, ray_session):
    one = run(PIPELINE.format(name="w1", resources="{cpus_per_trial: 1}", sparse=3), tmp_path / "r")
    two = run(PIPELINE.format(name="w2", resources="{workers_per_trial: 2, cpus_per_worker: 1}", sparse=3),
              tmp_path / "r")
    recs1, recs2 = records(one), records(two)
    # resources are not hashed: the same stages, in the same directories' names
    assert [d.split("-", 1)[1] for d in recs1] == [d.split("-", 1)[1] for d in recs2]
    for name in ("dense", "sparse", "search"):
        r1, r2 = by_stage(recs1, name), by_stage(recs2, name)
        assert r2["status"] == "done" and r2["workers"] == 2 and r1["workers"] == 1
        # each worker takes half of every batch: the same steps, equal up to float rounding
        assert r2["row"]["test_acc"] == pytest.approx(r1["row"]["test_acc"], abs=0.03), name
        assert r2["row"]["achieved_sparsity"] == pytest.approx(r1["row"]["achieved_sparsity"], abs=1e-6)
    h1, h2 = by_stage(recs1, "sparse")["history"], by_stage(recs2, "sparse")["history"]
    assert [h["train_loss"] for h in h2] == pytest.approx([h["train_loss"] for h in h1], rel=0.02)
    assert by_stage(recs2, "sparse")["row"]["achieved_sparsity"] == pytest.approx(0.9, abs=0.01)
    for d in two.glob("0*-*"):
        rec = json.loads((d / "stage.json").read_text())
        lines = result_lines(d)
        assert lines and all(r["workers"] == 2 for r in lines), d.name
        if rec["spec"]["sparsity"] is not None and (rec["name"] != "dense"):
            # every rank computed the method's state itself, and they agree after every epoch
            assert all(len(set(r["rank_digests"])) == 1 and r["rank_digests"][0] for r in lines), d.name
        # the row is its model: model.pt re-evaluated here gives the row's test accuracy
        acc, zeros = our_own_check(d)
        assert acc == pytest.approx(rec["row"]["test_acc"], abs=0.005), d.name
        assert zeros == pytest.approx(rec["row"]["achieved_sparsity"], abs=0.005), d.name
        # the Tune trial directories hold what a one-process trial's do
        for trial in d.glob("tune/*/trial_*"):
            assert (trial / "params.json").is_file() and list(trial.glob("checkpoint_*/model.pt")), trial
    # the search's candidates ran as 2-worker trials: its trials table has both
    import pandas as pd

    [search] = list(two.glob("03-search-*"))
    assert len(pd.read_parquet(search / "trials.parquet")) == 2


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_multi_worker_trial_is_retried_from_its_last_epoch(tmp_path):
    """The Tune trial of a 2-worker run killed mid-training (its Train run goes with it): Tune
    retries it, and the new workers start from the last checkpoint."""
    ray_tmp = tempfile.mkdtemp(prefix="safs-ray-")
    text = PIPELINE.format(name="wk", resources="{workers_per_trial: 2, cpus_per_worker: 1, max_failures: 1}",
                           sparse=6)
    text = text.split("  - {name: search")[0]
    f = tmp_path / "p.yaml"
    f.write_text(text)
    cmd = safs_cmd() + ["run", str(f), "--results", str(tmp_path / "results"), "--quiet", "--num-cpus", "2"]
    log = open(tmp_path / "run.log", "w")
    p = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(RAY_TMPDIR=ray_tmp), start_new_session=True,
                         stdout=log, stderr=subprocess.STDOUT)
    run_dir = tmp_path / "results" / "wk"
    try:
        import time

        deadline, last = time.time() + 400, None
        while time.time() < deadline and last is None:
            assert p.poll() is None, (tmp_path / "run.log").read_text()
            got = [r for d in run_dir.glob("02-sparse-*") for r in result_lines(d)]
            if got and got[-1]["epoch"] >= 2:
                last = got[-1]
            time.sleep(0.2)
        assert last is not None, "the sparse stage never reached epoch 2"
        os.kill(last["pid"], signal.SIGKILL)  # the Tune trial's process, which drives the workers
        p.wait(timeout=400)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        kill_ray_leftovers(ray_tmp)
    assert p.returncode == 0, (tmp_path / "run.log").read_text()
    rec = by_stage(records(run_dir), "sparse")
    assert rec["status"] == "done" and rec["attempts"] == 1 and rec["workers"] == 2
    assert [h["epoch"] for h in rec["history"]] == list(range(1, 7))
    [stage] = list(run_dir.glob("02-sparse-*"))
    lines = result_lines(stage)
    restart = next(i for i, r in enumerate(lines) if r["pid"] != last["pid"])
    assert lines[restart]["start_epoch"] >= last["epoch"]  # continued, not restarted
    acc, _ = our_own_check(stage)
    assert acc == pytest.approx(rec["row"]["test_acc"], abs=0.005)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_sigkilled_multi_worker_run_continues_from_its_checkpoint(tmp_path):
    """SIGKILL of the whole run (driver, Tune trial and workers) mid-stage: the same command
    continues the stage in a new attempt from the killed attempt's last checkpoint."""
    ray_tmp = tempfile.mkdtemp(prefix="safs-ray-")
    text = PIPELINE.format(name="wr", resources="{workers_per_trial: 2, cpus_per_worker: 1}", sparse=6)
    f = tmp_path / "p.yaml"
    f.write_text(text.split("  - {name: search")[0])
    cmd = safs_cmd() + ["run", str(f), "--results", str(tmp_path / "results"), "--quiet", "--num-cpus", "2"]
    env = subprocess_env(RAY_TMPDIR=ray_tmp)
    run_dir = tmp_path / "results" / "wr"
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.STDOUT)
    try:
        import time

        deadline, reached = time.time() + 400, 0
        while time.time() < deadline and reached < 3:
            assert p.poll() is None, "the run ended before the sparse stage reached epoch 3"
            got = [r for d in run_dir.glob("02-sparse-*") for r in result_lines(d)]
            reached = got[-1]["epoch"] if got else 0
            time.sleep(0.2)
        assert reached >= 3, "the sparse stage never reached epoch 3"
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        kill_ray_leftovers(ray_tmp)
    try:
        again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    finally:
        kill_ray_leftovers(ray_tmp)
    assert again.returncode == 0, again.stdout + again.stderr
    rec = by_stage(records(run_dir), "sparse")
    assert rec["status"] == "done" and rec["attempts"] == 2 and rec["workers"] == 2
    assert rec["resumed_from_epoch"] >= 2  # the checkpoint of epoch 2 or later, not a fresh start
    assert [h["epoch"] for h in rec["history"]] == list(range(1, 7))
    [stage] = list(run_dir.glob("02-sparse-*"))
    acc, _ = our_own_check(stage)
    assert acc == pytest.approx(rec["row"]["test_acc"], abs=0.005)
