"""Figures for papers, from results rows, stage records and trials tables (never from logs).

Sized for a paper column (3.4 in wide), labelled axes, a legend; PNG or PDF by the file
name. Each function returns the matplotlib Figure so tests can count its series.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

COLUMN_WIDTH_IN = 3.4
KINDS = ("sparsity", "search", "curves", "mixture")


def _figure(ncols: int = 1, height: float = 2.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "legend.fontsize": 6.5})
    fig, axes = plt.subplots(1, ncols, figsize=(COLUMN_WIDTH_IN * (1 if ncols == 1 else 2), height),
                             constrained_layout=True, squeeze=False)
    return fig, list(axes[0])


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
MODEL_LINES = ("-", "--", "-.")  # dotted is the dense reference


def _sparsity_points(df: pd.DataFrame) -> pd.DataFrame:
    """The last stage of each pipeline (matrix cell), one point per model, method, final stage
    label and target: remaining weights (%) and test accuracy (%), mean and std over seeds."""
    df = df.assign(variant=df["variant"].fillna(""))
    last = df.sort_values("stage_index", kind="stable").groupby(["pipeline", "variant"], sort=False).tail(1)
    last = last[last["method"] != "dense"]
    last = last.assign(density=(1 - last["achieved_sparsity"].astype(float)) * 100,
                       acc=last["test_acc"].astype(float) * 100,
                       target=last["target_sparsity"].fillna(last["achieved_sparsity"]))
    pts = last.groupby(["model", "method", "label", "target"], dropna=False).agg(
        density=("density", "mean"), acc=("acc", "mean"), std=("acc", "std"), n=("acc", "count")).reset_index()
    # A method whose pipelines end in different stages (e.g. Magnitude Pruning and SAFS) is one
    # curve per final stage; otherwise the method alone names the curve.
    several = pts.groupby("method")["label"].transform("nunique") > 1
    pts["curve"] = pts["method"].where(~several, pts["method"] + " · " + pts["label"].astype(str))
    return pts[pts["density"] > 0].sort_values("density", ascending=False)  # no weights left: off a log axis


def _percent_axis(ax) -> None:
    """Log x-axis of remaining weights, densest on the left, ticks read as percentages."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2, 5)))
    label = FuncFormatter(lambda v, _: f"{v:g}%")
    ax.xaxis.set_major_formatter(label)
    ax.xaxis.set_minor_formatter(label)
    ax.tick_params(axis="x", which="minor", labelsize=6)


def sparsity_plot(df: pd.DataFrame):
    """Test accuracy vs remaining weights (1 - achieved sparsity, log axis: 100 %, 10 %, 1 %),
    the last stage of each pipeline: colour per method (curve), marker and line style per
    model, error bars (std over seeds) where a point has several seeds; the dense accuracy of
    each model as a dotted reference line."""
    from matplotlib.lines import Line2D

    fig, [ax] = _figure(height=3.2)
    pts = _sparsity_points(df)
    models = sorted(pts["model"].unique())
    curves = sorted(pts["curve"].unique())
    for (model, curve), g in pts.groupby(["model", "curve"], sort=True):
        yerr = g["std"].where(g["n"] > 1).fillna(0).to_numpy() if (g["n"] > 1).any() else None
        ax.errorbar(g["density"], g["acc"], yerr=yerr, color=f"C{curves.index(curve) % 10}",
                    marker=MARKERS[models.index(model) % len(MARKERS)], markersize=3.5, linewidth=1,
                    linestyle=MODEL_LINES[models.index(model) % len(MODEL_LINES)],
                    capsize=2, elinewidth=0.8, label=f"{model} {curve}")
    dense = df[(df["method"] == "dense") & df["model"].isin(models)]
    for model, g in dense.groupby("model", sort=True):
        acc = g["test_acc"].astype(float).mean() * 100
        ax.axhline(acc, color="0.4", linewidth=0.8, linestyle=":", label=f"{model} dense")
        # the model's marker at 100 % says whose dense accuracy the line is
        ax.plot([100], [acc], color="0.4", marker=MARKERS[models.index(model) % len(MARKERS)], markersize=3.5,
                linestyle="")
    _percent_axis(ax)
    ax.set_xlabel("remaining weights (% of conv + linear weights)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    # One legend entry per method (its colour) and per model (its marker), not per pair.
    handles = [Line2D([], [], color=f"C{i % 10}", marker="", linewidth=1.2, label=c) for i, c in enumerate(curves)]
    if len(models) > 1 or not dense.empty:
        handles += [Line2D([], [], color="0.3", marker=MARKERS[i % len(MARKERS)], markersize=3.5, linewidth=1,
                           linestyle=MODEL_LINES[i % len(MODEL_LINES)] if len(models) > 1 else "", label=m)
                    for i, m in enumerate(models)]
    if not dense.empty:
        handles.append(Line2D([], [], color="0.4", linestyle=":", linewidth=0.8, label="dense"))
    # Below the axes: curves fill the plot's lower right, and a long legend would hide them.
    fig.legend(handles=handles, ncol=2 if len(handles) > 3 else len(handles), loc="outside lower center",
               frameon=False)
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


def mixture_frames(paths) -> list[tuple[str, pd.DataFrame]]:
    """``(label, mixture.parquet)`` of every one-shot search stage under ``paths`` (not Tune's
    files, not stages set aside)."""
    out = []
    for p in map(Path, paths):
        files = sorted(p.glob("**/mixture.parquet")) if p.is_dir() else ([p] if p.name == "mixture.parquet" else [])
        for f in files:
            inner = f.parts[len(p.parts):] if p.is_dir() else ()
            if "tune" in inner or any(x.startswith(".") for x in inner):
                continue
            stage = f.parent.name.split("-", 1)[-1].rsplit("-", 1)[0]
            out.append((f"{f.parent.parent.name}/{stage}", pd.read_parquet(f)))
    return out


def mixture_plot(frames: list[tuple[str, pd.DataFrame]]):
    """Operator weight vs epoch for every slot of a one-shot search (one panel per slot, one
    line per operator; several stages: their panels side by side, the stage in the title)."""
    panels = [(label, slot, g) for label, mix in frames for slot, g in mix.groupby("slot", sort=False)]
    fig, axes = _figure(ncols=len(panels), height=2.6)
    if len(panels) > 1:
        fig.set_size_inches(max(COLUMN_WIDTH_IN, 1.7 * len(panels)), 2.8)
    operators = sorted({op for _, mix in frames for op in mix["operator"].unique()})
    for ax, (label, slot, g) in zip(axes, panels):
        for op, t in g.groupby("operator", sort=False):
            t = t.sort_values("epoch")
            ax.plot(t["epoch"], t["weight"], color=f"C{operators.index(op) % 10}", linewidth=1, label=op)
        ax.set_title(f"{label}: {slot}" if len(frames) > 1 else slot)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("operator weight")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, ncol=min(len(names), 5), loc="outside lower center", frameon=False)
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
    elif kind == "mixture":
        frames = mixture_frames(paths)
        if not frames:
            raise ValueError("no one-shot search stages (mixture.parquet) to plot")
        fig = mixture_plot(frames)
    else:
        raise ValueError(f"--kind: unknown kind '{kind}'; accepted: {', '.join(KINDS)}")
    fmt = Path(out).suffix.lstrip(".").lower()
    if fmt not in ("png", "pdf"):
        raise ValueError(f"--out: '{out}' must end in .png or .pdf")
    _atomic(Path(out), lambda tmp: fig.savefig(tmp, format=fmt, dpi=200))
    return fig
