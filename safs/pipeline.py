"""Stage graph, stage hashing, run directories, skip/resume and status.

A stage's directory is ``<results>/<pipeline>/<NN>-<stage>-<hash>/``. The hash covers the
stage's own settings (normalised, defaults included) and the hash of the stage before it, so
changing one stage re-runs it and everything after it, and nothing before it. Cosmetic
fields (stage name, table label, data location, resources) are not part of the hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safs.config import ActivationSearchStage, HpoStage, PipelineConfig, PruneStage, TrainStage
from safs.io import read_json

# 2: a train stage's model.pt is its selected epoch (was: its last), every trial is seeded.
HASH_VERSION = 2
RECORD = "stage.json"
MODEL = "model.pt"

DEFAULT_LABELS = {"dense": "Dense", "prune": "Pruned", "retrain": "Magnitude Pruning", "final": "Final",
                  "search": "Stage 1 search", "hpo": "Stage 2 search"}
TRIALS = "trials.parquet"
SEARCH_STATE = "search_state.json"  # the searcher's JSON state, rewritten on every change
SEARCH_KINDS = ("activation_search", "hpo")  # stages whose trials a searcher proposes
# Settings that change neither a stage's result nor its meaning: left out of its hash.
_UNHASHED = {"name", "label", "space", "max_concurrent", "input", "settings_from"}


@dataclass(frozen=True)
class StagePlan:
    index: int
    name: str
    kind: str
    label: str
    hash: str
    dir: Path
    spec: dict[str, Any] = field(repr=False)  # everything a trial needs; JSON-serialisable
    input_index: int | None = None  # the stage whose model.pt this stage starts from

    @property
    def record_path(self) -> Path:
        return self.dir / RECORD

    @property
    def model_path(self) -> Path:
        return self.dir / MODEL

    @property
    def epochs(self) -> int:
        st = self.spec["stage"]
        return st.get("epochs") or st.get("epochs_per_candidate") or st.get("epochs_per_trial") or 0


def _digest(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def plan(cfg: PipelineConfig, results_root: Path) -> list[StagePlan]:
    """Resolve every stage to its settings, hash and directory (no I/O)."""
    run_dir = Path(results_root) / cfg.name
    context = {  # what the first stage's output depends on besides its own settings
        "data": cfg.data.model_dump(mode="json", exclude={"data_dir"}),
        "model": cfg.model.model_dump(mode="json"),
        "seed": cfg.seed,
    }
    index = {st.name: i for i, st in enumerate(cfg.stages)}
    after_prune: list[bool] = []  # whether a prune stage lies on each stage's input chain
    last_prune: int | None = None
    plans: list[StagePlan] = []
    for i, st in enumerate(cfg.stages):
        settings = st.model_dump(mode="json", exclude={"name", "label"})
        input_index = index[st.input] if st.input is not None else (i - 1 if i > 0 else None)
        if isinstance(st, ActivationSearchStage) and st.start_from == "pruned":
            input_index = last_prune
        pruned = input_index is not None and after_prune[input_index]
        if isinstance(st, PruneStage):
            settings["target"] = cfg.prune_target(st)
            uses_method = pruned = True
            last_prune = i
        elif isinstance(st, ActivationSearchStage):
            from safs.search.space import load_choices, resolve_space

            settings["choices"] = load_choices(resolve_space(st.space))
            uses_method = pruned
        elif isinstance(st, HpoStage):
            from safs.search.hpo_space import load_space, resolve_space as resolve_hpo_space

            cs = load_space(resolve_hpo_space(st.space), st.space_options or None)
            settings["space_digest"] = _digest(cs.to_serialized_dict())
            uses_method = pruned
        else:
            assert isinstance(st, TrainStage)
            uses_method = st.sparse if st.sparse is not None else pruned
            pruned = pruned or bool(st.sparse)  # a method trained from scratch keeps going after it
        after_prune.append(pruned)
        sparsity = cfg.sparsity.model_dump(mode="json") if uses_method and cfg.sparsity else None
        hashed = {k: v for k, v in settings.items() if k not in _UNHASHED}
        upstream = plans[input_index].hash if input_index is not None else context
        payload = {"v": HASH_VERSION, "settings": hashed, "sparsity": sparsity, "upstream": upstream}
        if getattr(st, "settings_from", None):
            payload["settings_from"] = plans[index[st.settings_from]].hash
        h = _digest(payload)
        label = st.label or DEFAULT_LABELS.get(st.name, st.name)
        spec = {
            "pipeline": cfg.name,
            "variant": cfg.variant,
            "index": i,
            "name": st.name,
            "kind": st.kind,
            "label": label,
            "hash": h,
            "seed": cfg.seed,
            "stage": settings,
            "sparsity": sparsity,
            "data": cfg.data.model_dump(mode="json"),
            "model": cfg.model.model_dump(mode="json"),
            "resources": cfg.resources.model_dump(mode="json"),
        }
        plans.append(StagePlan(i, st.name, st.kind, label, h, run_dir / f"{i + 1:02d}-{st.name}-{h}", spec,
                               input_index))
    return plans


def read_record(stage: StagePlan) -> dict | None:
    return read_json(stage.record_path)


def is_done(stage: StagePlan) -> bool:
    rec = read_record(stage)
    return bool(rec) and rec.get("status") == "done" and rec.get("hash") == stage.hash and stage.model_path.is_file()


def epochs_completed(stage: StagePlan) -> int:
    """Epochs a (possibly interrupted) stage has reported, from its Tune trial logs."""
    from safs.search.trials import result_lines, trial_dirs

    return max((int(x.get("epoch", 0)) for d in trial_dirs(stage.dir) for x in result_lines(d / "result.json")),
               default=0)


def damage(stage: StagePlan) -> str | None:
    """Why a finished stage's ``model.pt`` cannot be trusted (``None`` when it can): its
    SHA-256 must match the one ``stage.json`` recorded when the stage finished."""
    from safs.io import sha256

    expected = (read_record(stage) or {}).get("model_sha256")
    if not stage.model_path.is_file():
        return f"{MODEL} is missing"
    actual = sha256(stage.model_path)
    if expected and actual != expected:
        return (f"{MODEL} does not match its checksum in {RECORD} (sha256 {actual[:12]}, recorded "
                f"{expected[:12]}): truncated or corrupt")
    return None


def stage_status(stage: StagePlan) -> str:
    if is_done(stage):
        why = damage(stage)
        return f"corrupt ({why}; the next run reruns it)" if why else "done"
    if not stage.dir.exists():
        return "pending"
    rec = read_record(stage) or {}
    if rec.get("status") == "failed":
        return f"failed ({rec.get('error', 'see stage.json')})"
    if stage.kind == "train":
        return f"partial (epoch {epochs_completed(stage)} of {stage.epochs})"
    if stage.kind in SEARCH_KINDS:
        told = len(((read_json(stage.dir / SEARCH_STATE) or {}).get("told") or {}))
        return f"partial ({told} candidates finished)"
    return "partial"


# --------------------------------------------------------------------------- running

def run(cfg: PipelineConfig, results_root: Path, *, address: str | None = None, num_cpus: float | None = None,
        quiet: bool = False, verbose: bool = False, echo=print, stored: dict | None = None,
        rerun: set[str] | None = None) -> list[StagePlan]:
    """Run every stage that is not done yet, in order. Done stages are skipped; interrupted
    ones continue where they stopped; a changed stage gets a new hash and directory. A done
    stage whose model fails its checksum, or whose input was rerun, runs again.

    ``rerun``: names of stage directories (re)trained so far, shared by the matrix cells of
    one ``safs run``; this run adds its own."""
    import yaml

    from safs import orchestrator
    from safs.io import exclusive, write_text

    plans = plan(cfg, results_root)
    run_dir = Path(results_root) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "pipeline.yaml", yaml.safe_dump(stored or cfg.model_dump(mode="json"), sort_keys=False))
    orchestrator.forward_sigterm()
    rerun = set() if rerun is None else rerun
    for st in plans:
        tag = f"[{st.index + 1:02d}] {st.name:<12}"
        # Matrix cells running in parallel share prefix stages: one of them trains a shared
        # stage, the others wait for it and then find it done.
        with exclusive(run_dir / f".{st.hash}.lock", wait=True,
                       on_wait=lambda: echo(f"{tag} waiting: another process is running this stage")):
            _run_stage(st, plans, cfg, run_dir, rerun, tag, lambda: orchestrator.ensure_ray(address, num_cpus, verbose),
                       quiet, echo)
    return plans


def _run_stage(st: StagePlan, plans: list[StagePlan], cfg: PipelineConfig, run_dir: Path, rerun: set[str], tag: str,
               ray_up, quiet: bool, echo) -> None:
    import time

    from safs import orchestrator
    from safs.io import write_json

    if is_done(st):
        why = _stale(st, plans, rerun)
        if why is None:
            echo(f"{tag} done (cached)  {_summary(read_record(st))}")
            return
        kept = _set_aside(st, run_dir)
        echo(f"{tag} rerunning: {why} (old directory kept as {kept.relative_to(run_dir)})")
    rerun.add(st.dir.name)
    ray_up()
    source = plans[st.input_index] if st.input_index is not None else None
    spec = dict(st.spec, input=str(source.model_path.resolve()) if source else None)
    if st.spec["stage"].get("settings_from"):
        spec["stage"] = _with_incumbent(spec["stage"], next(p for p in plans if p.name == st.spec["stage"]["settings_from"]))
    record = {"status": "running", "name": st.name, "kind": st.kind, "index": st.index, "hash": st.hash,
              "settings": spec["stage"], "seed": cfg.seed, "spec": spec, "started": time.time(),
              "input_sha256": (read_record(source) or {}).get("model_sha256") if source else None}
    previous_record = read_record(st) or {}
    record["attempts"] = int(previous_record.get("attempts", 0)) + 1
    write_json(st.record_path, record)
    try:
        if st.kind in SEARCH_KINDS:
            rec = _run_search(st, spec, record, quiet)
        else:
            result, wall = orchestrator.run_single_trial_stage(st, spec, quiet=quiet)
            rec = _complete(st, spec, record, Path(result.checkpoint.path), result.metrics.get("trial_id", ""), wall)
    except orchestrator.StageFailed as e:
        write_json(st.record_path, {**record, "status": "failed", "error": str(e)})
        raise
    except orchestrator.StageInterrupted as e:
        write_json(st.record_path, {**record, "status": "interrupted", "error": str(e)})
        raise
    echo(f"{tag} done in {rec['wall_s']:.1f}s  {_summary(rec)}")


def _dependencies(st: StagePlan, plans: list[StagePlan]) -> list[StagePlan]:
    """The stages whose output ``st`` uses: its input model and its ``settings_from`` stage."""
    deps = [plans[st.input_index]] if st.input_index is not None else []
    source = st.spec["stage"].get("settings_from")
    return deps + [p for p in plans if p.name == source]


def _stale(st: StagePlan, plans: list[StagePlan], rerun: set[str]) -> str | None:
    """Why a finished stage must run again (``None``: it stays cached)."""
    if st.dir.name in rerun:
        return None  # made by this run (for another matrix cell)
    for dep in _dependencies(st, plans):
        if dep.dir.name in rerun:
            return f"stage '{dep.name}' it depends on was rerun"
    if st.input_index is not None:
        recorded = (read_record(st) or {}).get("input_sha256")
        current = (read_record(plans[st.input_index]) or {}).get("model_sha256")
        if recorded and recorded != current:
            return f"its input (stage '{plans[st.input_index].name}') is not the model it was trained from"
    return damage(st)


def _set_aside(st: StagePlan, run_dir: Path) -> Path:
    """Move a stage directory that must rerun out of the way, keeping it (results are never
    deleted): ``<run>/.replaced/<stage dir>-<time>``."""
    import time

    dest = run_dir / ".replaced" / f"{st.dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.parent.mkdir(exist_ok=True)
    n = 1
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{dest.name.rsplit('.', 1)[0]}.{n}")
    st.dir.rename(dest)
    return dest


def _with_incumbent(settings: dict, hpo: StagePlan) -> dict:
    """A train stage's settings with the training configuration an hpo stage found."""
    incumbent = ((read_record(hpo) or {}).get("search") or {}).get("incumbent_settings")
    if incumbent is None:
        from safs.orchestrator import StageFailed

        raise StageFailed(f"stage '{hpo.name}' has no incumbent configuration (is it done?)")
    from safs.config import TrainingSettings

    return {**settings, **{k: incumbent[k] for k in TrainingSettings.model_fields}}


