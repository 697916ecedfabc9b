"""Figures: written, non-empty, with the expected series, axes and legend."""

import json

import pandas as pd
import pytest

from safs.report.plots import curves_plot, plot, search_plot, sparsity_plot
from safs.records import ROW_COLUMNS


def cell_rows(model, method, target, acc, seed=0, dense_acc=0.98):
    base = {c: None for c in ROW_COLUMNS}
    cell = f"{model},{method},{target},{seed}"
    return [base | {"pipeline": "p", "variant": cell, "stage_index": 0, "label": "Dense", "model": model,
                    "method": "dense", "achieved_sparsity": 0.0, "target_sparsity": 0.0, "test_acc": dense_acc,
                    "seed": seed},
            base | {"pipeline": "p", "variant": cell, "stage_index": 2, "label": "MP", "model": model,
                    "method": method, "achieved_sparsity": target, "target_sparsity": target, "test_acc": acc,
                    "seed": seed}]


def grid(seeds=(0,)):
    return pd.DataFrame([r for m in ("lwm", "gmp") for model in ("lenet5", "vgg11") for t in (0.9, 0.99)
                         for s in seeds for r in cell_rows(model, m, t, 0.9 - t / 2 + 0.01 * s, seed=s)],
                        columns=ROW_COLUMNS)


def test_sparsity_plot_log_axis_of_remaining_weights_in_percent():
    [ax] = sparsity_plot(grid()).axes
    assert ax.get_xscale() == "log"
    left, right = ax.get_xlim()
    assert left > right  # densest on the left: 100 %, 10 %, 1 %
    assert ax.get_xlabel().startswith("remaining weights")
    ax.figure.canvas.draw()
    labels = {t.get_text() for t in ax.get_xticklabels() if t.get_text()}
    assert {"100%", "10%", "1%"} <= labels


def test_sparsity_plot_one_series_per_model_and_method_coloured_by_method_marked_by_model():
    [ax] = sparsity_plot(grid()).axes
    series = {c.get_label(): c.lines[0] for c in ax.containers}  # one error-bar container per series
    assert sorted(series) == ["lenet5 gmp", "lenet5 lwm", "vgg11 gmp", "vgg11 lwm"]
    line = series["lenet5 lwm"]
    assert sorted(line.get_xdata()) == pytest.approx([1.0, 10.0])  # density %, the dense stage is not a point
    assert line.get_color() == series["vgg11 lwm"].get_color() != series["lenet5 gmp"].get_color()
    assert line.get_marker() == series["lenet5 gmp"].get_marker() != series["vgg11 lwm"].get_marker()
    [legend] = [[t.get_text() for t in lg.get_texts()] for lg in ax.figure.legends]
    assert legend == ["gmp", "lwm", "lenet5", "vgg11", "dense"]  # colours, markers, reference
    assert [round(ln.get_ydata()[0], 6) for ln in ax.lines if ln.get_linestyle() == ":"] == [98.0, 98.0]


def test_sparsity_plot_error_bars_only_with_several_seeds():
    [one] = sparsity_plot(grid()).axes
    assert not any(c.has_yerr for c in one.containers)
    [three] = sparsity_plot(grid(seeds=(0, 1, 2))).axes
    c = next(c for c in three.containers if c.get_label() == "lenet5 lwm")
    assert c.has_yerr
    segments = c.lines[2][0].get_segments()  # one vertical bar per point: mean ± std over seeds
    spans = sorted(abs(seg[1][1] - seg[0][1]) for seg in segments)
    assert spans == pytest.approx([2.0, 2.0])  # 2 × std of (+0, +1, +2) points


def test_sparsity_plot_splits_a_method_by_final_stage():
    both = pd.concat([grid(), grid().assign(label=lambda d: d["label"].where(d["label"] == "Dense", "SAFS"),
                                            pipeline="q")], ignore_index=True)
    [ax] = sparsity_plot(both).axes
    assert "lenet5 lwm · SAFS" in {c.get_label() for c in ax.containers} and len(ax.containers) == 8


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
    for i, row in enumerate(r for t in (0.9, 0.99) for r in cell_rows("lenet5", "lwm", t, 0.9 - t / 2)):
        row |= {"stage_hash": f"h{i}", "variant": None, "pipeline": f"p{i // 2}"}
        d = tmp_path / "runs" / f"{i:02d}-stage-h{i}"
        d.mkdir(parents=True)
        (d / "stage.json").write_text(json.dumps({"status": "done", "hash": f"h{i}", "row": row}))
    fig = plot("sparsity", [tmp_path / "runs"], tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000 and fig.axes[0].get_xscale() == "log"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no finished stages"):
        plot("sparsity", [tmp_path / "empty"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="accepted: sparsity, search, curves, mixture"):
        plot("pie", [tmp_path], tmp_path / "x.png")
