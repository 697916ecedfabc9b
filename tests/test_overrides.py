"""``KEY=VALUE`` overrides on the command line: the paths of ``matrix:``, applied before
validation; an error names the override; the plan's hashes change exactly where they should."""

import subprocess

import pytest
import yaml
from click.testing import CliRunner

from conftest import ROOT, safs_cmd, subprocess_env
from safs.cli import main
from safs.config import ConfigError, apply_overrides, load_pipelines, parse_pipelines
from safs.plan import plan

QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
METHODS = ROOT / "experiments" / "methods_mnist5k.yaml"


def quickstart(*overrides):
    (cfg,), matrix = load_pipelines(QUICKSTART, overrides)
    assert matrix is None
    return cfg


def test_overrides_set_fields_by_dotted_path():
    cfg = quickstart("stages.dense.epochs=5", "seed=1", "sparsity.target=0.95", "stages.search.options.steps_minimum=2")
    stages = {st.name: st for st in cfg.stages}
    assert (stages["dense"].epochs, cfg.seed, cfg.sparsity.target) == (5, 1, 0.95)
    assert stages["search"].options == {"steps_minimum": 2}
    assert stages["retrain"].epochs == 20  # untouched
    # Values are YAML: flow mappings, lists, booleans and null.
    cfg = quickstart("stages.dense.optimizer={name: sgd, lr: 0.1}", "stages.retrain.sparse=true",
                     "data.val_fraction=null")
    dense = cfg.stages[0]
    assert (dense.optimizer.name, dense.optimizer.lr, cfg.stages[2].sparse) == ("sgd", 0.1, True)
    # defaults: reach every stage of the kind; a stage's own setting still wins
    cfg = quickstart("defaults.train.batch_size=32")
    assert [st.batch_size for st in cfg.stages if st.kind == "train"] == [32, 32, 32]


def test_overrides_change_the_hashes_where_they_should(tmp_path):
    before = {st.name: st.hash for st in plan(quickstart(), tmp_path)}
    after = {st.name: st.hash for st in plan(quickstart("stages.retrain.epochs=3"), tmp_path)}
    assert [n for n in before if before[n] != after[n]] == ["retrain", "search", "stage1"]
    same = {st.name: st.hash for st in plan(quickstart("stages.retrain.epochs=20"), tmp_path)}
    assert same == before  # the file's own value: nothing changes
    label = {st.name: st.hash for st in plan(quickstart("stages.retrain.label=Other"), tmp_path)}
    assert label == before  # cosmetic fields stay out of the hashes


@pytest.mark.parametrize("override,message", [
    ("stages.retrain.epochz=3", "quickstart.yaml: stages.retrain.epochz=3: unknown key; accepted keys: kind, name"),
    ("stages.retrian.epochs=3", "stages.retrian.epochs=3: no stage named 'retrian'; accepted: dense, prune, retrain"),
    ("sparsity.target=1.5", "sparsity.target=1.5: Input should be less than 1"),
    ("sparsty.target=0.9", "sparsty.target=0.9: sparsty: unknown key"),
    ("stages.search.options.bogus=1", "stages.search.options.bogus=1: stages[3].options: unknown option(s) 'bogus'"),
    ("seed=[1", "seed=[1: the value is not valid YAML"),
    ("seed", "override 'seed': expected KEY=VALUE"),
    ("a..b=1", "override 'a..b=1': expected KEY=VALUE"),
    ("stages.dense=1", "stages.dense=1: a path into stages needs a stage name and a field"),
])
def test_an_error_names_the_override(override, message):
    with pytest.raises(ConfigError) as e:
        quickstart("seed=2", override)
    assert message in str(e.value)


def test_the_files_own_error_is_not_blamed_on_an_override():
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["stages"][0]["epochz"] = 1
    with pytest.raises(ConfigError, match=r"^pipeline: stages\[0\]\.epochz: unknown key"):
        parse_pipelines(raw, overrides=["seed=1"])


