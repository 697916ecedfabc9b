"""``matrix:`` sweeps: expansion, shared cached prefix stages, status and tables per cell."""

import subprocess
import tempfile

import pytest
import yaml

from safs.config import ConfigError, parse_pipelines
from safs.pipeline import plan

from conftest import safs_cmd, subprocess_env
from test_pipeline_e2e import kill_ray_leftovers

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
        p = subprocess.run(safs_cmd() + ["run", str(f), "--results", str(tmp_path / "r"), "--quiet", "--num-cpus", "2"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=800)
    finally:
        kill_ray_leftovers(ray_tmp)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("done (cached)") == 2  # the dense stage of the second cell of each seed
    run_dir = tmp_path / "r" / "sweep"
    assert len(list(run_dir.glob("01-dense-*/stage.json"))) == 2
    assert len(list(run_dir.glob("03-retrain-*/stage.json"))) == 4
    df = safs.load_results(run_dir)
    assert len(df) == 12 and df["variant"].nunique() == 4  # every cell has its three rows, shared ones too
    from safs.report.tables import stages_table

    table = stages_table(df)
    assert len(table) == 4 and table["Dense"].notna().all()
    status = subprocess.run(safs_cmd() + ["status", str(run_dir)], capture_output=True, text=True, env=env, timeout=120)
    assert status.returncode == 0 and status.stdout.count("3/3 stages done") == 4, status.stdout
