"""Tables from results rows.

The default layout puts one row per pipeline and one test-accuracy column per stage (labelled
Dense, Pruned, Magnitude Pruning, ...), plus the achieved sparsity of the last stage: the
table the SAFS paper starts from.
"""

from __future__ import annotations

import pandas as pd


def stages_table(df: pd.DataFrame) -> pd.DataFrame:
    """Rows: pipeline (model, dataset, method, target). Columns: test accuracy per stage label
    (at the best-validation epoch), then achieved sparsity."""
    if df.empty:
        return pd.DataFrame()
    df = df.assign(variant=df["variant"].fillna(""))
    first = df.sort_values("stage_index").groupby(["pipeline", "variant"], sort=False)
    meta = first.agg(model=("model", "first"), dataset=("dataset", "first"),
                     method=("method", "last"), target=("target_sparsity", "last"),
                     sparsity=("achieved_sparsity", "last"))
    labels = list(dict.fromkeys(df.sort_values("stage_index")["label"]))
    acc = df.pivot_table(index=["pipeline", "variant"], columns="label", values="test_acc", aggfunc="last")
    acc = (acc[labels] * 100).round(2)
    out = meta.join(acc)
    out["sparsity"] = (out["sparsity"] * 100).round(2)
    out = out.rename(columns={"target": "target %", "sparsity": "achieved sparsity %"})
    out["target %"] = (out["target %"] * 100).round(2)
    out = out.reset_index()
    return out if (out["variant"] != "").any() else out.drop(columns="variant")


SAFS_COLUMNS = ["Dense", "Magnitude Pruning", "Stage 1", "Stage 2", "SAFS"]


