"""The ``pipeline.yaml`` schema.

A pipeline file is validated completely here, before any directory is created or any Ray
process starts. Every problem is reported as one line that names the field path and, where
there is a closed set, the accepted values (``ConfigError``; the CLI turns it into exit code 2).
"""

from __future__ import annotations

import copy
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from safs.io import deep_merge
from safs.settings import DistillConfig, ResourcesConfig, TrainingSettings, _Strict  # noqa: F401 (ResourcesConfig: the schema's)


class ConfigError(ValueError):
    """A pipeline file that cannot run. ``str(err)`` is the one-line message for the user."""


# --------------------------------------------------------------------------- blocks

def _one_of(value: str, names: list[str], what: str, *, also: str = "") -> str:
    """``value`` if it is one of ``names``; else the one-line "unknown <what>" error."""
    if value not in names:
        raise ValueError(f"unknown {what} '{value}'; accepted: {', '.join(names)}{also}")
    return value


class DataConfig(_Strict):
    name: str
    data_dir: str | None = None
    split_seed: int = 0
    val_fraction: float | None = Field(default=None, gt=0, lt=1)
    test_fraction: float | None = Field(default=None, gt=0, lt=1)
    # [H, W] (or one int) of the image-tree datasets (imagefolder, imagenet); None: their default.
    image_size: list[int] | int | None = None
    # Image trees: decode into memory (true), stream from the files (false), or decide by the
    # memory budget (auto; safs.data.streaming). Other datasets are always in memory.
    in_memory: Literal["auto"] | bool = "auto"
    memory_budget_gb: float | None = Field(default=None, gt=0)  # auto's budget; None: half the free memory
    loader_workers: int | None = Field(default=None, ge=0)  # streamed: DataLoader processes; None: the trial's CPUs

    @field_validator("in_memory", mode="before")
    @classmethod
    def _in_memory(cls, v: Any, info) -> Any:
        from safs.data import DataError, check_in_memory

        try:
            check_in_memory(info.data.get("name") or "", v)
        except DataError as e:  # its message names the field already
            raise ValueError(str(e).removeprefix("data.in_memory: ")) from None
        return v

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from safs.data import list_datasets

        return _one_of(v, list_datasets(), "dataset")

    @field_validator("image_size", mode="before")
    @classmethod
    def _image_size(cls, v: Any, info) -> list[int] | None:
        if v is None:
            return None
        from safs.data import sized_datasets
        from safs.data.imagefolder import check_image_size

        name = info.data.get("name")
        if name is not None and name not in sized_datasets():
            raise ValueError(f"dataset '{name}' has a fixed image size; image_size is only for "
                             f"{', '.join(sized_datasets())}")
        try:
            return list(check_image_size(name or "imagefolder", v))
        except ValueError as e:  # DataError: its message names the field already
            raise ValueError(str(e).removeprefix("data.image_size: ")) from None


class ModelConfig(_Strict):
    name: str
    activation: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from safs.models import TORCHVISION_PREFIX, list_models

        if v.startswith(TORCHVISION_PREFIX):
            return v
        return _one_of(v, list_models(), "model", also=f", or {TORCHVISION_PREFIX}<name>")

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, v: str | None) -> str | None:
        from safs.activations import list_operators

        return v if v is None else _one_of(v, list_operators(), "activation")


