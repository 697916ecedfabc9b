"""``matrix:`` sweeps: expansion, shared cached prefix stages, status and tables per cell."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading

import pytest
import yaml

from safs.config import ConfigError, parse_pipelines
from safs.plan import plan

from conftest import safs_cmd, subprocess_env
from conftest import kill_ray_leftovers

SWEEP = """
name: sweep
seed: 0
data: {name: digits}
model: {name: lenet5}
sparsity: {method: lwm, target: 0.9}
defaults:
  train: {batch_size: 64, optimizer: {name: adam, lr: 0.003}}
matrix:
  sparsity.target: [0.8, 0.9]
  seed: [0, 1]
stages:
  - {name: dense, kind: train, epochs: 1}
  - {name: prune, kind: prune}
  - {name: retrain, kind: train, epochs: 1}
"""


def test_matrix_expands_to_the_product_and_shares_prefix_hashes(tmp_path):
    cfgs, matrix = parse_pipelines(yaml.safe_load(SWEEP))
    assert matrix == {"sparsity.target": [0.8, 0.9], "seed": [0, 1]}
    assert [c.variant for c in cfgs] == ["target=0.8,seed=0", "target=0.8,seed=1", "target=0.9,seed=0", "target=0.9,seed=1"]
    plans = [plan(c, tmp_path) for c in cfgs]
    dense = {p[0].dir for p in plans}
    prune = {p[1].dir for p in plans}
    assert len(dense) == 2 and len(prune) == 4  # dense: once per seed; everything sparse: per cell
    assert len({p[0].dir.parent for p in plans}) == 1  # one run directory


def test_matrix_addresses_stages_by_name():
    raw = yaml.safe_load(SWEEP)
    raw["matrix"] = {"stages.retrain.epochs": [1, 3]}
    cfgs, _ = parse_pipelines(raw)
    assert [c.stages[2].epochs for c in cfgs] == [1, 3]
    raw["matrix"] = {"stages.nope.epochs": [1]}
    with pytest.raises(ConfigError, match=r"matrix.stages.nope.epochs: no stage named 'nope'; accepted: dense, prune, retrain"):
        parse_pipelines(raw)


@pytest.mark.parametrize("matrix, words", [
    ([1, 2], "matrix: expected a mapping"),
    ({"seed": []}, "non-empty list"),
    ({"sparsity.method": ["lwm", "magic"]}, "sparsity.method: unknown method 'magic'"),
])
def test_bad_matrix_is_one_line(matrix, words):
    raw = yaml.safe_load(SWEEP)
    raw["matrix"] = matrix
    with pytest.raises(ConfigError, match=words) as e:
        parse_pipelines(raw)
    assert "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sweep_runs_every_cell_training_shared_stages_once(tmp_path):
    import safs

    f = tmp_path / "p.yaml"
    f.write_text(SWEEP)
    ray_tmp = tempfile.mkdtemp(prefix="safs-ray-")
    env = subprocess_env(RAY_TMPDIR=ray_tmp)
    try:
        # An override reaches every cell's child process.
        p = subprocess.run(safs_cmd() + ["run", str(f), "stages.retrain.epochs=2", "--results", str(tmp_path / "r"),
                                         "--quiet", "--num-cpus", "2"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=800)
    finally:
        kill_ray_leftovers(ray_tmp)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "running 4 cells, 2 at a time" in p.stdout  # 2 CPUs, 1 CPU per trial
    assert "4 of 4 cells done" in p.stdout
    assert p.stdout.count("done (cached)") == 2  # the dense stage of the second cell of each seed
    run_dir = tmp_path / "r" / "sweep"
    for dense in run_dir.glob("01-dense-*"):  # trained once: one attempt, one Tune experiment
        assert json.loads((dense / "stage.json").read_text())["attempts"] == 1
        assert [d.name for d in (dense / "tune").iterdir()] == [f"attempt-1-{dense.name.rsplit('-', 1)[1]}"]
    # Cells ran side by side on one Ray: every stage directory holds its own trials only
    # (Tune stages an experiment's files by its name and start second: same-named attempts collided).
    for params in run_dir.glob("*/tune/*/trial_*/params.json"):
        stage_dir = params.parents[3]
        assert json.loads(params.read_text())["spec"]["hash"] == stage_dir.name.rsplit("-", 1)[1], params
    assert len(list(run_dir.glob("01-dense-*/stage.json"))) == 2
    assert len(list(run_dir.glob("03-retrain-*/stage.json"))) == 4
    for retrain in run_dir.glob("03-retrain-*"):
        assert len(json.loads((retrain / "stage.json").read_text())["history"]) == 2
    df = safs.load_results(run_dir)
    assert len(df) == 12 and df["variant"].nunique() == 4  # every cell has its three rows, shared ones too
    from safs.report.tables import stages_table

    table = stages_table(df)  # the two seeds of each target pool into one row
    assert len(table) == 2 and (table["n"] == 2).all() and table["Dense"].notna().all()
    status = subprocess.run(safs_cmd() + ["status", str(run_dir)], capture_output=True, text=True, env=env, timeout=120)
    assert status.returncode == 0 and status.stdout.count("3/3 stages done") == 4, status.stdout


# --------------------------------------------------------------------------- parallel cells

def test_auto_parallel_fits_cells_to_the_cluster():
    from safs.sweep import auto_parallel

    res = {"cpus_per_trial": 1.0, "gpus_per_trial": 0.0, "max_concurrent_trials": 1}
    assert auto_parallel(res, {"CPU": 2.0}, cells=8) == 2
    assert auto_parallel(res, {"CPU": 16.0}, cells=3) == 3  # never more than the cells
    assert auto_parallel({**res, "max_concurrent_trials": 4}, {"CPU": 2.0}, cells=8) == 1  # at least one
    assert auto_parallel({**res, "cpus_per_trial": 0.5}, {"CPU": 2.0}, cells=8) == 4
    gpu = {**res, "gpus_per_trial": 1.0}
    assert auto_parallel(gpu, {"CPU": 16.0, "GPU": 2.0}, cells=8) == 2


CHILD = """
import os, sys, time
running, label = sys.argv[1], sys.argv[2]
open(os.path.join(running, label), "w").close()
now = len(os.listdir(running))
with open(os.path.join(running, "..", "max"), "a") as f:
    f.write(str(now) + " ")
