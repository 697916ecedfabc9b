"""Run the cells of a ``matrix:`` in parallel, as far as the cluster's resources allow.

Each cell runs in its own ``safs run --cell I`` process (Tune runs one experiment per
driver), all joined to one Ray. Stages that cells share are trained once: a per-stage lock
(``safs.runner.run``) makes the other cells wait for the stage and then find it done.
The parent relays each child's lines prefixed with its cell, forwards SIGINT/SIGTERM so the
children stop cleanly (and resume later), and reports every cell's outcome.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import threading
from pathlib import Path

from safs.errors import EXIT_INTERRUPTED


def auto_parallel(resources: dict, cluster: dict, cells: int) -> int:
    """How many cells fit at once: the cluster's CPUs (and GPUs) over what one cell's
    concurrent trials ask for."""
    from safs.settings import ResourcesConfig

    per_cell = resources["max_concurrent_trials"]
    cpus, gpus = ResourcesConfig.model_construct(**resources).per_trial()  # a multi-worker trial: all its workers
    fits = math.floor(cluster.get("CPU", 1) / (cpus * per_cell) + 1e-9)
    if gpus > 0:
        fits = min(fits, math.floor(cluster.get("GPU", 0) / (gpus * per_cell) + 1e-9))
    return max(1, min(cells, fits))


def child_command(pipeline: Path, results: Path, address: str, cell: int, quiet: bool, verbose: bool,
                  overrides=()) -> list[str]:
    cmd = [sys.executable, "-m", "safs.cli", "run", str(pipeline), *overrides, "--results", str(results),
           "--address", address, "--cell", str(cell)]
    return cmd + (["--quiet"] if quiet else []) + (["--verbose"] if verbose else [])


def run_cells(commands: dict[str, list[str]], parallel: int, echo) -> dict[str, int]:
    """Run ``commands`` (cell label -> argv), at most ``parallel`` at a time; return each
    cell's exit code. After a stop signal no new cell starts; running ones are told to stop."""
    pending = list(commands.items())
    running: dict[str, subprocess.Popen] = {}
    codes: dict[str, int] = {}
    lock = threading.RLock()  # the signal handler runs on the main thread, which may hold it
    done = threading.Condition(lock)
    stopping = threading.Event()

    def relay(label: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            echo(f"[{label}] {line.rstrip()}")
        code = proc.wait()
        with done:
            codes[label] = code
            running.pop(label, None)
            done.notify_all()

    def stop(signum, _frame) -> None:
        stopping.set()
        with lock:
            for proc in list(running.values()):
                proc.send_signal(signal.SIGTERM)  # each child stops its stage cleanly

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with done:
            while pending or running:
                while pending and len(running) < parallel and not stopping.is_set():
                    label, cmd = pending.pop(0)
                    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                            bufsize=1, start_new_session=True)  # signals come from here only
                    running[label] = proc
                    threading.Thread(target=relay, args=(label, proc), daemon=True).start()
                if stopping.is_set() and not running:
                    break
                done.wait(timeout=1.0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for label, _ in pending:
        codes[label] = EXIT_INTERRUPTED  # never started
    return codes