class SparsityConfig(_Strict):
    method: str
    target: float = Field(ge=0, lt=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from safs.sparsity import list_methods

        return _one_of(v, list_methods(), "method")


class MlflowTracking(_Strict):
    """Every trial of every stage as an MLflow run (Ray Tune's ``MLflowLoggerCallback``)."""

    tracking_uri: str | None = None  # None: MLflow's own default (MLFLOW_TRACKING_URI, ...)
    experiment: str | None = None  # None: the pipeline's name

    @model_validator(mode="after")
    def _installed(self) -> "MlflowTracking":
        import importlib.util

        if importlib.util.find_spec("mlflow") is None:
            raise ValueError("needs the mlflow package, which is not installed: pip install 'safs[mlflow]'")
        return self


class TrackingConfig(_Strict):
    """Where else results go besides the run directory; never hashed (it changes no result).
    TensorBoard event files are always written (``tune/attempt-N-<hash>/trial_*/``)."""

    mlflow: MlflowTracking | None = None


class TrainStage(TrainingSettings):
    kind: Literal["train"]
    name: str
    label: str | None = None  # column title in tables; default derived from the name
    input: str | None = None  # the stage whose model this one starts from; default: the one before
    epochs: int = Field(ge=1)
    # Train with the best configuration an hpo stage found (its optimizer, schedule, α/β
    # settings, ...) instead of this stage's own training settings; epochs stay this stage's.
    settings_from: str | None = None
    # Whether the sparse method's training hooks run in this stage. None: only after a prune
    # stage (keeps masks fixed while retraining); true: also from scratch (e.g. GMP).
    sparse: bool | None = None
    # Which epoch the stage keeps (its row, its model.pt, the next stage's start): the best
    # validation accuracy among the epochs at the stage's final sparsity, or the last epoch
    # (safs.training.selection).
    select: Literal["best", "last"] = "best"
    # Start from freshly initialised weights (the pipeline's seed) instead of an earlier stage's
    # model: a method trained from scratch after a teacher stage (SAS).
    from_scratch: bool = False
    # Distil from an earlier stage's model (safs.training.recipes.Distiller).
    distill: DistillConfig | None = None


class FidelityConfig(_Strict):
    """Successive halving on epochs (ASHA): candidates below the top 1/reduction_factor at an
    epoch rung (min_epochs, min_epochs*rf, ...) stop early."""

    min_epochs: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=3.0, gt=1)


class ActivationSearchStage(TrainingSettings):
    """Stage 1 of SAFS: choose one activation operator per slot by fine-tuning candidates."""

    kind: Literal["activation_search"]
    name: str
    label: str | None = None
    input: str | None = None
    algorithm: str = "lahc"
    options: dict[str, Any] = Field(default_factory=dict)  # the algorithm's own settings
    space: str = "safs13"  # a built-in space (search_spaces/activations) or a YAML path
    epochs_per_candidate: int = Field(default=5, ge=1)
    # Where candidates start: the previous stage's model, or the most recent prune stage's
    # model before any fine-tuning (what the original SAFS code does).
    start_from: Literal["input", "pruned"] = "input"
    max_concurrent: int | None = Field(default=None, ge=1)  # default: resources.max_concurrent_trials
    fidelity: FidelityConfig | None = None
    seed: int | None = None  # the search's own seed (repeat a search on the same prefix); default: the pipeline's

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, v: str) -> str:
        from safs.search import list_optimizers

        return _one_of(v, list_optimizers(), "search algorithm")

    @property
    def epochs(self) -> int:
        return self.epochs_per_candidate


class HpoStage(TrainingSettings):
    """Stage 2 of SAFS: tune the training configuration (and learn α, β) of the sparse network."""

    kind: Literal["hpo"]
    name: str
    label: str | None = None
    input: str | None = None
    backend: str = "smac"  # smac | optuna
    options: dict[str, Any] = Field(default_factory=dict)  # the backend's own settings
    space: str = "safs"  # a built-in space (search_spaces/hpo) or a YAML path
    space_options: dict[str, Any] = Field(default_factory=dict)  # e.g. {linear_weight_decay: true}
    trials: int = Field(default=20, ge=1)
    epochs_per_trial: int = Field(default=5, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)
    seed: int | None = None
    scales_trainable: bool = True

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        from safs.hpo.backends import list_backends

        return _one_of(v, list_backends(), "HPO backend")

    @property
    def epochs(self) -> int:
        return self.epochs_per_trial

    def backend_options(self) -> dict[str, Any]:
        """The backend's constructor options: the stage's ``options``, its trial count and,
        for multi-fidelity SMAC, epochs as the budget (1 .. epochs_per_trial by default)."""
        return backend_options_for(self.model_dump(mode="json"))


def backend_options_for(stage: dict) -> dict[str, Any]:
    options = dict(stage["options"], n_trials=stage["trials"])
    if options.get("facade") == "multi_fidelity":
        options.setdefault("max_budget", float(stage["epochs_per_trial"]))
        options.setdefault("min_budget", 1.0)
    return options


class PruneStage(_Strict):
    kind: Literal["prune"]
    name: str
    label: str | None = None
    input: str | None = None
    target: float | None = Field(default=None, ge=0, lt=1)  # default: sparsity.target
    eval_batch_size: int = Field(default=1024, ge=1)


Stage = Annotated[Union[TrainStage, PruneStage, ActivationSearchStage, HpoStage], Field(discriminator="kind")]
STAGE_KINDS = ("train", "prune", "activation_search", "hpo")


