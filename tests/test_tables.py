"""Table layouts from results rows (no runs: rows are built by hand in the documented schema)."""

import json
import math

import pandas as pd
import pytest
from scipy import stats

from safs.records import ROW_COLUMNS
from safs.report.tables import (display, latex, layers_table, methods_table, paired_delta, render, safs_table,
                                stages_table, table_for, trials_table, _without_seed)

# The row schema with the fine-tuning budget and selection rule, whichever schema version is installed.
COLUMNS = list(dict.fromkeys([c if c != "best_epoch" else "selected_epoch" for c in ROW_COLUMNS]
                             + ["select", "finetune_epochs"]))
EPOCHS = {"Dense": 30, "Pruned": 0, "Magnitude Pruning": 20, "Magnitude Pruning (matched)": 50, "Stage 1": 25,
          "Stage 2": 25, "SAFS": 50}


def rows(pipeline, seed, accs, model="lenet5", dataset="mnist5k", target=0.99, epochs=None, variant=None):
    """One pipeline's rows, stage by stage; ``accs``: label -> test accuracy (0..1)."""
    epochs = EPOCHS if epochs is None else epochs
    out = []
    for i, (label, acc) in enumerate(accs.items()):
        dense = label == "Dense"
        out.append({c: None for c in COLUMNS} | {
            "pipeline": pipeline, "variant": variant, "stage": label.lower(), "stage_index": i, "label": label,
            "model": model, "dataset": dataset, "target_sparsity": 0.0 if dense else target, "test_acc": acc,
            "seed": seed, "achieved_sparsity": 0.0 if dense else target, "method": "dense" if dense else "lwm",
            "select": "best", "finetune_epochs": epochs.get(label)})
    return out


def frame(*groups):
    return pd.DataFrame([r for g in groups for r in g], columns=COLUMNS)


ACCS = {"Dense": 0.98, "Pruned": 0.1, "Magnitude Pruning": 0.40, "Stage 1": 0.50, "Stage 2": 0.52, "SAFS": 0.56}


# --- safs layout ---------------------------------------------------------------------------------

def test_safs_layout_one_seed_gain_without_interval_and_epochs_in_headers():
    t = safs_table(frame(rows("a", 0, ACCS)))
    assert list(t.columns) == ["model", "dataset", "method", "target %", "n", "Dense (30 ep)",
                               "Magnitude Pruning (20 ep)", "Stage 1 (25 ep)", "Stage 2 (25 ep)", "SAFS (50 ep)",
                               "Δ vs MP"]
    [r] = t.to_dict("records")
    assert r["target %"] == 99.0 and r["n"] == 1 and r["Dense (30 ep)"] == "98.00"
    assert r["Magnitude Pruning (20 ep)"] == "40.00" and r["SAFS (50 ep)"] == "56.00"
    assert r["Δ vs MP"] == "+16.00"  # one pair: no interval


def test_safs_gain_is_paired_by_seed_with_a_student_t_interval():
    mp, safs = {0: 0.40, 1: 0.50, 2: 0.60}, {0: 0.42, 1: 0.53, 2: 0.61, 3: 0.70}
    groups = [rows(f"p{s}", s, {"Dense": 0.98, **({"Magnitude Pruning": mp[s]} if s in mp else {}), "SAFS": safs[s]})
              for s in safs]
    num = safs_table(frame(*groups), numeric=True).iloc[0]
    # Per-seed differences 2, 3, 1 (seed 3 has no baseline): mean 2, sd 1, 3 pairs. The
    # difference of the column means (56.5 - 50) would be 6.5.
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert num["Δ vs MP"] == pytest.approx(2.0) and num["Δ vs MP n"] == 3
    assert num["Δ vs MP lo"] == pytest.approx(2 - half, abs=1e-3)
    assert num["Δ vs MP hi"] == pytest.approx(2 + half, abs=1e-3)
    assert num["n"] == 4 and num["SAFS n"] == 4 and num["Magnitude Pruning n"] == 3
    shown = safs_table(frame(*groups)).iloc[0]
    assert shown["Δ vs MP"] == f"+2.00 [{2 - half:.2f}, {2 + half:.2f}] (n=3)"
    assert shown["Magnitude Pruning (20 ep)"] == "50.00 ± 10.00 (n=3)"  # fewer seeds than the row
    assert shown["SAFS (50 ep)"] == f"{56.5:.2f} ± {pd.Series([42, 53, 61, 70]).std():.2f}"


