"""Tables from results rows.

Layouts (``LAYOUTS``, plus ``trials``):

* ``stages``: one row per pipeline (matrix cells that differ only by seed pooled) and one
  test-accuracy column per stage label, then the achieved sparsity of the last stage.
* ``safs``: the SAFS paper's table, Dense | Magnitude Pruning | Magnitude Pruning (matched) |
  Stage 1 | Stage 2 | SAFS per model/dataset/method/target, the fine-tuning epochs behind
  every column, the search epochs of Stage 1 and Stage 2 where a stage searched, and the gains
  of SAFS over both baselines, paired by seed.
* ``methods``: method × target sparsity, the last stage of every pipeline.
* ``layers``: one row per layer of one stage (the last of each pipeline by default).
* ``trials``: every trial of every search stage.

Accuracies are test accuracy (%) at the epoch each stage selected (its ``select`` rule: best
validation or last), the weights its ``model.pt`` holds.

Every layout that pools seeds comes in two forms:

* **numeric** (``numeric=True``; what csv and parquet get): a quantity ``X`` pooled over seeds
  is the columns ``X`` (mean), ``X std`` (sample standard deviation, ddof 1; empty with one
  seed) and, where it may have fewer seeds than its row, ``X n``. A gain is ``X`` (mean of
  the per-seed differences), ``X lo`` / ``X hi`` (its 95 % Student-t interval; empty with one
  pair) and ``X n`` (the pairs). Fine-tuning epochs are ``X epochs min`` / ``X epochs max``.
  ``n`` is the number of seeds in the row.
* **display** (default; markdown and latex): ``display()`` folds those columns into one cell
  per quantity: "93.10 ± 0.52", a gain "+3.20 [1.10, 5.30]", a note "(n=2)" on a cell
  with fewer seeds than its row, and fine-tuning epochs in the header ("Stage 1 (25 ep)")
  when every cell of the column agrees, else in each cell ("(20–25 ep)").
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# Suffixes of the numeric form's helper columns (see the module docstring).
AUX = ("std", "n", "lo", "hi", "epochs min", "epochs max")
LEVEL = 0.95  # the gains' interval


# --- pooling over seeds ------------------------------------------------------------------------

def _put_stat(row: dict, name: str, values, *, scale: float = 1.0, with_n: bool = True) -> None:
    """``name`` (mean), ``name std`` and (``with_n``) ``name n`` of the non-missing ``values``."""
    v = pd.to_numeric(pd.Series(values, dtype="float64"), errors="coerce").dropna() * scale
    row[name] = round(float(v.mean()), 4) if len(v) else np.nan
    row[f"{name} std"] = round(float(v.std(ddof=1)), 4) if len(v) > 1 else np.nan
    if with_n:
        row[f"{name} n"] = len(v)


def _put_epochs(row: dict, name: str, values) -> None:
    """The range of fine-tuning epochs behind ``name`` over its seeds (missing in old runs)."""
    v = pd.to_numeric(pd.Series(values, dtype="float64"), errors="coerce").dropna()
    row[f"{name} epochs min"] = int(v.min()) if len(v) else pd.NA
    row[f"{name} epochs max"] = int(v.max()) if len(v) else pd.NA


def paired_delta(a: pd.Series, b: pd.Series, level: float = LEVEL) -> tuple[float, float, float, int]:
    """Mean of the per-seed differences ``a - b`` (both indexed by seed; only seeds present in
    both count: a seed shares its dense model, so its two values are a pair) with its
    Student-t interval. Returns (mean, lo, hi, pairs); lo and hi are NaN with under two pairs."""
    from scipy import stats

    d = (a - b).dropna()
    n = len(d)
    if n == 0:
        return np.nan, np.nan, np.nan, 0
    mean = float(d.mean())
    if n == 1:
        return mean, np.nan, np.nan, 1
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half, n


def _put_delta(row: dict, name: str, a: pd.Series, b: pd.Series) -> None:
    mean, lo, hi, n = paired_delta(a, b)
    row.update({name: round(mean, 4), f"{name} lo": round(lo, 4), f"{name} hi": round(hi, 4), f"{name} n": n})


def _finish(rows: list[dict], columns: list[str] | None = None) -> pd.DataFrame:
    """Rows -> frame; epoch columns as nullable integers (no "25.0" in csv)."""
    out = pd.DataFrame(rows, columns=columns)
    for c in out.columns:
        if c.endswith((" epochs min", " epochs max")) or c in ("params", "nnz", "MACs", "sparse MACs"):
            out[c] = out[c].astype("Int64")
    return out


def _int(values: pd.Series, how: str = "first") -> int | None:
    """A count column's value over seeds (the first, or the rounded mean); None when unknown."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return None
    return int(v.iloc[0]) if how == "first" else int(round(float(v.mean())))


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    """A row column an older run may lack (e.g. ``finetune_epochs``): NaN then."""
    return df[name] if name in df else pd.Series(np.nan, index=df.index)