class PipelineConfig(_Strict):
    name: str
    variant: str | None = None  # set by a ``matrix:`` expansion, e.g. "method=gmp,target=0.9"
    seed: int = 0
    data: DataConfig
    model: ModelConfig
    sparsity: SparsityConfig | None = None
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    stages: list[Stage] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        # The name becomes a directory: keep it to one portable path component.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", v):
            raise ValueError("must be 1-100 characters of letters, digits, '_', '.', '-' (it names a directory)")
        return v

    @model_validator(mode="after")
    def _stage_graph(self) -> "PipelineConfig":
        seen: set[str] = set()
        last_target = 0.0
        for i, st in enumerate(self.stages):
            if st.name in seen:
                raise _FieldError(f"stages[{i}].name", f"duplicate stage name '{st.name}'; stage names must be unique")
            seen.add(st.name)
            if i == 0 and st.kind != "train":
                raise _FieldError(
                    "stages[0].kind",
                    f"'{st.kind}' cannot be the first stage: there is no trained model yet; accepted first kinds: train",
                )
            if st.kind == "prune":
                if self.sparsity is None:
                    raise _FieldError("sparsity", f"stage '{st.name}' prunes, so the pipeline needs a sparsity block (method, target)")
                target = self.prune_target(st)
                if target < last_target:
                    raise _FieldError(
                        f"stages[{i}].target",
                        f"{target} is below the earlier prune target {last_target}; masks only grow",
                    )
                last_target = target
            elif st.kind == "train" and st.sparse and self.sparsity is None:
                raise _FieldError(f"stages[{i}].sparse", "true needs a sparsity block (method, target)")
            elif isinstance(st, ActivationSearchStage):
                _check_search_stage(st, f"stages[{i}]", any(s.kind == "prune" for s in self.stages[:i]))
            elif isinstance(st, HpoStage):
                _check_hpo_stage(st, f"stages[{i}]")
            _check_protocol(self, i)
            earlier = {s.name: s.kind for s in self.stages[:i]}
            if st.input is not None and st.input not in earlier:
                raise _FieldError(f"stages[{i}].input", f"'{st.input}' is not an earlier stage; "
                                  f"accepted: {', '.join(earlier) or '(none)'}")
            if isinstance(st, ActivationSearchStage) and st.input is not None and st.start_from == "pruned":
                raise _FieldError(f"stages[{i}].start_from", "give either input or start_from: pruned, not both")
            if isinstance(st, TrainStage):
                _check_train_sources(st, f"stages[{i}]", list(earlier))
            source = getattr(st, "settings_from", None)
            if source is not None and earlier.get(source) != "hpo":
                hpo = [n for n, k in earlier.items() if k == "hpo"]
                raise _FieldError(f"stages[{i}].settings_from", f"'{source}' is not an earlier hpo stage; "
                                  f"accepted: {', '.join(hpo) or '(none)'}")
        return self

    def prune_target(self, stage: PruneStage) -> float:
        assert self.sparsity is not None
        return stage.target if stage.target is not None else self.sparsity.target


def _check_protocol(cfg: "PipelineConfig", i: int) -> None:
    """A stage may run the method only the way its paper does (``safs.sparsity.PROTOCOLS``):
    no method may silently become another."""
    from safs.sparsity import list_methods, method_protocol

    st = cfg.stages[i]
    if cfg.sparsity is None:
        return
    method = cfg.sparsity.method
    protocol = method_protocol(method)
    if st.kind == "prune" and protocol == "during_training":
        one_shot = [m for m in list_methods() if method_protocol(m) != "during_training"]
        raise _FieldError("sparsity.method", f"'{method}' sparsifies during training, so prune stage "
                          f"'{st.name}' would make it one-shot pruning; use a train stage with sparse: true "
                          f"instead (prune stages accept: {', '.join(one_shot)})")


def _check_train_sources(st: "TrainStage", path: str, earlier: list[str]) -> None:
    if st.from_scratch and st.input is not None:
        raise _FieldError(f"{path}.from_scratch", "give either input or from_scratch: true, not both")
    if st.distill is not None and st.distill.teacher not in earlier:
        raise _FieldError(f"{path}.distill.teacher", f"'{st.distill.teacher}' is not an earlier stage; "
                          f"accepted: {', '.join(earlier) or '(none)'}")


