"""A pipeline file made runnable: relative paths resolved against the file, search spaces
resolved and loaded, the budget resolved, the dataset and the model (with its sparse method)
checked once on the CPU. Everything here fails with a one-line :class:`ConfigError` before
anything is written or any Ray process starts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from safs.budget import resolve_budget
from safs.config import ConfigError, load_pipelines, parse_pipelines
from safs.plan import space_module


def load(path: Path | Mapping, overrides: Sequence[str] = ()):
    """Validate a pipeline file completely (schema, data files, model options) before anything
    runs, after its ``KEY=VALUE`` overrides; return its pipelines (several with a ``matrix:``)
    and the matrix. ``path`` may also be the pipeline's mapping itself: its relative paths are
    then relative to the working directory."""
    if isinstance(path, Mapping):
        cfgs, matrix = parse_pipelines(dict(path), "pipeline", overrides)
        path = Path.cwd() / "pipeline"  # what relative paths resolve against, and errors name
    else:
        cfgs, matrix = load_pipelines(path, overrides)
    return [preflight(cfg, Path(path)) for cfg in cfgs], matrix


def resolved(cfgs, matrix: dict | None) -> dict:
    """The validated pipeline as a run directory stores it (``pipeline.yaml``, for ``safs
    resume``): one pipeline's settings, defaults filled in; with a matrix, the first cell's
    settings and the matrix that re-expands every cell."""
    if matrix:
        return {**cfgs[0].model_dump(mode="json", exclude={"variant"}), "matrix": matrix}
    return cfgs[0].model_dump(mode="json")


def preflight(cfg, path: Path):
    data = cfg.data
    if data.data_dir is not None:
        # Relative data directories are relative to the pipeline file, not the shell.
        d = Path(data.data_dir).expanduser()
        d = d if d.is_absolute() else (path.parent / d)
        cfg = cfg.model_copy(update={"data": data.model_copy(update={"data_dir": str(d.resolve())})})
    cfg = resolve_tracking(cfg, path)
    cfg = resolve_spaces(cfg, path)
    cfg = resolve_budget(cfg, path)
    from safs.data import DataError, check_dataset

    try:
        check_dataset(cfg.data.name, cfg.data.data_dir, cfg.data.image_size)
    except DataError as e:
        raise ConfigError(f"{path.name}: {e}") from None
    try:
        check_tracking(cfg)
    except ValueError as e:
        raise ConfigError(f"{path.name}: {e}") from None
    try:
        check_model(cfg)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{path.name}: {str(e).strip(chr(34) + chr(39))}") from None
    return cfg


def resolve_tracking(cfg, path: Path):
    """A local MLflow store (a path, or a ``file:`` URI) given relative is relative to the
    pipeline file, like ``data.data_dir``; it becomes an absolute ``file://`` URI."""
    mlflow = cfg.tracking.mlflow
    if mlflow is None or mlflow.tracking_uri is None:
        return cfg
    from urllib.parse import urlparse

    uri = mlflow.tracking_uri
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file") or parsed.netloc:
        return cfg
    local = Path(parsed.path).expanduser()
    local = local if local.is_absolute() else path.parent / local
    tracking = cfg.tracking.model_copy(update={"mlflow": mlflow.model_copy(update={"tracking_uri": local.resolve().as_uri()})})
    return cfg.model_copy(update={"tracking": tracking})


def check_tracking(cfg) -> None:
    """Open the MLflow tracking store once, so a store MLflow refuses (a server that is not
    there, a ``file:`` store without ``MLFLOW_ALLOW_FILE_STORE=true`` in MLflow 3) fails here
    with one line instead of in the middle of the first stage."""
    mlflow = cfg.tracking.mlflow
    if mlflow is None:
        return
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=mlflow.tracking_uri).search_experiments(max_results=1)
    except Exception as e:  # any failure to reach the store is the user's to fix
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        where = mlflow.tracking_uri or "MLflow's default store"
        raise ValueError(f"tracking.mlflow.tracking_uri: cannot open {where}: "
                         f"{lines[0] if lines else type(e).__name__}") from None


def resolve_spaces(cfg, path: Path):
    """Search-space files named by path are relative to the pipeline file; each must load."""
    stages = list(cfg.stages)
    for i, st in enumerate(stages):
        module = space_module(st.kind)
        if module is None:
            continue
        try:
            resolved = module.resolve_space(st.space, path.parent)
            if st.kind == "hpo":
                module.load_space(resolved, st.space_options or None)
            else:
                from safs.activations import list_operators

                module.load_choices(resolved, list_operators())
        except ValueError as e:
            raise ConfigError(f"{path.name}: stages[{i}].space: {e}") from None
        if st.space not in module.list_spaces():
            stages[i] = st.model_copy(update={"space": str(resolved)})
    return cfg.model_copy(update={"stages": stages})


def check_model(cfg) -> None:
    """Build the model and the sparse method once on the CPU, so bad options fail before Ray starts."""
    from safs.data import dataset_shape
    from safs.models import create_model
    from safs.sparsity import create_method

    num_classes, shape = dataset_shape(cfg.data.name, cfg.data.data_dir, cfg.data.image_size)
    try:
        model = create_model(cfg.model.name, num_classes, shape, cfg.model.activation, **cfg.model.options)
    except TypeError as e:
        raise ValueError(f"model.options: {e}") from None
    if cfg.sparsity is not None:
        method = create_method(cfg.sparsity.method, cfg.sparsity.target, cfg.sparsity.options)
        # Attached once to the real architecture, so options that name layers (exclude,
        # layer_targets) and the models SAS converts fail here, before Ray starts.
        try:
            method.attach(model)
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith("sparsity.") else f"sparsity.method: {msg}") from None
