"""The plan of a pipeline: its stage graph, stage hashes and run directories.

A stage's directory is ``<results>/<pipeline>/<NN>-<stage>-<hash>/``. The hash covers the
stage's own settings (normalised, defaults included) and the hash of the stage before it, so
changing one stage re-runs it and everything after it, and nothing before it. Cosmetic
fields (stage name, table label, data location, resources) are not part of the hash.

Pure: no Ray, no torch. The only files read are the pipeline's own search-space files
(their choices and digests are part of a search stage's hash).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safs.config import ActivationSearchStage, HpoStage, PipelineConfig, PruneStage, TrainStage
from safs.io import digest, read_json
from safs.settings import HASHED_WHEN_SET, UNHASHED_SETTINGS

# 2: a train stage's model.pt is its selected epoch (was: its last), every trial is seeded.
HASH_VERSION = 2
HASH_LENGTH = 10  # hex digits of a stage hash (and of the HPO space digest in it)
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
        """Epochs of the stage's one trial, or of each candidate of a search stage."""
        st = self.spec["stage"]
        return st.get("epochs") or st.get("epochs_per_candidate") or st.get("epochs_per_trial") or 0

    @property
    def is_search(self) -> bool:
        """Whether a searcher proposes the stage's trials (activation search, HPO): counted in
        candidates, one checkpoint kept per trial, a ``trials.parquet`` and a search state."""
        return self.kind in SEARCH_KINDS


def space_module(kind: str):
    """The module that names, resolves and loads a search stage's space files (``None`` for a
    kind without one): the activation spaces of Stage 1, the HPO spaces of Stage 2."""
    if kind == "activation_search":
        from safs.search import space

        return space
    if kind == "hpo":
        from safs.hpo import space as hpo_space

        return hpo_space
    return None


DATA_READING = ("in_memory", "memory_budget_gb", "loader_workers")


def trial_workers(spec: dict) -> int:
    """The processes one trial of the stage trains on: ``resources.workers_per_trial``, but 1
    for a prune stage, which trains nothing (several are a Ray Train run, safs.tune.workers)."""
    return 1 if spec["kind"] == "prune" else int(spec["resources"].get("workers_per_trial", 1) or 1)


def trial_resources(spec: dict) -> tuple[float, float]:
    """(CPUs, GPUs) one trial of the stage holds while it runs, its workers together."""
    res = spec["resources"]
    if trial_workers(spec) == 1:
        return res["cpus_per_trial"], res["gpus_per_trial"]
    from safs.settings import ResourcesConfig

    return ResourcesConfig.model_construct(**res).per_trial()  # the stored, already validated values


def plan(cfg: PipelineConfig, results_root: Path) -> list[StagePlan]:
    """Resolve every stage to its settings, hash and directory. Reads the search stages'
    space files (nothing else) and writes nothing."""
    run_dir = Path(results_root) / cfg.name
    context = {  # what the first stage's output depends on besides its own settings
        # image_size only where it is set, so the hashes of datasets without one stay as they were;
        # in memory or streamed, a split yields the same batches: how it is read is not hashed
        "data": cfg.data.model_dump(mode="json", exclude={"data_dir", *DATA_READING}
                                    | ({"image_size"} if cfg.data.image_size is None else set())),
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
        if getattr(st, "from_scratch", False):
            input_index = None  # fresh weights: what the first stage starts from
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
            from safs.hpo.space import load_space, resolve_space as resolve_hpo_space

            cs = load_space(resolve_hpo_space(st.space), st.space_options or None)
            settings["space_digest"] = digest(cs.to_serialized_dict(), length=HASH_LENGTH)
            uses_method = pruned
        else:
            assert isinstance(st, TrainStage)
            uses_method = st.sparse if st.sparse is not None else pruned
            pruned = pruned or bool(st.sparse)  # a method trained from scratch keeps going after it
        after_prune.append(pruned)
        sparsity = cfg.sparsity.model_dump(mode="json") if uses_method and cfg.sparsity else None
        hashed = {k: v for k, v in settings.items() if k not in _UNHASHED and k not in UNHASHED_SETTINGS
                  and not (k in HASHED_WHEN_SET and v == HASHED_WHEN_SET[k])}
        upstream = plans[input_index].hash if input_index is not None else context
        payload = {"v": HASH_VERSION, "settings": hashed, "sparsity": sparsity, "upstream": upstream}
        if getattr(st, "settings_from", None):
            payload["settings_from"] = plans[index[st.settings_from]].hash
        if getattr(st, "distill", None) is not None:
            # The teacher by what it is (its hash), not by its name: a changed teacher is a new stage.
            hashed["distill"] = {k: v for k, v in hashed["distill"].items() if k != "teacher"}
            payload["teacher"] = plans[index[st.distill.teacher]].hash
        h = digest(payload, length=HASH_LENGTH)
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
            "tracking": cfg.tracking.model_dump(mode="json"),  # not hashed: it changes no result
        }
        plans.append(StagePlan(i, st.name, st.kind, label, h, run_dir / f"{i + 1:02d}-{st.name}-{h}", spec,
                               input_index))
    return plans
