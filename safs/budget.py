"""STR's sparsity-budget transfer: another stage's per-layer densities as per-layer targets.

``sparsity.options.budget_from: PATH`` names a finished stage — its directory, or
``RUN_DIR/STAGE_NAME`` — relative to the pipeline file (typically a stage where STR learned
its non-uniform allocation). Before anything runs, it is replaced by the method's
``layer_targets`` option: the measured sparsity of every prunable layer of that stage's
``model.pt`` (from its ``stage.json``). So the stored ``pipeline.yaml`` and the stage hashes
hold the budget itself, and a run never depends on the source staying where it was.
"""

from __future__ import annotations

import json
from pathlib import Path

FIELD = "sparsity.options.budget_from"


def resolve_budget(cfg, pipeline_path: Path):
    """``cfg`` with ``budget_from`` turned into ``layer_targets`` (unchanged without it).
    Raises ``ConfigError`` naming the field."""
    from safs.config import ConfigError

    sp = cfg.sparsity
    if sp is None or "budget_from" not in sp.options:
        return cfg
    options = dict(sp.options)
    source = options.pop("budget_from")
    if "layer_targets" in options:
        raise ConfigError(f"{pipeline_path.name}: {FIELD}: give either budget_from or layer_targets, not both")
    record = _stage_record(str(source), pipeline_path.parent, pipeline_path.name)
    per_layer = (record.get("measurement") or {}).get("per_layer") or {}
    targets = {name: round(float(v["sparsity"]), 6) for name, v in per_layer.items() if v.get("prunable", True)}
    if not targets:
        raise ConfigError(f"{pipeline_path.name}: {FIELD}: stage '{record.get('name')}' recorded no per-layer sparsity")
    options["layer_targets"] = targets
    return cfg.model_copy(update={"sparsity": sp.model_copy(update={"options": options})})


def _stage_record(source: str, base: Path, where: str) -> dict:
    from safs.config import ConfigError

    path = Path(source).expanduser()
    path = path if path.is_absolute() else base / path
    if path.name in ("stage.json", "model.pt"):
        path = path.parent
    if not (path / "stage.json").is_file():  # RUN_DIR/STAGE_NAME: the one finished stage of that name
        found = [d for d in sorted(path.parent.glob(f"[0-9][0-9]-{path.name}-*")) if _done(d)]
        if len(found) != 1:
            what = "no finished stage" if not found else f"{len(found)} finished stages ({', '.join(d.name for d in found)})"
            raise ConfigError(f"{where}: {FIELD}: '{source}' names {what}; accepted: a stage directory, "
                              "or RUN_DIR/STAGE_NAME of one finished stage")
        path = found[0]
    if not _done(path):
        raise ConfigError(f"{where}: {FIELD}: stage '{path.name}' is not done; run its pipeline first")
    return json.loads((path / "stage.json").read_text())


def _done(stage_dir: Path) -> bool:
    try:
        return json.loads((stage_dir / "stage.json").read_text()).get("status") == "done"
    except (OSError, ValueError):
        return False
