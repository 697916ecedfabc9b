"""Figures for papers, from results rows, stage records and trials tables (never from logs).

Sized for a paper column (3.4 in wide), labelled axes, a legend; PNG or PDF by the file
name. Each function returns the matplotlib Figure so tests can count its series.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

COLUMN_WIDTH_IN = 3.4
KINDS = ("sparsity", "search", "curves")


def _figure(ncols: int = 1, height: float = 2.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "legend.fontsize": 6.5})
    fig, axes = plt.subplots(1, ncols, figsize=(COLUMN_WIDTH_IN * (1 if ncols == 1 else 2), height),
                             constrained_layout=True, squeeze=False)
    return fig, list(axes[0])


def sparsity_plot(df: pd.DataFrame):
    """Test accuracy vs achieved sparsity, one line per model and method (last stage of each
    pipeline / matrix cell; mean over seeds)."""
    fig, [ax] = _figure()
    df = df.assign(variant=df["variant"].fillna(""))
    last = df.sort_values("stage_index").groupby(["pipeline", "variant"], sort=False).tail(1)
    last = last[last["method"] != "dense"]
    models = sorted(last["model"].unique())
    methods = sorted(last["method"].unique())
    for (model, method), g in last.groupby(["model", "method"], sort=True):
        g = g.groupby("achieved_sparsity", as_index=False)["test_acc"].mean().sort_values("achieved_sparsity")
        label = f"{model} {method}" if len(models) > 1 else method
        # Colour says the method, line style the model.
        ax.plot(g["achieved_sparsity"] * 100, g["test_acc"] * 100, marker="o", markersize=3, label=label,
                color=f"C{methods.index(method) % 10}", linestyle=["-", "--", ":", "-."][models.index(model) % 4])
    ax.set_xlabel("sparsity (% of conv + linear weights)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(ncol=2)
    return fig


def search_plot(trials: pd.DataFrame):
    """Best-so-far score vs evaluated candidates and vs training epochs spent, one line per
    search stage (``trials``: the ``trials`` table layout)."""
    fig, (by_count, by_epochs) = _figure(ncols=2)
    if "stage_hash" not in trials:
        trials = trials.assign(stage_hash="")
    cells = trials.groupby(["run", "stage"])["stage_hash"].nunique()
    for (run, stage, h), t in trials.groupby(["run", "stage", "stage_hash"], sort=False):
        t = t.sort_values("token")
        ok = t["score"].where(t["status"] == "done")
        best = ok.cummax().ffill()
        label = f"{run}/{stage}" if trials["run"].nunique() > 1 else stage
        if cells[(run, stage)] > 1:  # the same stage in several matrix cells
            variant = t["variant"].iloc[0] if "variant" in t and t["variant"].notna().any() else None
            label += f" [{variant}]" if variant else f" {h}"
        by_count.plot(range(1, len(t) + 1), best, label=label, drawstyle="steps-post")
        by_epochs.plot(t["epochs"].cumsum(), best, label=label, drawstyle="steps-post")
    by_count.set_xlabel("candidates evaluated")
    by_epochs.set_xlabel("training epochs spent")
    for ax in (by_count, by_epochs):
        ax.set_ylabel("best validation accuracy (%)")
        ax.grid(alpha=0.3)
    by_count.legend()
    return fig


def curves_plot(records: list[dict]):
    """Per-epoch train and validation accuracy of each training stage."""
    fig, [ax] = _figure()
    for rec in sorted(records, key=lambda r: r.get("index", 0)):
        history = rec.get("history") or []
        if rec.get("kind") != "train" or not history:
            continue
        epochs = [h["epoch"] for h in history]
        label = rec["row"]["label"] if rec.get("row") else rec["name"]
        line, = ax.plot(epochs, [h["val_acc"] * 100 for h in history], label=f"{label} val")
        ax.plot(epochs, [h["train_acc"] * 100 for h in history], linestyle="--", color=line.get_color(),
                label=f"{label} train")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(ncol=2)
    return fig


def plot(kind: str, paths, out: Path):
    """Draw ``kind`` from the runs under ``paths`` into ``out`` (.png or .pdf)."""
    from safs.io import _atomic
    from safs.report.rows import load_results, stage_records
    from safs.report.tables import trials_table

    if kind == "sparsity":
        df = load_results(*paths)
        if df.empty:
            raise ValueError("no finished stages to plot")
        fig = sparsity_plot(df)
    elif kind == "search":
        trials = trials_table(paths)
        if trials.empty:
            raise ValueError("no search stages to plot")
        fig = search_plot(trials)
    elif kind == "curves":
        records = [r for r in stage_records(*paths) if r.get("status") == "done"]
        if not records:
            raise ValueError("no finished stages to plot")
        fig = curves_plot(records)
    else:
        raise ValueError(f"--kind: unknown kind '{kind}'; accepted: {', '.join(KINDS)}")
    fmt = Path(out).suffix.lstrip(".").lower()
    if fmt not in ("png", "pdf"):
        raise ValueError(f"--out: '{out}' must end in .png or .pdf")
    _atomic(Path(out), lambda tmp: fig.savefig(tmp, format=fmt, dpi=200))
    return fig