def _without_seed(variant: str) -> str:
    """A matrix cell's name without its ``seed=`` entry: cells that differ only by seed pool.
    Entries are split at top-level commas (a block value reads ``vgg11(width=2,depth=3)``)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(variant + ","):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(variant[start:i])
            start = i + 1
    return ",".join(p for p in parts if p and not p.startswith("seed="))


# --- display form -------------------------------------------------------------------------------

def _num(v) -> float | None:
    return None if v is None or pd.isna(v) else float(v)


def _mean_std_cell(mean, std, digits: int) -> str:
    if _num(mean) is None:
        return ""
    return f"{mean:.{digits}f}" if _num(std) is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _delta_cell(mean, lo, hi, digits: int) -> str:
    if _num(mean) is None:
        return ""
    text = f"{mean:+.{digits}f}"
    return text if _num(lo) is None else f"{text} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _span(lo, hi) -> str:
    return f"{int(lo)}" if lo == hi else f"{int(lo)}–{int(hi)}"


COUNTS = ("nnz",)  # pooled counts, shown without decimals


def display(frame: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """The numeric form of a layout folded into one readable cell per quantity (see the module
    docstring); columns without helper columns pass through unchanged."""
    cols = list(frame.columns)
    aux = {f"{c} {s}" for c in cols for s in AUX} & set(cols)
    out: dict[str, list | pd.Series] = {}
    for c in cols:
        if c in aux:
            continue
        if f"{c} lo" in frame:
            cells = [_delta_cell(m, lo, hi, digits) for m, lo, hi in zip(frame[c], frame[f"{c} lo"], frame[f"{c} hi"])]
        elif f"{c} std" in frame:
            places = 0 if c in COUNTS else digits
            cells = [_mean_std_cell(m, s, places) for m, s in zip(frame[c], frame[f"{c} std"])]
        else:  # unknown counts (pd.NA) print empty, as missing accuracies do
            out[c] = [None if v is pd.NA else v for v in frame[c].tolist()]
            continue
        notes: list[list[str]] = [[] for _ in cells]
        if f"{c} n" in frame and "n" in frame:
            for i, (k, n) in enumerate(zip(frame[f"{c} n"], frame["n"])):
                if cells[i] and k < n:  # fewer seeds (or pairs) than the row has
                    notes[i].append(f"n={int(k)}")
        header = c
        if f"{c} epochs min" in frame:
            header = _epochs_notes(c, cells, notes, frame[f"{c} epochs min"], frame[f"{c} epochs max"])
        out[header] = [f"{x} ({', '.join(nt)})" if nt else x for x, nt in zip(cells, notes)]
    return pd.DataFrame(out, index=frame.index)


def _epochs_notes(name: str, cells: list[str], notes: list[list[str]], lo: pd.Series, hi: pd.Series) -> str:
    """The header of column ``name``: with its fine-tuning epochs when every filled cell has the
    same known span; else each cell with a known span notes its own."""
    spans = [None if pd.isna(a) else _span(a, b) for a, b in zip(lo, hi)]
    filled = [s for s, x in zip(spans, cells) if x]
    if filled and None not in filled and len(set(filled)) == 1:
        # "Stage 1 (25 ep)"; a label already in parentheses takes the note inside them
        return f"{name[:-1]}, {filled[0]} ep)" if name.endswith(")") else f"{name} ({filled[0]} ep)"
    for i, s in enumerate(spans):
        if cells[i] and s is not None:
            notes[i].append(f"{s} ep")
    return name


# --- layouts ------------------------------------------------------------------------------------

def stages_table(df: pd.DataFrame, digits: int = 2, numeric: bool = False) -> pd.DataFrame:
    """Rows: pipeline (model, dataset, method, target), matrix cells that differ only by seed
    pooled. Columns: ``n`` seeds, achieved sparsity of the last stage, then test accuracy per
    stage label in stage order; mean ± std over seeds."""
    if df.empty:
        return pd.DataFrame()
    df = df.assign(variant=df["variant"].fillna("").map(_without_seed)).sort_values("stage_index", kind="stable")
    labels = list(dict.fromkeys(df["label"]))
    rows = []
    for (pipeline, variant), g in df.groupby(["pipeline", "variant"], sort=False):
        row = {"pipeline": pipeline, "variant": variant, "model": g["model"].iloc[0], "dataset": g["dataset"].iloc[0],
               "method": g["method"].iloc[-1], "target %": round(float(g["target_sparsity"].iloc[-1]) * 100, 2),
               "n": g["seed"].nunique(dropna=False)}
        last = g.groupby("seed", dropna=False).tail(1)  # each seed's last stage
        _put_stat(row, "achieved sparsity %", last["achieved_sparsity"], scale=100, with_n=False)
        acc = g.groupby(["label", "seed"], dropna=False)["test_acc"].last()
        for lab in labels:
            _put_stat(row, lab, acc[lab] if lab in acc.index.get_level_values(0) else [], scale=100)
        rows.append(row)
    out = _finish(rows)
    if not (out["variant"] != "").any():
        out = out.drop(columns="variant")
    return out if numeric else display(out, digits)


MATCHED = "Magnitude Pruning (matched)"
SAFS_COLUMNS = ["Dense", "Magnitude Pruning", MATCHED, "Stage 1", "Stage 2", "SAFS"]
SAFS_KEYS = ["model", "dataset", "method", "target_sparsity"]
GAIN_MP, GAIN_MATCHED = "Δ vs MP", "Δ vs MP (matched)"


def _with_safs_keys(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with every stage of a pipeline under its table row's keys: a pipeline's dense
    stage (and any other) belongs to the row of the method and sparsity it prunes to."""
    df = df.copy()
    run = [df["pipeline"], df["variant"].fillna("")]
    df["target_sparsity"] = df.groupby(run)["target_sparsity"].transform("max")
    df["method"] = df["method"].where(df["method"] != "dense").groupby(run).transform("last").fillna("dense")
    return df


