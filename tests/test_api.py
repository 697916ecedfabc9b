"""``safs.run``: a pipeline from Python, validated as ``safs run`` validates it."""

import subprocess
import sys

import pytest
import yaml

import safs
from conftest import E2E_PIPELINE, ROOT, by_stage, records
from safs.config import ConfigError, load_pipelines
from safs.plan import plan

QUICKSTART = ROOT / "experiments" / "quickstart.yaml"


def test_importing_safs_stays_cheap():
    code = "import sys, safs; assert callable(safs.run); assert 'torch' not in sys.modules and 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_dry_run_of_a_file_with_overrides_is_the_plan(tmp_path):
    df = safs.run(QUICKSTART, tmp_path / "results", overrides=["stages.retrain.epochs=3"], dry_run=True)
    (cfg,), _ = load_pipelines(QUICKSTART, ["stages.retrain.epochs=3"])
    expected = plan(cfg, tmp_path / "results")
    assert list(df.stage) == [st.name for st in expected] and list(df.hash) == [st.hash for st in expected]
    assert set(df.status) == {"pending"} and set(df.cell) == {0} and list(df.dir) == [str(st.dir) for st in expected]
    assert not (tmp_path / "results").exists()


def test_a_mapping_runs_like_its_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in a mapping: the working directory
    raw = yaml.safe_load(QUICKSTART.read_text())
    a = safs.run(raw, dry_run=True)
    b = safs.run(str(QUICKSTART), dry_run=True)
    assert list(a.hash) == list(b.hash) and a.dir[0].startswith("results/quickstart/")
    (tmp_path / "mine.yaml").write_text((ROOT / "search_spaces/activations/wide20.yaml").read_text())
    raw["stages"][3]["space"] = "mine.yaml"
    c = safs.run(raw, overrides="seed=3", dry_run=True)  # one override may be a plain string
    assert list(c.hash)[:3] != list(a.hash)[:3]
    assert not (tmp_path / "results").exists()


def test_a_matrix_plans_every_cell():
    df = safs.run(ROOT / "experiments" / "methods_mnist5k.yaml", overrides=["matrix.seed=[0]"], dry_run=True)
    cells, _ = load_pipelines(ROOT / "experiments" / "methods_mnist5k.yaml", ["matrix.seed=[0]"])
    assert df.cell.nunique() == len(cells) and list(df.variant.unique()) == [c.variant for c in cells]


@pytest.mark.parametrize("change,overrides,message", [
    (lambda raw: raw["stages"][2].update(epochz=3), (), r"^pipeline: stages\[2\]\.epochz: unknown key"),
    (lambda raw: None, ["stages.retrain.epochz=3"], r"^pipeline: stages\.retrain\.epochz=3: unknown key"),
    (lambda raw: raw["stages"][3].update(space="nowhere.yaml"), (), r"stages\[3\]\.space: unknown activation space"),
    (lambda raw: raw["model"].update(options={"width": "x"}), (), r"model\.options"),
])
def test_bad_input_raises_config_error_and_writes_nothing(tmp_path, change, overrides, message):
    raw = yaml.safe_load(QUICKSTART.read_text())
    change(raw)
    with pytest.raises(ConfigError, match=message):
        safs.run(raw, tmp_path / "results", overrides=overrides)
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_run_twice_in_one_process(tmp_path, monkeypatch):
    import ray

    monkeypatch.chdir(tmp_path)
    was_up = ray.is_initialized()
    try:
        _run_twice(tmp_path)
    finally:
        if not was_up:  # the Ray safs.run started stays up for the next call; not for other tests
            ray.shutdown()


def _run_twice(tmp_path):
    raw = yaml.safe_load(E2E_PIPELINE.format(data="digits", dense=2, retrain=1))
    lines = []
    first = safs.run(raw, num_cpus=2, quiet=True, echo=lines.append)
    assert list(first.stage) == ["dense", "prune", "retrain"] and set(first.status) == {"done"}
    assert first.equals(safs.load_results("results/e2e"))
    before = records(tmp_path / "results" / "e2e")

    lines.clear()
    second = safs.run(raw, "results", overrides=["stages.retrain.epochs=2"], num_cpus=2, quiet=True,
                      echo=lines.append)
    assert sum("done (cached)" in ln for ln in lines) == 2  # dense and prune reused
    after = records(tmp_path / "results" / "e2e")
    assert by_stage(after, "dense") == by_stage(before, "dense")
    [new] = [r for d, r in after.items() if d not in before]
    assert new["name"] == "retrain" and len(new["history"]) == 2
    assert list(second.stage) == ["dense", "prune", "retrain"]
    assert second.set_index("stage").loc["retrain", "epochs"] == 2
    stored = yaml.safe_load((tmp_path / "results" / "e2e" / "pipeline.yaml").read_text())
    assert stored["stages"][2]["epochs"] == 2  # the run directory holds the pipeline with its overrides
