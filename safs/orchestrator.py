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

    search = stage.kind == "activation_search"

    class Progress(tune.Callback):
        """A tqdm bar per stage: epochs of a training stage, candidates of a search stage."""

        def __init__(self):
            self._bar = None
            self._best = float("nan")

        def __getstate__(self):  # the bar is not picklable; Tune pickles callbacks into tuner.pkl
            return {"_bar": None, "_best": float("nan")}

        def _open(self, initial: int = 0):
            if self._bar is None and not quiet:
                from tqdm import tqdm

                self._bar = tqdm(total=None if search else max(1, stage.epochs), initial=initial, leave=False,
                                 desc=f"{stage.index + 1:02d} {stage.name}", unit="cand" if search else "epoch")
            return self._bar

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if search or self._open(result.get("start_epoch", 0)) is None:
                return
            self._bar.n = max(self._bar.n, int(result.get("epoch", 0)))
            self._bar.set_postfix(val_acc=f"{result.get('val_acc', float('nan')):.4f}", refresh=False)
            self._bar.refresh()

        def on_trial_complete(self, iteration, trials, trial, **info):
            if not search or self._open() is None:
                return
            score = (trial.last_result or {}).get("score", float("nan"))
            if score == score and not score <= self._best:
                self._best = score
            self._bar.update(1)
            self._bar.set_postfix(best=f"{self._best:.4f}")

        def on_experiment_end(self, trials, **info):
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    return Progress()


def _run_config(stage: StagePlan, spec: dict, quiet: bool):
    from ray import tune

    return tune.RunConfig(
        name="tune",
        storage_path=str(_experiment_dir(stage).parent),
        verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1 if stage.kind == "activation_search" else 2),
        failure_config=tune.FailureConfig(max_failures=spec["resources"]["max_failures"]),
        callbacks=[_progress_callback(stage, quiet)],
    )


def _experiment_dir(stage: StagePlan) -> Path:
    return stage.dir.resolve() / "tune"  # Tune takes URIs: a relative path has no scheme


def _trainable(spec: dict):
    from ray import tune

    from safs.stages import trainable

    res = spec["resources"]
    return tune.with_resources(trainable, {"cpu": res["cpus_per_trial"], "gpu": res["gpus_per_trial"]})


def _restore(stage: StagePlan, fn):
    from ray import tune

    exp = _experiment_dir(stage)
    if tune.Tuner.can_restore(str(exp)):
        log.info("restoring %s from %s", stage.name, exp)
        return tune.Tuner.restore(str(exp), trainable=fn, resume_errored=True)
    return None


def run_single_trial_stage(stage: StagePlan, spec: dict, quiet: bool = False):
    """Run (or restore) the one-trial Tune experiment of ``stage``; return (Result, wall seconds)."""
    from ray import tune

    fn = _trainable(spec)
    tuner = _restore(stage, fn) or tune.Tuner(
        fn,
        param_space={"spec": spec},
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True,
                                    trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
        run_config=_run_config(stage, spec, quiet),
    )
    t0 = time.time()
    grid = tuner.fit()
    result = grid[0]
    expected = stage.epochs if stage.kind == "train" else 0
    got = (result.metrics or {}).get("epoch")
    if result.error is not None:
        raise StageFailed(f"stage '{stage.name}' failed: {_last_line(result.error)} (trial log: {result.path})")
    if got != expected or result.checkpoint is None:
        raise StageInterrupted(f"stage '{stage.name}' stopped at epoch {got or 0} of {expected}")
    return result, time.time() - t0


def run_search_stage(stage: StagePlan, spec: dict, make_optimizer, quiet: bool = False):
    """Run (or restore) a search stage: a Tune experiment whose trials an ask/tell optimizer
    (``make_optimizer()``, called only for a fresh start) proposes through
    :class:`safs.search.bridge.AskTellSearcher`. Returns (ResultGrid, wall seconds)."""
    from ray import tune

    from safs.search.bridge import AskTellSearcher, read_saved_state

    st = spec["stage"]
    fn = _trainable(spec)
    tuner = _restore(stage, fn)
    if tuner is None:
        optimizer = make_optimizer()
        parallel = st["max_concurrent"] or spec["resources"]["max_concurrent_trials"]
        if optimizer.max_parallel() is not None:
            parallel = min(parallel, optimizer.max_parallel())
        scheduler = None
        if st.get("fidelity"):
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(time_attr="epoch", max_t=st["epochs_per_candidate"],
                                      grace_period=st["fidelity"]["min_epochs"],
                                      reduction_factor=st["fidelity"]["reduction_factor"])
        tuner = tune.Tuner(
            fn,
            param_space={"spec": spec},
            tune_config=tune.TuneConfig(metric="score", mode="max", num_samples=-1, reuse_actors=True,
                                        search_alg=AskTellSearcher(optimizer, parallel), scheduler=scheduler,
                                        trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
            run_config=_run_config(stage, spec, quiet),
        )
    t0 = time.time()
    grid = tuner.fit()
    state = read_saved_state(_experiment_dir(stage)) or {}
    if not (state.get("finished") and not state.get("live")):
        raise StageInterrupted(f"stage '{stage.name}' stopped after {len(state.get('told', {}))} candidates")
    return grid, time.time() - t0


def _last_line(error: BaseException) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__