def _safs_values(df: pd.DataFrame) -> pd.DataFrame:
    """One test accuracy (%) and fine-tuning epoch count per SAFS column, row and seed."""
    df = _with_safs_keys(df)
    df = df[df["label"].isin(SAFS_COLUMNS)]
    df = df.assign(acc=df["test_acc"] * 100, ft=_column(df, "finetune_epochs"))
    # A re-run stage of the same seed replaces the earlier one.
    return (df.sort_values("stage_index", kind="stable")
              .groupby([*SAFS_KEYS, "label", "seed"], sort=False, dropna=False)[["acc", "ft"]].last())


# The search cost behind the Stage 1 and Stage 2 columns: a search stage's ``search_epochs``
# (stage.json's ``search``; ``table_for`` adds it to the rows), summed per seed over a
# pipeline's search stages of that kind.
SEARCH_COLUMNS = {"activation_search": "Stage 1 search epochs", "hpo": "Stage 2 search epochs"}


def _search_values(df: pd.DataFrame) -> dict[str, dict[tuple, list[float]]]:
    """Per column of ``SEARCH_COLUMNS``: table row keys (model, dataset, method, target
    sparsity) -> the search epochs of each seed."""
    df = _with_safs_keys(df)
    df = df.assign(search_epochs=pd.to_numeric(_column(df, "search_epochs"), errors="coerce"),
                   variant=df["variant"].fillna(""))
    out = {}
    for kind, col in SEARCH_COLUMNS.items():
        g = df[(df["stage_kind"] == kind) & df["search_epochs"].notna()]
        # one value per stage of a run (a re-run stage replaces the earlier one), summed per seed
        per_stage = g.groupby([*SAFS_KEYS, "seed", "pipeline", "variant", "stage"], sort=False,
                              dropna=False)["search_epochs"].last()
        per_seed = per_stage.groupby(level=[*SAFS_KEYS, "seed"], sort=False, dropna=False).sum()
        out[col] = {k: v.tolist() for k, v in per_seed.groupby(level=SAFS_KEYS, sort=False)}
    return out


