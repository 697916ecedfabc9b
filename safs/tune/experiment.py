"""Ray glue: start or join Ray, run each stage as Tune experiments, continue stopped ones.

Each run of a search stage is a fresh Tune experiment, ``<stage dir>/tune/attempt-N-<hash>``; a
single-trial stage (train, prune) writes the same directory from the run's long-lived actor
(``safs.tune.direct``), or as a one-trial Tune experiment where Tune must do the work. A stage that
was stopped (SIGINT, SIGTERM, ``ray job stop``, SIGKILL of the driver) continues in the next
attempt from files safs wrote itself: a training trial from its newest loadable epoch
checkpoint (``torch.load(weights_only=True)``), a search from the searcher's JSON state, its
running candidates requeued to resume from their checkpoints. safs never calls
``Tuner.restore``, which would unpickle ``tuner.pkl`` and the experiment state from the
results directory (and freezes the Tune config, ray-project/ray#42221).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from safs.errors import StageFailed, StageInterrupted
from safs.plan import SEARCH_STATE, StagePlan, trial_resources, trial_workers
from safs.tune import direct

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


def ensure_ray(address: str | None = None, num_cpus: float | None = None, verbose: bool = False) -> None:
    """Join the cluster at ``address``, or start a local Ray that listens on 127.0.0.1 only
    (no dashboard, no job server) unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` says otherwise."""
    import ray

    if ray.is_initialized():
        return
    kwargs = dict(logging_level=logging.INFO if verbose else logging.ERROR, log_to_driver=verbose)
    if address:
        ray.init(address=address, **kwargs)
        forward_sigterm()
        return
    # Ray's switch for "local only": node IP 127.0.0.1, so GCS, raylet and agents bind to the
    # loopback instead of every interface. Child processes read it from the environment.
    from ray._private import ray_constants

    os.environ.setdefault(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
    ray_constants.ENABLE_RAY_CLUSTER = os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR].lower() in ("1", "true")
    ray.init(num_cpus=int(num_cpus or os.cpu_count() or 1), include_dashboard=False, **kwargs)
    forward_sigterm()


def forward_sigterm() -> None:
    """Tune checkpoints gracefully on SIGINT only; treat SIGTERM (``ray job stop``, kill) the
    same. Called again after ``ray.init``, whose core worker installs a SIGTERM handler that
    aborts the process."""
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))


def _bar(stage: StagePlan, initial: int = 0):
    """A stage's tqdm bar: candidates of a search stage (activation search, HPO), else epochs."""
    from tqdm import tqdm

    search = stage.is_search
    return tqdm(total=None if search else max(1, stage.epochs), initial=initial, leave=False,
                desc=f"{stage.index + 1:02d} {stage.name}", unit="cand" if search else "epoch")


class EpochBar:
    """A training stage's bar, opened at its first report (at the epoch it resumed from) and
    moved by every report; nothing when ``quiet``."""

    def __init__(self, stage: StagePlan, quiet: bool):
        self.stage, self.quiet, self.bar = stage, quiet, None

    def __call__(self, result: dict) -> None:
        if self.quiet:
            return
        if self.bar is None:
            self.bar = _bar(self.stage, result.get("start_epoch", 0))
        self.bar.n = max(self.bar.n, int(result.get("epoch", 0)))
        self.bar.set_postfix(val_acc=f"{result.get('val_acc', float('nan')):.4f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _progress_callback(stage: StagePlan, quiet: bool):
    from ray import tune

    search = stage.is_search

    class Progress(tune.Callback):
        """A tqdm bar per stage: epochs of a training stage, candidates of a search stage."""

        def __init__(self):
            self._bar = None
            self._epochs = EpochBar(stage, quiet)
            self._best = float("nan")

        def __getstate__(self):  # the bar is not picklable; Tune pickles callbacks into tuner.pkl
            return {"_bar": None, "_epochs": EpochBar(stage, quiet), "_best": float("nan")}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if not search:
                self._epochs(result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            if not search or quiet:
                return
            if self._bar is None:
                self._bar = _bar(stage)
            score = (trial.last_result or {}).get("score", float("nan"))
            if score == score and not score <= self._best:
                self._best = score
            self._bar.update(1)
            self._bar.set_postfix(best=f"{self._best:.4f}")

        def on_experiment_end(self, trials, **info):
            self._epochs.close()
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    return Progress()


def _run_config(stage: StagePlan, spec: dict, quiet: bool, attempt: str):
    from ray import tune

    return tune.RunConfig(
        name=attempt,
        storage_path=str(stage.dir.resolve() / "tune"),  # Tune takes URIs: a relative path has no scheme
        verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1 if stage.is_search else 2),
        failure_config=tune.FailureConfig(max_failures=spec["resources"]["max_failures"]),
        callbacks=[_progress_callback(stage, quiet), *_tracking_callbacks(stage, spec)],
    )


def _tracking_callbacks(stage: StagePlan, spec: dict) -> list:
    """``tracking.mlflow``: Ray Tune's MLflow logger, one MLflow run per trial, tagged with the
    pipeline, the stage and its directory. (TensorBoard needs nothing: Tune writes its event
    files into every trial directory, and ``safs.tune.direct`` the same scalars.)"""
    mlflow = (spec.get("tracking") or {}).get("mlflow")
    if not mlflow:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    tags = {"safs.pipeline": spec["pipeline"], "safs.stage": stage.name, "safs.kind": stage.kind,
            "safs.stage_dir": stage.dir.name}
    if spec.get("variant"):
        tags["safs.variant"] = spec["variant"]
    return [MLflowLoggerCallback(tracking_uri=mlflow.get("tracking_uri"),
                                 experiment_name=mlflow.get("experiment") or spec["pipeline"], tags=tags)]


def _next_attempt(stage: StagePlan) -> str:
    """The Tune experiment name of the stage's next attempt: ``attempt-N-<stage hash>``.

    The name must be unique within the Ray session: Tune stages an experiment's files on the
    driver under ``<session>/artifacts/<start time, in seconds>/<name>/`` and syncs that
    directory to the storage path. Two stages named alike that start in the same second (two
    matrix cells in parallel on one Ray) would share it, and each stage directory would
    receive the other's trials."""
    from safs.tune.trials import attempt_dirs, attempt_number

    done = attempt_dirs(stage.dir)
    return f"attempt-{attempt_number(done[-1].name) + 1 if done else 1}-{stage.hash}"


def _trainable(spec: dict):
    from ray import tune

    from safs.plugins import registered
    from safs.stages import trainable

    res = spec["resources"]
    records = registered()
    resources = {"cpu": res["cpus_per_trial"], "gpu": res["gpus_per_trial"]}
    if trial_workers(spec) > 1:  # a Ray Train run of DDP workers (safs.tune.workers)
        from safs.tune import workers

        trainable, resources = workers.trainable, tune.PlacementGroupFactory(workers.DRIVER_RESOURCES)
    if records:  # the driver's in-process registrations reach the workers through Ray's serialisation
        trainable = tune.with_parameters(trainable, registered=records)
    return tune.with_resources(trainable, resources)


def run_single_trial_stage(stage: StagePlan, spec: dict, quiet: bool = False) -> tuple[direct.Outcome, float]:
    """Run the one trial of ``stage``, continuing from the newest checkpoint of earlier
    attempts; return (its outcome, wall seconds). It runs on the run's long-lived actor
    (``safs.tune.direct``), or as a one-trial Tune experiment where Tune does the work
    (MLflow tracking, multi-worker trials)."""
    from safs.tune.trials import trial_dirs

    # Absolute: the trial's process need not share the driver's working directory.
    earlier = [str(d.resolve()) for d in reversed(trial_dirs(stage.dir))]  # newest first
    config = {"spec": spec, "resume_from": earlier}
    attempt = _next_attempt(stage)
    t0 = time.time()
    if direct.eligible(spec):
        bar = EpochBar(stage, quiet)
        try:
            outcome = direct.run(config, stage.dir.resolve() / "tune" / attempt, spec["resources"], on_result=bar)
        finally:
            bar.close()
    else:
        outcome = _tune_trial(stage, spec, config, quiet, attempt)
    wall = time.time() - t0
    expected = stage.epochs if stage.kind == "train" else 0
    got = outcome.metrics.get("epoch")
    if outcome.error is not None:
        raise StageFailed(f"stage '{stage.name}' failed: {_last_line(outcome.error)} (trial log: {outcome.path})")
    if got != expected or outcome.checkpoint is None:
        raise StageInterrupted(f"stage '{stage.name}' stopped at epoch {got or 0} of {expected}")
    return outcome, wall


def _tune_trial(stage: StagePlan, spec: dict, config: dict, quiet: bool, attempt: str) -> direct.Outcome:
    from ray import tune

    direct.make_room(*trial_resources(spec))  # a multi-worker trial's workers, all of them
    tuner = tune.Tuner(
        _trainable(spec),
        param_space=config,
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True,
                                    trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
        run_config=_run_config(stage, spec, quiet, attempt),
    )
    result = tuner.fit()[0]
    return direct.Outcome(Path(result.path), result.metrics or {},
                          None if result.checkpoint is None else Path(result.checkpoint.path),
                          None if result.error is None else str(result.error))


def run_search_stage(stage: StagePlan, spec: dict, make_optimizer, quiet: bool = False) -> tuple[dict, float]:
    """Run a search stage: a Tune experiment whose trials an ask/tell optimizer
    (``make_optimizer()``) proposes through :class:`safs.tune.searcher.AskTellSearcher`.
    A stopped search continues from its JSON state. Returns (final searcher state, wall seconds)."""
    from ray import tune

    from safs.io import read_json
    from safs.tune.searcher import AskTellSearcher
    from safs.tune.trials import trial_dirs

    st = spec["stage"]
    state_path = stage.dir / SEARCH_STATE
    optimizer = make_optimizer()
    use_directory = getattr(optimizer, "use_directory", None)  # optimizers that keep files of their own
    if use_directory is not None:
        use_directory(stage.dir)
    parallel = st["max_concurrent"] or spec["resources"]["max_concurrent_trials"]
    if optimizer.max_parallel() is not None:
        parallel = min(parallel, optimizer.max_parallel())
    cpus, gpus = trial_resources(spec)
    direct.make_room(parallel * cpus, parallel * gpus)
    searcher = AskTellSearcher(optimizer, parallel, state_path=state_path,
                               locate=lambda ids: [str(d) for d in reversed(trial_dirs(stage.dir, ids))])
    state = read_json(state_path)
    if state is not None:
        searcher.set_state(state)
        searcher.max_concurrent = parallel  # may differ from the stopped run's: it changes no result
        requeued = searcher.requeue_live()
        log.info("%s: continuing after %d candidates; %d rerun from their checkpoints",
                 stage.name, len(searcher.told), len(requeued))
    scheduler = None
    if st.get("fidelity"):
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="epoch", max_t=st["epochs_per_candidate"],
                                  grace_period=st["fidelity"]["min_epochs"],
                                  reduction_factor=st["fidelity"]["reduction_factor"])
    tuner = tune.Tuner(
        _trainable(spec),
        param_space={"spec": spec},
        tune_config=tune.TuneConfig(metric="score", mode="max", num_samples=-1, reuse_actors=True,
                                    search_alg=searcher, scheduler=scheduler,
                                    trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
        run_config=_run_config(stage, spec, quiet, _next_attempt(stage)),
    )
    t0 = time.time()
    tuner.fit()
    # Tune drives its own copy of the searcher (it pickles it into the experiment); the file
    # holds the state of the one that ran.
    state = read_json(state_path) or {}
    if not (state.get("finished") and not state.get("live") and not state.get("pending")):
        raise StageInterrupted(f"stage '{stage.name}' stopped after {len(state.get('told', {}))} candidates")
    return state, time.time() - t0


def _last_line(error: BaseException | str) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__
