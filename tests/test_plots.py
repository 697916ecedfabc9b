"""Figures: written, non-empty, with the expected number of series."""

import pandas as pd
import pytest

from safs.report.plots import curves_plot, plot, search_plot, sparsity_plot
from safs.report.rows import ROW_COLUMNS


def cell_rows(model, method, target, acc, seed=0):
    base = {c: None for c in ROW_COLUMNS}
    return [base | {"pipeline": "p", "variant": f"{model},{method},{target},{seed}", "stage_index": 0, "label": "Dense",
                    "model": model, "method": "dense", "achieved_sparsity": 0.0, "test_acc": 0.98, "seed": seed},
            base | {"pipeline": "p", "variant": f"{model},{method},{target},{seed}", "stage_index": 2, "label": "MP",
                    "model": model, "method": method, "achieved_sparsity": target, "test_acc": acc, "seed": seed}]


def test_sparsity_plot_one_line_per_model_and_method():
    rows = [r for m in ("lwm", "gmp") for model in ("lenet5", "vgg11") for t in (0.9, 0.99)
            for r in cell_rows(model, m, t, 0.9 - t / 2)]
    fig = sparsity_plot(pd.DataFrame(rows, columns=ROW_COLUMNS))
    [ax] = fig.axes
    assert len(ax.lines) == 4
    assert all(len(line.get_xdata()) == 2 for line in ax.lines)  # the dense stage is not a point
    assert ax.get_xlabel().startswith("sparsity") and ax.get_legend() is not None


def test_search_plot_best_so_far_per_stage():
    trials = pd.DataFrame({"run": ["r"] * 4 + ["r"] * 3, "stage": ["a"] * 4 + ["b"] * 3,
                           "token": [0, 1, 2, 3, 0, 1, 2], "status": ["done", "failed", "done", "done", "done", "stopped", "done"],
                           "epochs": [5, 2, 5, 5, 5, 1, 5], "score": [20.0, 99.0, 30.0, 25.0, 10.0, 50.0, 12.0]})
    fig = search_plot(trials)
    by_count, by_epochs = fig.axes
    assert len(by_count.lines) == 2 and len(by_epochs.lines) == 2
    a = by_count.lines[0]
    assert list(a.get_ydata()) == [20.0, 20.0, 30.0, 30.0]  # failed and stopped trials do not count
    assert list(by_epochs.lines[0].get_xdata()) == [5, 7, 12, 17]


def test_curves_plot_train_and_val_per_training_stage():
    hist = [{"epoch": e, "val_acc": 0.1 * e, "train_acc": 0.12 * e} for e in (1, 2, 3)]
    records = [{"kind": "train", "index": 0, "name": "dense", "history": hist, "row": {"label": "Dense"}},
               {"kind": "prune", "index": 1, "name": "prune", "history": hist[:1], "row": {"label": "Pruned"}},
               {"kind": "train", "index": 2, "name": "retrain", "history": hist, "row": {"label": "MP"}}]
    [ax] = curves_plot(records).axes
    assert len(ax.lines) == 4


def test_plot_writes_a_file_and_rejects_bad_names(tmp_path):
    with pytest.raises(ValueError, match="no finished stages"):
        plot("sparsity", [tmp_path], tmp_path / "x.png")
    with pytest.raises(ValueError, match="accepted: sparsity, search, curves"):
        plot("pie", [tmp_path], tmp_path / "x.png")