print(f"hello from {label}", flush=True)
time.sleep(1.0)
os.remove(os.path.join(running, label))
sys.exit(int(sys.argv[3]))
"""


def test_cells_run_at_most_parallel_at_once_and_report_each_exit_code(tmp_path):
    from safs.sweep import run_cells

    running = tmp_path / "running"
    running.mkdir()
    codes = {"a": 0, "b": 1, "c": 0, "d": 0}
    lines = []
    got = run_cells({k: [sys.executable, "-c", CHILD, str(running), k, str(c)] for k, c in codes.items()}, 2,
                    lines.append)
    assert got == codes
    assert sorted(lines) == sorted(f"[{k}] hello from {k}" for k in codes)
    peak = max(int(x) for x in (tmp_path / "max").read_text().split())
    assert peak == 2


STOPPABLE = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: (print("stopping", flush=True), sys.exit(130)))
print("started", flush=True)
time.sleep(60)
"""


def test_a_stop_signal_stops_running_cells_and_starts_no_more(tmp_path):
    from safs.sweep import run_cells

    lines = []
    started = threading.Event()

    def echo(line):
        lines.append(line)
        if sum("started" in x for x in lines) == 2:
            started.set()

    threading.Thread(target=lambda: started.wait(30) and os.kill(os.getpid(), signal.SIGTERM), daemon=True).start()
    got = run_cells({k: [sys.executable, "-c", STOPPABLE] for k in "abc"}, 2, echo)
    assert got == {"a": 130, "b": 130, "c": 130}
    assert sorted(x for x in lines if "stopping" in x) == ["[a] stopping", "[b] stopping"]
    assert not any(x.startswith("[c]") for x in lines)  # never started
