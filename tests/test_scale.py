"""Evaluation work of a trial (the test split once per search candidate) and the training
recipes (mixup, cutmix, EMA, random erasing), on tiny data on the CPU, with ``fit`` run
outside Ray (its reports captured)."""

from __future__ import annotations

import pytest
import torch
import yaml

from conftest import FIT_PIPELINE as PIPELINE, run_fit, stage_spec


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    pass


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


RECIPES = ", mixup: {alpha: 0.4}, cutmix: {alpha: 1.0}, random_erasing: 0.5, ema: {decay: 0.9}"


def test_the_recipes_train_a_network_on_tiny_data(tmp_path, monkeypatch):
    import math

    reports, history = run_fit(monkeypatch, stage_spec(tmp_path, RECIPES), 2)
    assert len(history) == 2 and all(math.isfinite(h["train_loss"]) for h in history)
    assert history[-1]["val_acc"] > 0.2  # ten classes: better than chance


def test_ema_averages_and_keeps_masked_weights_zero():
    from torch import nn

    from safs.sparsity.masks import set_mask
    from safs.training.recipes import WeightEMA

    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0] = False
    set_mask(model[0], mask)
    ema = WeightEMA(model, 0.5)
    before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(2.0)  # a step that (wrongly) moved the pruned weights too
    ema.update()
    avg = ema.state_dict()["0.weight"]
    assert torch.equal(avg[0], torch.zeros(4))
    assert torch.allclose(avg[1:], before[1:] + 1.0)
    live = model[0].weight.detach().clone()
    with ema.applied():
        assert torch.equal(model[0].weight, avg)
    assert torch.equal(model[0].weight, live)


def test_batch_recipes():
    from safs.training.recipes import BatchRecipe, _cutmix, random_erase

    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16) + 1
    assert torch.equal(random_erase(x, 0.0), x)
    erased = random_erase(x, 1.0)
    zero = (erased == 0).float().mean(dim=(1, 2, 3))
    assert ((zero > 0.01) & (zero < 0.4)).all()  # one rectangle of 2-33 % per sample
    out, lam = _cutmix(x, 0.5)
    assert lam == pytest.approx(1 - (out != x).any(1).float().mean().item(), abs=1e-6)
    y = torch.arange(8)
    mixed, (y2, lam) = BatchRecipe(mixup=0.4)(x, y)
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-6) and torch.equal(y2, y.flip(0))
    out = torch.randn(8, 10)
    soft = torch.zeros(8, 10)
    soft[torch.arange(8), y] += lam
    soft[torch.arange(8), y2] += 1 - lam
    assert BatchRecipe.loss(out, y, (y2, lam), 0.0) == pytest.approx(
        torch.nn.functional.cross_entropy(out, soft).item(), rel=1e-5)


@pytest.mark.parametrize("extra, field", [
    (", mixup: {alpha: 0}", "mixup"), (", cutmix: {beta: 1}", "cutmix"), (", ema: {decay: 1.0}", "ema"),
    (", random_erasing: 1.5", "random_erasing"), (", compile: maybe", "compile")])
def test_the_recipes_are_validated(extra, field):
    from safs.config import ConfigError, parse_pipeline

    with pytest.raises(ConfigError) as e:
        parse_pipeline(yaml.safe_load(PIPELINE.format(extra=extra)))
    assert field in str(e.value) and "\n" not in str(e.value).strip()


def test_recipes_are_hashed_compile_is_not(tmp_path):
    base = stage_spec(tmp_path)["hash"]
    assert stage_spec(tmp_path, ", compile: true")["hash"] == base
    assert stage_spec(tmp_path, ", random_erasing: 0.0")["hash"] == base  # the default: as before
    hashes = {stage_spec(tmp_path, extra)["hash"] for extra in (
        ", mixup: {alpha: 0.2}", ", cutmix: {alpha: 1.0}", ", ema: {decay: 0.99}", ", random_erasing: 0.25")}
    assert len(hashes) == 4 and base not in hashes


def test_fused_only_for_floating_cuda_parameters():
    from safs.training.optim import fused_option

    p = torch.nn.Parameter(torch.zeros(2))
    assert fused_option([{"params": [p]}], torch.optim.Adam) == {}


@pytest.mark.slow
def test_compile_trains_lenet5_for_an_epoch(tmp_path, monkeypatch):
    import math

    _, history = run_fit(monkeypatch, stage_spec(tmp_path, ", compile: true"), 1)
    assert math.isfinite(history[-1]["train_loss"]) and history[-1]["val_acc"] > 0.1
