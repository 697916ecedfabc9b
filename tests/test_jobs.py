"""`safs submit` and `safs jobs`: staging, entrypoint, ids and error mapping without a cluster; one
slow test on a private loopback Ray head node (submit, stop while searching, resubmit)."""

import json
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

from conftest import ROOT, safs_cmd
from raycluster import cluster_pids, free_ports, start_head, stop_head
from safs import cluster as J
from safs.cli import main
from safs.preflight import load as _load

SPACE = ROOT / "search_spaces" / "activations" / "safs13.yaml"

PIPELINE = """
name: {name}
seed: 0
data: {{name: mnist5k}}
model: {{name: lenet5}}
sparsity: {{method: lwm, target: 0.9}}
resources: {{cpus_per_trial: 1}}
defaults:
  train: {{batch_size: 128, optimizer: {{name: adam, lr: 0.01}}, schedule: {{name: constant}}}}
stages:
  - {{name: dense, kind: train, epochs: 1}}
  - {{name: prune, kind: prune}}
  - {{name: retrain, kind: train, epochs: 1}}
  - {{name: search, kind: activation_search, algorithm: random, space: {space},
      options: {{samples: {samples}}}, epochs_per_candidate: {epochs}}}
  - {{name: stage1, kind: train, epochs: 1, label: Stage 1}}
"""


def write_pipeline(path: Path, name="tiny", space="safs13", samples=4, epochs=1, extra="") -> Path:
    path.write_text(PIPELINE.format(name=name, space=space, samples=samples, epochs=epochs) + extra)
    return path


class FakeClient:
    """Records what would be submitted; inspects the staging dir while it still exists."""

    def __init__(self, jobs=()):
        self.jobs = list(jobs)
        self.submitted = []

    def list_jobs(self):
        return self.jobs

    def submit_job(self, **kw):
        staging = Path(kw["runtime_env"]["working_dir"])
        kw["files"] = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        kw["pipeline"] = yaml.safe_load((staging / "pipeline.yaml").read_text())
        self.submitted.append(kw)
        return kw["submission_id"]


# ------------------------------------------------------------------------- staging


def test_stage_pipeline_ships_path_spaces_relatively(tmp_path):
    (tmp_path / "spaces_here").mkdir()
    mine = tmp_path / "spaces_here" / "mine.yaml"
    mine.write_text(SPACE.read_text())
    f = write_pipeline(tmp_path / "p.yaml", space="spaces_here/mine.yaml",
                       extra="matrix: {stages.search.space: [spaces_here/mine.yaml, safs13]}\n")
    dest = tmp_path / "staging"
    dest.mkdir()
    J.stage_pipeline(f, dest)

    raw = yaml.safe_load((dest / "pipeline.yaml").read_text())
    [search] = [st for st in raw["stages"] if st["name"] == "search"]
    assert search["space"] == "spaces/01-mine.yaml"
    assert (dest / "spaces" / "01-mine.yaml").read_text() == mine.read_text()
    assert raw["matrix"]["stages.search.space"] == ["spaces/01-mine.yaml", "safs13"]  # one copy; names stay
    assert raw["defaults"]["train"]["batch_size"] == 128  # the file as written, not the expanded configs
    # Self-contained: the staged file validates on its own, as the job will read it.
    cfgs, matrix = _load(dest / "pipeline.yaml")
    assert len(cfgs) == 2 and matrix
    assert Path(cfgs[0].stages[3].space) == (dest / "spaces" / "01-mine.yaml").resolve()


def test_stage_pipeline_makes_relative_data_dir_absolute(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("name: d\ndata: {name: mnist5k, data_dir: data/here}\nmodel: {name: lenet5}\n"
                 "stages: [{name: dense, kind: train}]\n")
    (tmp_path / "staging").mkdir()
    raw = J.stage_pipeline(f, tmp_path / "staging")
    assert raw["data"]["data_dir"] == str(tmp_path / "data" / "here")


def test_stage_project_ships_package_and_builtin_spaces(tmp_path):
    J.stage_project(tmp_path)
    assert (tmp_path / "safs" / "cli.py").is_file()
    assert not list(tmp_path.rglob("__pycache__"))
    # What the job's driver sees: its cwd (the working_dir) first on sys.path.
    probe = ("import safs.search.space as s, safs.hpo.space as h; "
             "print(s.__file__); print(s.list_spaces()); print(h.list_spaces())")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, check=True).stdout.splitlines()
    assert Path(out[0]).resolve().is_relative_to(tmp_path.resolve())
    assert "safs13" in out[1] and "safs" in out[2]


