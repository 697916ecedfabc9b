"""The ``hpo`` stage (Stage 2 of SAFS) in real pipelines: the paper's five columns on digits,
SIGKILL and resume with each backend, and a diverging trial recorded as failed."""

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
from conftest import by_stage, kill_ray_leftovers, records, trials_by_token

pytestmark = pytest.mark.slow

HEAD = """
name: {name}
seed: 0
data: {{name: digits}}
model: {{name: lenet5}}
sparsity: {{method: lwm, target: 0.9}}
resources: {{max_concurrent_trials: 1}}
defaults:
  train: {{batch_size: 64, optimizer: {{name: adam, lr: 0.003}}}}
stages:
  - {{name: dense, kind: train, epochs: 2}}
  - {{name: prune, kind: prune}}
  - {{name: retrain, kind: train, epochs: 1}}
"""

SAFS_TAIL = """\
  - {name: search, kind: activation_search, start_from: pruned, algorithm: random, options: {samples: 3},
     epochs_per_candidate: 1}
  - {name: stage1, kind: train, epochs: 1, label: Stage 1}
  - {name: hpo_relu, kind: hpo, input: retrain, backend: optuna, trials: 3, epochs_per_trial: 1}
  - {name: stage2, kind: train, settings_from: hpo_relu, epochs: 2, label: Stage 2}
  - {name: hpo, kind: hpo, input: stage1, backend: smac, trials: 3, epochs_per_trial: 1}
  - {name: final, kind: train, settings_from: hpo, epochs: 2, label: SAFS}
"""


def run(cmd, cwd, env, timeout=600):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def finished(stage_dir: Path, epochs: int) -> dict[str, str]:
    """Trial directory -> result.json text, for trials that reported their last epoch."""
    out = {}
    for d in stage_dir.glob("tune/*/trial_*"):
        try:
            text = (d / "result.json").read_text()
            lines = [ln for ln in text.splitlines() if ln.strip()]
            if lines and json.loads(lines[-1]).get("epoch") == epochs:
                out[str(d.relative_to(stage_dir))] = text
        except (OSError, ValueError):
            continue
    return out


