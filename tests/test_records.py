"""Readers read what the runner recorded: `safs table` and `safs status` of a run whose
custom search-space file was deleted or edited after it ran show the recorded results; a
run they cannot list says so in one line, never with a traceback."""

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from safs.cli import main
from safs.config import parse_pipeline
from safs.io import sha256, write_json
from safs.plan import plan
from safs.records import CELLS, ROW_COLUMNS, write_cell

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "activations" / "safs13.yaml"


def _row(st, val, test) -> dict:
    row = {c: None for c in ROW_COLUMNS}
    sp = st.spec["sparsity"]
    row.update(pipeline=st.spec["pipeline"], variant=None, stage=st.name, stage_index=st.index, stage_kind=st.kind,
               label=st.label, stage_hash=st.hash, trial_id="t", status="done", model="lenet5", dataset="digits",
               method=sp["method"] if sp else "dense", target_sparsity=sp["target"] if sp else 0.0,
               achieved_sparsity=sp["target"] if sp else 0.0, params=100, nnz=50, macs=1000, nnz_macs=500,
               val_acc=val, test_acc=test, selected_epoch=1, select="best", val_acc_last=val, test_acc_last=test,
               epochs=1, finetune_epochs=1, wall_s=1.0, seed=0, config=json.dumps(st.spec["stage"], sort_keys=True))
    return row


def make_run(tmp_path: Path, cells: bool = True) -> Path:
    """A finished run directory as the runner leaves it (records only: nothing is trained),
    whose search stage used a space file beside the pipeline."""
    space = tmp_path / "mine.yaml"
    space.write_text(SPACE.read_text())
    raw = {"name": "gone", "data": {"name": "digits"}, "model": {"name": "lenet5"},
           "sparsity": {"method": "lwm", "target": 0.5},
           "stages": [{"name": "dense", "kind": "train", "epochs": 1}, {"name": "prune", "kind": "prune"},
                      {"name": "search", "kind": "activation_search", "algorithm": "random",
                       "options": {"samples": 2}, "epochs_per_candidate": 1, "space": str(space)}]}
    cfg = parse_pipeline(raw, source="gone")
    results = tmp_path / "results"
    plans = plan(cfg, results)
    run_dir = results / "gone"
    run_dir.mkdir(parents=True)
    (run_dir / "pipeline.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    if cells:
        write_cell(run_dir, cfg.variant, plans)
    for k, st in enumerate(plans):
        st.dir.mkdir()
        st.model_path.write_bytes(b"weights")
        write_json(st.record_path, {"status": "done", "name": st.name, "kind": st.kind, "index": st.index,
                                    "hash": st.hash, "spec": st.spec, "row": _row(st, 0.9 - k / 10, 0.8 - k / 10),
                                    "model_sha256": sha256(st.model_path)})
    return run_dir


@pytest.mark.parametrize("change", ["deleted", "edited"])
def test_table_and_status_read_the_records(tmp_path, change):
    run_dir = make_run(tmp_path)
    runner = CliRunner()
    before_table = runner.invoke(main, ["table", str(run_dir)])
    before_status = runner.invoke(main, ["status", str(run_dir)])
    assert before_table.exit_code == 0 and before_status.exit_code == 0, before_table.output + before_status.output
    assert before_status.output.count(" done") == 3
    space = tmp_path / "mine.yaml"
    if change == "deleted":
        space.unlink()
    else:  # fewer candidates: planning again would give the search stage another hash
        text = space.read_text().replace("  - relu6\n", "")
        assert text != SPACE.read_text()
        space.write_text(text)
    table = runner.invoke(main, ["table", str(run_dir)])
    status = runner.invoke(main, ["status", str(run_dir)])
    assert table.exit_code == 0 and table.output == before_table.output
    assert status.exit_code == 0 and status.output == before_status.output
    assert "80.00" in table.output and "60.00" in table.output  # the dense and the search stage's test accuracy


def test_run_without_cell_records_says_so_in_one_line(tmp_path):
    run_dir = make_run(tmp_path, cells=False)  # as runs recorded before cells existed
    assert not (run_dir / CELLS).exists()
    (tmp_path / "mine.yaml").unlink()
    runner = CliRunner()
    status = runner.invoke(main, ["status", str(run_dir)])
    assert status.exit_code == 2 and status.exception is None or isinstance(status.exception, SystemExit)
    lines = status.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "mine.yaml" in lines[0], status.output
    assert "Traceback" not in status.output
    table = runner.invoke(main, ["table", str(run_dir)])  # every finished stage record
    assert table.exit_code == 0 and "60.00" in table.output, table.output