def test_paired_delta_against_scipy_on_known_numbers():
    a = pd.Series({0: 93.1, 1: 92.4, 2: 94.0, 3: 93.3, 4: 92.9})
    b = pd.Series({0: 90.0, 1: 90.2, 2: 90.9, 3: 89.7, 4: 90.4})
    d = a - b
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    mean, got_lo, got_hi, n = paired_delta(a, b)
    assert (mean, n) == (pytest.approx(d.mean()), 5)
    assert (got_lo, got_hi) == (pytest.approx(lo), pytest.approx(hi))
    assert paired_delta(a, pd.Series(dtype=float))[3] == 0


def test_safs_matched_baseline_column_and_its_gain():
    accs = dict(ACCS, **{"Magnitude Pruning (matched)": 0.47})
    other = dict(accs, **{"Magnitude Pruning": 0.42, "Magnitude Pruning (matched)": 0.48, "SAFS": 0.60})
    t = safs_table(frame(rows("a", 0, accs), rows("b", 1, other)))
    assert list(t.columns)[5:] == ["Dense (30 ep)", "Magnitude Pruning (20 ep)", "Magnitude Pruning (matched, 50 ep)",
                                   "Stage 1 (25 ep)", "Stage 2 (25 ep)", "SAFS (50 ep)", "Δ vs MP", "Δ vs MP (matched)"]
    r = t.iloc[0]
    assert r["n"] == 2 and r["Magnitude Pruning (matched, 50 ep)"] == "47.50 ± 0.71"
    # SAFS - matched per seed: 9, 12 -> mean 10.5, sd 2.12, t(0.975, 1) = 12.71
    half = stats.t.ppf(0.975, 1) * pd.Series([9.0, 12.0]).std() / math.sqrt(2)
    assert r["Δ vs MP (matched)"] == f"+10.50 [{10.5 - half:.2f}, {10.5 + half:.2f}]"
    assert r["Δ vs MP"].startswith("+17.00 [")
    # No matched stage anywhere: neither the column nor its gain.
    plain = safs_table(frame(rows("a", 0, ACCS)), numeric=True)
    assert not [c for c in plain.columns if "matched" in c]


def test_safs_epochs_that_differ_between_seeds_show_their_range():
    longer = dict(EPOCHS, **{"Stage 1": 30})
    one_row = frame(rows("a", 0, ACCS), rows("b", 1, ACCS, epochs=longer))
    assert "Stage 1 (25–30 ep)" in safs_table(one_row).columns  # the whole column agrees: in the header
    num = safs_table(one_row, numeric=True).iloc[0]
    assert (num["Stage 1 epochs min"], num["Stage 1 epochs max"]) == (25, 30)
    # Rows that disagree: each cell says its own budget.
    t = safs_table(frame(rows("a", 0, ACCS), rows("b", 1, ACCS, epochs=longer), rows("c", 0, ACCS, target=0.9)))
    assert "Stage 1" in t.columns and "SAFS (50 ep)" in t.columns
    assert t.set_index("target %")["Stage 1"].to_dict() == {99.0: "50.00 ± 0.00 (25–30 ep)", 90.0: "50.00 (25 ep)"}


def test_safs_rows_per_sparsity_mean_std_and_old_runs_without_epochs():
    other = dict(ACCS, **{"Magnitude Pruning": 0.44, "SAFS": 0.60})
    t = safs_table(frame(rows("a", 0, ACCS, epochs={}), rows("b", 1, other, epochs={}),
                         rows("c", 0, ACCS, target=0.9, epochs={})))
    assert len(t) == 2 and "SAFS" in t.columns  # no epochs known: plain headers, no notes
    r99 = t[t["target %"] == 99.0].iloc[0]
    assert r99["Magnitude Pruning"] == "42.00 ± 2.83" and r99["n"] == 2  # std over seeds, ddof=1
    assert r99["SAFS"] == "58.00 ± 2.83" and r99["Dense"] == "98.00 ± 0.00"
    assert t[t["target %"] == 90.0].iloc[0]["n"] == 1


