"""The ``safs`` command. Heavy libraries (torch, Ray, SMAC) are imported inside commands."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

import click

from safs import cluster

from safs.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED


def _fail(message: str, code: int = EXIT_BAD_INPUT):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _load(path: Path, overrides=()):
    """The pipelines of a file, with its ``KEY=VALUE`` overrides, made runnable
    (``safs.preflight``); bad input exits 2 here."""
    from safs.config import ConfigError
    from safs.preflight import load

    try:
        return load(path, overrides)
    except ConfigError as e:
        _fail(str(e))


def _overrides_argument(f):
    return click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")(f)


OVERRIDES_HELP = ("KEY=VALUE overrides set fields before validation, with the dotted paths of matrix: "
                  "(stages by name; VALUE is YAML): stages.dense.epochs=5 seed=1 sparsity.target=0.95.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="safs")
def main():
    """safs: activation-function and hyperparameter search for sparse neural networks."""


@main.command(epilog=OVERRIDES_HELP)
@click.argument("pipeline", type=click.Path(path_type=Path))
@_overrides_argument
@click.option("--results", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Results root; the run goes to RESULTS/<pipeline name>/.")
@click.option("--dry-run", is_flag=True, help="Print the resolved stages, their hashes and directories; run nothing.")
@click.option("--print-config", is_flag=True, help="Print the resolved pipeline (YAML, as the run stores it); run nothing.")
@click.option("--address", default=None, help="Ray cluster address (auto, ray://host:port); default: a local Ray.")
@click.option("--num-cpus", type=float, default=None, help="CPUs for a local Ray (default: all).")
@click.option("--cell", "cells", type=int, multiple=True,
              help="Run only this matrix cell (its number in `safs run --dry-run`); repeatable.")
@click.option("--parallel", type=click.IntRange(min=1), default=None,
              help="Matrix cells run at once (default: as many as the cluster's CPUs/GPUs fit, given resources).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--verbose", is_flag=True, help="Show Ray and trial logs.")
def run(pipeline: Path, overrides, results: Path, dry_run: bool, print_config: bool, address, num_cpus, cells,
        parallel, quiet, verbose):
    """Run PIPELINE.yaml: skip done stages, resume interrupted ones, run the rest."""
    cfgs, matrix = _load(pipeline, overrides)
    if print_config:
        import yaml

        from safs.preflight import resolved

        click.echo(yaml.safe_dump(resolved(cfgs, matrix), sort_keys=False), nl=False)
        return
    _run(pipeline, cfgs, matrix, results, dry_run, address, num_cpus, quiet, verbose, cells, parallel, overrides)


def _run(path: Path, cfgs, matrix, results: Path, dry_run: bool, address, num_cpus, quiet, verbose, cells=(),
         parallel=None, overrides=()):
    import logging
    from contextlib import nullcontext

    from safs.plan import plan
    from safs.records import stage_status

    name = cfgs[0].name
    stored = None
    if matrix:  # the run directory keeps the matrix, so `safs resume` re-expands the same cells
        from safs.preflight import resolved

        stored = resolved(cfgs, matrix)
    for c in cells:
        if not 0 <= c < len(cfgs):
            _fail(f"--cell: {c} is not a cell of '{name}'; accepted: 0..{len(cfgs) - 1}")
    selected = [(i, cfg) for i, cfg in enumerate(cfgs) if not cells or i in cells]
    if dry_run:
        for i, cfg in selected:
            if cfg.variant:
                click.echo(f"[cell {i}: {cfg.variant}]")
            for st in plan(cfg, results):
                click.echo(f"{st.index + 1:02d}  {st.name:<12} {st.kind:<17} {st.hash}  {st.dir}  [{stage_status(st)}]")
        return
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    from safs.io import Busy, exclusive
    from safs.errors import StageFailed, StageInterrupted
    from safs.runner import run as run_pipeline

    if not cells:
        click.echo(f"safs: pipeline '{name}' -> {results / name}" + (f" ({len(cfgs)} matrix cells)" if matrix else ""))
    rerun: set[str] = set()  # shared by the cells: a stage one cell reran is rerun for all
    try:
        # One `safs run` of a whole pipeline at a time; single cells (--cell) only lock their stages.
        with exclusive(results / name / ".lock") if not cells else nullcontext():
            width = _parallel_cells(cfgs, parallel, address, num_cpus, verbose) if len(selected) > 1 else 1
            if width > 1:
                _sweep(path, selected, results, width, address, num_cpus, quiet, verbose, overrides)
            else:
                for i, cfg in selected:
                    if cfg.variant and not cells:
                        click.echo(f"safs: [cell {i}: {cfg.variant}]")
                    run_pipeline(cfg, results, address=address, num_cpus=num_cpus, quiet=quiet, verbose=verbose,
                           echo=click.echo, stored=stored, rerun=rerun)
    except Busy as e:
        _fail(f"{results / name}: {e}; one safs run per pipeline at a time", EXIT_FAILED)
    except StageInterrupted as e:
        _fail(f"{e}; run the same command again to resume", EXIT_INTERRUPTED)
    except StageFailed as e:
        _fail(str(e), EXIT_FAILED)
    except KeyboardInterrupt:
        _fail("interrupted; run the same command again to resume", EXIT_INTERRUPTED)
    if not cells:
        click.echo(f"safs: done. Table: safs table {results / name}")


def _parallel_cells(cfgs, parallel, address, num_cpus, verbose) -> int:
    if parallel == 1:
        return 1
    if parallel is None:  # as many as fit: ask the cluster (this also starts the local Ray)
        import ray

        from safs.tune.experiment import ensure_ray
        from safs.sweep import auto_parallel

        ensure_ray(address, num_cpus, verbose)
        return auto_parallel(cfgs[0].resources.model_dump(), ray.cluster_resources(), len(cfgs))
    return min(parallel, len(cfgs))


def _sweep(path: Path, selected, results: Path, width: int, address, num_cpus, quiet: bool, verbose: bool,
           overrides=()) -> None:
    """The cells, ``width`` at a time, each in a child process on this driver's Ray."""
    import ray

    from safs.tune.experiment import ensure_ray
    from safs.sweep import child_command, run_cells

    ensure_ray(address, num_cpus, verbose)
    join = address or ray.get_runtime_context().gcs_address  # the local Ray this process started
    click.echo(f"safs: running {len(selected)} cells, {width} at a time")
    codes = run_cells({cfg.variant: child_command(path, results, join, i, quiet, verbose, overrides)
                       for i, cfg in selected},
                      width, click.echo)
    failed = sorted(v for v, c in codes.items() if c not in (0, EXIT_INTERRUPTED))
    stopped = sorted(v for v, c in codes.items() if c == EXIT_INTERRUPTED)
    click.echo(f"safs: {len(codes) - len(failed) - len(stopped)} of {len(codes)} cells done"
               + (f"; failed: {', '.join(failed)}" if failed else "")
               + (f"; stopped: {', '.join(stopped)}" if stopped else ""))
    if stopped:
        _fail("interrupted; run the same command again to resume", EXIT_INTERRUPTED)
    if failed:
        _fail(f"{len(failed)} cell(s) failed; see their lines above (safs status shows each stage)", EXIT_FAILED)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--quiet", is_flag=True)
