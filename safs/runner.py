"""The run loop: skip done stages, continue interrupted ones, set damaged ones aside, and
complete each stage by writing its ``model.pt`` and, last and atomically, its ``stage.json``."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import yaml

from safs.config import PipelineConfig
from safs.errors import StageFailed, StageInterrupted
from safs.io import copy_file, exclusive, read_json, sha256, write_json, write_parquet, write_text
from safs.plan import MODEL, RECORD, TRIALS, StagePlan, plan, trial_workers
from safs.records import damage, is_done, make_row, read_record, write_cell
from safs.tune import direct, experiment


def run(cfg: PipelineConfig, results_root: Path, *, address: str | None = None, num_cpus: float | None = None,
        quiet: bool = False, verbose: bool = False, echo=print, stored: dict | None = None,
        rerun: set[str] | None = None) -> list[StagePlan]:
    """Run every stage that is not done yet, in order. Done stages are skipped; interrupted
    ones continue where they stopped; a changed stage gets a new hash and directory. A done
    stage whose model fails its checksum, or whose input was rerun, runs again.

    ``rerun``: names of stage directories (re)trained so far, shared by the matrix cells of
    one ``safs run``; this run adds its own."""
    plans = plan(cfg, results_root)
    run_dir = Path(results_root) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "pipeline.yaml", yaml.safe_dump(stored or cfg.model_dump(mode="json"), sort_keys=False))
    write_cell(run_dir, cfg.variant, plans)
    experiment.forward_sigterm()
    rerun = set() if rerun is None else rerun
    try:
        for st in plans:
            tag = f"[{st.index + 1:02d}] {st.name:<12}"
            # Matrix cells running in parallel share prefix stages: one of them trains a shared
            # stage, the others wait for it and then find it done.
            with exclusive(run_dir / f".{st.hash}.lock", wait=True,
                           on_wait=lambda: echo(f"{tag} waiting: another process is running this stage")):
                _run_stage(st, plans, cfg, run_dir, rerun, tag,
                           lambda: experiment.ensure_ray(address, num_cpus, verbose), quiet, echo)
    finally:
        direct.release()  # the run's trial actor holds resources until it is given back
    return plans


def _run_stage(st: StagePlan, plans: list[StagePlan], cfg: PipelineConfig, run_dir: Path, rerun: set[str], tag: str,
               ray_up, quiet: bool, echo) -> None:
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
    teacher = _teacher(st, plans)
    if teacher is not None:
        spec["teacher"] = str(teacher.model_path.resolve())
    if st.spec["stage"].get("settings_from"):
        spec["stage"] = _with_incumbent(spec["stage"], next(p for p in plans if p.name == st.spec["stage"]["settings_from"]))
    record = {"status": "running", "name": st.name, "kind": st.kind, "index": st.index, "hash": st.hash,
              "settings": spec["stage"], "seed": cfg.seed, "spec": spec, "started": time.time(),
              "input_sha256": (read_record(source) or {}).get("model_sha256") if source else None,
              "workers": trial_workers(spec)}
    if teacher is not None:
        record["teacher_sha256"] = (read_record(teacher) or {}).get("model_sha256")
    previous_record = read_record(st) or {}
    record["attempts"] = int(previous_record.get("attempts", 0)) + 1
    write_json(st.record_path, record)
    try:
        if st.is_search:
            rec = _run_search(st, spec, record, quiet)
        else:
            outcome, wall = experiment.run_single_trial_stage(st, spec, quiet=quiet)
            rec = _complete(st, spec, record, outcome.checkpoint, outcome.metrics.get("trial_id", ""), wall)
    except StageFailed as e:
        write_json(st.record_path, {**record, "status": "failed", "error": str(e)})
        raise
    except StageInterrupted as e:
        write_json(st.record_path, {**record, "status": "interrupted", "error": str(e)})
        raise
    echo(f"{tag} done in {rec['wall_s']:.1f}s  {_summary(rec)}")


def _dependencies(st: StagePlan, plans: list[StagePlan]) -> list[StagePlan]:
    """The stages whose output ``st`` uses: its input model, its ``settings_from`` stage and
    its distillation teacher."""
    deps = [plans[st.input_index]] if st.input_index is not None else []
    source = st.spec["stage"].get("settings_from")
    teacher = _teacher(st, plans)
    return deps + [p for p in plans if p.name == source] + ([teacher] if teacher is not None else [])


def _teacher(st: StagePlan, plans: list[StagePlan]) -> StagePlan | None:
    distill = st.spec["stage"].get("distill")
    return next(p for p in plans if p.name == distill["teacher"]) if distill else None


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
    teacher = _teacher(st, plans)
    if teacher is not None:
        recorded = (read_record(st) or {}).get("teacher_sha256")
        if recorded and recorded != (read_record(teacher) or {}).get("model_sha256"):
            return f"its teacher (stage '{teacher.name}') is not the model it was distilled from"
    return damage(st)


def _set_aside(st: StagePlan, run_dir: Path) -> Path:
    """Move a stage directory that must rerun out of the way, keeping it (results are never
    deleted): ``<run>/.replaced/<stage dir>-<time>``."""
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
        raise StageFailed(f"stage '{hpo.name}' has no incumbent configuration (is it done?)")
    from safs.settings import TrainingSettings

    return {**settings, **{k: incumbent[k] for k in TrainingSettings.model_fields if k in incumbent}}


def _run_search(st: StagePlan, spec: dict, record: dict, quiet: bool) -> dict:
    """Run the search, write ``trials.parquet``, keep the best candidate as the stage's model."""
    from safs.tune.trials import best_candidate, trials_frame

    state, wall = experiment.run_search_stage(st, spec, lambda: _optimizer(spec), quiet=quiet)
    stage = spec["stage"]
    # Only the candidates the optimizer was told about: a rerun candidate's earlier, stopped
    # trial is merged into its row.
    trials = trials_frame(st.dir, stage, {int(v["token"]) for v in state["told"].values()})
    one_trial = _one_trial(spec)
    if one_trial:
        _oneshot_genomes(trials, st.dir)
    write_parquet(st.dir / TRIALS, trials)
    best = best_candidate(trials, st.dir)
    if best is None:
        raise StageFailed(f"stage '{st.name}' failed: no candidate finished "
                                       f"({len(trials)} tried; see {st.dir / TRIALS})")
    row, checkpoint = best
    if one_trial:
        _write_mixture(checkpoint, st.dir)
    epochs = int(trials["epochs"].sum())
    # search_epochs: the training epochs the search spent over all its candidates (its cost);
    # epochs_spent: the same figure under its earlier name.
    search = {"algorithm": stage.get("algorithm") or stage.get("backend"), "candidates": len(trials),
              "by_status": trials["status"].value_counts().to_dict(),
              "search_epochs": epochs, "epochs_spent": epochs, "best_score": row["score"]}
    if stage.get("fidelity"):
        search["rung_spearman"] = rung_spearman(trials, stage)
    if row["genome"] is not None:
        search["best_genome"] = json.loads(row["genome"])
    else:
        from safs.hpo.space import trial_settings

        search["incumbent"] = json.loads(row["config"])
        search["incumbent_settings"] = trial_settings(stage, search["incumbent"])
    return _complete(st, spec, {**record, "search": search}, checkpoint, row["trial_id"], wall)


