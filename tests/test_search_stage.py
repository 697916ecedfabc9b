"""The ``activation_search`` stage in real pipelines: SIGKILL and resume, masks kept through the
search, ``start_from: pruned`` and a GA with successive halving. (Bad search settings:
tests/test_config.py.)

The slow tests share one killed-and-resumed run (module fixture); the GA test reuses its
dense/prune/retrain stages, so only its search stage trains."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import safs_cmd, subprocess_env
from safs.tune.trials import attempt_dirs, attempt_number
from conftest import by_stage, kill_ray_leftovers, records, trials_by_token

EPOCHS = 3  # epochs_per_candidate
SAMPLES = 8

HEAD = """
name: s1
seed: 0
data: {name: digits}
model: {name: lenet5}
sparsity: {method: lwm, target: 0.9}
resources: {max_concurrent_trials: 2}
defaults:
  train: {batch_size: 64, optimizer: {name: adam, lr: 0.003}}
stages:
  - {name: dense, kind: train, epochs: 2}
  - {name: prune, kind: prune}
  - {name: retrain, kind: train, epochs: 1}
"""
# batch_size 16 makes a candidate take ~2 s, so there is time to kill the run mid-search.
RESUME_PIPELINE = HEAD + f"""\
  - {{name: search, kind: activation_search, algorithm: random, options: {{samples: {SAMPLES}}},
      epochs_per_candidate: {EPOCHS}, batch_size: 16}}
  - {{name: stage1, kind: train, epochs: 1}}
"""
GA_PIPELINE = HEAD + f"""\
  - {{name: search, kind: activation_search, algorithm: ga, options: {{population: 4, generations: 2}},
      fidelity: {{min_epochs: 1, reduction_factor: 3}}, epochs_per_candidate: {EPOCHS}, max_concurrent: 2,
      start_from: pruned}}
"""


def stage_dir(run_dir: Path, name: str) -> Path:
    [d] = [d for d in run_dir.glob("[0-9][0-9]-*") if d.is_dir() and d.name.split("-")[1] == name]
    return d


def result_lines(trial_dir: Path) -> list[dict]:
    f = trial_dir / "result.json"
    return [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()] if f.is_file() else []


def finished_trials(search_dir: Path) -> dict[str, str]:
    """Trial directory (relative to the stage) -> result.json text, for candidates that
    reported their last epoch."""
    out = {}
    for d in search_dir.glob("tune/*/trial_*"):
        try:
            text = (d / "result.json").read_text()
            lines = [ln for ln in text.splitlines() if ln.strip()]
            if lines and json.loads(lines[-1])["epoch"] == EPOCHS:
                out[str(d.relative_to(search_dir))] = text
        except (OSError, ValueError, KeyError):
            continue  # being written
    return out


def masks_of(path: Path) -> tuple[dict, dict]:
    """Layer name -> (mask, weight) of every masked layer of a model.pt, and the file's blob."""
    from safs.sparsity.masks import MASK, masked_layers
    from safs.model_file import load_model

    model, blob = load_model(path)
    layers = masked_layers(model)
    return {name: (getattr(m, MASK).clone(), m.weight.detach().clone()) for name, m in layers.items()}, blob