def safs_table(df: pd.DataFrame, digits: int = 2, numeric: bool = False) -> pd.DataFrame:
    """The SAFS paper's table: one row per model/dataset/method/target sparsity with ``n``
    seeds; columns Dense | Magnitude Pruning | Magnitude Pruning (matched) | Stage 1 | Stage 2
    | SAFS matched by stage label (mean ± std over seeds, with the fine-tuning epochs behind
    each: ``finetune_epochs``), then the gain of SAFS over Magnitude Pruning (``Δ vs MP``) and
    over the budget-matched Magnitude Pruning (``Δ vs MP (matched)``, the fair comparison: a
    ReLU retrain continued to the SAFS column's fine-tuning epochs), each the mean of per-seed
    differences with its 95 % Student-t interval. The matched column and its gain appear when
    some row has that stage. Missing stages are left empty."""
    base = ["model", "dataset", "method", "target %", "n"]
    if df.empty:
        return pd.DataFrame(columns=base + [c for c in SAFS_COLUMNS if c != MATCHED] + [GAIN_MP])
    values = _safs_values(df)
    searched = _search_values(df)
    rows = []
    for key, g in values.groupby(level=SAFS_KEYS, sort=False, dropna=False):
        model, dataset, method, target = key
        g = g.droplevel(SAFS_KEYS)
        acc, ft = g["acc"].unstack("label"), g["ft"].unstack("label")
        row = {"model": model, "dataset": dataset, "method": method, "target %": round(float(target) * 100, 2),
               "n": len(acc.index)}
        for lab in SAFS_COLUMNS:
            _put_stat(row, lab, acc[lab] if lab in acc else [])
            _put_epochs(row, lab, ft[lab] if lab in ft else [])
        for col in SEARCH_COLUMNS.values():
            _put_stat(row, col, searched[col].get(key, []))
        empty = pd.Series(dtype="float64")
        safs = acc.get("SAFS", empty)
        _put_delta(row, GAIN_MP, safs, acc.get("Magnitude Pruning", empty))
        _put_delta(row, GAIN_MATCHED, safs, acc.get(MATCHED, empty))
        rows.append(row)
    out = _finish(rows)
    if not (out[f"{MATCHED} n"] > 0).any():  # no budget-matched baseline in these runs
        out = out.drop(columns=[c for c in out.columns if c.startswith((MATCHED, GAIN_MATCHED))])
    for col in SEARCH_COLUMNS.values():  # shown where some row's stage searched
        if not (out[f"{col} n"] > 0).any():
            out = out.drop(columns=[c for c in out.columns if c.startswith(col)])
    return out if numeric else display(out, digits)


def methods_table(df: pd.DataFrame, digits: int = 2, numeric: bool = False) -> pd.DataFrame:
    """Method × target sparsity: the last stage of every pipeline (matrix cell), with ``n``
    seeds, test accuracy (%; with its fine-tuning epochs), achieved sparsity (% of all
    conv+linear weights), non-zero parameters and sparse MACs; mean ± std over seeds (nnz
    and sparse MACs: the mean)."""
    if df.empty:
        return pd.DataFrame()
    df = df.assign(variant=df["variant"].fillna(""))
    last = df.sort_values("stage_index", kind="stable").groupby(["pipeline", "variant"], sort=False).tail(1)
    rows = []
    for (model, dataset, method, target), g in last.groupby(SAFS_KEYS, sort=False, dropna=False):
        row = {"model": model, "dataset": dataset, "method": method, "target %": round(float(target) * 100, 2),
               "n": g["seed"].nunique(dropna=False)}
        _put_stat(row, "test acc %", g["test_acc"], scale=100, with_n=False)
        _put_epochs(row, "test acc %", _column(g, "finetune_epochs"))
        _put_stat(row, "sparsity %", g["achieved_sparsity"], scale=100, with_n=False)
        row.update({"params": _int(g["params"]), "nnz": _int(g["nnz"], "mean"),
                    "MACs": _int(g["macs"]), "sparse MACs": _int(g["nnz_macs"], "mean")})
        rows.append(row)
    out = _finish(rows).sort_values(["model", "method", "target %"], kind="stable").reset_index(drop=True)
    return out if numeric else display(out, digits)


