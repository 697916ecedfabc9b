"""A trial that spans workers: the Tune trial drives a Ray Train ``TorchTrainer``.

With ``resources.workers_per_trial > 1`` a stage's trial (a train stage, or one candidate of
a search) is still one Ray Tune trial of the stage's experiment, with the same searcher,
scheduler and records. Its trainable (:func:`trainable`) reserves (almost) nothing itself: it
starts a TorchTrainer whose workers (``cpus_per_worker`` / ``gpus_per_worker`` each; gloo on
CPU, NCCL on GPU) run the stage's ordinary trial code under a :class:`WorkerSession`, and it
relays every epoch the workers report to Tune. So Tune's trial directory gets the result lines
(rank 0's metrics) and the ``checkpoint_*`` directories (rank 0's checkpoint) that safs's
readers and resume expect, exactly as a one-process trial writes them.

Why not Ray's ``TuneReportCallback``: it hands Tune the metrics and only the *path* of the
Train checkpoint, so Tune's trial directory would hold no checkpoint, and neither
``tune.get_checkpoint`` after a retry nor a later attempt's resume could find one.

Fault handling stays Tune's: the Train run never retries (``max_failures=0``); a failed
worker fails the Tune trial, which Tune retries up to ``resources.max_failures`` times, and
the new TorchTrainer's workers start from the Tune checkpoint (or from earlier attempts,
``spec["resume_from"]``, as any trial does).
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ray.train.v2.api.callback import UserCallback  # the module is imported where Ray runs the trial

# What the Tune trial itself reserves while its workers run: no CPU or GPU, so that N
# workers of one CPU fit on an N-CPU Ray (the workers' placement group is Train's own, not
# the trial's). Ray refuses an empty request; one byte of the memory resource every node has
# is the smallest real one.
DRIVER_RESOURCES = [{"memory": 1}]

_DONE = "done"
PLACEMENT_GROUP_FILE = "placement_group"  # the workers' placement group id, written by rank 0


def trainable(config: dict, registered: tuple = ()) -> None:
    """Ray Tune function trainable of a multi-worker trial: run the TorchTrainer, relay its
    reports to Tune, and stop its workers if this trial is stopped first."""
    import ray
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    res = config["spec"]["resources"]
    gpu = res["gpus_per_worker"] > 0
    storage = _trial_storage_dir()
    _remove_leaked_placement_groups(Path(storage))  # of an earlier start of this trial that was killed
    name = f"workers-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    restored = tune.get_checkpoint()  # a retry within this attempt continues from here
    reports = Queue(actor_options={"num_cpus": 0})
    per_worker = {"CPU": res["cpus_per_worker"], **({"GPU": res["gpus_per_worker"]} if gpu else {})}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": config, "registered": registered,
                           "restored": None if restored is None else restored.path,
                           "placement_group_file": str(Path(storage) / name / PLACEMENT_GROUP_FILE)},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=int(res["workers_per_trial"]), use_gpu=gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            # Inside the Tune trial's directory, under a name of its own per start: Train never
            # picks up an earlier start's run (restoring is Tune's and safs's job).
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=0),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=None),  # the relay deletes each
            callbacks=[_Relay(reports)],
        ),
    )
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # noqa: BLE001 - re-raised in the trial's thread below
            failure.append(e)
        finally:
            reports.put(_DONE)

    runner = threading.Thread(target=fit, name="safs-workers", daemon=True)
    runner.start()
    controller = None
    try:
        while True:
            item = reports.get()
            if item == _DONE:
                break
            metrics, path, controller = item
            if path is None:
                tune.report(metrics)
                continue
            # Tune copies the directory into its trial directory (checkpoint_NNNNNN) before
            # report returns; Train's copy is then redundant.
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(path))
            shutil.rmtree(path, ignore_errors=True)
    finally:
        if runner.is_alive() and controller is not None:
            ray.kill(controller)  # the trial was stopped (scheduler, interrupt): its workers go with it
            _remove_leaked_placement_groups(Path(storage))
    runner.join()
    if failure:
        raise failure[0]


def _remove_leaked_placement_groups(storage: Path) -> None:
    """Remove the workers' placement groups of this trial's earlier Train runs that did not
    end by themselves. Train removes its placement group when it ends, and has a helper that
    removes it when its controller is killed; but that helper asks Ray's state API, which a
    Ray without its dashboard (safs's local default) does not serve, so a killed trial's
    workers' CPUs would stay reserved and its retry would wait for them forever."""
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    for f in storage.glob(f"workers-*/{PLACEMENT_GROUP_FILE}"):
        pg_id = f.read_text().strip()
        if (placement_group_table().get(pg_id) or {}).get("state") not in (None, "REMOVED"):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
        f.unlink(missing_ok=True)


def _trial_storage_dir() -> str:
    from ray.train._internal.session import get_storage  # Ray's developer API for the trial's storage

    try:
        return get_storage().trial_fs_path
    except Exception:  # noqa: BLE001 - older layouts: the trial's own directory
        from ray import tune

        return tune.get_context().get_trial_dir()


class _Relay(UserCallback):
    """A Train callback (on the Train controller): each consolidated report goes to the Tune
    trial as (rank 0's metrics with every rank's ``sparse_digest``, checkpoint path, the
    controller's handle)."""

    def __init__(self, queue):
        self._queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        import ray

        out = dict(metrics[0])
        out["workers"] = len(metrics)
        out["rank_digests"] = [m.get("sparse_digest") for m in metrics]
        self._queue.put((out, None if checkpoint is None else checkpoint.path,
                         ray.get_runtime_context().current_actor))


def _worker_loop(loop_config: dict) -> None:
    """One worker of the trial: the stage's own trial code, reporting through Ray Train."""
    import torch

    from safs.plugins import install
    from safs.stages import run_stage_trial, session

    install(loop_config["registered"])
    import ray
    import ray.train

    pg = ray.util.get_current_placement_group()
    if pg is not None and ray.train.get_context().get_world_rank() == 0:
        from safs.io import write_text

        write_text(Path(loop_config["placement_group_file"]), pg.id.hex())
    if torch.cuda.is_available() and loop_config["config"]["spec"]["resources"]["gpus_per_worker"] > 0:
        from ray.train.torch import get_device

        torch.cuda.set_device(get_device())  # "cuda" is this worker's GPU from here on
    with session.use(WorkerSession(loop_config["restored"])):
        run_stage_trial(loop_config["config"])


class WorkerSession:
    """:class:`safs.stages.session.Session` of one worker: every rank reports its metrics (Ray
    Train's report is a barrier across the workers), rank 0 alone its checkpoint; the
    checkpoint to continue from is Train's, else the Tune trial's it was started with."""

    def __init__(self, restored: str | None):
        self._restored = restored

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        import ray.train

        if checkpoint is not None and ray.train.get_context().get_world_rank() == 0:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint)))
        else:
            ray.train.report(metrics)

    @contextmanager
    def restored(self) -> Iterator[Path | None]:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                yield Path(d)
            return
        yield None if self._restored is None else Path(self._restored)
