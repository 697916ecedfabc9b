"""Single-trial stages on one long-lived Ray actor instead of a Tune experiment each.

A train or prune stage is one trial. As its own Tune experiment it paid about 2 s on a 2-core
CPU before its first epoch: Tune's controller, a fresh trial actor, and torch imported there
again (``benchmarks/stage_overhead.py``; the README has the figures). Here the driver keeps
one actor per run, created with the stage's ``cpus_per_trial``/``gpus_per_trial`` and reused by
every single-trial stage that asks for the same resources, so torch and the dataset cache of
``safs.stages.common`` stay loaded between stages. The actor runs the same
``safs.stages.trainable`` under a :class:`TrialSession` that writes what a Tune trial leaves:

    tune/attempt-N-<hash>/trial_<id>/params.json     the trial's config (the driver writes it)
                                    /result.json     one JSON line per report, Tune's fields added
                                    /checkpoint_<k>/  the newest two epoch checkpoints
                                    /error.txt       one "Failure # n" entry per failure
                                    /events.out.tfevents.*  TensorBoard scalars, as Tune's logger

so the readers of ``safs.tune.trials``, ``resume_from`` and the records work unchanged. Each
checkpoint is copied under a hidden name and renamed into place before its result line is
written and before the oldest is deleted: a SIGKILL at any moment leaves a loadable checkpoint.

On a cluster the actor runs wherever Ray places it and writes the trial directory itself, so
the results directory must be on storage every node sees, as Tune's ``storage_path`` requires.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

RESULT = "result.json"
ERROR = "error.txt"
KEEP = 2  # checkpoints kept per trial, as the Tune path's num_to_keep
POLL_S = 0.2  # how often the driver reads new result lines for the progress bar
# Tune's TensorBoard logger leaves these out of the scalars
_NOT_LOGGED = ("config", "pid", "timestamp", "time_total_s", "training_iteration")


def eligible(spec: dict) -> bool:
    """Whether a single-trial stage runs here. MLflow tracking is Tune's logger callback and a
    multi-worker trial is a Ray Train run inside Tune: both stay on the Tune path."""
    if (spec.get("tracking") or {}).get("mlflow"):
        return False
    from safs.plan import trial_workers

    return trial_workers(spec) == 1


@dataclass
class Outcome:
    """How a trial ended: its last report (``{}`` without one), its newest checkpoint, and the
    error of its last failure when the retries ran out."""

    path: Path
    metrics: dict = field(default_factory=dict)
    checkpoint: Path | None = None
    error: str | None = None


# ------------------------------------------------------------------ the trial's side (the actor)


def checkpoints(trial_dir: Path) -> list[Path]:
    """A trial's checkpoint directories, oldest first (hidden, half-copied ones excluded)."""
    return sorted(d for d in Path(trial_dir).glob("checkpoint_*") if d.is_dir())


class TrialSession:
    """``safs.stages.session.Session`` writing a Tune-shaped trial directory. A retry in the
    same directory continues its checkpoint numbering, iteration count and total time."""

    def __init__(self, trial_dir: Path, trial_id: str):
        from safs.tune.trials import result_lines

        self.dir, self.trial_id = Path(trial_dir), trial_id
        earlier = result_lines(self.dir / RESULT)
        self._iteration = int(earlier[-1].get("training_iteration", 0)) if earlier else 0
        self._total_before = float(earlier[-1].get("time_total_s", 0.0)) if earlier else 0.0
        self._iterations_before = self._iteration
        ckpts = checkpoints(self.dir)
        self._next = int(ckpts[-1].name.rsplit("_", 1)[1]) + 1 if ckpts else 0
        self._start = self._last = time.time()
        self._host, self._ip, self._writer = socket.gethostname(), _node_ip(), None
        self.last: dict = {}

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        now = time.time()
        self._iteration += 1
        result = dict(metrics)
        if checkpoint is not None:
            name = f"checkpoint_{self._next:06d}"
            tmp = self.dir / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)  # left by a kill mid-copy
            shutil.copytree(checkpoint, tmp)
            os.replace(tmp, self.dir / name)
            self._next += 1
            result["checkpoint_dir_name"] = name
        result.update({
            "trial_id": self.trial_id, "training_iteration": self._iteration, "done": False,
            "timestamp": int(now), "date": datetime.fromtimestamp(now).strftime("%Y-%m-%d_%H-%M-%S"),
            "time_this_iter_s": now - self._last, "time_total_s": self._total_before + now - self._start,
            "time_since_restore": now - self._start,
            "iterations_since_restore": self._iteration - self._iterations_before,
            "pid": os.getpid(), "hostname": self._host, "node_ip": self._ip,
        })
        self._last = now
        with open(self.dir / RESULT, "a") as f:  # a line cut by a kill is skipped by its readers
            f.write(json.dumps(result, default=str) + "\n")
        for old in checkpoints(self.dir)[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        self._tensorboard(result)
        self.last = result

    @contextmanager
    def restored(self) -> Iterator[Path | None]:
        ckpts = checkpoints(self.dir)
        yield ckpts[-1] if ckpts else None

    def _tensorboard(self, result: dict) -> None:
        """The scalars Tune's TensorBoard logger writes (``ray/tune/<metric>`` per iteration)."""
        import math

        if self._writer is None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # Tune's logger is skipped the same way
                self._writer = False
                return
            self._writer = SummaryWriter(str(self.dir), flush_secs=30)
        if self._writer is False:
            return
        for key, value in result.items():
            if key not in _NOT_LOGGED and isinstance(value, (int, float)) and not math.isnan(value):
                self._writer.add_scalar(f"ray/tune/{key}", value, global_step=self._iteration)
        self._writer.flush()

    def close(self) -> None:
        if self._writer:
            self._writer.close()


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


class TrialWorker:
    """The actor: runs one trial at a time, each under its own :class:`TrialSession`."""

    def pid(self) -> int:
        return os.getpid()

    def run(self, config: dict, trial_dir: str, trial_id: str, registered: tuple = ()) -> dict:
        from safs.stages import session, trainable

        trial = TrialSession(Path(trial_dir), trial_id)
        try:
            with session.use(trial):
                trainable(config, registered=registered)
        finally:
            trial.close()
            _free_device_cache()
        return trial.last


def _free_device_cache() -> None:
    """An idle actor keeps no cached GPU memory that other trials (a search's) could use."""
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------- the driver


@dataclass
class _Held:
    handle: object
    resources: tuple[float, float]
    job: str


_held: _Held | None = None


def _job() -> str:
    import ray

    return ray.get_runtime_context().get_job_id()


def worker(cpus: float, gpus: float):
    """The run's actor for these resources: the one held if it matches, else a new one (the
    one held is given back first, so its resources are free for the new one)."""
    global _held
    import ray

    if _held is not None and (_held.resources != (cpus, gpus) or _held.job != _job()):
        release()
    if _held is None:
        actor = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0)(TrialWorker)
        _held = _Held(actor.remote(), (cpus, gpus), _job())
    return _held.handle


