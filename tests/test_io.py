"""File plumbing: the run lock."""

import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from safs.io import Busy, exclusive

HOLD = """
import sys, time
from safs.io import exclusive
with exclusive(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_lock_names_its_holder_and_dies_with_it(tmp_path):
    lock = tmp_path / "run" / ".lock"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match=f"pid {p.pid}"):
            with exclusive(lock):
                pass
    finally:
        os.kill(p.pid, signal.SIGKILL)  # no cleanup runs: the kernel releases the lock
        p.wait()
    with exclusive(lock):
        assert lock.read_text() == str(os.getpid())


def test_safs_run_refuses_a_pipeline_that_is_already_running(tmp_path):
    from safs.cli import main

    f = tmp_path / "p.yaml"
    f.write_text("name: busy\ndata: {name: digits}\nmodel: {name: lenet5}\n"
                 "stages:\n  - {name: dense, kind: train, epochs: 1}\n")
    results = tmp_path / "results"
    with exclusive(results / "busy" / ".lock"):
        r = CliRunner().invoke(main, ["run", str(f), "--results", str(results), "--quiet"])
    assert r.exit_code == 1
    assert f"in use by another process (pid {os.getpid()}); one safs run per pipeline at a time" in r.output
    assert len(r.output.strip().splitlines()) == 2  # the banner, then one error line
    assert not list((results / "busy").glob("01-*"))  # nothing ran


def test_plain_values_merge_and_digest():
    import hashlib
    import json

    import numpy as np

    from safs.io import deep_merge, digest, plain

    assert plain({"a": np.float64(0.5), "b": np.str_("x"), "c": {"d": np.int64(3)}}) == {"a": 0.5, "b": "x", "c": {"d": 3}}
    assert type(plain(np.int64(3))) is int and plain([1, 2]) == [1, 2]
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    merged = deep_merge(base, {"a": {"c": 3}, "d": [2]})
    assert merged == {"a": {"b": 1, "c": 3}, "d": [2]} and base == {"a": {"b": 1, "c": 2}, "d": [1]}
    payload = {"b": 1, "a": [1.5, "x"]}
    compact = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    assert digest(payload, length=10) == hashlib.sha256(compact.encode()).hexdigest()[:10]
    spaced = json.dumps(payload, sort_keys=True)  # the form HPO states store (space_sha256)
    assert digest(payload, separators=(", ", ": ")) == hashlib.sha256(spaced.encode()).hexdigest()