def test_overrides_and_the_matrix():
    full, matrix = load_pipelines(METHODS)
    # A key the matrix sweeps narrows that axis to the one value.
    cfgs, narrowed = load_pipelines(METHODS, ["sparsity.target=0.95"])
    assert narrowed["sparsity.target"] == [0.95] and len(cfgs) == len(full) // len(matrix["sparsity.target"])
    assert {c.sparsity.target for c in cfgs} == {0.95}
    # matrix.PATH sets an axis.
    cfgs, m = load_pipelines(METHODS, ["matrix.seed=[5]"])
    assert m["seed"] == [5] and {c.seed for c in cfgs} == {5}
    # Other keys apply to every cell.
    cfgs, _ = load_pipelines(METHODS, ["stages.dense.epochs=2"])
    assert len(cfgs) == len(full) and {c.stages[0].epochs for c in cfgs} == {2}
    with pytest.raises(ConfigError, match="matrix"):
        load_pipelines(METHODS, ["matrix.seed=3"])  # an axis needs a list
    raw = yaml.safe_load(METHODS.read_text())
    assert apply_overrides(raw, ["seed=[0]"]) == apply_overrides(raw, ["matrix.seed=[[0]]"])
    assert raw == yaml.safe_load(METHODS.read_text())  # the input is left as it was


def test_cli_error_exits_2_and_writes_nothing(tmp_path):
    results = tmp_path / "results"
    for args in (["run", str(QUICKSTART)], ["run", str(QUICKSTART), "--dry-run"], ["status", str(QUICKSTART)],
                 ["submit", str(QUICKSTART), "--address", "http://127.0.0.1:1"]):
        r = CliRunner().invoke(main, [*args, "stages.retrain.epochz=3", "--results", str(results)])
        assert r.exit_code == 2, (args, r.output)
        assert "error: quickstart.yaml: stages.retrain.epochz=3: unknown key" in r.output
    assert not results.exists()


def test_cli_dry_run_status_and_print_config(tmp_path):
    results = tmp_path / "results"
    r = CliRunner().invoke(main, ["run", str(QUICKSTART), "--dry-run", "stages.retrain.epochs=3", "seed=1",
                                  "--results", str(results)])
    assert r.exit_code == 0, r.output
    expected = {st.name: st.hash for st in plan(quickstart("stages.retrain.epochs=3", "seed=1"), results)}
    assert [line.split()[3] for line in r.output.splitlines()] == list(expected.values())
    r = CliRunner().invoke(main, ["status", str(QUICKSTART), "stages.retrain.epochs=3", "seed=1",
                                  "--results", str(results)])
    assert r.exit_code == 0 and [line.split()[3] for line in r.output.splitlines()[1:]] == list(expected.values())
    assert not results.exists()

    r = CliRunner().invoke(main, ["run", str(QUICKSTART), "--print-config", "stages.retrain.epochs=3",
                                  "--results", str(results)])
    assert r.exit_code == 0, r.output
    printed = yaml.safe_load(r.output)
    assert printed["stages"][2]["epochs"] == 3 and printed["stages"][2]["batch_size"] == 128  # defaults merged
    (again,), _ = parse_pipelines(printed)
    assert again == quickstart("stages.retrain.epochs=3")
    assert not results.exists()
    r = CliRunner().invoke(main, ["run", str(METHODS), "--print-config", "sparsity.target=0.9"])
    assert yaml.safe_load(r.output)["matrix"]["sparsity.target"] == [0.9]


def test_overrides_reach_sweep_cells_and_submitted_jobs(tmp_path):
    from safs import cluster
    from safs.sweep import child_command

    cmd = child_command(QUICKSTART, tmp_path, "127.0.0.1:6379", 3, True, False, ("seed=1", "stages.dense.epochs=2"))
    assert cmd[cmd.index("run") + 1:cmd.index("run") + 4] == [str(QUICKSTART), "seed=1", "stages.dense.epochs=2"]
    raw = cluster.stage_pipeline(QUICKSTART, tmp_path, ["stages.dense.epochs=2"])
    staged = yaml.safe_load((tmp_path / "pipeline.yaml").read_text())
    assert raw == staged and staged["stages"][0]["epochs"] == 2 and "defaults" in staged  # as written, plus the override


def test_help_documents_overrides():
    p = subprocess.run([*safs_cmd(), "run", "--help"], capture_output=True, text=True, env=subprocess_env(),
                       check=True, cwd=ROOT)
    assert "KEY=VALUE" in p.stdout and "stages.dense.epochs=5" in p.stdout