@pytest.fixture(scope="module")
def ray_tmp():
    d = tempfile.mkdtemp(prefix="safs-ray-")  # short: Ray's socket paths have a length limit
    yield d
    kill_ray_leftovers(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.timeout(900)
def test_safs_pipeline_fills_the_five_columns(tmp_path, ray_tmp):
    f = tmp_path / "p.yaml"
    f.write_text(HEAD.format(name="safs") + SAFS_TAIL)
    env = subprocess_env(RAY_TMPDIR=ray_tmp)
    p = run(safs_cmd() + ["run", str(f), "--results", str(tmp_path / "r"), "--quiet", "--num-cpus", "2"], tmp_path, env)
    assert p.returncode == 0, p.stdout + p.stderr
    run_dir = tmp_path / "r" / "safs"
    t = run(safs_cmd() + ["table", str(run_dir), "--layout", "safs", "--format", "csv"], tmp_path, env)
    assert t.returncode == 0, t.stderr
    header, row = t.stdout.strip().splitlines()
    cells = dict(zip(header.split(","), row.split(",")))
    for col in ("Dense", "Magnitude Pruning", "Stage 1", "Stage 2", "SAFS"):
        assert cells[col].strip(), (col, t.stdout)
    # csv is numeric: the gain of SAFS over Magnitude Pruning is its own column (one seed: no interval)
    assert float(cells["Δ vs MP"]) == pytest.approx(float(cells["SAFS"]) - float(cells["Magnitude Pruning"]), abs=0.01)

    recs = records(run_dir)
    for hpo_name, final_name in (("hpo_relu", "stage2"), ("hpo", "final")):
        hpo, final = by_stage(recs, hpo_name), by_stage(recs, final_name)
        assert hpo["search"]["candidates"] == 3
        incumbent = hpo["search"]["incumbent_settings"]
        for key in ("optimizer", "schedule", "scales_trainable"):
            assert final["settings"][key] == incumbent[key], key
        assert incumbent["scales_trainable"] is True
    # Stage 2 starts from the retrained ReLU network, SAFS from the Stage 1 genome.
    assert by_stage(recs, "hpo_relu")["spec"]["input"].endswith(
        f"{by_stage(recs, 'retrain')['index'] + 1:02d}-retrain-{by_stage(recs, 'retrain')['hash']}/model.pt")
    assert set(by_stage(recs, "stage2")["genome"].values()) == {"relu"}
    assert by_stage(recs, "final")["genome"] == by_stage(recs, "search")["search"]["best_genome"]
    # α, β were learned in Stage 2 (trainable, own parameter group): some moved away from 1.
    import torch

    final_model = run_dir / next(d for d in recs if d.split("-")[1] == "final") / "model.pt"
    sd = torch.load(final_model, weights_only=True)["state_dict"]
    scales = [float(v) for k, v in sd.items() if k.endswith((".alpha", ".beta"))]
    assert scales and any(abs(s - 1.0) > 1e-6 for s in scales)
    # Sparsity is the same through every sparse stage.
    sp = {d.split("-")[1]: r["row"]["achieved_sparsity"] for d, r in recs.items() if d.split("-")[1] != "dense"}
    assert max(sp.values()) - min(sp.values()) < 1e-9, sp


@pytest.mark.parametrize("backend", ["smac", "optuna"])
@pytest.mark.timeout(900)
def test_sigkill_during_hpo_resumes_without_repeating_finished_trials(tmp_path, ray_tmp, backend):
    trials, epochs = 6, 3
    text = HEAD.format(name=f"kill_{backend}") + (
        f"  - {{name: hpo, kind: hpo, backend: {backend}, trials: {trials}, epochs_per_trial: {epochs},"
        f" batch_size: 16}}\n")
    f = tmp_path / "p.yaml"
    f.write_text(text)
    results = tmp_path / "r"
    env = subprocess_env(RAY_TMPDIR=ray_tmp)
    cmd = safs_cmd() + ["run", str(f), "--results", str(results), "--quiet", "--num-cpus", "2"]
    with open(tmp_path / "first.log", "w") as out:
        p = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    stage: list[Path] = []
    try:
        deadline = time.time() + 400
        while time.time() < deadline and p.poll() is None:
            stage = list(results.glob(f"kill_{backend}/04-hpo-*"))
            if stage and len(finished(stage[0], epochs)) >= 2:
                break
            time.sleep(0.1)
        assert p.poll() is None, "the run ended before it could be killed:\n" + (tmp_path / "first.log").read_text()
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        kill_ray_leftovers(ray_tmp)
    before = finished(stage[0], epochs)
    assert 2 <= len(before) < trials
    rerun = run(cmd, tmp_path, env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr

    import pandas as pd

    df = pd.read_parquet(stage[0] / "trials.parquet")
    assert len(df) == trials and sorted(df["token"]) == list(range(trials))
    assert set(df["status"]) == {"done"}
    assert len({c for c in df["config"]}) == trials  # no configuration trained twice
    # The first trial is the stage's own configuration (adam at lr 0.003, from the defaults),
    # and every origin, the requeued candidate's included, survived the kill.
    assert df["origin"].iloc[0] == "default"
    first = json.loads(df["config"].iloc[0])
    assert first["optim_name"] == "adam" and first["lr_Adam"] == 0.003
    later = set(df["origin"].iloc[1:])
    assert later and later <= ({"sampler"} if backend == "optuna" else {"initial_design", "model", "random"})
    after = finished(stage[0], epochs)
    for name, text_before in before.items():  # finished trials were not run again
        assert after[name] == text_before
    # a trial per candidate, plus the continuation of each one that was running at the kill
    started = trials_by_token(stage[0])
    assert sorted(started) == list(range(trials))
    # max_concurrent_trials 1: at most one was running
    assert sum(len(ds) for ds in started.values()) - trials <= 1
    rec = json.loads((stage[0] / "stage.json").read_text())
    assert rec["attempts"] == 2 and rec["status"] == "done"
    journal = stage[0] / "optuna_journal.log"
    if backend == "optuna":  # the study, for optuna-dashboard and optuna.load_study: no trial twice
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        study = optuna.load_study(study_name=None, storage=JournalStorage(JournalFileBackend(str(journal))))
        complete = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(study.get_trials()) == len(complete) == len(df)
        assert sorted(t.value for t in complete) == pytest.approx(sorted(df["score"]))
    else:
        assert not journal.exists()


DIVERGING_SPACE = """\
conditions: []
forbiddens: []
format_version: 0.4
hyperparameters:
- {name: optim_name, type: categorical, choices: [adam, sgd], default_value: adam, weights: null,
   meta: {target: optimizer.name}}
- {name: lr, type: categorical, choices: [0.003, 100000.0], default_value: 0.003, weights: null,
   meta: {target: optimizer.lr}}
name: diverging
python_module_version: 1.2.0
"""


@pytest.mark.timeout(600)
def test_a_diverging_trial_is_recorded_failed_and_the_search_goes_on(tmp_path, ray_tmp):
    (tmp_path / "diverging.yaml").write_text(DIVERGING_SPACE)
    text = HEAD.format(name="nan") + (
        "  - {name: hpo, kind: hpo, backend: optuna, options: {sampler: RandomSampler}, space: diverging.yaml,"
        " trials: 6, epochs_per_trial: 1}\n")
    f = tmp_path / "p.yaml"
    f.write_text(text)
    env = subprocess_env(RAY_TMPDIR=ray_tmp)
    p = run(safs_cmd() + ["run", str(f), "--results", str(tmp_path / "r"), "--quiet", "--num-cpus", "2"], tmp_path, env)
    assert p.returncode == 0, p.stdout + p.stderr

    import pandas as pd

    [stage] = list((tmp_path / "r" / "nan").glob("04-hpo-*"))
    df = pd.read_parquet(stage / "trials.parquet")
    assert len(df) == 6
    assert list(df["origin"]) == ["default"] + ["sampler"] * 5
    lrs = df["config"].map(lambda c: json.loads(c)["lr"])
    assert set(df.loc[lrs > 1, "status"]) == {"failed"} and (lrs > 1).any()
    assert df.loc[lrs > 1, "error"].str.contains("nan").all()
    assert set(df.loc[lrs < 1, "status"]) == {"done"} and (lrs < 1).any()
    rec = json.loads((stage / "stage.json").read_text())
    assert json.loads(json.dumps(rec["search"]["incumbent"]))["lr"] < 1
