"""Per-layer measurements of finished stages, read from their ``stage.json`` records.

Each record keeps ``measurement.per_layer`` (layer -> params, nnz, sparsity, macs, nnz_macs,
prunable, activation_density; see ``safs.training.measure``). Nothing is re-planned or
re-measured here: the results rows say which stage a record is (pipeline, matrix cell,
label, seed), the record with the row's ``stage_hash`` says its layers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

ROW_KEYS = ["pipeline", "variant", "stage", "stage_index", "label", "stage_hash", "model", "dataset", "method",
            "target_sparsity", "seed"]
LAYER_FIELDS = ["layer", "layer_index", "params", "nnz", "sparsity", "macs", "nnz_macs", "prunable"]


def per_layer(record: dict) -> dict[str, dict]:
    """Layer name -> its figures, in the network's order. Records written before
    ``per_layer`` existed carry ``layers`` (numel, nnz, sparsity, macs): read those, with the
    sparse MACs at weight density and ``prunable`` unknown."""
    m = record.get("measurement") or {}
    if m.get("per_layer"):
        return m["per_layer"]
    out = {}
    for name, f in (m.get("layers") or {}).items():
        numel = f.get("numel", 0)
        out[name] = {"params": numel, "nnz": f.get("nnz"), "sparsity": f.get("sparsity"), "macs": f.get("macs"),
                     "nnz_macs": round(f.get("macs", 0) * f.get("nnz", 0) / numel) if numel else 0, "prunable": None}
    return out


def layer_rows(*paths: str | Path) -> pd.DataFrame:
    """One row per (results row, layer) under ``paths``: the row's identifying columns
    (``ROW_KEYS``) and the layer's figures (``LAYER_FIELDS``). A stage shared by several
    matrix cells gives each cell its rows, as ``load_results`` does."""
    from safs.report.rows import load_results, stage_records

    layers = {rec.get("hash"): per_layer(rec) for rec in stage_records(*paths) if rec.get("status") == "done"}
    rows = []
    for row in load_results(*paths).to_dict("records"):
        ident = {k: row.get(k) for k in ROW_KEYS}
        for i, (name, f) in enumerate(layers.get(row["stage_hash"], {}).items()):
            rows.append(ident | {"layer": name, "layer_index": i, **{k: f.get(k) for k in LAYER_FIELDS[2:]}})
    return pd.DataFrame(rows, columns=ROW_KEYS + LAYER_FIELDS)