def _check_search_stage(st: ActivationSearchStage, path: str, after_prune: bool) -> None:
    from safs.search import GenomeSpace, create_optimizer

    if st.fidelity is not None and st.fidelity.min_epochs >= st.epochs_per_candidate:
        raise _FieldError(f"{path}.fidelity.min_epochs", f"{st.fidelity.min_epochs} must be below "
                          f"epochs_per_candidate ({st.epochs_per_candidate})")
    from safs.search import is_one_trial

    if st.fidelity is not None and is_one_trial(st.algorithm):
        raise _FieldError(f"{path}.fidelity", f"'{st.algorithm}' trains one candidate; successive halving "
                          "has nothing to stop (remove fidelity)")
    if st.start_from == "pruned" and not after_prune:
        raise _FieldError(f"{path}.start_from", "'pruned' needs an earlier prune stage; accepted: input, pruned")
    try:  # the algorithm's options, checked on a stand-in space
        create_optimizer(st.algorithm, GenomeSpace(slots=("a", "b"), choices=("relu", "tanh"), baseline="relu"),
                         seed=0, options=st.options)
    except (ValueError, TypeError) as e:
        raise _FieldError(f"{path}.options", str(e)) from None


def _check_hpo_stage(st: HpoStage, path: str) -> None:
    import ConfigSpace as CS

    from safs.hpo.backends import backend_options, create_backend

    if "n_trials" in st.options:
        raise _FieldError(f"{path}.options", "'n_trials': the trial count is the stage's 'trials'")
    try:  # option names and values, on a stand-in space (builds no SMAC facade or Optuna study)
        create_backend(st.backend, CS.ConfigurationSpace({"x": (0.0, 1.0)}), 0, st.backend_options())
    except (ValueError, TypeError) as e:
        accepted = [k for k in backend_options(st.backend) if k != "n_trials"]
        raise _FieldError(f"{path}.options", f"{e}" if "accepted" in str(e) else f"{e}; accepted: {', '.join(accepted)}") from None


class _FieldError(ValueError):
    """Raised inside validators to report a precise field path (pydantic would report the parent)."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path, self.message = path, message


# --------------------------------------------------------------------------- loading

def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline file without a matrix; raise ConfigError with a one-line message."""
    path = Path(path)
    return parse_pipeline(_read_yaml(path), source=path.name)


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path.name}: invalid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path.name}: not a text file") from None
    return raw


def load_pipelines(path: str | Path, overrides: typing.Sequence[str] = ()) -> tuple[list[PipelineConfig], dict | None]:
    """Read a pipeline file that may hold a ``matrix:``; return its pipelines (one per matrix
    cell, else one) and the matrix. ``overrides`` (``KEY=VALUE``) apply first (``parse_pipelines``)."""
    path = Path(path)
    raw = _read_yaml(path)
    return parse_pipelines(raw, source=path.name, overrides=overrides)


def parse_pipelines(raw: Any, source: str = "pipeline",
                    overrides: typing.Sequence[str] = ()) -> tuple[list[PipelineConfig], dict | None]:
    """``matrix: {dotted.path: [values...]}`` expands one file into the product of its values.
    Paths address the file's keys (``sparsity.method``, ``seed``, ``model.name``) and stages
    by name (``stages.search.algorithm``). All cells share one run directory, so stages with
    equal settings (e.g. the dense stage of every method) are trained once.

    ``overrides``: ``KEY=VALUE`` strings with the same paths (``apply_overrides``), applied
    before anything is validated; an error they cause names the override."""
    if overrides:
        return _parse_with_overrides(raw, source, list(overrides))
    if not isinstance(raw, dict) or "matrix" not in raw:
        return [parse_pipeline(raw, source)], None
    raw = copy.deepcopy(raw)
    matrix = raw.pop("matrix")
    if not isinstance(matrix, dict) or not matrix or not all(isinstance(v, list) and v for v in matrix.values()):
        raise ConfigError(f"{source}: matrix: expected a mapping from a dotted field path to a non-empty list "
                          "of values, e.g. {{sparsity.target: [0.9, 0.99], seed: [0, 1]}}")
    import itertools

    out = []
    for values in itertools.product(*matrix.values()):
        cell = copy.deepcopy(raw)
        for key, value in zip(matrix, values):
            _set_path(cell, key, value, source)
        cell["variant"] = ",".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in zip(matrix, values))
        try:
            out.append(parse_pipeline(cell, source))
        except ConfigError as e:
            raise ConfigError(f"{e} (matrix cell {cell['variant']})") from None
    return out, matrix


