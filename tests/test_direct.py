"""Single-trial stages on the run's long-lived actor (``safs.tune.direct``): the trial
directory it writes is the one Tune wrote (the readers, resume and the records use it
unchanged), one actor serves every stage of a run, a failure is recorded with its error, and a
SIGKILL mid-stage continues from the newest checkpoint without retraining finished epochs."""

import json
import os
import signal
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import E2E_PIPELINE, by_stage, kill_ray_leftovers, records, safs_cmd, subprocess_env
from safs.tune import direct
from safs.tune.trials import read_runs, result_lines


def report_epochs(trial_dir: Path, epochs, tmp_path: Path, trial_id: str = "abcde_00000") -> direct.TrialSession:
    s = direct.TrialSession(trial_dir, trial_id)
    for e in epochs:
        ckpt = tmp_path / f"scratch-{e}"
        ckpt.mkdir()
        (ckpt / "history.json").write_text(json.dumps([{"epoch": e}]))
        s.report({"epoch": e, "val_acc": 0.1 * e, "epoch_s": 0.01}, ckpt)
    s.close()
    return s


def test_the_trial_directory_is_tune_shaped(tmp_path):
    trial = tmp_path / "tune" / "attempt-1-abc" / "trial_abcde_00000"
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps({"spec": {"kind": "train"}}))
    report_epochs(trial, [1, 2, 3], tmp_path)
    assert [d.name for d in direct.checkpoints(trial)] == ["checkpoint_000001", "checkpoint_000002"]  # newest 2
    lines = result_lines(trial / "result.json")
    assert [x["training_iteration"] for x in lines] == [1, 2, 3]
    assert [x["checkpoint_dir_name"] for x in lines] == [f"checkpoint_{i:06d}" for i in range(3)]
    assert all(x["trial_id"] == "abcde_00000" and x["pid"] == os.getpid() for x in lines)
    assert lines[-1]["time_total_s"] >= lines[0]["time_total_s"] > 0
    [run] = read_runs(tmp_path)  # the search stages' reader
    assert run.trial_id == "abcde_00000" and run.last["epoch"] == 3 and run.error is None


def test_a_retry_continues_numbering_and_restores_the_newest_checkpoint(tmp_path):
    trial = tmp_path / "trial_x"
    trial.mkdir()
    report_epochs(trial, [1, 2], tmp_path)
    (trial / ".checkpoint_000002.tmp").mkdir()  # a copy a kill cut short: never a checkpoint
    retry = direct.TrialSession(trial, "x")
    with retry.restored() as d:
        assert d.name == "checkpoint_000001" and json.loads((d / "history.json").read_text()) == [{"epoch": 2}]
    ckpt = tmp_path / "scratch-3"
    ckpt.mkdir()
    retry.report({"epoch": 3}, ckpt)
    lines = result_lines(trial / "result.json")
    assert lines[-1]["training_iteration"] == 3 and lines[-1]["iterations_since_restore"] == 1
    assert lines[-1]["checkpoint_dir_name"] == "checkpoint_000002"
    assert lines[-1]["time_total_s"] > lines[1]["time_total_s"]