def layers_table(layers: pd.DataFrame, digits: int = 2, numeric: bool = False,
                 stage: str | None = None) -> pd.DataFrame:
    """Per layer of one stage per model/dataset/method/target (``layers``: the frame of
    ``safs.report.layers.layer_rows``): weight entries, non-zeros and sparsity (%), mean ± std
    over ``n`` seeds, plus dense and sparse MACs. ``stage``: a stage label or name; ``None``:
    the last stage of each pipeline; ``"all"``: every stage."""
    if layers.empty:
        return pd.DataFrame()
    layers = layers.assign(variant=layers["variant"].fillna(""))
    if stage is None:
        last = layers.groupby(["pipeline", "variant"])["stage_index"].transform("max")
        layers = layers[layers["stage_index"] == last]
    elif stage != "all":
        known = sorted(set(layers["label"]) | set(layers["stage"]))
        layers = layers[(layers["label"] == stage) | (layers["stage"] == stage)]
        if layers.empty:
            raise ValueError(f"--stage: no stage labelled or named '{stage}'; found: {', '.join(known)}, all")
    # each table row group (model, method, target, stage) keeps its layers together, in network order
    layers = layers.sort_values([*SAFS_KEYS, "stage_index", "layer_index"], kind="stable")
    rows = []
    keys = [*SAFS_KEYS, "label", "layer"]
    for (model, dataset, method, target, label, layer), g in layers.groupby(keys, sort=False, dropna=False):
        g = g.groupby("seed", dropna=False).tail(1)  # one record per seed
        row = {"model": model, "dataset": dataset, "method": method, "target %": round(float(target) * 100, 2),
               "stage": label, "layer": layer, "prunable": g["prunable"].iloc[0], "n": len(g),
               "params": _int(g["params"])}
        _put_stat(row, "nnz", g["nnz"], with_n=False)
        _put_stat(row, "sparsity %", g["sparsity"], scale=100, with_n=False)
        row.update({"MACs": _int(g["macs"]), "sparse MACs": _int(g["nnz_macs"], "mean")})
        rows.append(row)
    out = _finish(rows)
    return out if numeric else display(out, digits)


def trials_table(paths) -> pd.DataFrame:
    """Every trial of every search stage (activation search and HPO) under ``paths``, from
    the stages' ``trials.parquet``: its configuration, status, where the sampler took it from
    (``origin``, when the stage recorded one), epochs and score."""
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
            t["search_epochs"] = _search_epochs(f.parent, t)
            frames.append(t)
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    out["score"] = (out["score"] * 100).round(2)
    origin = ["origin"] if "origin" in out else []  # older stages did not record it
    return out[["run", "variant", "stage", "stage_hash", "token", "status", *origin, "epochs", "score", "wall_s",
                "candidate", "search_epochs", "error"]]


def _search_epochs(stage_dir, trials) -> int:
    """The stage's search cost (``search.search_epochs`` of its stage.json; for a stage
    recorded before it existed, the epochs of its trials table)."""
    from safs.io import read_json

    value = recorded_search_epochs(read_json(stage_dir / "stage.json") or {})
    return int(value) if value is not None else int(trials["epochs"].sum())


def recorded_search_epochs(record: dict) -> float | None:
    """A stage record's search cost: ``search.search_epochs`` (``epochs_spent`` in a stage
    recorded before it existed); ``None`` for a stage that did not search."""
    search = record.get("search") or {}
    value = search.get("search_epochs", search.get("epochs_spent"))
    return None if value is None else float(value)