@click.option("--verbose", is_flag=True)
@click.option("--address", default=None)
@click.option("--num-cpus", type=float, default=None)
def resume(run_dir: Path, quiet, verbose, address, num_cpus):
    """Continue the run in RUN_DIR (RESULTS/<pipeline>) from its stored pipeline.yaml."""
    stored = run_dir / "pipeline.yaml"
    if not stored.is_file():
        _fail(f"{run_dir}: not a safs run directory (no pipeline.yaml)")
    cfgs, matrix = _load(stored)
    _run(stored, cfgs, matrix, run_dir.parent, False, address, num_cpus, quiet, verbose)


@main.command(epilog=OVERRIDES_HELP)
@click.argument("target", type=click.Path(path_type=Path))
@_overrides_argument
@click.option("--results", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
def status(target: Path, overrides, results: Path):
    """Show each stage of a run (RUN_DIR) or pipeline (PIPELINE.yaml): done / partial / pending.

    A run directory shows the stages as they ran (their records); a pipeline file, the stages
    it would run now (with its overrides)."""
    from safs.config import ConfigError, load_pipelines
    from safs.plan import plan
    from safs.records import is_done, recorded_stages, stage_status

    if overrides and target.is_dir():
        _fail(f"{overrides[0]}: overrides apply to a pipeline file, not to a run directory")
    try:
        if target.is_dir():
            (cfgs, _), root = load_pipelines(target / "pipeline.yaml"), target.parent
        else:
            (cfgs, _), root = load_pipelines(target, overrides), results
        cells = [recorded_stages(target, cfg) if target.is_dir() else plan(cfg, root) for cfg in cfgs]
    except (ConfigError, ValueError) as e:
        _fail(str(e))
    click.echo(f"pipeline {cfgs[0].name} ({root / cfgs[0].name})")
    for i, (cfg, plans) in enumerate(zip(cfgs, cells)):
        if cfg.variant:
            done = sum(is_done(st) for st in plans)
            click.echo(f"  [cell {i}: {cfg.variant}] {done}/{len(plans)} stages done")
        for st in plans:
            click.echo(f"  {st.index + 1:02d} {st.name:<12} {st.kind:<17} {st.hash}  {stage_status(st)}")


@main.command("list")
@click.argument("what", type=click.Choice(["models", "datasets", "methods", "activations", "algorithms", "spaces"]))
def list_(what: str):
    """List what the registries hold (a plugin's entry: its name and distribution)."""
    if what == "models":
        from safs.models import TORCHVISION_INFO, list_models, model_info

        for n in list_models():
            click.echo(model_info(n))
        click.echo(TORCHVISION_INFO)
    elif what == "datasets":
        from safs.data import dataset_info, list_datasets

        for n in list_datasets():
            click.echo(dataset_info(n))
    elif what == "methods":
        from safs.sparsity import list_methods, method_info, method_protocol, plugin_dist

        for n in list_methods():  # the protocol says which stage runs it: prune, or train with sparse: true
            dist = plugin_dist(n)  # listing loads no plugin
            click.echo(f"{n:<14} (plugin: {dist})" if dist else f"{n:<14} {method_protocol(n):<16} {method_info(n)}")
    elif what == "algorithms":
        from safs.search import list_optimizers, optimizer_class, optimizer_options, plugin_dist

        for n in list_optimizers():
            if plugin_dist(n):
                click.echo(f"{n:<7} (plugin: {plugin_dist(n)})")
                continue
            doc = (optimizer_class(n).__doc__ or "").strip().splitlines()[0]
            opts = ", ".join(f"{k}={v!r}" for k, v in optimizer_options(n).items())
            click.echo(f"{n:<7} {doc}\n        options: {opts}")
    elif what == "spaces":
        from safs.search.space import SPACES_DIR, list_spaces, load_choices

        for n in list_spaces():
            choices = load_choices(SPACES_DIR / f"{n}.yaml")
            click.echo(f"{n:<8} {len(choices)} operators: {', '.join(choices)}")
    else:
        from safs.activations import OPERATORS, list_operators

        plugins = OPERATORS.plugins()
        for n in list_operators():
            click.echo(f"{n:<14} (plugin: {plugins[n].dist})" if n in plugins else n)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=Path("experiments"))