def tensorboard_tags(trial: Path) -> set[str]:
    """Scalar tags of the trial's event files (TFRecord framing: length, crc, event, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    tags = set()
    for f in trial.glob("events.out.tfevents.*"):
        data, i = f.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = Event.FromString(data[i + 12:i + 12 + n])
            tags |= {v.tag for v in event.summary.value}
            i += 12 + n + 4
    return tags


def test_tensorboard_scalars_as_tunes_logger_writes_them(tmp_path):
    pytest.importorskip("tensorboardX")
    trial = tmp_path / "trial_x"
    trial.mkdir()
    report_epochs(trial, [1, 2], tmp_path)
    tags = tensorboard_tags(trial)
    assert {"ray/tune/val_acc", "ray/tune/epoch", "ray/tune/time_this_iter_s"} <= tags
    assert "ray/tune/pid" not in tags and "ray/tune/training_iteration" not in tags


def test_the_follower_hands_over_complete_lines_only(tmp_path):
    f = tmp_path / "result.json"
    seen = []
    follow = direct._Follower(f, seen.append)
    follow()  # no file yet
    f.write_text('{"epoch": 1}\n{"epo')
    follow()
    assert seen == [{"epoch": 1}]
    with open(f, "a") as out:
        out.write('ch": 2}\n')
    follow()
    assert seen == [{"epoch": 1}, {"epoch": 2}]


def test_tune_keeps_what_only_tune_does():
    resources = {"cpus_per_trial": 1, "gpus_per_trial": 0}
    assert direct.eligible({"kind": "train", "resources": resources})
    assert not direct.eligible({"kind": "train", "resources": resources, "tracking": {"mlflow": {"experiment": "x"}}})
    assert not direct.eligible({"kind": "train", "resources": {**resources, "workers_per_trial": 2}})
    # A prune stage trains nothing: one process, whatever workers_per_trial says.
    assert direct.eligible({"kind": "prune", "resources": {**resources, "workers_per_trial": 2}})


def gone(pid: int, timeout: float = 20) -> bool:
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def test_one_actor_per_resource_shape_and_room_for_a_search(ray_session):
    import ray

    try:
        a = direct.worker(1, 0)
        assert direct.worker(1, 0) is a  # the same resources: the same actor
        pid = ray.get(a.pid.remote())
        direct.make_room(1, 0)  # 2 CPUs: one trial fits beside the idle actor
        assert direct.worker(1, 0) is a
        direct.make_room(2, 0)  # two do not: it is given back, its process ends
        assert direct._held is None and gone(pid)
        b = direct.worker(0.5, 0)
        other = ray.get(b.pid.remote())
        c = direct.worker(1, 0)  # other resources: a new actor, the old one given back
        assert c is not b and direct._held.resources == (1, 0) and gone(other)
    finally:
        direct.release()
    assert direct._held is None


DIGITS = E2E_PIPELINE.format(data="digits", dense=2, retrain=2)


@pytest.mark.slow
def test_every_single_trial_stage_of_a_run_uses_one_actor(tmp_path, ray_session):
    import yaml

    from safs import runner
    from safs.config import parse_pipeline

    text = DIGITS + ("  - {name: search, kind: activation_search, algorithm: random, options: {samples: 1},"
                     " epochs_per_candidate: 1}\n  - {name: final, kind: train, epochs: 1}\n")
    runner.run(parse_pipeline(yaml.safe_load(text)), tmp_path / "results", quiet=True, echo=lambda _: None)
    run_dir = tmp_path / "results" / "e2e"
    pids = {}
    for name in ("dense", "prune", "retrain", "final"):
        [stage] = run_dir.glob(f"*-{name}-*")
        [attempt] = (stage / "tune").iterdir()
        assert not any(attempt.glob("experiment_state-*"))  # no Tune experiment of its own
        [trial] = attempt.glob("trial_*")
        pids[name] = {x["pid"] for x in result_lines(trial / "result.json")}
        assert by_stage(records(run_dir), name)["status"] == "done"
    # one process for all, kept through the search (its one trial fits beside it on 2 CPUs)
    assert len(set.union(*pids.values())) == 1 and os.getpid() not in pids["dense"]
    assert direct._held is None  # given back when the run ends


@pytest.mark.slow
def test_a_failing_trial_is_retried_then_recorded_as_failed(tmp_path, ray_session):
    import yaml

    from safs import runner
    from safs.config import parse_pipeline
    from safs.errors import StageFailed

    text = DIGITS.replace("optimizer: {name: adam, lr: 0.003}", "optimizer: {name: sgd, lr: 1.0e+12}")
    cfg = parse_pipeline(yaml.safe_load(text + "resources: {max_failures: 1}\n"))
    with pytest.raises(StageFailed, match="training loss is (nan|inf)") as err:
        runner.run(cfg, tmp_path / "results", quiet=True, echo=lambda _: None)
    assert "\n" not in str(err.value)
    rec = by_stage(records(tmp_path / "results" / "e2e"), "dense")
    assert rec["status"] == "failed" and "training loss is" in rec["error"]
    [trial] = (tmp_path / "results" / "e2e").glob("01-dense-*/tune/attempt-1-*/trial_*")
    error = (trial / "error.txt").read_text()
    assert "Failure # 1 (occurred at" in error and "Failure # 2 (occurred at" in error  # tried twice
    assert "raise Diverged" in error and error.count("safs.training.loop.Diverged: training loss is") == 2  # the traceback
    [run] = read_runs(trial.parents[2])
    assert run.error and "training loss is" in run.error
    assert direct._held is None


def newest_epoch(trial: Path) -> int:
    """The epoch of the trial's newest checkpoint whose state loads."""
    import torch

    for d in reversed(direct.checkpoints(trial)):
        try:
            return int(torch.load(d / "state.pt", weights_only=True)["epoch"])
        except Exception:
            continue
    return 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_mid_stage_continues_from_the_newest_checkpoint(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(E2E_PIPELINE.format(data="mnist5k", dense=1, retrain=25))
    results, ray_tmp = tmp_path / "results", tempfile.mkdtemp(prefix="safs-ray-")
    env = subprocess_env(RAY_TMPDIR=ray_tmp)
    cmd = safs_cmd() + ["run", str(f), "--results", str(results), "--quiet", "--num-cpus", "2"]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None:
            lines = [x for t in results.glob("e2e/03-retrain-*/tune/*/trial_*/result.json") for x in result_lines(t)]
            if lines and lines[-1]["epoch"] >= 4:
                break
            time.sleep(0.05)
        assert p.poll() is None, "the run ended before it could be killed:\n" + p.stdout.read()
        os.killpg(p.pid, signal.SIGKILL)  # the driver, its Ray and the trial's actor, mid-epoch
        p.wait()
    finally:
        kill_ray_leftovers(ray_tmp)
    [stage] = results.glob("e2e/03-retrain-*")
    [killed] = stage.glob("tune/attempt-1-*/trial_*")
    kept = newest_epoch(killed)
    assert kept >= 4

    try:
        again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    finally:
        kill_ray_leftovers(ray_tmp)
    assert again.returncode == 0, again.stdout + again.stderr
    rec = by_stage(records(results / "e2e"), "retrain")
    assert rec["status"] == "done" and rec["attempts"] == 2 and rec["resumed_from_epoch"] == kept
    [resumed] = stage.glob("tune/attempt-2-*/trial_*")
    assert [x["epoch"] for x in result_lines(resumed / "result.json")] == list(range(kept + 1, 26))
    assert [h["epoch"] for h in rec["history"]] == list(range(1, 26))