def _short(value: Any) -> str:
    """A matrix value in a cell's name: a block (``{name: vgg11, options: ...}``) by its name."""
    if isinstance(value, dict):
        rest = {k: v for k, v in value.items() if k != "name"}
        inner = ",".join(f"{k}={_short(v)}" for k, v in rest.items())
        return f"{value.get('name', '')}({inner})" if inner else str(value.get("name", inner))
    return str(value)


def _set_path(raw: dict, key: str, value: Any, source: str, label: str | None = None) -> None:
    label = label or f"matrix.{key}"  # what an error names
    node: Any = raw
    parts = str(key).split(".")
    for part in parts[:-1]:
        if isinstance(node, list):  # inside stages: a stage, by name
            match = [st for st in node if isinstance(st, dict) and st.get("name") == part]
            if not match:
                names = ", ".join(str(st.get("name")) for st in node if isinstance(st, dict))
                raise ConfigError(f"{source}: {label}: no stage named '{part}'; accepted: {names}")
            node = match[0]
        else:
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]
    if isinstance(node, list):
        raise ConfigError(f"{source}: {label}: a path into stages needs a stage name and a field")
    node[parts[-1]] = value


# --------------------------------------------------------------------------- overrides

_OVERRIDE_KEY = re.compile(r"[^.\s=]+(\.[^.\s=]+)*")


def parse_override(text: str, source: str = "pipeline") -> tuple[str, Any]:
    """``KEY=VALUE``: a dotted path as in ``matrix:`` and a YAML scalar (or flow collection)."""
    key, sep, value = str(text).partition("=")
    if not sep or not _OVERRIDE_KEY.fullmatch(key):
        raise ConfigError(f"{source}: override '{text}': expected KEY=VALUE with a dotted path as in matrix:, "
                          "e.g. stages.dense.epochs=5, seed=1, sparsity.target=0.95")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}: {text}: the value is not valid YAML ({problem})") from None


