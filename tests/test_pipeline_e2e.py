"""Real pipelines on Ray Tune: resume after SIGKILL, stage caching, status and the table."""

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import E2E_PIPELINE as PIPELINE
from conftest import ROOT, by_stage, kill_ray_leftovers, records, safs_cmd, subprocess_env

pytestmark = pytest.mark.slow

def last_epoch(stage_dir_glob: list[Path]) -> int:
    best = 0
    for d in stage_dir_glob:
        for f in d.glob("tune/*/*/result.json"):
            lines = f.read_text().strip().splitlines()
            if lines:
                best = max(best, json.loads(lines[-1])["epoch"])
    return best


def test_sigkill_during_retrain_resumes_without_repeating_dense(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(PIPELINE.format(data="mnist5k", dense=2, retrain=30))  # long enough to be killed mid-way
    results = tmp_path / "results"
    ray_tmp = tempfile.mkdtemp(prefix="safs-ray-")  # short: Ray's socket paths have a length limit
    env = subprocess_env(RAY_TMPDIR=ray_tmp)
    cmd = safs_cmd() + ["run", str(f), "--results", str(results), "--quiet", "--num-cpus", "2"]
    try:
        p = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None:
            if last_epoch(list(results.glob("e2e/03-retrain-*"))) >= 4:
                time.sleep(1.5)  # let Tune snapshot the experiment with a recent checkpoint
                break
            time.sleep(0.1)
        assert p.poll() is None, "the run ended before it could be killed:\n" + p.stdout.read()
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    finally:
        kill_ray_leftovers(ray_tmp)

    run_dir = results / "e2e"
    before = records(run_dir)
    dense = by_stage(before, "dense")
    assert dense["status"] == "done" and by_stage(before, "retrain")["status"] == "running"
    status = subprocess.run(safs_cmd() + ["status", str(run_dir)], capture_output=True, text=True, env=env)
    assert "partial (epoch" in status.stdout and "of 30)" in status.stdout, status.stdout

    try:
        p2 = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    finally:
        kill_ray_leftovers(ray_tmp)
    assert p2.returncode == 0, p2.stdout + p2.stderr
    after = records(run_dir)
    assert by_stage(after, "dense") == dense  # not rerun: same record, same finish time, one attempt
    assert by_stage(after, "prune") == by_stage(before, "prune")
    retrain = by_stage(after, "retrain")
    assert retrain["status"] == "done" and retrain["attempts"] == 2
    assert retrain["resumed_from_epoch"] >= 1  # continued from an epoch checkpoint
    assert [h["epoch"] for h in retrain["history"]] == list(range(1, 31))
    assert "done (cached)" in p2.stdout

    table = subprocess.run(safs_cmd() + ["table", str(run_dir), "--format", "csv"], capture_output=True,
                           text=True, env=env)
    header = table.stdout.splitlines()[0].split(",")
    assert header == ["pipeline", "model", "dataset", "method", "target %", "n", "achieved sparsity %",
                      "achieved sparsity % std", "Dense", "Dense std", "Dense n", "Pruned", "Pruned std", "Pruned n",
                      "Magnitude Pruning", "Magnitude Pruning std", "Magnitude Pruning n"]
    row = table.stdout.splitlines()[1].split(",")
    assert row[:4] == ["e2e", "lenet5", "mnist5k", "lwm"] and float(row[6]) == pytest.approx(80.0, abs=0.1)


def test_changed_retrain_epochs_reuse_dense_and_prune(tmp_path, ray_session, monkeypatch):
    import safs
    from safs.cli import main
    from safs import runner
    from safs.config import parse_pipeline
    from safs.records import ROW_COLUMNS
    import yaml

    monkeypatch.chdir(tmp_path)
    results = Path("results")  # relative, as users type it
    cfg = parse_pipeline(yaml.safe_load(PIPELINE.format(data="digits", dense=3, retrain=2)))
    lines = []
    runner.run(cfg, results, quiet=True, echo=lines.append)
    first = records(results / "e2e")
    assert len(first) == 3 and all(r["status"] == "done" for r in first.values())

    cfg2 = parse_pipeline(yaml.safe_load(PIPELINE.format(data="digits", dense=3, retrain=3)))
    lines.clear()
    runner.run(cfg2, results, quiet=True, echo=lines.append)
    second = records(results / "e2e")
    assert len(second) == 4  # one new retrain directory next to the old one
    assert by_stage(second, "dense") == by_stage(first, "dense")
    assert by_stage(second, "prune") == by_stage(first, "prune")
    assert sum("done (cached)" in ln for ln in lines) == 2
    new = [r for d, r in second.items() if d not in first]
    assert new[0]["name"] == "retrain" and len(new[0]["history"]) == 3

    # Results rows: one schema, real measurements.
    df = safs.load_results(results / "e2e")
    assert list(df.columns) == ROW_COLUMNS
    dense = df[df.stage == "dense"].iloc[0]
    pruned = df[df.stage == "prune"].iloc[0]
    assert dense.achieved_sparsity == 0 and dense.test_acc > 0.5
    assert pruned.achieved_sparsity == pytest.approx(0.8, abs=0.005)
    assert pruned.nnz_macs < 0.3 * pruned.macs and pruned.macs == dense.macs
    for retrained in df[df.stage == "retrain"].itertuples():  # masks survived real training
        assert retrained.nnz == pruned.nnz
    for r in df.itertuples():
        assert 0 <= r.val_acc <= 1 and r.params > 0 and r.wall_s > 0

    # Status of the new configuration: everything done.
    f = tmp_path / "p.yaml"
    f.write_text(PIPELINE.format(data="digits", dense=3, retrain=3))
    out = CliRunner().invoke(main, ["status", str(f), "--results", str(results)]).output
    assert out.count(" done") == 3, out
    f.write_text(PIPELINE.format(data="digits", dense=3, retrain=4))
    out = CliRunner().invoke(main, ["status", str(f), "--results", str(results)]).output
    assert out.count(" done") == 2 and "pending" in out, out


def test_diverging_trial_is_recorded_as_failed(tmp_path, ray_session):
    import yaml

    from safs import runner
    from safs.config import parse_pipeline
    from safs.errors import StageFailed

    text = PIPELINE.format(data="digits", dense=2, retrain=1).replace(
        "optimizer: {name: adam, lr: 0.003}", "optimizer: {name: sgd, lr: 1.0e+12}")
    cfg = parse_pipeline(yaml.safe_load(text + "resources: {max_failures: 0}\n"))
    with pytest.raises(StageFailed, match="training loss is nan|training loss is inf"):
        runner.run(cfg, tmp_path / "results", quiet=True, echo=lambda _: None)
    rec = by_stage(records(tmp_path / "results" / "e2e"), "dense")
    assert rec["status"] == "failed" and "training loss is" in rec["error"] and "\n" not in rec["error"]
    assert not any((tmp_path / "results" / "e2e").glob("02-*"))  # nothing downstream started


def test_a_truncated_model_reruns_its_stage_and_everything_downstream(tmp_path, ray_session):
    import yaml

    import safs
    from safs import runner
    from safs.cli import main
    from safs.config import parse_pipeline
    from safs.io import sha256

    text = PIPELINE.format(data="digits", dense=2, retrain=1) + """\
  - {name: search, kind: activation_search, algorithm: random, options: {samples: 2}, epochs_per_candidate: 1}
  - {name: final, kind: train, epochs: 1}
"""
    cfg = parse_pipeline(yaml.safe_load(text))
    results = tmp_path / "results"
    runner.run(cfg, results, quiet=True, echo=lambda _: None)
    run_dir = results / "e2e"
    first = records(run_dir)
    [retrain_dir] = [run_dir / d for d in first if d.split("-")[1] == "retrain"]
    model = retrain_dir / "model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # a copy cut short

    f = tmp_path / "p.yaml"
    f.write_text(text)
    out = CliRunner().invoke(main, ["status", str(f), "--results", str(results)]).output
    assert "corrupt (model.pt does not match its checksum" in out, out

    lines = []
    runner.run(cfg, results, quiet=True, echo=lines.append)
    log = "\n".join(lines)
    assert sum("done (cached)" in ln for ln in lines) == 2, log  # dense, prune
    [why_retrain] = [ln for ln in lines if ln.startswith("[03] retrain") and "rerunning" in ln]
    assert "model.pt does not match its checksum in stage.json" in why_retrain and "truncated or corrupt" in why_retrain
    assert any("search" in ln and "rerunning: stage 'retrain' it depends on was rerun" in ln for ln in lines), log
    assert any("final" in ln and "rerunning: stage 'search' it depends on was rerun" in ln for ln in lines), log

    second = records(run_dir)
    assert sorted(second) == sorted(first)  # the same stage directories, rerun in place
    for d, rec in second.items():
        rerun = d.split("-")[1] in ("retrain", "search", "final")
        assert (rec["started"] != first[d]["started"]) == rerun, d
        assert rec["status"] == "done"
    assert second[retrain_dir.name]["model_sha256"] == sha256(model)
    kept = sorted(p.name.rsplit("-", 2)[0] for p in (run_dir / ".replaced").iterdir())
    assert kept == sorted(d for d in first if d.split("-")[1] in ("retrain", "search", "final"))
    assert len(safs.load_results(run_dir)) == 5  # the set-aside stages are not results
    out = CliRunner().invoke(main, ["status", str(f), "--results", str(results)]).output
    assert out.count(" done") == 5, out
