"""STR's sparsity-budget transfer: ``sparsity.options.budget_from`` becomes ``layer_targets``."""

import json
import subprocess

import pytest

from conftest import safs_cmd, subprocess_env

PIPELINE = """
name: budget
data: {{name: digits}}
model: {{name: lenet5}}
sparsity: {{method: {method}, target: 0.9, options: {{budget_from: {source}}}}}
stages:
  - {{name: dense, kind: train, epochs: 1}}
  - {{name: sparse, kind: train, epochs: 1, sparse: true}}
"""
LAYERS = {"conv1": 0.41, "conv2": 0.83, "fc1": 0.97, "fc2": 0.92, "fc3": 0.55}


def stage_dir(root, name="02-sparse-0123456789", status="done", layers=LAYERS):
    d = root / "str_run" / name
    d.mkdir(parents=True)
    per_layer = {k: {"params": 100, "nnz": 10, "sparsity": v, "prunable": True} for k, v in layers.items()}
    (d / "stage.json").write_text(json.dumps({"status": status, "name": "sparse",
                                              "measurement": {"per_layer": per_layer}}))
    return d


def preflight(tmp_path, source, method="gmp"):
    from safs.preflight import preflight as _preflight
    from safs.config import load_pipeline

    f = tmp_path / "p.yaml"
    f.write_text(PIPELINE.format(method=method, source=source))
    return _preflight(load_pipeline(f), f)


@pytest.mark.parametrize("method", ["lwm", "gmp", "dnw"])
def test_budget_from_a_stage_directory_becomes_its_per_layer_targets(tmp_path, method):
    stage_dir(tmp_path)
    cfg = preflight(tmp_path, "str_run/02-sparse-0123456789", method)
    assert cfg.sparsity.options == {"layer_targets": LAYERS}


def test_budget_from_run_and_stage_name(tmp_path):
    stage_dir(tmp_path)
    stage_dir(tmp_path, "03-sparse-9999999999", status="running")  # not finished: not a candidate
    assert preflight(tmp_path, "str_run/sparse").sparsity.options["layer_targets"] == LAYERS


def test_the_budget_changes_the_stage_hash(tmp_path):
    from safs.plan import plan

    stage_dir(tmp_path)
    a = plan(preflight(tmp_path, "str_run/sparse"), tmp_path)[1].hash
    stage_dir(tmp_path, "04-sparse-8888888888", layers={**LAYERS, "fc1": 0.5})
    b = plan(preflight(tmp_path, "str_run/04-sparse-8888888888"), tmp_path)[1].hash
    assert a != b


@pytest.mark.parametrize("source,why", [("str_run/missing", "no finished stage"),
                                        ("str_run/02-sparse-0123456789", "not done")])
def test_a_bad_budget_source_is_one_line_naming_the_field(tmp_path, source, why):
    from safs.config import ConfigError

    stage_dir(tmp_path, status="running")
    with pytest.raises(ConfigError, match=why) as e:
        preflight(tmp_path, source)
    assert "sparsity.options.budget_from" in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_layer_in_the_budget_is_refused_before_anything_runs(tmp_path):
    stage_dir(tmp_path, layers={**LAYERS, "classifier": 0.5})
    f = tmp_path / "p.yaml"
    f.write_text(PIPELINE.format(method="lwm", source="str_run/sparse"))
    r = subprocess.run(safs_cmd() + ["run", str(f), "--results", str(tmp_path / "results")], capture_output=True,
                       text=True, env=subprocess_env(), timeout=120)
    assert r.returncode == 2 and "layer_targets" in r.stderr and "classifier" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()
