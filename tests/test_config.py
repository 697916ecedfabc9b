"""Pipeline validation: every bad file fails with one line naming the field, exit code 2,
before anything is written."""

import subprocess
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from safs.cli import main
from safs.config import ConfigError, load_pipeline, parse_pipeline
from safs.plan import plan

from conftest import ROOT, safs_cmd, subprocess_env

GOOD = """
name: t
data: {name: digits}
model: {name: lenet5}
sparsity: {method: lwm, target: 0.9}
stages:
  - {name: dense, kind: train, epochs: 2}
  - {name: prune, kind: prune}
  - {name: retrain, kind: train, epochs: 1}
"""

SEARCH = """  - {name: search, kind: activation_search, algorithm: lahc, space: safs13, options: {}, start_from: input,
     epochs_per_candidate: 2, fidelity: null}
"""

# (file text, a field path that the message must name, something else it must say)
BAD = {
    "syntax": ("name: t\nstages: [\n", "line", "invalid YAML"),
    "empty": ("", "empty", "stages"),
    "not_a_mapping": ("- 1\n- 2\n", "mapping", "stages"),
    "unknown_model": (GOOD.replace("lenet5", "lenet9000"), "model.name", "lenet5"),
    "unknown_method": (GOOD.replace("lwm", "magic"), "sparsity.method", "lwm"),
    "unknown_dataset": (GOOD.replace("digits", "svhn"), "data.name", "mnist5k"),
    "sparsity_1.5": (GOOD.replace("0.9", "1.5"), "sparsity.target", "1.5"),
    "negative_epochs": (GOOD.replace("epochs: 2", "epochs: -3"), "stages[0].epochs", "-3"),
    "missing_stages": ("name: t\ndata: {name: digits}\nmodel: {name: lenet5}\n", "stages", "missing"),
    "wrong_type": (GOOD.replace("epochs: 2", "epochs: two"), "stages[0].epochs", "integer"),
    "unknown_key": (GOOD.replace("epochs: 2", "epochz: 2"), "stages[0].epochz", "accepted keys"),
    "unknown_top_key": (GOOD + "stagez: []\n", "stagez", "accepted keys"),
    "prune_first": (GOOD.replace("  - {name: dense, kind: train, epochs: 2}\n", ""), "stages[0].kind", "accepted first kinds: train"),
    "prune_without_sparsity": (GOOD.replace("sparsity: {method: lwm, target: 0.9}\n", ""), "sparsity", "prunes"),
    "unknown_kind": (GOOD.replace("kind: prune", "kind: grow"), "stages[1].kind", "accepted: train, prune"),
    "unknown_optimizer": (GOOD.replace("epochs: 1}", "epochs: 1, optimizer: {name: lion}}"), "stages[2].optimizer.name", "'adam'"),
    "duplicate_names": (GOOD.replace("name: retrain", "name: dense"), "stages[2].name", "unique"),
    "missing_data_dir": (GOOD.replace("{name: digits}", "{name: mnist, data_dir: nowhere}"), "data.data_dir", "train-images-idx3-ubyte"),
    "unknown_model_option": (GOOD.replace("{name: lenet5}", "{name: lenet5, options: {depth: 3}}"), "model.options", "depth"),
    "unknown_algorithm": (GOOD + SEARCH.replace("lahc", "nope"), "stages[3].algorithm", "accepted: ga, lahc, oneshot, random, sa"),
    "unknown_algorithm_option": (GOOD + SEARCH.replace("{}", "{bogus: 1}"), "stages[3].options", "steps_minimum"),
    "missing_space": (GOOD + SEARCH.replace("safs13", "missing.yaml"), "stages[3].space", "safs13, wide20"),
    "start_from_pruned_without_prune": (GOOD.replace("  - {name: prune, kind: prune}\n", "") + SEARCH.replace("input", "pruned"),
                                        "stages[2].start_from", "prune stage"),
    "fidelity_above_budget": (GOOD + SEARCH.replace("fidelity: null", "fidelity: {min_epochs: 3}"), "stages[3].fidelity.min_epochs", "epochs_per_candidate"),
    "ga_population_0": (GOOD + SEARCH.replace("lahc", "ga").replace("{}", "{population: 0}"), "stages[3].options", "population"),
    "reduction_factor_1": (GOOD + SEARCH.replace("fidelity: null", "fidelity: {reduction_factor: 1}"), "stages[3].fidelity.reduction_factor", "greater than 1"),
    "epochs_per_candidate_0": (GOOD + SEARCH.replace("epochs_per_candidate: 2", "epochs_per_candidate: 0"), "stages[3].epochs_per_candidate", "0"),
    "start_from_unknown": (GOOD + SEARCH.replace("start_from: input", "start_from: latest"), "stages[3].start_from", "'input' or 'pruned'"),
    "unknown_search_key": (GOOD + SEARCH.replace("fidelity: null", "nonsense: 1"), "stages[3].nonsense", "epochs_per_candidate"),
    "input_not_earlier": (GOOD.replace("kind: prune}", "kind: prune, input: retrain}"), "stages[1].input", "accepted: dense"),
    "settings_from_not_hpo": (GOOD.replace("epochs: 1}", "epochs: 1, settings_from: dense}"), "stages[2].settings_from", "not an earlier hpo stage"),
    "prune_target_shrinks": (GOOD.replace("- {name: retrain, kind: train, epochs: 1}", "- {name: retrain, kind: train, epochs: 1}\n  - {name: prune2, kind: prune, target: 0.5}"), "stages[3].target", "only grow"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_pipeline_exit_2_one_line_no_results(case, tmp_path):
    text, field, extra = BAD[case]
    f = tmp_path / "pipeline.yaml"
    f.write_text(text)
    results = tmp_path / "results"
    r = CliRunner().invoke(main, ["run", str(f), "--results", str(results)])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    assert field in lines[0] and extra in lines[0], lines[0]
    assert not results.exists()


def test_bad_pipeline_real_process(tmp_path):
    """The real console entry point: exit code 2 on stderr, nothing on stdout, no results/."""
    f = tmp_path / "p.yaml"
    f.write_text(GOOD.replace("0.9", "1.5"))
    p = subprocess.run(safs_cmd() + ["run", str(f)], cwd=tmp_path, capture_output=True, text=True,
                       env=subprocess_env(), timeout=120)
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.count("\n") == 1 and "sparsity.target" in p.stderr
    assert not (tmp_path / "results").exists()


def test_good_pipeline_parses_with_defaults(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(GOOD + "defaults:\n  train: {batch_size: 64, optimizer: {name: adam, lr: 0.002}}\n")
    cfg = load_pipeline(f)
    assert [s.name for s in cfg.stages] == ["dense", "prune", "retrain"]
    assert cfg.stages[0].batch_size == 64 and cfg.stages[2].optimizer.lr == 0.002
    assert cfg.stages[0].optimizer.name == "adam"


def _cfg(text):
    import yaml

    return parse_pipeline(yaml.safe_load(text))


def test_hash_changes_only_downstream(tmp_path):
    base = plan(_cfg(GOOD), tmp_path)
    changed = plan(_cfg(GOOD.replace("epochs: 1}", "epochs: 5}")), tmp_path)
    assert base[0].hash == changed[0].hash and base[0].dir == changed[0].dir  # dense kept
    assert base[1].hash == changed[1].hash  # prune kept
    assert base[2].hash != changed[2].hash  # retrain reruns
    # Changing the dense stage changes every hash after it.
    dense = plan(_cfg(GOOD.replace("epochs: 2", "epochs: 3")), tmp_path)
    assert all(a.hash != b.hash for a, b in zip(base, dense))
    # Cosmetic fields do not.
    renamed = plan(_cfg(GOOD.replace("name: t", "name: other")), tmp_path)
    assert [p.hash for p in renamed] == [p.hash for p in base]


def test_hash_covers_defaults_and_sparsity(tmp_path):
    explicit = GOOD.replace("epochs: 2}", "epochs: 2, batch_size: 128}")
    assert plan(_cfg(explicit), tmp_path)[0].hash == plan(_cfg(GOOD), tmp_path)[0].hash
    other_target = plan(_cfg(GOOD.replace("0.9", "0.95")), tmp_path)
    base = plan(_cfg(GOOD), tmp_path)
    assert other_target[0].hash == base[0].hash and other_target[1].hash != base[1].hash


def test_dry_run_prints_stages_and_writes_nothing(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(GOOD)
    r = CliRunner().invoke(main, ["run", str(f), "--results", str(tmp_path / "results"), "--dry-run"])
    assert r.exit_code == 0, r.output
    hashes = [p.hash for p in plan(load_pipeline(f), tmp_path / "results")]
    assert len(r.output.strip().splitlines()) == 3
    assert all(h in r.output for h in hashes) and "pending" in r.output
    assert not (tmp_path / "results").exists()


def test_help_is_fast_and_light():
    code = "import sys, safs.cli; safs.cli.main(['--help'], standalone_mode=False); " \
           "print(sorted(m for m in ('torch','ray','smac','pandas') if m in sys.modules))"
    p = subprocess.run([*safs_cmd()[:1], "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"
    assert "run" in p.stdout and "status" in p.stdout


def test_example_pipelines_validate():
    from safs.config import load_pipelines

    files = sorted((ROOT / "experiments").rglob("*.yaml"))
    assert len(files) >= 7
    for f in files:
        cfgs, _ = load_pipelines(f)
        assert cfgs


def test_search_stage_takes_training_defaults_and_hashes_choices(tmp_path):
    text = GOOD + SEARCH + "defaults:\n  train: {batch_size: 64, epochs: 7, optimizer: {name: adam, lr: 0.002}}\n"
    cfg = _cfg(text)
    search = cfg.stages[3]
    assert search.batch_size == 64 and search.optimizer.lr == 0.002  # training settings shared
    assert search.epochs_per_candidate == 2  # train-only keys (epochs) are not
    base = plan(cfg, tmp_path)
    assert base[3].spec["stage"]["choices"][:3] == ["relu6", "hardswish", "swish"]
    assert base[3].input_index == 2
    # The space's content is hashed, not its name; concurrency is not hashed at all.
    space = tmp_path / "same.yaml"
    space.write_text((ROOT / "search_spaces/activations/safs13.yaml").read_text())
    same = plan(_cfg(text.replace("safs13", str(space)).replace("fidelity: null", "fidelity: null, max_concurrent: 2")), tmp_path)
    assert same[3].hash == base[3].hash
    wider = plan(_cfg(text.replace("safs13", "wide20")), tmp_path)
    assert wider[3].hash != base[3].hash and wider[2].hash == base[2].hash
    pruned = plan(_cfg(text.replace("start_from: input", "start_from: pruned")), tmp_path)
    assert pruned[3].input_index == 1 and pruned[3].hash != base[3].hash


def test_relative_space_path_is_relative_to_the_pipeline(tmp_path):
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "mine.yaml").write_text((ROOT / "search_spaces/activations/wide20.yaml").read_text())
    f = tmp_path / "p.yaml"
    f.write_text(GOOD + SEARCH.replace("safs13", "spaces/mine.yaml"))
    r = CliRunner().invoke(main, ["run", str(f), "--results", str(tmp_path / "results"), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "04-search-" in r.output
