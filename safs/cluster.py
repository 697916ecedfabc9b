"""Ray Jobs: run a pipeline as a Ray Job on a cluster, and follow, stop and list such jobs (the
library behind ``safs submit`` and ``safs jobs``).

A submitted job runs ``python -m safs.cli run pipeline.yaml --address auto`` on the cluster, with the
submitter's safs code and the pipeline shipped in the job's ``working_dir``. Stopping a job
checkpoints it (see :data:`STOP_ENV`); submitting the same pipeline with the same results directory
again continues where it stopped, exactly like ``safs run`` after Ctrl+C.

The functions take plain values and raise :class:`JobsError` (or the Ray client's own exceptions,
which :func:`explain` turns into one line); the click commands in ``safs.cli`` only parse options
and print. Ray is imported inside functions: ``safs --help`` must stay fast.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from safs.errors import EXIT_BAD_INPUT, EXIT_FAILED

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"  # the variable Ray's own `ray job` CLI reads
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
STAGED_PIPELINE = "pipeline.yaml"
STAGED_SPACES = "spaces"

# `ray job stop` signals the entrypoint, then SIGKILLs it after RAY_JOB_STOP_WAIT_TIME_S (default 3 s).
# The JobSupervisor actor reads both variables from its own environment, and Ray starts that actor
# with the job's runtime_env, so they can be set per job. SIGINT is what Tune checkpoints on (safs
# also maps SIGTERM to it), and a minute is enough for Tune to save its state and for safs to write
# the stage record before the kill.
STOP_ENV = {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "60"}


AUTH_HELP = ("export RAY_AUTH_MODE=token and make the cluster's token available in ~/.ray/auth_token, "
             "in a file named by RAY_AUTH_TOKEN_PATH, or in RAY_AUTH_TOKEN "
             "(`ray get-auth-token` on the head node prints it)")


class JobsError(Exception):
    """A user-facing failure: one line, and the exit code it maps to."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------------- addresses


def default_address() -> str:
    return os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def check_address(address: str) -> str:
    """The Jobs API is the dashboard's HTTP server: ``http(s)://HOST[:PORT]``. Anything else (a GCS
    ``HOST:6379``, ``ray://``, ``auto``) is rejected here rather than by a confusing failure later."""
    address = address.strip().rstrip("/")
    try:
        parts = urlsplit(address)
        parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.path
            or parts.netloc.endswith(":")):
        raise JobsError(f"--address '{address}': expected the Ray dashboard's URL, http://HOST:PORT "
                        f"(default port 8265), e.g. {DEFAULT_ADDRESS}", EXIT_BAD_INPUT)
    return address


def probe(address: str, timeout: float = 5.0) -> None:
    """Open a TCP connection first: the Ray client's HTTP requests have no timeout, so an address
    that drops packets would otherwise hang instead of failing."""
    parts = urlsplit(address)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise JobsError(f"cannot reach the Ray Jobs API at {address}: {reason}; is the cluster's "
                        "dashboard running there (ray start --head --dashboard-host=...)?") from None


def connect(address: str):
    """A ``JobSubmissionClient`` for ``address``, or a :class:`JobsError` saying why not."""
    address = check_address(address)
    probe(address)
    from ray.job_submission import JobSubmissionClient

    _quiet_ray_logs()  # after the import: importing Ray configures its loggers

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001  (mapped to one line)
        message, code = explain(e, address)
        raise JobsError(message, code) from None


def _quiet_ray_logs() -> None:
    # Ray's client logs at INFO (package uploads) and warns about tokens; safs prints its own lines.
    # The two SDK modules set their loggers to INFO themselves.
    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.ERROR)


def explain(exc: BaseException, address: str, job_id: str | None = None) -> tuple[str, int]:
    """One line (without ``error:``) and an exit code for an exception of the Ray Jobs client."""
    if isinstance(exc, JobsError):
        return str(exc), exc.code
    from ray.exceptions import AuthenticationError

    if isinstance(exc, AuthenticationError):
        return auth_message(exc.message, address), EXIT_FAILED
    text = str(exc).strip()
    first = (text.splitlines()[0] if text else type(exc).__name__)[:300]
    if _is_connection_error(exc):
        return f"cannot reach the Ray Jobs API at {address}: {first}", EXIT_FAILED
    if "status code 404" in text and job_id is not None:
        return f"no job '{job_id}' on the cluster at {address} (safs jobs list --address {address})", EXIT_FAILED
    if "Version check returned 404" in text:
        return f"{address} is not a Ray Jobs API (no /api/version); give the dashboard's URL", EXIT_FAILED
    return f"the Ray cluster at {address}: {first}", EXIT_FAILED


def _is_connection_error(exc: BaseException) -> bool:
    # requests' and aiohttp's connection errors do not derive from the builtin ConnectionError.
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    name, module = type(exc).__name__, type(exc).__module__
    return module.startswith(("requests", "aiohttp", "urllib3")) and ("Connect" in name or "Timeout" in name)


