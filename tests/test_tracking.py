"""Tracking that users already use: TensorBoard event files from Ray Tune, and
``tracking: {mlflow: ...}`` handing Ray Tune's MLflow logger to every stage."""

import importlib.util
import subprocess

import pytest
from click.testing import CliRunner

from conftest import by_stage, records, safs_cmd, subprocess_env

PIPELINE = """
name: tracked
seed: 0
data: {{name: digits}}
model: {{name: lenet5}}
{tracking}
defaults:
  train: {{batch_size: 64, optimizer: {{name: adam, lr: 0.003}}}}
stages:
  - {{name: dense, kind: train, epochs: 3}}
"""


def one_line_exit_2(tmp_path, text):
    from safs.cli import main

    f = tmp_path / "p.yaml"
    f.write_text(text)
    r = CliRunner().invoke(main, ["run", str(f), "--results", str(tmp_path / "results")])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    assert not (tmp_path / "results").exists()
    return lines[0]


def test_mlflow_tracking_without_mlflow_is_one_line_exit_2(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    line = one_line_exit_2(tmp_path, PIPELINE.format(tracking="tracking: {mlflow: {experiment: x}}"))
    assert "tracking.mlflow" in line and "pip install 'safs[mlflow]'" in line


def test_unknown_tracking_key_is_one_line(tmp_path):
    line = one_line_exit_2(tmp_path, PIPELINE.format(tracking="tracking: {wandb: {}}"))
    assert "tracking.wandb" in line and "mlflow" in line


def test_a_store_mlflow_refuses_fails_before_anything_runs(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    from mlflow.tracking import MlflowClient

    try:  # MLflow 3 refuses file stores unless MLFLOW_ALLOW_FILE_STORE=true
        MlflowClient(tracking_uri=(tmp_path / "probe").as_uri()).search_experiments(max_results=1)
        pytest.skip("this MLflow opens file stores")
    except Exception:
        pass
    line = one_line_exit_2(tmp_path, PIPELINE.format(tracking="tracking: {mlflow: {tracking_uri: 'file:mlruns'}}"))
    assert line.startswith("error: p.yaml: tracking.mlflow.tracking_uri: cannot open file://")
    assert str(tmp_path / "mlruns") in line  # relative to the pipeline file


def test_tracking_is_not_hashed(tmp_path):
    pytest.importorskip("mlflow")
    from safs.config import load_pipeline
    from safs.plan import plan

    f = tmp_path / "p.yaml"
    f.write_text(PIPELINE.format(tracking=""))
    [plain] = plan(load_pipeline(f), tmp_path)
    f.write_text(PIPELINE.format(tracking="tracking: {mlflow: {tracking_uri: 'sqlite:///x.db', experiment: e}}"))
    [tracked] = plan(load_pipeline(f), tmp_path)
    assert plain.hash == tracked.hash and plain.dir == tracked.dir
    assert tracked.spec["tracking"] == {"mlflow": {"tracking_uri": "sqlite:///x.db", "experiment": "e"}}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mlflow_runs_and_tensorboard_events_are_written(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    f = tmp_path / "p.yaml"
    f.write_text(PIPELINE.format(tracking="tracking: {mlflow: {tracking_uri: 'file:mlruns', experiment: safs-test}}"))
    env = subprocess_env(MLFLOW_ALLOW_FILE_STORE="true")  # MLflow 3 wants it for file stores
    p = subprocess.run(safs_cmd() + ["run", str(f), "--results", str(tmp_path / "results"), "--quiet",
                                     "--num-cpus", "2"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=500)
    assert p.returncode == 0, p.stdout + p.stderr
    dense = by_stage(records(tmp_path / "results" / "tracked"), "dense")

    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("safs-test")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["safs.pipeline"] == "tracked" and run.data.tags["safs.stage"] == "dense"
    val_acc = client.get_metric_history(run.info.run_id, "val_acc")
    assert len(val_acc) == 3
    assert [m.value for m in sorted(val_acc, key=lambda m: m.step)] == pytest.approx(
        [h["val_acc"] for h in dense["history"]])

    # TensorBoard: Ray Tune writes event files into each trial directory of each stage
    stage_dir = next((tmp_path / "results" / "tracked").glob("01-dense-*"))
    events = list(stage_dir.glob("tune/attempt-*/trial_*/events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 100 for e in events)