def _run_search(st: StagePlan, spec: dict, record: dict, quiet: bool) -> dict:
    """Run the search, write ``trials.parquet``, keep the best candidate as the stage's model."""
    from safs import orchestrator
    from safs.io import write_parquet
    from safs.search.trials import best_candidate, trials_frame

    state, wall = orchestrator.run_search_stage(st, spec, lambda: _optimizer(spec), quiet=quiet)
    stage = spec["stage"]
    # Only the candidates the optimizer was told about: a rerun candidate's earlier, stopped
    # trial is merged into its row.
    trials = trials_frame(st.dir, stage, {int(v["token"]) for v in state["told"].values()})
    write_parquet(st.dir / TRIALS, trials)
    best = best_candidate(trials, st.dir)
    if best is None:
        raise orchestrator.StageFailed(f"stage '{st.name}' failed: no candidate finished "
                                       f"({len(trials)} tried; see {st.dir / TRIALS})")
    row, checkpoint = best
    search = {"algorithm": stage.get("algorithm") or stage.get("backend"), "candidates": len(trials),
              "by_status": trials["status"].value_counts().to_dict(),
              "epochs_spent": int(trials["epochs"].sum()), "best_score": row["score"]}
    if row["genome"] is not None:
        search["best_genome"] = json.loads(row["genome"])
    else:
        from safs.stages.hpo import trial_settings

        search["incumbent"] = json.loads(row["config"])
        search["incumbent_settings"] = trial_settings(stage, search["incumbent"])
    return _complete(st, spec, {**record, "search": search}, checkpoint, row["trial_id"], wall)