def _with_searches(group, epochs):
    """``group``'s rows with an activation search before Stage 1 and an HPO stage before
    Stage 2, costing ``epochs`` = (search epochs, hpo epochs)."""
    out = []
    for r in group:
        for kind, label, cost in (("activation_search", "Stage 1 search", epochs[0]), ("hpo", "Stage 2 search", epochs[1])):
            if r["label"] == label.replace(" search", "") and cost is not None:
                out.append(r | {"stage": kind, "label": label, "stage_kind": kind, "search_epochs": cost,
                                "test_acc": 0.3})
        out.append(r | {"stage_kind": "train", "search_epochs": None})
    return out


def test_safs_search_epochs_columns_where_a_stage_searched():
    groups = [_with_searches(rows(f"p{s}", s, ACCS), (e, 100)) for s, e in ((0, 10), (1, 12))]
    num = safs_table(pd.DataFrame([r for g in groups for r in g]), numeric=True).iloc[0]
    assert num["Stage 1 search epochs"] == 11 and num["Stage 1 search epochs std"] == pytest.approx(2 ** 0.5, abs=1e-4)
    assert num["Stage 1 search epochs n"] == 2 and num["Stage 2 search epochs"] == 100
    assert num["Stage 1"] == 50  # the search rows are not the Stage 1 column
    shown = safs_table(pd.DataFrame([r for g in groups for r in g])).iloc[0]
    assert shown["Stage 1 search epochs"] == "11.00 ± 1.41" and shown["Stage 2 search epochs"] == "100.00 ± 0.00"
    # no HPO stage searched: its column is left out, Stage 1's stays
    only = [_with_searches(rows("p0", 0, ACCS), (10, None))]
    assert "Stage 2 search epochs" not in safs_table(pd.DataFrame([r for g in only for r in g])).columns


def test_table_for_safs_reads_search_epochs_from_the_stage_records(tmp_path):
    group = _with_searches(rows("p", 0, ACCS), (10, 40))
    for i, r in enumerate(group):
        d = tmp_path / f"{i:02d}-{r['stage']}-h{i}"
        d.mkdir()
        search = {"search_epochs": r.pop("search_epochs")} if r["stage_kind"] != "train" else None
        if r["stage_kind"] == "hpo":
            search = {"epochs_spent": search["search_epochs"]}  # a record from before search_epochs
        r["stage_hash"] = f"h{i}"
        (d / "stage.json").write_text(json.dumps({"status": "done", "hash": f"h{i}", "row": r, "search": search}))
    num = table_for("safs", [tmp_path], numeric=True).iloc[0]
    assert num["Stage 1 search epochs"] == 10 and num["Stage 2 search epochs"] == 40


def test_safs_layout_leaves_missing_columns_empty():
    t = safs_table(frame(rows("a", 0, {"Dense": 0.9, "Magnitude Pruning": 0.3})))
    r = t.iloc[0]
    assert r["Stage 1"] == "" and r["SAFS"] == "" and r["Δ vs MP"] == ""


# --- stages and methods layouts ------------------------------------------------------------------

def test_stages_layout_pools_cells_that_differ_only_by_seed():
    cells = [rows("sweep", s, {k: v + 0.01 * s for k, v in ACCS.items()}, target=t, variant=f"target={t},seed={s}")
             for t in (0.9, 0.99) for s in (0, 1, 2)]
    t = stages_table(frame(*cells))
    assert list(t["variant"]) == ["target=0.9", "target=0.99"] and list(t["n"]) == [3, 3]
    assert list(t.columns)[-6:] == list(ACCS)
    r = t.iloc[0]
    assert r["SAFS"] == "57.00 ± 1.00" and r["achieved sparsity %"] == "90.00 ± 0.00"
    num = stages_table(frame(*cells), numeric=True).iloc[0]
    assert num["SAFS"] == pytest.approx(57.0) and num["SAFS std"] == pytest.approx(1.0) and num["SAFS n"] == 3


def test_stages_layout_notes_a_stage_fewer_seeds_reached():
    t = stages_table(frame(rows("a", 0, ACCS), rows("a", 1, {"Dense": 0.96, "Pruned": 0.1})))
    r = t.iloc[0]
    assert r["n"] == 2 and r["Dense"] == "97.00 ± 1.41" and r["SAFS"] == "56.00 (n=1)"
    assert "variant" not in t.columns


def test_without_seed_keeps_block_values_whole():
    assert _without_seed("seed=1") == ""
    assert _without_seed("model=vgg11(width=2,seed=3),seed=0,target=0.9") == "model=vgg11(width=2,seed=3),target=0.9"