def test_entrypoint_and_submission_id():
    ep = J.entrypoint("/opt/py env/bin/python", Path("/shared/results dir"))
    assert ep == ("'/opt/py env/bin/python' -m safs.cli run pipeline.yaml --results '/shared/results dir' "
                  "--address auto --quiet")
    assert J.default_submission_id("quickstart", datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)) == \
        "safs-quickstart-20260102-030405"
    assert re.fullmatch(r"safs-q\.1-\d{8}-\d{6}", J.default_submission_id("q.1"))


def test_submit_pipeline_runtime_env_and_metadata(tmp_path):
    f = write_pipeline(tmp_path / "p.yaml", space="mine.yaml")
    (tmp_path / "mine.yaml").write_text(SPACE.read_text())
    client = FakeClient()
    results = tmp_path / "res"
    sid = J.submit_pipeline(client, f, "tiny", results, "/usr/bin/python3")
    [kw] = client.submitted
    assert re.fullmatch(r"safs-tiny-\d{8}-\d{6}", sid) and kw["submission_id"] == sid
    assert kw["metadata"] == {"safs_pipeline": "tiny", "safs_results": str(results)}
    assert kw["entrypoint"] == J.entrypoint("/usr/bin/python3", results)
    assert kw["runtime_env"]["env_vars"] == {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "60"}
    assert {"pipeline.yaml", "spaces/01-mine.yaml", "safs/cli.py", "safs/cluster.py",
            "search_spaces/activations/safs13.yaml"} <= set(kw["files"])
    assert kw["pipeline"]["stages"][3]["space"] == "spaces/01-mine.yaml"
    assert not Path(kw["runtime_env"]["working_dir"]).exists()  # removed once uploaded


def test_submit_refuses_a_second_driver_on_the_same_run(tmp_path):
    f = write_pipeline(tmp_path / "p.yaml")
    results = tmp_path / "res"
    running = SimpleNamespace(submission_id="safs-tiny-1", status="RUNNING",
                              metadata={"safs_pipeline": "tiny", "safs_results": str(results)})
    with pytest.raises(J.JobsError, match="safs-tiny-1 .RUNNING. is already running"):
        J.submit_pipeline(FakeClient([running]), f, "tiny", results, "/usr/bin/python3")
    done = SimpleNamespace(**{**vars(running), "status": "STOPPED"})
    client = FakeClient([done])
    J.submit_pipeline(client, f, "tiny", results, "/usr/bin/python3")
    assert len(client.submitted) == 1


def test_submit_command_prints_id_and_how_to_follow(tmp_path, monkeypatch):
    f = write_pipeline(tmp_path / "p.yaml")
    client = FakeClient()
    monkeypatch.setattr(J, "connect", lambda address: client)
    r = CliRunner().invoke(main, ["submit", str(f), "--address", "http://10.0.0.5:8265", "--results",
                                  str(tmp_path / "res"), "--submission-id", "job-7"])
    assert r.exit_code == 0, r.output
    assert "submitted job job-7" in r.output
    assert "safs jobs logs job-7 --address http://10.0.0.5:8265 --follow" in r.output
    assert "safs jobs stop job-7" in r.output and str(tmp_path / "res" / "tiny") in r.output
    assert client.submitted[0]["entrypoint"].startswith(f"{sys.executable} -m safs.cli run pipeline.yaml")


# ------------------------------------------------------------------------- errors


@pytest.mark.parametrize("address", ["ftp://x", "localhost:8265", "auto", "ray://h:10001", "http://", "http://h:port",
                                     "http://h:", "http://h:99999", "http://h:8265/api"])
def test_bad_address_is_bad_input(address):
    with pytest.raises(J.JobsError) as e:
        J.check_address(address)
    assert e.value.code == 2


def test_good_addresses():
    assert J.check_address("http://127.0.0.1:8265/") == "http://127.0.0.1:8265"
    assert J.check_address("https://ray.example.org") == "https://ray.example.org"
    assert J.check_address("http://[::1]:8265") == "http://[::1]:8265"


def _submit_never_connects(monkeypatch):
    def boom(address):
        raise AssertionError("connected although the input is bad")

    monkeypatch.setattr(J, "connect", boom)


@pytest.mark.parametrize("case", ["malformed", "missing", "bad-address", "bad-stage"])
def test_submit_bad_input_exits_2_before_connecting(tmp_path, monkeypatch, case):
    _submit_never_connects(monkeypatch)
    f = write_pipeline(tmp_path / "p.yaml")
    address = "http://127.0.0.1:8265"
    if case == "malformed":
        f.write_text("name: x\nstages: [\n")
    elif case == "missing":
        f = tmp_path / "nope.yaml"
    elif case == "bad-address":
        address = "ftp://x"
    else:
        write_pipeline(f, space="no_such_space")
    r = CliRunner().invoke(main, ["submit", str(f), "--address", address])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output