@click.option("--force", is_flag=True, help="Overwrite files that exist already.")
def examples(directory: Path, force: bool):
    """Copy the example pipelines (the quickstart, the paper's pipelines, the method
    comparisons) into DIRECTORY (default: ./experiments)."""
    from safs.resources import data_dir

    src = data_dir("experiments")
    files = sorted(p.relative_to(src) for p in src.rglob("*.yaml"))
    clash = [f for f in files if (directory / f).exists()]
    if clash and not force:
        _fail(f"{directory / clash[0]} exists ({len(clash)} of {len(files)} files do); "
              "use --force to overwrite, or another directory")
    import shutil

    for f in files:
        (directory / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / f, directory / f)
    click.echo(f"safs: {len(files)} pipelines -> {directory}; try: safs run {directory / 'quickstart.yaml'}")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["markdown", "latex", "csv", "parquet"]), default="markdown",
              show_default=True,
              help="markdown, latex (a booktabs tabular for \\input): one cell per value, \"mean ± std\"; "
                   "csv, parquet (needs --out): numbers only, the mean in the column, its spread in "
                   "'<column> std', '<column> n', '<gain> lo'/'hi' and '<column> epochs min'/'max'.")
@click.option("--layout", type=click.Choice(["stages", "safs", "methods", "layers", "trials"]), default="stages",
              show_default=True,
              help="stages: one column per stage label; safs: the SAFS paper's Dense | Magnitude Pruning | "
                   "Magnitude Pruning (matched) | Stage 1 | Stage 2 | SAFS table with each column's "
                   "fine-tuning epochs and the gains of SAFS over both baselines (paired by seed, 95 % "
                   "interval); methods: method × target with accuracy, achieved sparsity, non-zeros and "
                   "sparse MACs; layers: one row per layer (weights, non-zeros, sparsity, MACs) of the last "
                   "stage of each pipeline, or of --stage; trials: every trial of the search stages. "
                   "Mean ± std over seeds, n = seeds.")