def test_methods_layout_takes_each_pipelines_last_stage_with_mean_std():
    def cell(pipeline, seed, method, target, acc, nnz, epochs=20):
        r = rows(pipeline, seed, {"Dense": 0.98, "Magnitude Pruning": acc}, target=target,
                 epochs={"Dense": 30, "Magnitude Pruning": epochs})
        for x in r[1:]:
            x.update(method=method, nnz=nnz, params=1000, macs=5000, nnz_macs=nnz * 5)
        r[0].update(params=1000, nnz=1000, macs=5000, nnz_macs=5000)
        return r

    groups = [cell("a", 0, "lwm", 0.9, 0.60, 100), cell("b", 1, "lwm", 0.9, 0.64, 100),
              cell("c", 0, "gmp", 0.9, 0.70, 100, epochs=40)]
    t = methods_table(frame(*groups))
    assert list(t["method"]) == ["gmp", "lwm"]
    lwm = t[t["method"] == "lwm"].iloc[0]
    assert lwm["test acc %"] == "62.00 ± 2.83 (20 ep)" and lwm["n"] == 2  # budgets differ: per cell
    assert lwm["sparse MACs"] == 500 and lwm["nnz"] == 100 and lwm["target %"] == 90.0
    num = methods_table(frame(*groups), numeric=True)
    assert num["test acc % epochs max"].tolist() == [40, 20] and num["test acc % std"].isna().tolist() == [True, False]


# --- rendering -----------------------------------------------------------------------------------

def test_latex_is_a_balanced_booktabs_tabular_with_escapes():
    t = safs_table(frame(rows("a", 0, ACCS), rows("b", 1, dict(ACCS, SAFS=0.58)),
                         rows("c", 2, ACCS, epochs=dict(EPOCHS, **{"Stage 1": 30}))))
    t.loc[0, "model"] = "my_model & co"
    text = latex(t)
    lines = text.strip().splitlines()
    assert lines[0].startswith("\\begin{tabular}{") and lines[-1] == "\\end{tabular}"
    assert text.count("\\begin{tabular}") == text.count("\\end{tabular}") == 1
    assert [ln for ln in lines if ln in ("\\toprule", "\\midrule", "\\bottomrule")] == ["\\toprule", "\\midrule", "\\bottomrule"]
    assert "my\\_model \\& co" in text and "target \\%" in text and "$\\pm$" in text
    assert "$\\Delta$ vs MP" in text and "25--30 ep" in text and "±" not in text and "Δ" not in text
    n_cols = len(t.columns)
    for ln in lines[2:-2]:
        if ln != "\\midrule":
            assert ln.endswith("\\\\") and ln.count(" & ") == n_cols - 1


def test_csv_and_parquet_get_numbers(tmp_path):
    num = safs_table(frame(rows("a", 0, ACCS), rows("b", 1, dict(ACCS, SAFS=0.58))), numeric=True)
    back = pd.read_csv(pd.io.common.StringIO(render(num, "csv")))
    assert back.loc[0, "SAFS"] == pytest.approx(57.0) and back.loc[0, "SAFS std"] == pytest.approx(1.4142, abs=1e-4)
    assert back.loc[0, "Stage 1 epochs min"] == 25 and back.loc[0, "n"] == 2
    num.to_parquet(tmp_path / "t.parquet", index=False)
    pq = pd.read_parquet(tmp_path / "t.parquet")
    assert pd.api.types.is_float_dtype(pq["Δ vs MP lo"]) and pd.api.types.is_integer_dtype(pq["SAFS epochs max"])


def test_display_passes_plain_columns_through():
    t = pd.DataFrame({"model": ["m"], "n": [2], "acc": [90.0], "acc std": [1.0], "acc n": [2]})
    assert display(t).to_dict("records") == [{"model": "m", "n": 2, "acc": "90.00 ± 1.00"}]


# --- layers and trials (from files) -----------------------------------------------------------------

def write_stage(root, name, row, per_layer=None, legacy=None):
    d = root / name
    d.mkdir(parents=True)
    measurement = {"per_layer": per_layer} if per_layer is not None else {"layers": legacy}
    (d / "stage.json").write_text(json.dumps({"status": "done", "hash": row["stage_hash"], "row": row,
                                              "measurement": measurement}))