def test_unreachable_address_exits_1_and_names_it():
    [port] = free_ports(1)
    address = f"http://127.0.0.1:{port}"
    for args in (["jobs", "status", "x"], ["jobs", "list"], ["jobs", "logs", "x"], ["jobs", "stop", "x"]):
        r = CliRunner().invoke(main, args + ["--address", address])
        assert r.exit_code == 1, r.output
        assert r.output.count("\n") == 1 and "cannot reach" in r.output and address in r.output


def test_default_address_from_env(monkeypatch):
    monkeypatch.delenv(J.ADDRESS_ENV, raising=False)
    assert J.default_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv(J.ADDRESS_ENV, "http://head:8265")
    assert J.default_address() == "http://head:8265"


def test_auth_errors_say_how_to_set_the_token(monkeypatch):
    from ray.exceptions import AuthenticationError

    a = "http://head:8265"
    required = AuthenticationError("Authentication required: Unauthorized\n\nToken authentication is enabled but "
                                   "no authentication token was found")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    message, code = J.explain(required, a)
    assert code == 1 and "\n" not in message and a in message
    assert "RAY_AUTH_MODE is not 'token'" in message
    for hint in ("export RAY_AUTH_MODE=token", "~/.ray/auth_token", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN "):
        assert hint in message
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert "found no token" in J.explain(required, a)[0]
    rejected = AuthenticationError("Authentication failed: Forbidden\n\nToken authentication is enabled but the "
                                   "authentication token is invalid or incorrect.")
    assert "rejected this client's token" in J.explain(rejected, a)[0]
    unreadable = AuthenticationError("RAY_AUTH_TOKEN_PATH is set but file cannot be opened or is empty: /x")
    assert "cannot be opened or is empty: /x" in J.explain(unreadable, a)[0]


def test_other_client_errors_map_to_one_line():
    a = "http://head:8265"
    assert J.explain(RuntimeError("Request failed with status code 404: Job j1 does not exist."), a, "j1") == \
        (f"no job 'j1' on the cluster at {a} (safs jobs list --address {a})", 1)
    message, code = J.explain(ConnectionError(f"Failed to connect to Ray at address: {a}."), a)
    assert code == 1 and message.startswith(f"cannot reach the Ray Jobs API at {a}")
    import requests

    message, code = J.explain(requests.exceptions.ConnectionError("Max retries exceeded\nwith url"), a)
    assert (message, code) == (f"cannot reach the Ray Jobs API at {a}: Max retries exceeded", 1)
    message, _ = J.explain(RuntimeError("Request failed with status code 400: Job with submission_id x already "
                                        "exists.\nmore"), a)
    assert "\n" not in message and "already exists" in message


# ------------------------------------------------------------------------- a real cluster


def run_safs(head, *args, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(safs_cmd() + [str(a) for a in args], env=env or head.env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def told(run_dir: Path) -> dict[str, int]:
    """Trial id -> token of the search candidates the searcher has been told (finished)."""
    for f in run_dir.glob("*-search-*/search_state.json"):
        try:
            return {tid: rec["token"] for tid, rec in json.loads(f.read_text())["told"].items()}
        except (ValueError, KeyError):
            return {}  # being written
    return {}


def trial_results(stage_dir: Path) -> dict[Path, int]:
    """Every search trial's result.json (whatever the layout under tune/) -> its candidate token."""
    out = {}
    for f in stage_dir.glob("tune/**/trial_*/result.json"):
        first = f.read_text().splitlines()[:1]
        if first:
            out[f] = json.loads(first[0])["config"]["candidate"]["token"]
    return out


def wait_for_told(head, run_dir: Path, sid: str, n: int, timeout: float) -> dict[str, int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        t = told(run_dir)
        if len(t) >= n:
            return t
        time.sleep(0.5)
    logs = run_safs(head, "jobs", "logs", sid, "--address", head.address).stdout
    pytest.fail(f"fewer than {n} search candidates finished in {timeout:.0f} s; job log:\n{logs[-3000:]}")


@pytest.mark.slow
def test_submit_stop_and_resubmit_on_a_loopback_cluster(tmp_path):
    t0 = time.time()
    head = start_head(num_cpus=2)
    try:
        a = head.address
        results = tmp_path / "results"
        print(f"head up in {time.time() - t0:.1f}s")

        # Client errors against the real cluster: no token mode, unknown job.
        no_mode = {k: v for k, v in head.env.items() if k != "RAY_AUTH_MODE"}
        r = run_safs(head, "jobs", "list", "--address", a, env=no_mode)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert "export RAY_AUTH_MODE=token" in r.stderr and a in r.stderr
        r = run_safs(head, "jobs", "status", "no-such-job", "--address", a)
        assert r.returncode == 1 and "no job 'no-such-job'" in r.stderr, r.stderr

        # a) The quickstart, in the background (both pipelines ask for one CPU per trial; the head has two).
        quickstart = ROOT / "experiments" / "quickstart.yaml"
        quick = subprocess.Popen(safs_cmd() + ["submit", str(quickstart), "--address", a, "--results", str(results),
                                               "--wait"],
                                 env=head.env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        # b) A small pipeline stopped while it searches, then submitted again. A relative results
        # path checks that it is made absolute on the client.
        f = write_pipeline(tmp_path / "stopme.yaml", name="stopme", samples=10, epochs=2)
        run_dir = results / "stopme"
        r = run_safs(head, "submit", f, "--address", a, "--results", "results", "--submission-id", "stopme-1",
                     cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "safs jobs logs stopme-1" in r.stdout and str(run_dir) in r.stdout
        assert "INFO" not in r.stderr, r.stderr  # Ray's client logging stays quiet
        before = wait_for_told(head, run_dir, "stopme-1", 2, timeout=300)
        [stage_dir] = [d for d in run_dir.glob("*-search-*") if d.is_dir()]
        snapshot = {p: p.read_bytes() for p, tok in trial_results(stage_dir).items() if tok in before.values()}
        r = run_safs(head, "jobs", "stop", "stopme-1", "--address", a, "--wait")
        assert r.returncode == 0 and "STOPPED" in r.stdout, r.stdout + r.stderr
        told_at_stop = told(run_dir)
        assert len(told_at_stop) < 10, "the search ended before the stop; make it longer"
        assert "STOPPED" in run_safs(head, "jobs", "status", "stopme-1", "--address", a).stdout
        # Graceful: safs saw the signal and said how to continue (not a SIGKILL mid-write).
        assert "again to resume" in run_safs(head, "jobs", "logs", "stopme-1", "--address", a).stdout

        r = run_safs(head, "submit", f, "--address", a, "--results", results, "--submission-id", "stopme-2", "--wait")
        assert r.returncode == 0 and "SUCCEEDED" in r.stdout, r.stdout + r.stderr
        print(f"stop/resume done at {time.time() - t0:.1f}s")
        followed = run_safs(head, "jobs", "logs", "stopme-2", "--address", a, "--follow", timeout=60)
        assert followed.returncode == 0 and "safs: done" in followed.stdout, followed.stderr

        for p, data in snapshot.items():
            assert p.read_bytes() == data, f"{p} changed: a finished candidate ran again"
        tokens = list(trial_results(stage_dir).values())
        for tok in told_at_stop.values():
            assert tokens.count(tok) == 1, f"candidate {tok} trained {tokens.count(tok)} times"
        import pandas as pd

        trials = pd.read_parquet(stage_dir / "trials.parquet")
        assert len(trials) == 10 and trials["token"].is_unique

        out, _ = quick.communicate(timeout=600)
        assert quick.returncode == 0 and "SUCCEEDED" in out, out
        print(f"quickstart done at {time.time() - t0:.1f}s")
        table = run_safs(head, "table", results / "quickstart")
        assert table.returncode == 0, table.stderr
        for label in ("Dense", "Magnitude Pruning", "Stage 1"):
            assert label in table.stdout

        listed = run_safs(head, "jobs", "list", "--address", a).stdout
        assert re.search(r"stopme-1\s+STOPPED\s+stopme", listed) and re.search(r"stopme-2\s+SUCCEEDED", listed)
        assert re.search(r"safs-quickstart-\S+\s+SUCCEEDED\s+quickstart", listed), listed
    finally:
        if "quick" in locals() and quick.poll() is None:
            quick.kill()
        stop_head(head)
        assert not cluster_pids(head.temp_dir)
        print(f"total {time.time() - t0:.1f}s")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_safs_run_drives_an_existing_cluster(tmp_path):
    """`safs run --address` joins a running cluster (by its GCS address, and through Ray Client
    with ray://) instead of starting a local Ray; the results are the same either way."""
    f = write_pipeline(tmp_path / "p.yaml", name="joined", samples=2)
    head = start_head()
    try:
        tables = {}
        for address in (f"127.0.0.1:{head.gcs_port}", f"ray://127.0.0.1:{head.client_port}"):
            results = tmp_path / address.split(":")[0].strip("/")
            p = run_safs(head, "run", f, "--results", results, "--address", address, "--quiet")
            assert p.returncode == 0, p.stdout + p.stderr
            assert cluster_pids(head.temp_dir)  # the cluster is still up: safs joined it, did not own it
            t = run_safs(head, "table", results / "joined", "--format", "csv")
            tables[address] = t.stdout
        a, b = tables.values()
        assert a == b and "Stage 1" in a.splitlines()[0]  # same seeds, same data: the same numbers
    finally:
        stop_head(head)