def auth_message(detail: str, address: str) -> str:
    """Say exactly what is missing: the mode, the token, or the right token."""
    first = (detail or "").strip().splitlines()[0] if (detail or "").strip() else ""
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    cluster = f"the Ray cluster at {address}"
    if mode != "token":
        what = f"{cluster} requires token authentication and RAY_AUTH_MODE is not 'token' here"
    elif first.startswith("Authentication failed") or "invalid or incorrect" in (detail or ""):
        what = f"{cluster} rejected this client's token (it is not the cluster's token)"
    elif first.startswith("Authentication required"):
        what = f"{cluster} requires token authentication and this client found no token"
    else:
        what = f"token authentication with {cluster} failed ({first.rstrip('.')})"
    return f"{what}: {AUTH_HELP}"


# ----------------------------------------------------------------------------------- staging


def package_dir() -> Path:
    """The safs package the submitter runs (an editable checkout or an installed copy)."""
    import safs

    return Path(safs.__file__).resolve().parent


def builtin_space_dirs() -> list[Path]:
    from safs.plan import SEARCH_KINDS, space_module

    return [space_module(kind).SPACES_DIR for kind in SEARCH_KINDS]


def stage_project(dest: Path) -> None:
    """Copy the safs package and its built-in search spaces into ``dest``, keeping their layout.

    In a source checkout the built-in spaces are the repository's ``<root>/search_spaces``, beside
    ``safs/`` (``safs.resources``), so shipping the package alone (``py_modules``) would lose every
    built-in space name on the cluster; an installed safs holds them inside the package. As the job's ``working_dir`` is both its cwd and first on its PYTHONPATH, this
    copy is what the driver and every trial import."""
    pkg = package_dir()
    root = pkg.parent
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(pkg, dest / pkg.name, ignore=ignore)
    for d in builtin_space_dirs():
        d = d.resolve()
        if d.is_relative_to(pkg) or not d.is_relative_to(root) or not d.is_dir():
            continue  # inside the package (copied above), or somewhere this layout cannot reproduce
        shutil.copytree(d, dest / d.relative_to(root), ignore=ignore, dirs_exist_ok=True)


class _SpaceShipper:
    """Copies search spaces given as file paths into the staging dir; returns the relative path
    that replaces them. Built-in names stay names (the shipped project has them)."""

    def __init__(self, dest: Path, base: Path):
        self.dest, self.base = dest, base
        self.copied: dict[Path, str] = {}

    def __call__(self, kind: str, value: Any) -> Any:
        from safs.plan import space_module

        module = space_module(kind)
        if not isinstance(value, str) or value in module.list_spaces():
            return value
        src = module.resolve_space(value, self.base)  # validated by _load already
        if src not in self.copied:
            name = f"{len(self.copied) + 1:02d}-{src.name}"
            (self.dest / STAGED_SPACES).mkdir(exist_ok=True)
            shutil.copyfile(src, self.dest / STAGED_SPACES / name)
            self.copied[src] = f"{STAGED_SPACES}/{name}"
        return self.copied[src]


def stage_pipeline(path: Path, dest: Path, overrides=()) -> dict:
    """Write the pipeline as the user wrote it (``matrix:`` and ``defaults:`` included, and its
    ``KEY=VALUE`` overrides applied) to
    ``dest/pipeline.yaml``, with what depends on the pipeline's location made portable: search
    spaces given as paths are copied beside it and referenced relatively, and a relative
    ``data.data_dir`` becomes absolute (relative to the pipeline file, as ``safs run`` reads it).
    Returns the written mapping."""
    import yaml

    from safs.plan import SEARCH_KINDS

    raw = yaml.safe_load(path.read_text())
    if overrides:
        from safs.config import apply_overrides

        raw = apply_overrides(raw, overrides, path.name)
    ship = _SpaceShipper(dest, path.parent)
    for st in raw.get("stages") or []:
        if isinstance(st, dict) and st.get("kind") in SEARCH_KINDS and "space" in st:
            st["space"] = ship(st["kind"], st["space"])
    defaults = raw.get("defaults")
    for kind in SEARCH_KINDS:
        if isinstance(defaults, dict) and isinstance(defaults.get(kind), dict) and "space" in defaults[kind]:
            defaults[kind]["space"] = ship(kind, defaults[kind]["space"])
    matrix = raw.get("matrix")
    for key, values in (matrix.items() if isinstance(matrix, dict) else []):
        kind = _matrix_space_kind(raw, key)
        if kind is not None:
            matrix[key] = [ship(kind, v) for v in values]
        elif key == "data.data_dir":
            matrix[key] = [_absolute_dir(v, path.parent) for v in values]
    data = raw.get("data")
    if isinstance(data, dict) and data.get("data_dir") is not None:
        data["data_dir"] = _absolute_dir(data["data_dir"], path.parent)
    (dest / STAGED_PIPELINE).write_text(yaml.safe_dump(raw, sort_keys=False))
    return raw


