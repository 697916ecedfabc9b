"""Evaluation work of a trial (the test split once per search candidate) and the training
recipes (mixup, cutmix, EMA, random erasing), on tiny data on the CPU, with ``fit`` run
outside Ray (its reports captured)."""

from __future__ import annotations

import pytest
import torch
import yaml

PIPELINE = """
name: scale
seed: 0
data: {{name: digits}}
model: {{name: lenet5}}
resources: {{cpus_per_trial: 1}}
defaults:
  train: {{batch_size: 64, optimizer: {{name: adam, lr: 0.003}}{extra}}}
stages:
  - {{name: dense, kind: train, epochs: 3}}
"""


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    pass


def stage_spec(tmp_path, extra: str = "") -> dict:
    from safs.config import parse_pipeline
    from safs.plan import plan

    cfg = parse_pipeline(yaml.safe_load(PIPELINE.format(extra=extra)))
    return plan(cfg, tmp_path)[0].spec


def run_fit(monkeypatch, spec: dict, epochs: int, token=None, evaluations=None) -> tuple[list[dict], list[dict]]:
    """``fit`` without Ray: the reports it makes, in order, and the history of its last
    checkpoint; ``evaluations`` counts the calls of ``evaluate``."""
    import copy

    from ray import tune

    from safs import model_file
    from safs.stages import common, train

    reports: list[dict] = []
    saved: list[list[dict]] = []
    monkeypatch.setattr(common, "write_history", lambda d, history: saved.append(copy.deepcopy(history)))
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reports.append(dict(metrics)))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    if evaluations is not None:
        from safs.training.loop import evaluate as real

        def counted(model, batches, **kw):
            evaluations.append(1)
            return real(model, batches, **kw)

        monkeypatch.setattr(train, "evaluate", counted)
    ds = common.dataset(spec, torch.device("cpu"))
    model = model_file.new_model(spec, ds)
    train.fit(spec, model, spec["stage"], epochs, token=token)
    return reports, saved[-1]


def test_a_candidate_tests_once_on_the_weights_it_keeps(tmp_path, monkeypatch):
    spec = stage_spec(tmp_path)
    evals: list[int] = []
    reports, _ = run_fit(monkeypatch, spec, 3, token=7, evaluations=evals)
    assert [r["test_acc"] for r in reports[:-1]] == [None, None]
    assert all(r["selected_test_acc"] is None for r in reports[:-1])
    last = reports[-1]
    kept_is_last = last["selected_epoch"] == 3
    assert len(evals) == 3 + (1 if kept_is_last else 2)  # val every epoch, test at the end
    assert last["selected_test_acc"] is not None and last["test_acc"] is not None

    # A train stage: test every epoch, and the kept epoch's figure is its own epoch's.
    evals.clear()
    reports, _ = run_fit(monkeypatch, spec, 3, evaluations=evals)
    assert len(evals) == 6
    assert all(r["test_acc"] is not None for r in reports)
    kept = reports[-1]["selected_epoch"]
    assert reports[-1]["selected_test_acc"] == reports[kept - 1]["test_acc"]


def test_the_row_and_the_trials_table_read_the_kept_test_accuracy(tmp_path, monkeypatch):
    from safs.records import make_row
    from safs.training.measure import measure
    from safs.tune.trials import _test_acc

    spec = stage_spec(tmp_path)
    _, history = run_fit(monkeypatch, spec, 3, token=1)
    last = history[-1]
    kept = next(h for h in history if h["epoch"] == last["selected_epoch"])
    assert kept["test_acc"] == last["selected_test_acc"]  # filled in, in the checkpoint's history
    assert _test_acc(history, kept) == last["selected_test_acc"]

    from safs import model_file
    from safs.stages import common

    ds = common.dataset(spec, torch.device("cpu"))
    m = measure(model_file.new_model(spec, ds), (1, 8, 8))
    row = make_row(spec, history, m, wall_s=1.0, trial_id="t", status="done")
    assert row["test_acc"] == last["selected_test_acc"]
    assert row["test_acc_last"] == last["test_acc"]
