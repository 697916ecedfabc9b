"""Ray glue: start or join Ray, run one Tune experiment per stage, restore interrupted ones.

Every stage is a Tune experiment stored in ``<stage dir>/tune``. A stage that was interrupted
(SIGINT, SIGTERM, SIGKILL of the driver) is continued with ``Tuner.restore``; its trial
resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from safs.pipeline import StagePlan

log = logging.getLogger("safs")

# Tune snapshots experiment state at most this often; the default ("auto", >= 10 s) can lose
# a whole short stage's progress on SIGKILL.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Frequent snapshots are intended (see above); don't warn about them.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


class StageFailed(RuntimeError):
    pass


class StageInterrupted(RuntimeError):
    pass


def ensure_ray(address: str | None = None, num_cpus: float | None = None, verbose: bool = False) -> None:
    import ray

    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, logging_level=logging.INFO if verbose else logging.ERROR,
                  log_to_driver=verbose)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=int(num_cpus or os.cpu_count() or 1), **kwargs)


def forward_sigterm() -> None:
    """Tune checkpoints gracefully on SIGINT only; treat SIGTERM (``ray job stop``, kill) the same."""
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))


def _progress_callback(stage: StagePlan, quiet: bool):
    from ray import tune

    class Progress(tune.Callback):
        """A tqdm bar per stage, advanced by each reported epoch."""

        def __init__(self):
            self._bar = None

        def __getstate__(self):  # the bar is not picklable; Tune pickles callbacks into tuner.pkl
            return {"_bar": None}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if quiet:
                return
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=max(1, stage.epochs), desc=f"{stage.index + 1:02d} {stage.name}",
                                 unit="epoch", leave=False, initial=result.get("start_epoch", 0))
            self._bar.n = max(self._bar.n, int(result.get("epoch", 0)))
            self._bar.set_postfix(val_acc=f"{result.get('val_acc', float('nan')):.4f}", refresh=False)
            self._bar.refresh()

        def on_experiment_end(self, trials, **info):
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    return Progress()


def run_single_trial_stage(stage: StagePlan, spec: dict, quiet: bool = False):
    """Run (or restore) the one-trial Tune experiment of ``stage``; return its Result."""
    from ray import tune

    from safs.stages import trainable

    res = spec["resources"]
    fn = tune.with_resources(trainable, {"cpu": res["cpus_per_trial"], "gpu": res["gpus_per_trial"]})
    exp = stage.dir.resolve() / "tune"  # Tune takes URIs: a relative path has no scheme
    if tune.Tuner.can_restore(str(exp)):
        log.info("restoring %s from %s", stage.name, exp)
        tuner = tune.Tuner.restore(str(exp), trainable=fn, resume_errored=True)
    else:
        tuner = tune.Tuner(
            fn,
            param_space={"spec": spec},
            tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True,
                                        trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(exp.parent),
                verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                failure_config=tune.FailureConfig(max_failures=res["max_failures"]),
                callbacks=[_progress_callback(stage, quiet)],
            ),
        )
    t0 = time.time()
    grid = tuner.fit()
    result = grid[0]
    expected = stage.epochs if stage.kind == "train" else 0
    got = (result.metrics or {}).get("epoch")
    if result.error is not None:
        lines = [ln.strip() for ln in str(result.error).splitlines() if ln.strip()]
        raise StageFailed(f"stage '{stage.name}' failed: {lines[-1] if lines else type(result.error).__name__}"
                          f" (trial log: {result.path})")
    if got != expected or result.checkpoint is None:
        raise StageInterrupted(f"stage '{stage.name}' stopped at epoch {got or 0} of {expected}")
    return result, time.time() - t0