def _matrix_space_kind(raw: dict, key: str) -> str | None:
    """The stage kind whose ``space`` a matrix key sets (``stages.NAME.space``,
    ``defaults.KIND.space``), else None."""
    from safs.plan import SEARCH_KINDS

    parts = str(key).split(".")
    if len(parts) != 3 or parts[2] != "space":
        return None
    if parts[0] == "defaults" and parts[1] in SEARCH_KINDS:
        return parts[1]
    if parts[0] == "stages":
        for st in raw.get("stages") or []:
            if isinstance(st, dict) and st.get("name") == parts[1] and st.get("kind") in SEARCH_KINDS:
                return st["kind"]
    return None


def _absolute_dir(value: Any, base: Path) -> Any:
    if not isinstance(value, str):
        return value
    p = Path(value).expanduser()
    return value if p.is_absolute() else os.path.abspath(base / p)


def entrypoint(python: str, results: Path) -> str:
    """The job's command. Ray runs it in a shell with the cluster's PATH, not the submitter's
    virtualenv, so the interpreter is an absolute path."""
    return shlex.join([python, "-m", "safs.cli", "run", STAGED_PIPELINE, "--results", str(results),
                       "--address", "auto", "--quiet"])


def default_submission_id(name: str, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"safs-{name}-{now.astimezone(timezone.utc):%Y%m%d-%H%M%S}"


def absolute_results(results: Path) -> Path:
    """Resolved on the client: the job's cwd is its unpacked working_dir, not the submitter's."""
    return Path(os.path.abspath(Path(results).expanduser()))


def runtime_env(staging: Path) -> dict:
    return {"working_dir": str(staging), "env_vars": dict(STOP_ENV)}


# ----------------------------------------------------------------------------------- jobs


def status_name(status) -> str:
    """A ``JobStatus`` (or a plain string) as its name: ``SUCCEEDED``, ``STOPPED``, ..."""
    return getattr(status, "value", str(status))


def status_of(client, job_id: str) -> str:
    return status_name(client.get_job_status(job_id))


def wait_for(client, job_id: str, poll_s: float = 2.0,
             on_change: Callable[[str], None] | None = None) -> str:
    """Poll until the job reaches a terminal status; return it."""
    last = None
    while True:
        status = status_of(client, job_id)
        if status != last and on_change is not None:
            on_change(status)
        last = status
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def active_runs(client, name: str, results: Path) -> list[tuple[str, str]]:
    """Unfinished safs jobs writing the same run directory: a second driver there would race the
    first one over the same stages."""
    out = []
    for job in client.list_jobs():
        meta = job.metadata or {}
        status = status_name(job.status)
        if (job.submission_id and status not in TERMINAL and meta.get("safs_pipeline") == name
                and meta.get("safs_results") == str(results)):
            out.append((job.submission_id, status))
    return out


def submit_pipeline(client, pipeline: Path, name: str, results: Path, python: str,
                    submission_id: str | None = None, overrides=()) -> str:
    """Stage the project and the pipeline (with its ``KEY=VALUE`` overrides applied), submit,
    return the submission id. The staging dir is only needed until ``submit_job`` has zipped and
    uploaded it."""
    import tempfile

    busy = active_runs(client, name, results)
    if busy:
        sid, status = busy[0]
        raise JobsError(f"job {sid} ({status}) is already running pipeline '{name}' into {results}; "
                        f"wait for it, or stop it first (safs jobs stop {sid})")
    with tempfile.TemporaryDirectory(prefix="safs-submit-") as tmp:
        staging = Path(tmp)
        stage_project(staging)
        stage_pipeline(pipeline, staging, overrides)
        return client.submit_job(
            entrypoint=entrypoint(python, results),
            runtime_env=runtime_env(staging),
            submission_id=submission_id or default_submission_id(name),
            metadata={"safs_pipeline": name, "safs_results": str(results)},
        )


def follow_logs(client, job_id: str, write: Callable[[str], None]) -> None:
    """Stream the job's log until it ends (the server closes the stream then)."""
    import asyncio

    async def tail():
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(tail())


def format_time(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(info) -> list[tuple[str, str]]:
    """The fields ``safs jobs status`` prints, in order."""
    meta = info.metadata or {}
    status = status_name(info.status)
    rows = [("job", info.submission_id or info.job_id or "-"), ("status", status)]
    if info.message:
        rows.append(("message", info.message.strip().splitlines()[0]))
    if "safs_pipeline" in meta:
        rows.append(("pipeline", meta["safs_pipeline"]))
    if "safs_results" in meta:
        rows.append(("results", str(Path(meta["safs_results"]) / meta.get("safs_pipeline", ""))))
    rows += [("started", format_time(info.start_time)), ("ended", format_time(info.end_time))]
    if info.driver_exit_code is not None:
        rows.append(("exit code", str(info.driver_exit_code)))
    return rows