def run_cli(cmd, cwd, env, timeout=400):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """Run the pipeline, SIGKILL it once >= 3 candidates have finished, run it again to the end."""
    tmp = tmp_path_factory.mktemp("resume")
    f = tmp / "p.yaml"
    f.write_text(RESUME_PIPELINE)
    results = tmp / "results"
    ray_tmp = tempfile.mkdtemp(prefix="safs-ray-")  # short: Ray's socket paths have a length limit
    env = subprocess_env(RAY_TMPDIR=ray_tmp)
    cmd = safs_cmd() + ["run", str(f), "--results", str(results), "--quiet", "--num-cpus", "2"]
    log = tmp / "first.log"
    search: list[Path] = []
    with open(log, "w") as out:
        p = subprocess.Popen(cmd, cwd=tmp, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None:
            search = list(results.glob("s1/04-search-*"))
            if search and len(finished_trials(search[0])) >= 3:
                break
            time.sleep(0.1)
        assert p.poll() is None, "the run ended before it could be killed:\n" + log.read_text()
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        kill_ray_leftovers(ray_tmp)
    assert search, "the search stage never started:\n" + log.read_text()
    finished = finished_trials(search[0])  # what had finished when the kill landed
    assert 3 <= len(finished) < SAMPLES, sorted(finished)
    run_dir = results / "s1"
    before = records(run_dir)
    try:
        rerun = run_cli(cmd, tmp, env)
    finally:
        kill_ray_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return {"tmp": tmp, "results": results, "run_dir": run_dir, "search_dir": search[0], "finished": finished,
            "before": before, "rerun": rerun, "env": env}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_during_a_search_resumes_without_retraining_finished_candidates(resumed_run):
    import pandas as pd

    r = resumed_run
    before, rerun = r["before"], r["rerun"]
    assert by_stage(before, "search")["status"] == "running"
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rerun.stdout.count("done (cached)") == 3  # dense, prune, retrain

    after = records(r["run_dir"])
    for name in ("dense", "prune", "retrain"):
        assert by_stage(after, name) == by_stage(before, name)  # not rerun
    search_dirs = [d for d in r["run_dir"].iterdir() if d.name.startswith("04-search-")]
    assert search_dirs == [r["search_dir"]]  # the same stage directory, continued

    df = pd.read_parquet(r["search_dir"] / "trials.parquet")
    assert len(df) == SAMPLES
    assert sorted(df.token) == list(range(SAMPLES))
    assert set(df.status) == {"done"} and (df.epochs == EPOCHS).all()
    assert df.val_acc_per_epoch.map(len).eq(EPOCHS).all()
    assert df.trial_id.is_unique and df.genome.is_unique  # random search never retrains a genome
    assert df.error.isna().all()

    # The stopped stage continued as a second Tune experiment; trials of the first are untouched.
    tune_dir = r["search_dir"] / "tune"
    assert [attempt_number(d.name) for d in attempt_dirs(r["search_dir"])] == [1, 2]
    assert sorted(d.name for d in tune_dir.iterdir()) == [d.name for d in attempt_dirs(r["search_dir"])]
    trials = trials_by_token(r["search_dir"])
    assert sorted(trials) == list(range(SAMPLES))
    for name, text in r["finished"].items():  # finished before the kill: never trained again
        d = r["search_dir"] / name
        assert attempt_number(d.parent.name) == 1
        assert (d / "result.json").read_text() == text, f"{name} reported again after the resume"
        token = json.loads((d / "params.json").read_text())["candidate"]["token"]
        assert trials[token] == [d], f"candidate {token} got a second trial"
        assert df.set_index("token").loc[token, "status"] == "done"
    rerun = {t: ds for t, ds in trials.items() if len(ds) > 1}
    for token, ds in trials.items():
        assert len(ds) <= 2 and df.set_index("token").loc[token, "trial_id"] == ds[-1].name.removeprefix("trial_")
        assert result_lines(ds[-1])[-1]["epoch"] == EPOCHS
    for token, (first, second) in rerun.items():  # running at the kill: continued, not restarted
        assert attempt_number(first.parent.name) == 1 and attempt_number(second.parent.name) == 2
        done_before = [x["epoch"] for x in result_lines(first)]
        # (a kill can cut the report of an epoch whose checkpoint was written: then it starts later)
        assert result_lines(second)[0]["epoch"] >= max(done_before, default=0) + 1, token

    rec = by_stage(after, "search")
    assert rec["status"] == "done" and rec["attempts"] == 2
    s = rec["search"]
    assert s["algorithm"] == "random" and s["candidates"] == SAMPLES
    assert s["by_status"] == {"done": SAMPLES} and s["epochs_spent"] == SAMPLES * EPOCHS
    top = df[df.score == df.score.max()].sort_values("token").iloc[0]
    assert s["best_genome"] == json.loads(top.genome)
    assert s["best_score"] == pytest.approx(top.score)
    assert rec["row"]["val_acc"] == pytest.approx(top.score)
    assert by_stage(after, "stage1")["status"] == "done"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_search_keeps_the_masks_layer_by_layer(resumed_run):
    import torch

    r = resumed_run
    assert r["rerun"].returncode == 0, r["rerun"].stdout + r["rerun"].stderr
    run_dir = r["run_dir"]
    recs = records(run_dir)
    search_rec, stage1_rec = by_stage(recs, "search"), by_stage(recs, "stage1")
    retrain_model = stage_dir(run_dir, "retrain") / "model.pt"
    assert search_rec["spec"]["input"] == str(retrain_model.resolve())

    base, base_blob = masks_of(retrain_model)
    assert len(base) >= 2  # lenet5: every conv and linear layer is pruned
    for name, (mask, weight) in base.items():
        assert (weight[~mask] == 0).all()
    total = sum(m.numel() for m, _ in base.values())
    assert 1 - sum(int(m.sum()) for m, _ in base.values()) / total == pytest.approx(0.9, abs=0.01)

    best = search_rec["search"]["best_genome"]
    for stage in ("search", "stage1"):
        got, blob = masks_of(stage_dir(run_dir, stage) / "model.pt")
        assert got.keys() == base.keys(), stage
        for name, (mask, weight) in got.items():
            assert torch.equal(mask, base[name][0]), f"{stage}: mask of {name} changed"
            assert (weight[~mask] == 0).all(), f"{stage}: pruned weights of {name} revived"
            assert int(torch.count_nonzero(weight)) == int(torch.count_nonzero(base[name][1])), (stage, name)
            assert not torch.equal(weight, base[name][1]), f"{stage}: {name} was not trained"
        assert blob["genome"] == best, stage
        # stage.json's per-layer measurement says the same
        rec = by_stage(recs, stage)
        base_layers = by_stage(recs, "retrain")["measurement"]["layers"]
        assert {k: v["nnz"] for k, v in rec["measurement"]["layers"].items()} == \
            {k: v["nnz"] for k, v in base_layers.items()}
        assert rec["genome"] == best
    assert set(base_blob["genome"].values()) == {"relu"}  # the search changed the operators
    assert not set(best.values()) & {"relu"}
    assert stage1_rec["spec"]["input"] == str((stage_dir(run_dir, "search") / "model.pt").resolve())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ga_with_successive_halving_from_the_pruned_model(resumed_run, tmp_path):
    import pandas as pd
    import torch

    # Reuse the finished dense/prune/retrain stages of the other run: only the search trains.
    run_dir = tmp_path / "results" / "s1"
    run_dir.mkdir(parents=True)
    for name in ("dense", "prune", "retrain"):
        src = stage_dir(resumed_run["run_dir"], name)
        shutil.copytree(src, run_dir / src.name)
    f = tmp_path / "p.yaml"
    f.write_text(GA_PIPELINE)
    ray_tmp = tempfile.mkdtemp(prefix="safs-ray-")
    env = subprocess_env(RAY_TMPDIR=ray_tmp)
    try:
        p = run_cli(safs_cmd() + ["run", str(f), "--results", str(tmp_path / "results"), "--quiet",
                                  "--num-cpus", "2"], tmp_path, env)
    finally:
        kill_ray_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("done (cached)") == 3

    recs = records(run_dir)
    rec = by_stage(recs, "search")
    assert rec["status"] == "done"
    prune_model = stage_dir(run_dir, "prune") / "model.pt"
    assert rec["spec"]["input"] == str(prune_model.resolve())  # start_from: pruned
    assert rec["spec"]["input"].endswith(f"/{stage_dir(run_dir, 'prune').name}/model.pt")

    df = pd.read_parquet(stage_dir(run_dir, "search") / "trials.parquet")
    assert 1 <= len(df) <= 4 * 2  # population x generations, duplicates answered by the memo
    assert sorted(df.token) == list(range(len(df))) and df.genome.is_unique
    assert set(df.status) <= {"done", "stopped"} and (df.status == "done").any()
    assert (df.epochs <= EPOCHS).all() and (df.epochs == df.val_acc_per_epoch.map(len)).all()
    assert (df[df.status == "done"].epochs == EPOCHS).all()
    # ASHA's only rung below max_t is min_epochs (1 * 3**0; the next, 3, is max_t).
    assert (df[df.status == "stopped"].epochs == 1).all()
    done = df[df.status == "done"]
    top = done[done.score == done.score.max()].sort_values("token").iloc[0]
    s = rec["search"]
    assert s["best_genome"] == json.loads(top.genome) and s["best_score"] == pytest.approx(top.score)
    assert s["candidates"] == len(df) and s["by_status"] == df.status.value_counts().to_dict()
    assert s["epochs_spent"] == int(df.epochs.sum())
    # Four candidates of generation 0 all fit the first generation; the second one trains at
    # most three new genomes (the elite is answered from the memo).
    assert len(df) >= 4

    got, blob = masks_of(stage_dir(run_dir, "search") / "model.pt")
    pruned, _ = masks_of(prune_model)
    assert got.keys() == pruned.keys()
    for name, (mask, weight) in got.items():
        assert torch.equal(mask, pruned[name][0]) and (weight[~mask] == 0).all()
    assert blob["genome"] == s["best_genome"]


# --------------------------------------------------------------------------- bad input