def release() -> None:
    """Give the held actor back (its process ends; its resources are free)."""
    global _held
    held, _held = _held, None
    if held is None:
        return
    import ray

    if ray.is_initialized() and held.job == _job():
        try:
            ray.kill(held.handle)
        except Exception:  # already dead: nothing to free
            pass


def make_room(cpus: float, gpus: float) -> None:
    """Before a Tune experiment that wants ``cpus``/``gpus`` at once: keep the idle actor (the
    next single-trial stage reuses it) only if the experiment's trials fit beside it."""
    if _held is None:
        return
    import ray

    free = ray.available_resources()
    if free.get("CPU", 0.0) + 1e-9 < cpus or free.get("GPU", 0.0) + 1e-9 < gpus:
        release()


def new_trial_id() -> str:
    return f"{uuid.uuid4().hex[:5]}_00000"  # the shape of Tune's ids


def run(config: dict, attempt_dir: Path, resources: dict, on_result: Callable[[dict], None] = lambda r: None
        ) -> Outcome:
    """Run one trial of ``config`` in a new trial directory of ``attempt_dir`` on the run's
    actor, retrying a failure (an error, the actor's death) up to ``resources["max_failures"]``
    times from the trial's newest checkpoint. ``on_result`` sees every report as it lands.

    A SIGINT (SIGTERM is forwarded to it) kills the actor at once and returns what the trial
    reported so far; the caller decides from the epoch reached whether the stage finished."""
    import ray
    from ray.exceptions import RayError

    from safs.io import write_json
    from safs.plugins import registered

    trial_id = new_trial_id()
    trial_dir = Path(attempt_dir) / f"trial_{trial_id}"
    write_json(trial_dir / "params.json", config)
    follow = _Follower(trial_dir / RESULT, on_result)
    records, failures = registered(), 0
    try:
        while True:
            ref = worker(resources["cpus_per_trial"], resources["gpus_per_trial"]).run.remote(
                config, str(trial_dir), trial_id, records)
            try:
                while not ray.wait([ref], timeout=POLL_S)[0]:
                    follow()
                ray.get(ref)
                follow()
                return _outcome(trial_dir)
            except RayError as e:
                release()  # a fresh process for the retry, as Tune gives a failed trial
                failures += 1
                follow()
                _append_error(trial_dir, failures, str(e))
                if failures > resources["max_failures"]:
                    return _outcome(trial_dir, error=str(e))
    except KeyboardInterrupt:
        release()
        follow()
        return _outcome(trial_dir)


def _outcome(trial_dir: Path, error: str | None = None) -> Outcome:
    from safs.tune.trials import result_lines

    lines = result_lines(trial_dir / RESULT)
    ckpts = checkpoints(trial_dir)
    return Outcome(trial_dir, lines[-1] if lines else {}, ckpts[-1] if ckpts else None, error)


def _append_error(trial_dir: Path, n: int, text: str) -> None:
    """Tune's ``error.txt``: one entry per failure, appended."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    with open(trial_dir / ERROR, "a") as f:
        f.write(f"Failure # {n} (occurred at {stamp})\n{text}\n")


class _Follower:
    """Hands each complete new line of a growing ``result.json`` to ``on_result``."""

    def __init__(self, path: Path, on_result: Callable[[dict], None]):
        self.path, self.on_result, self.offset = path, on_result, 0

    def __call__(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next call
        self.offset += end
        for line in chunk[:end].splitlines():
            try:
                self.on_result(json.loads(line))
            except ValueError:
                continue