@click.option("--stage", default=None, metavar="LABEL",
              help="layers layout: the stage (label or name) to show instead of each pipeline's last; 'all' "
                   "for every stage.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write to a file instead of stdout.")
def table(paths, fmt: str, layout: str, stage: str | None, out: Path | None):
    """Results table from run directories (test accuracy % at each stage's selected epoch)."""
    from safs.report.tables import render, table_for

    if stage is not None and layout != "layers":
        _fail("--stage: only with --layout layers")
    if fmt == "parquet" and out is None:
        _fail("--format parquet: needs --out FILE")
    try:
        frame = table_for(layout, paths, numeric=fmt in ("csv", "parquet"), stage=stage)
    except ValueError as e:
        _fail(str(e))
    if fmt == "parquet":
        from safs.io import write_parquet

        write_parquet(out, frame)
        return
    text = render(frame, fmt)
    if out:
        from safs.io import write_text

        write_text(out, text if text.endswith("\n") else text + "\n")
    else:
        click.echo(text)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--kind", type=click.Choice(["sparsity", "search", "curves", "mixture"]), required=True,
              help="sparsity: test accuracy vs remaining weights (log axis, 100 % to 1 %), colour per "
                   "method, marker per model, error bars over seeds; search: best-so-far score vs "
                   "candidates and vs epochs per search stage; curves: per-epoch train/val accuracy per stage; "
                   "mixture: a one-shot search's operator weights per slot vs epoch.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="FILE.png or FILE.pdf")
def plot(paths, kind: str, out: Path):
    """A figure from run directories, sized for a paper column."""
    from safs.report.plots import plot as draw

    try:
        draw(kind, paths, out)
    except ValueError as e:
        _fail(str(e))
    click.echo(f"safs: wrote {out}")


# ----------------------------------------------------------------------------------- cluster jobs

@contextlib.contextmanager
def _cli_errors(address: str, job_id: str | None = None) -> Iterator[None]:
    """Every failure of a command as ``error: <one line>`` and its exit code."""
    try:
        yield
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001
        message, code = cluster.explain(e, address, job_id)
        _fail(message, code)


def _address_option(f):
    return click.option("--address", default=None, metavar="URL",
                        help=f"The Ray dashboard's URL (Jobs API). Default: ${cluster.ADDRESS_ENV}, else {cluster.DEFAULT_ADDRESS}.")(f)


def _client(address: str | None):
    address = address or cluster.default_address()
    with _cli_errors(address):
        return cluster.check_address(address), cluster.connect(address)


@main.command(epilog=OVERRIDES_HELP)
@click.argument("pipeline", type=click.Path(path_type=Path))
@_overrides_argument
@_address_option
@click.option("--results", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Results root, made absolute here; the run goes to RESULTS/<pipeline name>/. On a remote "
                   "cluster it must be a path the cluster can write (e.g. shared storage).")
@click.option("--python", "python", default=sys.executable, metavar="PATH", show_default="this interpreter",
              help="Absolute path of the Python that runs safs on the cluster (Ray Jobs run with the "
                   "cluster's PATH, not this virtualenv). The default fits a cluster that shares this "
                   "environment; on a remote cluster pass the cluster's interpreter.")