def _one_trial(spec: dict) -> bool:
    if spec["kind"] != "activation_search":
        return False
    from safs.search import is_one_trial

    return is_one_trial(spec["stage"]["algorithm"])


def _oneshot_genomes(trials, stage_dir: Path) -> None:
    """A one-trial search's row carries the genome its trial ended with (its discretized
    network), not the placeholder the trial was started with."""
    from safs.tune.trials import final_checkpoint

    for i, trial_id in trials["trial_id"].items():
        ckpt = final_checkpoint(stage_dir, trial_id)
        history = json.loads((ckpt / "history.json").read_text()) if ckpt is not None else []
        if history and history[-1].get("genome"):
            trials.at[i, "genome"] = history[-1]["genome"]


MIXTURE = "mixture.parquet"


def _write_mixture(checkpoint: Path, stage_dir: Path) -> None:
    """The operator weights of every slot at every epoch (epoch, slot, operator, weight)."""
    import pandas as pd

    rows = json.loads((checkpoint / "mixture.json").read_text())
    write_parquet(stage_dir / MIXTURE, pd.DataFrame(rows, columns=["epoch", "slot", "operator", "weight"]))


def fidelity_rungs(stage: dict) -> list[int]:
    """The epochs at which successive halving compares candidates: min_epochs times powers of
    the reduction factor, below the full budget."""
    full, fid = stage["epochs_per_candidate"], stage["fidelity"]
    rungs, r = [], float(fid["min_epochs"])
    while round(r) < full:
        if round(r) not in rungs:
            rungs.append(int(round(r)))
        r *= fid["reduction_factor"]
    return rungs


def rung_spearman(trials, stage: dict) -> dict[str, float | None]:
    """For each rung r: Spearman's rho between the candidates' best validation accuracy within
    their first r epochs and their full-budget score, over the candidates that reached the
    full budget (``None`` with fewer than two of them, or when either side is constant)."""
    import numpy as np
    import pandas as pd

    full = stage["epochs_per_candidate"]
    done = trials[(trials["status"] == "done") & (trials["epochs"] >= full)]
    out: dict[str, float | None] = {}
    for r in fidelity_rungs(stage):
        early = done["val_acc_per_epoch"].map(lambda v: float(np.max(list(v)[:r])) if len(v) else float("nan"))
        pair = pd.DataFrame({"early": early.to_numpy(), "full": done["score"].to_numpy()}).dropna()
        rho = None
        if len(pair) >= 2 and pair["early"].nunique() > 1 and pair["full"].nunique() > 1:
            ranks = pair.rank(method="average")
            rho = float(np.corrcoef(ranks["early"], ranks["full"])[0, 1])
        out[str(r)] = rho
    return out


def _optimizer(spec: dict):
    """The stage's ask/tell optimizer: a genome search or an HPO backend (driver side)."""
    st = spec["stage"]
    seed = spec["seed"] if st.get("seed") is None else st["seed"]
    if spec["kind"] == "activation_search":
        from safs.search import create_optimizer
        from safs.activations import genome
        from safs.model_file import load_model
        from safs.search.space import genome_space

        model, _ = load_model(spec["input"])
        return create_optimizer(st["algorithm"], genome_space(genome(model), st["choices"]), seed=seed,
                                options=st["options"])
    from safs.config import backend_options_for
    from safs.settings import TrainingSettings
    from safs.hpo.backends import create_backend
    from safs.hpo.space import load_space, resolve_space, with_defaults

    cs = with_defaults(load_space(resolve_space(st["space"]), st["space_options"] or None),
                       {k: st[k] for k in TrainingSettings.model_fields})
    return create_backend(st["backend"], cs, seed, backend_options_for(st))


def _complete(st: StagePlan, spec: dict, record: dict, checkpoint: Path, trial_id: str, wall: float) -> dict:
    """Copy the stage's model out of the ``checkpoint`` directory and write ``stage.json``
    (last, atomically)."""
    import ray
    import torch

    import safs
    from safs.model_file import load_model
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