def _optimizer(spec: dict):
    """The stage's ask/tell optimizer: a genome search or an HPO backend (driver side)."""
    st = spec["stage"]
    seed = spec["seed"] if st.get("seed") is None else st["seed"]
    if spec["kind"] == "activation_search":
        from safs.search import create_optimizer
        from safs.search.space import genome_space
        from safs.stages.common import load_model

        model, _ = load_model(spec["input"])
        return create_optimizer(st["algorithm"], genome_space(model, st["choices"]), seed=seed, options=st["options"])
    from safs.config import TrainingSettings, backend_options_for
    from safs.search.hpo_backends import create_backend
    from safs.search.hpo_space import load_space, resolve_space, with_defaults

    cs = with_defaults(load_space(resolve_space(st["space"]), st["space_options"] or None),
                       {k: st[k] for k in TrainingSettings.model_fields})
    return create_backend(st["backend"], cs, seed, backend_options_for(st))


def _complete(st: StagePlan, spec: dict, record: dict, checkpoint: Path, trial_id: str, wall: float) -> dict:
    """Copy the stage's model out of the ``checkpoint`` directory and write ``stage.json``
    (last, atomically)."""
    import platform
    import time

    import ray
    import torch

    import safs
    from safs.io import copy_file, sha256, write_json
    from safs.report.rows import make_row
    from safs.stages.common import load_model
    from safs.training.measure import measure

    copy_file(checkpoint / MODEL, st.model_path)
    history = json.loads((checkpoint / "history.json").read_text())
    model, blob = load_model(st.model_path)
    m = measure(model, tuple(blob["model"]["input_shape"]))
    row = make_row(spec, history, m, wall_s=wall, trial_id=trial_id, status="done",
                   finetune_epochs=_finetune_epochs(st, spec, history))
    rec = {
        **record,
        "status": "done",
        "finished": time.time(),
        "wall_s": wall,
        "resumed_from_epoch": max((h.get("start_epoch", 0) for h in history), default=0),
        "history": history,
        "genome": blob["genome"],
        "measurement": m.as_dict(),
        "row": row,
        "model_sha256": sha256(st.model_path),
        "versions": {"safs": safs.__version__, "torch": torch.__version__, "ray": ray.__version__,
                     "python": platform.python_version()},
    }
    write_json(st.record_path, rec)
    return rec


def _finetune_epochs(st: StagePlan, spec: dict, history: list[dict]) -> int:
    """Epochs of training behind this stage's model since the last prune stage on its lineage
    (a prune stage starts the count at 0): its input's count plus the epochs this stage (or
    its chosen candidate) trained."""
    if st.kind == "prune":
        return 0
    upstream = 0
    if spec.get("input"):
        rec = read_json(Path(spec["input"]).parent / RECORD) or {}
        upstream = int((rec.get("row") or {}).get("finetune_epochs") or 0)
    return upstream + int(history[-1].get("epoch", 0) if history else 0)


def _summary(rec: dict | None) -> str:
    row = (rec or {}).get("row") or {}
    if not row:
        return ""
    epoch = f" (epoch {row['selected_epoch']})" if row.get("selected_epoch") else ""
    return (f"val_acc={row['val_acc']:.4f} test_acc={row['test_acc']:.4f} "
            f"sparsity={row['achieved_sparsity']:.4f}{epoch}")