def apply_overrides(raw: Any, overrides: typing.Sequence[str], source: str = "pipeline") -> dict:
    """A copy of the mapping ``raw`` with each ``KEY=VALUE`` set, in order. Paths are those of
    ``matrix:`` (stages by name: ``stages.retrain.epochs=5``); ``matrix.PATH=[...]`` sets a
    matrix axis, and a key the matrix sweeps narrows that axis to the one value."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: overrides need a mapping; got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    for text in overrides:
        key, value = parse_override(text, source)
        matrix = raw.get("matrix")
        if key.startswith("matrix."):
            raw["matrix"] = dict(matrix) if isinstance(matrix, dict) else {}
            raw["matrix"][key.removeprefix("matrix.")] = value
        elif isinstance(matrix, dict) and key in matrix:
            raw["matrix"] = {**matrix, key: [value]}
        else:
            _set_path(raw, key, value, source, label=text)
    return raw


def _parse_with_overrides(raw: Any, source: str, overrides: list[str]):
    for text in overrides:  # each is well-formed (an error here names it already)
        parse_override(text, source)
    try:
        return parse_pipelines(apply_overrides(raw, overrides, source), source)
    except ConfigError:
        parse_pipelines(raw, source)  # the file's own error, if it has one, is reported as such
        for n in range(1, len(overrides) + 1):  # else: the first override that breaks it
            try:
                parse_pipelines(apply_overrides(raw, overrides[:n], source), source)
            except ConfigError as e:
                raise ConfigError(_name_override(str(e), source, overrides[n - 1], raw)) from None
        raise


def _name_override(message: str, source: str, text: str, raw: dict) -> str:
    """``src: stages[2].epochz: unknown key`` -> ``src: stages.retrain.epochz=3: unknown key``."""
    detail = message.removeprefix(f"{source}: ")
    if detail.startswith(f"{text}: "):
        return message  # the override is named already (e.g. an unknown stage)
    at = _located(raw, text.partition("=")[0])
    rest = detail[len(at) + 2:] if detail.startswith(f"{at}: ") else detail
    return f"{source}: {text}: {rest}"


def _located(raw: dict, key: str) -> str:
    """A dotted path as validation errors spell it: stages by index (``stages[2].epochs``)."""
    head, _, tail = key.partition(".")
    stages = raw.get("stages")
    if head == "stages" and tail and isinstance(stages, list):
        name, _, rest = tail.partition(".")
        names = [st.get("name") if isinstance(st, dict) else None for st in stages]
        if name in names:
            return f"stages[{names.index(name)}]" + (f".{rest}" if rest else "")
    return key


def parse_pipeline(raw: Any, source: str = "pipeline") -> PipelineConfig:
    top_keys = ", ".join([*PipelineConfig.model_fields, "matrix"])
    if raw is None:
        raise ConfigError(f"{source}: the file is empty; expected a mapping with keys: {top_keys}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with keys: {top_keys}; got {type(raw).__name__}")
    raw = _apply_stage_defaults(raw, source)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_first_error(e)}") from None
    except _FieldError as e:  # raised outside pydantic's wrapping (defensive)
        raise ConfigError(f"{source}: {e.path}: {e.message}") from None


def _apply_stage_defaults(raw: dict, source: str) -> dict:
    """``defaults: {train: {...}}`` is merged under every train stage, so pipelines stay short."""
    raw = copy.deepcopy(raw)
    defaults = raw.pop("defaults", None)
    if defaults is None:
        return raw
    if not isinstance(defaults, dict) or not set(defaults) <= set(STAGE_KINDS):
        raise ConfigError(f"{source}: defaults: expected a mapping from stage kind to settings; accepted kinds: {', '.join(STAGE_KINDS)}")
    stages = raw.get("stages")
    if isinstance(stages, list):
        raw["stages"] = [deep_merge(_defaults_for(st.get("kind"), defaults), st) if isinstance(st, dict) else st
                         for st in stages]
    return raw


def _defaults_for(kind: Any, defaults: dict) -> dict:
    # Training settings under defaults.train also apply to search candidates, so a pipeline
    # states its optimizer once.
    own = defaults.get(kind) or {}
    if kind not in ("activation_search", "hpo") or not isinstance(defaults.get("train"), dict):
        return own
    shared = {k: v for k, v in defaults["train"].items() if k in TrainingSettings.model_fields}
    return deep_merge(shared, own) if isinstance(own, dict) else own


def _fmt_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _first_error(e: ValidationError) -> str:
    errs = e.errors(include_url=False)
    # A typo shows up as an unknown key *and* a missing field; the unknown key is the cause.
    err = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
    raw_loc = tuple(err["loc"])
    # Drop the discriminator tag pydantic inserts into union paths (stages.0.train.epochs).
    loc = tuple(p for i, p in enumerate(raw_loc) if not _is_tag(raw_loc, i))
    ctx = err.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, _FieldError):
        return f"{inner.path}: {inner.message}"
    kind, msg, value = err["type"], err["msg"], err.get("input")
    path = _fmt_loc(loc)
    if kind == "extra_forbidden":
        parent = _model_at(raw_loc[:-1])
        # Identity keys first (stage classes inherit their training settings before them).
        keys = sorted(parent.model_fields, key=lambda k: k not in ("kind", "name", "label")) if parent else []
        accepted = f"; accepted keys: {', '.join(keys)}" if parent else ""
        return f"{path}: unknown key{accepted}"
    if kind == "missing":
        return f"{path}: required field is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        got = "missing" if kind == "union_tag_not_found" else f"unknown kind {ctx.get('tag')!r}"
        return f"{path}.kind: {got}; accepted: {', '.join(STAGE_KINDS)}"
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif value is not None and not isinstance(value, (dict, list)):
        msg = f"{msg} (got {value!r})"
    return f"{path}: {msg}"


_STAGE_CLASSES = {"train": TrainStage, "prune": PruneStage, "activation_search": ActivationSearchStage,
                  "hpo": HpoStage}


def _is_tag(loc: tuple, i: int) -> bool:
    return i > 0 and isinstance(loc[i - 1], int) and loc[i] in _STAGE_CLASSES


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class a location path points into (to list its accepted keys)."""
    model: Any = PipelineConfig
    for i, part in enumerate(loc):
        if isinstance(part, int):
            continue
        if _is_tag(loc, i):
            model = _STAGE_CLASSES[part]
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = next((a for a in (field.annotation, *typing.get_args(field.annotation)) if hasattr(a, "model_fields")), None)
    return model if hasattr(model, "model_fields") else None
