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
    first = df.sort_values("stage_index").groupby("pipeline", sort=False)
    meta = first.agg(model=("model", "first"), dataset=("dataset", "first"),
                     method=("method", "last"), target=("target_sparsity", "last"),
                     sparsity=("achieved_sparsity", "last"))
    labels = list(dict.fromkeys(df.sort_values("stage_index")["label"]))
    acc = df.pivot_table(index="pipeline", columns="label", values="test_acc", aggfunc="last")
    acc = (acc[labels] * 100).round(2)
    out = meta.join(acc)
    out["sparsity"] = (out["sparsity"] * 100).round(2)
    out = out.rename(columns={"target": "target %", "sparsity": "achieved sparsity %"})
    out["target %"] = (out["target %"] * 100).round(2)
    return out.reset_index()


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "markdown":
        return table.to_markdown(index=False, floatfmt=".2f")
    raise ValueError(f"--format: unknown format '{fmt}'; accepted: markdown, csv")