@click.option("--submission-id", default=None, help="Job id; default safs-<pipeline name>-<UTC time>.")
@click.option("--wait", is_flag=True, help="Block until the job ends; exit 0 if it SUCCEEDED.")
def submit(pipeline: Path, overrides, address: str | None, results: Path, python: str, submission_id: str | None,
           wait: bool):
    """Run PIPELINE.yaml as a Ray Job on the cluster at --address.

    The pipeline is validated here first, exactly as `safs run` does. The job ships this safs code and
    the pipeline (with search-space files) and runs `safs run --address auto` on the cluster. `safs jobs
    stop` checkpoints it; submitting the same pipeline with the same --results continues it. Data
    directories (data.data_dir) must be paths the cluster can read."""
    cfgs, _ = _load(pipeline, overrides)  # bad input exits 2 here, before anything is sent
    name = cfgs[0].name
    results = cluster.absolute_results(results)
    address, client = _client(address)  # a malformed address exits 2 too, before connecting
    with _cli_errors(address):
        sid = cluster.submit_pipeline(client, pipeline, name, results, python, submission_id, overrides)
    hint = f"--address {address}"
    click.echo(f"safs: submitted job {sid} (pipeline '{name}') to {address}")
    click.echo(f"safs: results -> {results / name} (on the cluster)")
    click.echo(f"safs: follow:  safs jobs logs {sid} {hint} --follow")
    click.echo(f"safs: status:  safs jobs status {sid} {hint}")
    click.echo(f"safs: stop:    safs jobs stop {sid} {hint}   (checkpoints; submit again to continue)")
    if not wait:
        return
    try:
        with _cli_errors(address, sid):
            status = cluster.wait_for(client, sid, on_change=lambda s: click.echo(f"safs: job {sid}: {s}"))
    except KeyboardInterrupt:
        _fail(f"stopped waiting; job {sid} keeps running (safs jobs stop {sid} {hint})", EXIT_INTERRUPTED)
    if status == "STOPPED":
        _fail(f"job {sid} was stopped; submit the same pipeline again to continue", EXIT_INTERRUPTED)
    if status != "SUCCEEDED":
        with _cli_errors(address, sid):
            tail = client.get_job_logs(sid).rstrip().splitlines()[-15:]
        click.echo("\n".join(tail))
        _fail(f"job {sid} {status}; see: safs jobs logs {sid} {hint}", EXIT_FAILED)
    click.echo(f"safs: done. Table: safs table {results / name}")


@main.group(context_settings={"help_option_names": ["-h", "--help"]})
def jobs():
    """Follow, stop and list pipelines submitted with `safs submit`.

    Clusters started with token authentication need RAY_AUTH_MODE=token and the cluster's token
    (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN) on this machine."""


@jobs.command("status")
@click.argument("job_id")
@_address_option
def status_cmd(job_id: str, address: str | None):
    """Status, pipeline, results directory and times of JOB_ID."""
    address, client = _client(address)
    with _cli_errors(address, job_id):
        info = client.get_job_info(job_id)
    for key, value in cluster.describe(info):
        click.echo(f"{key + ':':<10} {value}")


@jobs.command("logs")
@click.argument("job_id")
@_address_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
def logs_cmd(job_id: str, address: str | None, follow: bool):
    """The driver log of JOB_ID (what `safs run` prints on the cluster)."""
    address, client = _client(address)
    with _cli_errors(address, job_id):
        if not follow:
            click.echo(client.get_job_logs(job_id), nl=False)
            return
        client.get_job_info(job_id)  # an unknown id fails here with a clear message
        try:
            cluster.follow_logs(client, job_id, lambda chunk: click.echo(chunk, nl=False))
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)


@jobs.command("stop")
@click.argument("job_id")
@_address_option
@click.option("--wait", is_flag=True, help="Block until the job has stopped.")
def stop_cmd(job_id: str, address: str | None, wait: bool):
    """Stop JOB_ID at a checkpoint; submitting it again continues it.

    The job gets SIGINT, so Tune saves its state and safs records the stage (it has 60 s before Ray
    kills it), then it ends STOPPED. Submit the same pipeline with the same --results to continue."""
    address, client = _client(address)
    with _cli_errors(address, job_id):
        stopping = client.stop_job(job_id)
        if not stopping:
            click.echo(f"safs: job {job_id} is not running ({status_of(client, job_id)})")
            return
        click.echo(f"safs: stopping job {job_id}")
        if wait:
            click.echo(f"safs: job {job_id}: {cluster.wait_for(client, job_id, poll_s=1.0)}")


@jobs.command("list")
@_address_option
def list_cmd(address: str | None):
    """Submitted jobs, oldest first: id, status, pipeline, start time."""
    address, client = _client(address)
    with _cli_errors(address):
        found = [j for j in client.list_jobs() if j.submission_id]
    found.sort(key=lambda j: j.start_time or 0)
    if not found:
        click.echo(f"no jobs at {address}")
        return
    width = max(len(j.submission_id) for j in found)
    for j in found:
        status = cluster.status_name(j.status)
        pipeline = (j.metadata or {}).get("safs_pipeline", "-")
        click.echo(f"{j.submission_id:<{width}}  {status:<9}  {pipeline:<20}  {cluster.format_time(j.start_time)}")


if __name__ == "__main__":
    main()