def safs_table(df: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """The SAFS paper's table: one row per model/dataset/method/target sparsity; columns Dense |
    Magnitude Pruning | Stage 1 | Stage 2 | SAFS, matched by stage label; test accuracy (%)
    at the best-validation epoch, mean ± std over seeds when there are several; SAFS also
    shows its gain over Magnitude Pruning in points. Missing stages are left empty."""
    if df.empty:
        return pd.DataFrame(columns=["model", "dataset", "method", "target %", *SAFS_COLUMNS])
    df = df.copy()
    # A pipeline's dense stage belongs to the row of the method and sparsity it prunes to.
    run = [df["pipeline"], df["variant"].fillna("")]
    df["target_sparsity"] = df.groupby(run)["target_sparsity"].transform("max")
    df["method"] = df["method"].where(df["method"] != "dense").groupby(run).transform("last").fillna("dense")
    df = df[df["label"].isin(SAFS_COLUMNS)]
    df["acc"] = df["test_acc"] * 100
    # One value per seed and column (a re-run stage of the same seed replaces the earlier one).
    df = df.sort_values("stage_index").groupby(["model", "dataset", "method", "target_sparsity", "label", "seed"],
                                               as_index=False)["acc"].last()
    rows = []
    for (model, dataset, method, target), g in df.groupby(["model", "dataset", "method", "target_sparsity"], sort=False):
        row = {"model": model, "dataset": dataset, "method": method, "target %": round(target * 100, 2)}
        stats = {lab: g.loc[g["label"] == lab, "acc"] for lab in SAFS_COLUMNS}
        for lab, v in stats.items():
            row[lab] = _mean_std(v, digits)
        if len(stats["SAFS"]) and len(stats["Magnitude Pruning"]):
            delta = stats["SAFS"].mean() - stats["Magnitude Pruning"].mean()
            row["SAFS"] += f" ({delta:+.{digits}f})"
        rows.append(row)
    return pd.DataFrame(rows, columns=["model", "dataset", "method", "target %", *SAFS_COLUMNS])


def _mean_std(values: pd.Series, digits: int) -> str:
    if values.empty:
        return ""
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def methods_table(df: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Method × target sparsity: the last stage of every pipeline (matrix cell), with test
    accuracy (%, best-validation epoch), achieved sparsity (% of all conv+linear weights),
    non-zero parameters and sparse MACs; mean ± std over seeds when there are several."""
    if df.empty:
        return pd.DataFrame()
    df = df.assign(variant=df["variant"].fillna(""))
    last = df.sort_values("stage_index").groupby(["pipeline", "variant"], sort=False).tail(1)
    rows = []
    keys = ["model", "dataset", "method", "target_sparsity"]
    for (model, dataset, method, target), g in last.groupby(keys, sort=False):
        rows.append({
            "model": model, "dataset": dataset, "method": method, "target %": round(target * 100, 2),
            "test acc %": _mean_std(g["test_acc"] * 100, digits),
            "sparsity %": _mean_std(g["achieved_sparsity"] * 100, digits),
            "params": int(g["params"].iloc[0]), "nnz": int(g["nnz"].mean()),
            "MACs": int(g["macs"].iloc[0]), "sparse MACs": int(g["nnz_macs"].mean()),
            "seeds": g["seed"].nunique(),
        })
    return pd.DataFrame(rows).sort_values(["model", "method", "target %"], kind="stable").reset_index(drop=True)


def trials_table(paths) -> pd.DataFrame:
    """Every trial of every search stage (activation search and HPO) under ``paths``, from
    the stages' ``trials.parquet``: its configuration, status, epochs and score."""
    from pathlib import Path

    frames = []
    for p in map(Path, paths):
        for f in sorted(p.glob("**/trials.parquet")) if p.is_dir() else []:
            inner = f.parts[len(p.parts):]  # not Tune's files, not stages set aside (.replaced)
            if "tune" in inner or any(x.startswith(".") for x in inner):
                continue
            t = pd.read_parquet(f)
            stage_dir = f.parent.name  # NN-<stage>-<hash>
            t.insert(0, "run", f.parent.parent.name)
            t.insert(1, "stage", stage_dir.split("-", 1)[1].rsplit("-", 1)[0])
            t.insert(2, "stage_hash", stage_dir.rsplit("-", 1)[1])  # matrix cells share stage names
            t.insert(3, "variant", _variants(f.parent.parent).get(stage_dir))
            t["candidate"] = t["genome"].fillna(t["config"])
            frames.append(t)
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    out["score"] = (out["score"] * 100).round(2)
    return out[["run", "variant", "stage", "stage_hash", "token", "status", "epochs", "score", "wall_s", "candidate", "error"]]


def _variants(run_dir) -> dict[str, str]:
    """Stage directory name -> the matrix cell(s) using it, for a run directory."""
    from safs.config import ConfigError, load_pipelines
    from safs.pipeline import plan

    try:
        cfgs, _ = load_pipelines(run_dir / "pipeline.yaml")
    except (ConfigError, ValueError, OSError):
        return {}
    out: dict[str, str] = {}
    for cfg in cfgs:
        for st in plan(cfg, run_dir.parent):
            if cfg.variant:
                out[st.dir.name] = f"{out[st.dir.name]};{cfg.variant}" if st.dir.name in out else cfg.variant
    return out


LAYOUTS = {"stages": stages_table, "safs": safs_table, "methods": methods_table}


FORMATS = ("markdown", "latex", "csv", "parquet")


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "markdown":
        return table.to_markdown(index=False, floatfmt=".2f")
    if fmt == "latex":
        return latex(table)
    raise ValueError(f"--format: unknown format '{fmt}'; accepted: {', '.join(FORMATS)}")


def latex(table: pd.DataFrame) -> str:
    """A booktabs tabular, ready for ``\\input`` (no float environment, no pandas Styler)."""
    def cell(v) -> str:
        if isinstance(v, float):
            v = f"{v:.2f}"
        text = str(v).replace("\\", "\\textbackslash{}")
        for ch in "&%$#_{}":
            text = text.replace(ch, "\\" + ch)
        return text.replace("±", "$\\pm$").replace("~", "\\textasciitilde{}").replace("^", "\\textasciicircum{}")

    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    spec = "".join("r" if n else "l" for n in numeric)
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(cell(c) for c in table.columns) + " \\\\", "\\midrule"]
    lines += [" & ".join(cell(v) for v in row) + " \\\\" for row in table.itertuples(index=False)]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"
