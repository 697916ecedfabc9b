"""safs: activation-function and hyperparameter search for sparse neural networks.

Importing ``safs`` is cheap: torch, Ray and SMAC load only when a command needs them.

``safs.run(pipeline, results, overrides)`` runs a pipeline (a file or a mapping) as ``safs run``
does and returns its results rows.

What a reader of the results needs, for re-deriving any row from the saved files:

* ``safs.load_results(*paths)``: every results row, a pandas DataFrame;
* ``safs.load_model(path)``: the network of a stage directory or ``model.pt``;
* ``safs.load_dataset(name, ...)``: the train/val/test splits the stages use.

Plugins: installed packages extend the registries through entry points (``docs/plugins.md``);
a script or notebook registers in-process with the decorators ``safs.register_model(name)``,
``safs.register_dataset(name, num_classes=..., input_shape=...)``, ``safs.register_method(name)``,
``safs.register_algorithm(name)`` and ``safs.register_operator(name)``, whose entries also
reach the Ray workers of the stages ``safs.run`` starts.
"""

__version__ = "0.1.0"


def run(pipeline, results=None, overrides=(), dry_run=False, *, address=None, num_cpus=None, quiet=False,
        verbose=False, echo=print):
    """Run ``pipeline`` as ``safs run PIPELINE [KEY=VALUE...]`` does and return its results rows
    (``load_results`` of the run directory: every cell of a ``matrix:``, done stages only).

    ``pipeline``: a pipeline file, or its mapping (relative paths in it are relative to the
    working directory). ``results``: the results root (default ``results``); the run goes to
    ``results/<name>/``. ``overrides``: ``KEY=VALUE`` strings, as on the command line. It is
    validated exactly as the command validates it (``safs.preflight``) and raises
    ``safs.config.ConfigError`` on bad input, before anything is written or Ray starts. Done
    stages are skipped and interrupted ones continue; matrix cells run one after another.
    A failed stage raises ``safs.errors.StageFailed``, a stopped one ``StageInterrupted``.

    It joins the Ray of this process, or of ``address``, or starts a local one (loopback only,
    ``num_cpus``), which stays up for the next call (``ray.shutdown()`` ends it).
    ``dry_run=True`` runs nothing and returns the plan instead: one row per stage of each cell
    (pipeline, cell, variant, stage_index, stage, kind, hash, dir, status)."""
    from collections.abc import Mapping
    from pathlib import Path

    from safs.preflight import load, resolved

    overrides = (overrides,) if isinstance(overrides, str) else tuple(overrides)
    source = pipeline if isinstance(pipeline, Mapping) else Path(pipeline)
    cfgs, matrix = load(source, overrides)
    results = Path("results" if results is None else results)
    if dry_run:
        import pandas as pd

        from safs.plan import plan
        from safs.records import stage_status

        return pd.DataFrame([
            {"pipeline": cfg.name, "cell": i, "variant": cfg.variant, "stage_index": st.index, "stage": st.name,
             "kind": st.kind, "hash": st.hash, "dir": str(st.dir), "status": stage_status(st)}
            for i, cfg in enumerate(cfgs) for st in plan(cfg, results)])
    from safs.io import exclusive
    from safs.runner import run as run_pipeline

    name = cfgs[0].name
    stored = resolved(cfgs, matrix) if matrix else None
    rerun: set[str] = set()  # shared by the cells, as in `safs run`
    with exclusive(results / name / ".lock"):
        for i, cfg in enumerate(cfgs):
            if cfg.variant:
                echo(f"safs: [cell {i}: {cfg.variant}]")
            run_pipeline(cfg, results, address=address, num_cpus=num_cpus, quiet=quiet, verbose=verbose, echo=echo,
                         stored=stored, rerun=rerun)
    return load_results(results / name)


def load_results(*paths):
    """All results rows under ``paths`` (run directories or results roots) as a DataFrame."""
    from safs.report.rows import load_results as _load

    return _load(*paths)


def load_model(path):
    """The network a stage saved: ``path`` is a stage directory or a ``model.pt``. Returns an
    ``nn.Module`` on the CPU in eval mode: plain conv/linear layers with the zeros in
    ``weight`` (and a ``weight_mask`` buffer per sparse layer), the activation genome and
    the slots' α/β applied, so its test accuracy and its zeros are the row's."""
    from pathlib import Path

    from safs.model_file import load_model as _load

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    model, _ = _load(path, "cpu")
    return model.eval()


def load_dataset(name, data_dir=None, *, seed=0, val_fraction=None, test_fraction=None, image_size=None):
    """The dataset ``name`` with the splits a pipeline with ``data: {name, data_dir,
    split_seed: seed, val_fraction, test_fraction, image_size}`` trains, selects and tests on
    (on the CPU). ``split(name)`` gives a split's raw ``x`` and ``y``; model input is
    ``(x.float() * scale - mean) / std`` (``safs.data.normalise``)."""
    from safs.data import load_dataset as _load

    return _load(name, data_dir, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                 image_size=image_size)


def register_model(name, default_activation="relu", description=""):
    """Decorator registering a model builder ``(num_classes, input_shape, activation, **options)
    -> nn.Module`` under ``name``, for this process and the trials it runs."""
    from safs.plugins import register

    return register("models", name, default_activation=default_activation, description=description)


def register_dataset(name, *, num_classes=None, input_shape=None, description=""):
    """Decorator registering a dataset loader ``(data_dir, *, seed, val_fraction, test_fraction)
    -> safs.data.Dataset`` under ``name``; ``num_classes`` and ``input_shape`` (C, H, W) default
    to the loader's attributes of those names."""
    from safs.plugins import register

    return register("datasets", name, num_classes=num_classes, input_shape=input_shape, description=description)


def register_method(name):
    """Decorator registering a ``safs.sparsity.base.SparseMethod`` subclass under ``name``."""
    from safs.plugins import register

    return register("methods", name)


def register_algorithm(name):
    """Decorator registering a ``safs.search.AskTellOptimizer`` subclass under ``name``."""
    from safs.plugins import register

    return register("algorithms", name)


def register_operator(name):
    """Decorator registering an activation operator factory (an ``nn.Module`` class whose
    ``forward(x, alpha, beta)`` applies the slot's scales, or a zero-argument callable) under ``name``."""
    from safs.plugins import register

    return register("operators", name)
