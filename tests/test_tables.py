"""Table layouts from results rows (no runs: rows are built by hand in the documented schema)."""

import pandas as pd
import pytest

from safs.report.rows import ROW_COLUMNS
from safs.report.tables import methods_table, safs_table, stages_table


def rows(pipeline, seed, accs, model="lenet5", dataset="mnist5k", target=0.99):
    out = []
    for i, (label, acc) in enumerate(accs.items()):
        out.append({c: None for c in ROW_COLUMNS} | {
            "pipeline": pipeline, "variant": None, "stage": label.lower(), "stage_index": i, "label": label, "model": model,
            "dataset": dataset, "target_sparsity": 0.0 if label == "Dense" else target, "test_acc": acc,
            "seed": seed, "achieved_sparsity": 0.0 if label == "Dense" else target,
            "method": "dense" if label == "Dense" else "lwm"})
    return out


def frame(*groups):
    return pd.DataFrame([r for g in groups for r in g], columns=ROW_COLUMNS)


ACCS = {"Dense": 0.98, "Pruned": 0.1, "Magnitude Pruning": 0.40, "Stage 1": 0.50, "Stage 2": 0.52, "SAFS": 0.56}


def test_safs_layout_one_seed_with_gain():
    t = safs_table(frame(rows("a", 0, ACCS)))
    assert list(t.columns) == ["model", "dataset", "method", "target %", "Dense", "Magnitude Pruning", "Stage 1", "Stage 2", "SAFS"]
    [r] = t.to_dict("records")
    assert r["target %"] == 99.0 and r["Dense"] == "98.00" and r["Magnitude Pruning"] == "40.00"
    assert r["SAFS"] == "56.00 (+16.00)"


def test_safs_layout_mean_std_over_seeds_and_rows_per_sparsity():
    other = dict(ACCS, **{"Magnitude Pruning": 0.44, "SAFS": 0.60})
    t = safs_table(frame(rows("a", 0, ACCS), rows("b", 1, other), rows("c", 0, ACCS, target=0.9)))
    assert len(t) == 2
    r99 = t[t["target %"] == 99.0].iloc[0]
    assert r99["Magnitude Pruning"] == "42.00 ± 2.83"  # std over seeds, ddof=1
    assert r99["SAFS"] == "58.00 ± 2.83 (+16.00)"
    assert r99["Dense"] == "98.00 ± 0.00"


def test_safs_layout_leaves_missing_columns_empty():
    t = safs_table(frame(rows("a", 0, {"Dense": 0.9, "Magnitude Pruning": 0.3})))
    r = t.iloc[0]
    assert r["Stage 1"] == "" and r["SAFS"] == ""


def test_stages_layout_has_one_column_per_label_in_stage_order():
    t = stages_table(frame(rows("a", 0, ACCS)))
    assert list(t.columns)[-6:] == list(ACCS)
    assert t.iloc[0]["SAFS"] == pytest.approx(56.0)


def test_methods_layout_takes_each_pipelines_last_stage_with_mean_std():
    def cell(pipeline, seed, method, target, acc, nnz):
        r = rows(pipeline, seed, {"Dense": 0.98, "Magnitude Pruning": acc}, target=target)
        for x in r[1:]:
            x.update(method=method, nnz=nnz, params=1000, macs=5000, nnz_macs=nnz * 5)
        r[0].update(params=1000, nnz=1000, macs=5000, nnz_macs=5000)
        return r

    t = methods_table(frame(cell("a", 0, "lwm", 0.9, 0.60, 100), cell("b", 1, "lwm", 0.9, 0.64, 100),
                            cell("c", 0, "gmp", 0.9, 0.70, 100)))
    assert list(t["method"]) == ["gmp", "lwm"]
    lwm = t[t["method"] == "lwm"].iloc[0]
    assert lwm["test acc %"] == "62.00 ± 2.83" and lwm["seeds"] == 2
    assert lwm["sparse MACs"] == 500 and lwm["nnz"] == 100 and lwm["target %"] == 90.0


def test_latex_is_a_balanced_booktabs_tabular_with_escapes():
    from safs.report.tables import latex

    t = safs_table(frame(rows("a", 0, ACCS), rows("b", 1, ACCS)))
    t.loc[0, "model"] = "my_model & co"
    text = latex(t)
    lines = text.strip().splitlines()
    assert lines[0].startswith("\\begin{tabular}{") and lines[-1] == "\\end{tabular}"
    assert text.count("\\begin{tabular}") == text.count("\\end{tabular}") == 1
    assert [ln for ln in lines if ln in ("\\toprule", "\\midrule", "\\bottomrule")] == ["\\toprule", "\\midrule", "\\bottomrule"]
    assert "my\\_model \\& co" in text and "target \\%" in text and "$\\pm$" in text
    n_cols = len(t.columns)
    for ln in lines[2:-2]:
        if ln != "\\midrule":
            assert ln.endswith("\\\\") and ln.count(" & ") == n_cols - 1