def _variants(run_dir) -> dict[str, str]:
    """Stage directory name -> the matrix cell(s) using it, for a run directory."""
    from safs.config import ConfigError, load_pipelines
    from safs.records import recorded_stages

    try:
        cfgs, _ = load_pipelines(run_dir / "pipeline.yaml")
        cells = [(cfg, recorded_stages(run_dir, cfg)) for cfg in cfgs]
    except (ConfigError, ValueError, OSError):
        return {}
    out: dict[str, str] = {}
    for cfg, stages in cells:
        for st in stages:
            if cfg.variant:
                out[st.dir.name] = f"{out[st.dir.name]};{cfg.variant}" if st.dir.name in out else cfg.variant
    return out


# The layouts built from results rows (``layers``: from the per-layer frame of
# ``safs.report.layers.layer_rows``); ``trials`` reads the search stages' own tables.
LAYOUTS = {"stages": stages_table, "safs": safs_table, "methods": methods_table, "layers": layers_table}
CHOICES = (*LAYOUTS, "trials")


def table_for(layout: str, paths, *, numeric: bool = False, stage: str | None = None) -> pd.DataFrame:
    """Layout ``layout`` of the runs under ``paths``; ``ValueError`` when they hold nothing
    for it (or ``stage`` matches no stage)."""
    from safs.report.layers import layer_rows
    from safs.report.rows import load_results

    where = ", ".join(map(str, paths))
    if layout == "trials":
        frame = trials_table(paths)
        if frame.empty:
            raise ValueError(f"no search stages under {where}")
        return frame
    if layout not in LAYOUTS:
        raise ValueError(f"--layout: unknown layout '{layout}'; accepted: {', '.join(CHOICES)}")
    if layout == "layers":
        frame = layer_rows(*paths)
        if frame.empty:
            raise ValueError(f"no finished stages with per-layer measurements under {where}")
        return layers_table(frame, numeric=numeric, stage=stage)
    df = load_results(*paths)
    if df.empty:
        raise ValueError(f"no finished stages under {where}")
    if layout == "safs":
        df = with_search_epochs(df, paths)
    return LAYOUTS[layout](df, numeric=numeric)


def with_search_epochs(df: pd.DataFrame, paths) -> pd.DataFrame:
    """The rows with a ``search_epochs`` column: a search stage's cost from its stage.json,
    empty for the other stages."""
    from safs.report.rows import stage_records

    cost = {}
    for rec in stage_records(*paths):
        value = recorded_search_epochs(rec)
        if rec.get("status") == "done" and value is not None:
            cost[rec.get("hash")] = value
    return df.assign(search_epochs=df["stage_hash"].map(cost))


FORMATS = ("markdown", "latex", "csv", "parquet")


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "markdown":
        return table.to_markdown(index=False, floatfmt=".2f")
    if fmt == "latex":
        return latex(table)
    raise ValueError(f"--format: unknown format '{fmt}'; accepted: {', '.join(FORMATS)}")


def _right_aligned(column: pd.Series) -> bool:
    """Numbers, and display cells that start with one ("93.10 ± 0.52", "+3.20 [...]")."""
    if pd.api.types.is_numeric_dtype(column):
        return True
    cells = [str(v) for v in column if isinstance(v, str) and v]
    return bool(cells) and all(c.lstrip("+-")[:1].isdigit() for c in cells)


def latex(table: pd.DataFrame) -> str:
    """A booktabs tabular, ready for ``\\input`` (no float environment, no pandas Styler)."""
    def cell(v) -> str:
        if isinstance(v, float):
            v = "" if math.isnan(v) else f"{v:.2f}"
        text = "" if v is None or v is pd.NA else str(v)
        text = text.replace("\\", "\\textbackslash{}")
        for ch in "&%$#_{}":
            text = text.replace(ch, "\\" + ch)
        for plain, tex in (("±", "$\\pm$"), ("Δ", "$\\Delta$"), ("–", "--"), ("~", "\\textasciitilde{}"),
                           ("^", "\\textasciicircum{}")):
            text = text.replace(plain, tex)
        return text

    spec = "".join("r" if _right_aligned(table[c]) else "l" for c in table.columns)
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(cell(c) for c in table.columns) + " \\\\", "\\midrule"]
    lines += [" & ".join(cell(v) for v in row) + " \\\\" for row in table.itertuples(index=False)]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"