def layer(params, nnz, macs=1000):
    return {"params": params, "nnz": nnz, "sparsity": 1 - nnz / params, "macs": macs,
            "nnz_macs": macs * nnz // params, "prunable": True, "activation_density": 1.0}


def write_seeds(root):
    """Two seeds of dense -> retrain, as stage records without a pipeline file."""
    for seed, nnz in ((0, 10), (1, 14)):
        for i, label in enumerate(("Dense", "Magnitude Pruning")):
            dense = label == "Dense"
            row = rows("p", seed, {label: 0.9})[0] | {"stage_index": i, "stage_hash": f"h{seed}{i}",
                                                      "stage": "dense" if dense else "retrain"}
            write_stage(root, f"s{seed}/{i + 1:02d}-{row['stage']}-h{seed}{i}", row,
                        {"conv1": layer(100, 100 if dense else nnz), "fc": layer(50, 50 if dense else 5)})


def test_layers_layout_reads_per_layer_records_of_the_last_stage(tmp_path):
    from safs.report.layers import layer_rows

    write_seeds(tmp_path)
    t = layers_table(layer_rows(tmp_path))
    assert list(t["layer"]) == ["conv1", "fc"] and set(t["stage"]) == {"Magnitude Pruning"}
    conv = t.iloc[0]
    assert conv["n"] == 2 and conv["params"] == 100 and conv["nnz"] == "12 ± 3"
    assert conv["sparsity %"] == "88.00 ± 2.83" and t.iloc[1]["sparsity %"] == "90.00 ± 0.00"
    dense = layers_table(layer_rows(tmp_path), stage="Dense", numeric=True)
    assert dense["sparsity %"].tolist() == [0.0, 0.0] and dense["n"].tolist() == [2, 2]
    assert len(layers_table(layer_rows(tmp_path), stage="all")) == 4
    with pytest.raises(ValueError, match="no stage labelled or named 'nope'"):
        layers_table(layer_rows(tmp_path), stage="nope")


def test_layers_reader_accepts_records_from_before_per_layer(tmp_path):
    from safs.report.layers import layer_rows

    row = rows("p", 0, {"Magnitude Pruning": 0.9})[0] | {"stage_hash": "old"}
    legacy = {"conv1": {"numel": 100, "nnz": 20, "sparsity": 0.8, "macs": 400}}
    write_stage(tmp_path, "01-retrain-old", row, legacy=legacy)
    [r] = layer_rows(tmp_path).to_dict("records")
    assert (r["layer"], r["params"], r["nnz"], r["nnz_macs"], r["prunable"]) == ("conv1", 100, 20, 80, None)


def test_cli_table_layers_and_stage_option(tmp_path):
    from click.testing import CliRunner

    from safs.cli import main

    write_seeds(tmp_path)
    runner = CliRunner()
    md = runner.invoke(main, ["table", str(tmp_path), "--layout", "layers"])
    assert md.exit_code == 0, md.output
    assert "| layer" in md.output and "12 ± 3" in md.output
    csv = runner.invoke(main, ["table", str(tmp_path), "--layout", "layers", "--stage", "dense", "--format", "csv"])
    assert csv.exit_code == 0 and csv.output.splitlines()[0].split(",")[-4:] == ["sparsity %", "sparsity % std",
                                                                                 "MACs", "sparse MACs"]
    bad = runner.invoke(main, ["table", str(tmp_path), "--layout", "safs", "--stage", "dense"])
    assert bad.exit_code != 0 and "only with --layout layers" in bad.output


def test_table_for_says_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="no finished stages"):
        table_for("safs", [tmp_path])
    with pytest.raises(ValueError, match="no search stages"):
        table_for("trials", [tmp_path])


def test_trials_layout_shows_origin_when_recorded(tmp_path):
    def trials(stage_dir, **extra):
        d = tmp_path / "run" / stage_dir
        d.mkdir(parents=True)
        pd.DataFrame({"token": [0, 1], "status": ["done", "done"], "epochs": [5, 5], "score": [0.5, 0.6],
                      "wall_s": [1.0, 1.0], "genome": [None, None], "config": ["{}", "{}"], "error": [None, None],
                      **extra}).to_parquet(d / "trials.parquet")

    trials("03-hpo-abc", origin=["initial_design", "model"])
    t = trials_table([tmp_path])
    assert t["origin"].tolist() == ["initial_design", "model"]
    assert list(t.columns).index("origin") == list(t.columns).index("status") + 1
    trials("04-search-def")  # an older stage without origins: still listed
    t = trials_table([tmp_path])
    assert len(t) == 4 and t["origin"].isna().sum() == 2
