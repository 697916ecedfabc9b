"""Faults and stops in real runs: a trial's worker killed mid-training is retried from its
epoch checkpoint; SIGTERM (what ``ray job stop`` sends) stops a run cleanly and the same
command continues it."""

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import safs_cmd, subprocess_env
from safs.tune.trials import result_lines
from conftest import E2E_PIPELINE as PIPELINE
from conftest import by_stage, kill_ray_leftovers, records

pytestmark = pytest.mark.slow


def start(tmp_path: Path, text: str, ray_tmp: str):
    f = tmp_path / "p.yaml"
    f.write_text(text)
    env = subprocess_env(RAY_TMPDIR=ray_tmp)
    cmd = safs_cmd() + ["run", str(f), "--results", str(tmp_path / "results"), "--quiet", "--num-cpus", "2"]
    log = open(tmp_path / "run.log", "w")
    return cmd, env, subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=log,
                                      stderr=subprocess.STDOUT)


def wait_for(predicate, p, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = predicate()
        if got:
            return got
        assert p.poll() is None, f"the run ended before {what}"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(600)
def test_a_killed_trial_worker_is_retried_from_its_last_epoch(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="safs-ray-")
    cmd, env, p = start(tmp_path, PIPELINE.format(data="mnist5k", dense=8, retrain=1), ray_tmp)
    try:
        def dense_at_epoch_2():
            for f in (tmp_path / "results" / "e2e").glob("01-dense-*/tune/*/trial_*/result.json"):
                got = result_lines(f)
                if got and got[-1]["epoch"] >= 2:
                    return f, got[-1]
        result_file, last = wait_for(dense_at_epoch_2, p, "the dense stage reached epoch 2")
        os.kill(last["pid"], signal.SIGKILL)  # the trial's worker, not the driver
        p.wait(timeout=400)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        kill_ray_leftovers(ray_tmp)
    assert p.returncode == 0, (tmp_path / "run.log").read_text()
    reports = result_lines(result_file)
    pids = [r["pid"] for r in reports]
    assert last["pid"] in pids and pids[-1] != last["pid"]  # a new worker finished the trial
    restart = pids.index(pids[-1])
    assert reports[restart]["epoch"] > 1 and reports[restart]["start_epoch"] >= last["epoch"]
    assert {r["epoch"] for r in reports} == set(range(1, 9))
    assert "RayActorError" in (result_file.parent / "error.txt").read_text() or \
        "died" in (result_file.parent / "error.txt").read_text()
    rec = by_stage(records(tmp_path / "results" / "e2e"), "dense")
    assert rec["status"] == "done" and rec["attempts"] == 1  # retried within the same run
    assert [h["epoch"] for h in rec["history"]] == list(range(1, 9))
    assert by_stage(records(tmp_path / "results" / "e2e"), "retrain")["status"] == "done"


@pytest.mark.timeout(600)
def test_sigterm_stops_cleanly_and_the_same_command_continues(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="safs-ray-")
    cmd, env, p = start(tmp_path, PIPELINE.format(data="mnist5k", dense=1, retrain=10), ray_tmp)
    run_dir = tmp_path / "results" / "e2e"
    try:
        def retrain_at_epoch_3():
            return any(result_lines(f) and result_lines(f)[-1]["epoch"] >= 3
                       for f in run_dir.glob("03-retrain-*/tune/*/trial_*/result.json"))
        wait_for(retrain_at_epoch_3, p, "the retrain stage reached epoch 3")
        p.send_signal(signal.SIGTERM)  # to the driver only, as the Ray job supervisor does
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        kill_ray_leftovers(ray_tmp)
    log = (tmp_path / "run.log").read_text()
    assert rc == 130, log
    assert "run the same command again to resume" in log.splitlines()[-1]
    before = by_stage(records(run_dir), "retrain")
    assert before["status"] == "interrupted" and "stopped at epoch" in before["error"]

    try:
        again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    finally:
        kill_ray_leftovers(ray_tmp)
    assert again.returncode == 0, again.stdout + again.stderr
    rec = by_stage(records(run_dir), "retrain")
    assert rec["status"] == "done" and rec["attempts"] == 2 and rec["resumed_from_epoch"] >= 3
    assert [h["epoch"] for h in rec["history"]] == list(range(1, 11))
    [stage] = list(run_dir.glob("03-retrain-*"))
    h = stage.name.rsplit("-", 1)[1]
    assert sorted(d.name for d in (stage / "tune").iterdir()) == [f"attempt-1-{h}", f"attempt-2-{h}"]
