"""``model.pt``: what a stage saves and everyone else loads (the driver, the next stage's
trials, ``safs.load_model``). It holds the weights, masks, activation genome and α/β, the
architecture's registry name and options, and any architecture transform, and loads with
``torch.load(weights_only=True)``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from safs.io import torch_save

MODEL_FORMAT = 1


def new_model(spec: dict, ds) -> nn.Module:
    from safs.models import create_model

    m = spec["model"]
    torch.manual_seed(spec["seed"])  # same initial weights for the same seed
    return create_model(m["name"], ds.num_classes, tuple(ds.input_shape), m["activation"], **m["options"])


def model_meta(spec: dict, ds) -> dict:
    m = spec["model"]
    return {"name": m["name"], "activation": m["activation"], "options": m["options"],
            "num_classes": ds.num_classes, "input_shape": list(ds.input_shape)}


def model_blob(model: nn.Module, meta: dict, method: str | None) -> dict:
    """What ``model.pt`` holds: weights, masks, activation genome and α/β, loadable with
    weights_only=True (the tensors are copied to the CPU).

    ``architecture`` records an architecture transform the model went through
    (``safs.sparsity.architecture``; ``None`` for none), independently of ``method``: a later
    stage without the method (an activation search) still saves it.
    """
    from safs.activations import genome
    from safs.sparsity import architecture

    return {"format": MODEL_FORMAT, "model": meta, "genome": genome(model), "method": method,
            "architecture": architecture(model),
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}


def save_model(path: Path, model: nn.Module, meta: dict, method: str | None) -> None:
    torch_save(model_blob(model, meta, method), path)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a ``model.pt``: the registry's architecture, then the recorded
    transform (if any, before the genome: it sets the operators of the slots it relocates),
    the genome, the mask buffers and the weights (strict)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a safs model file (format {blob.get('format')!r})")
    return model_from_blob(blob, device), blob


def model_from_blob(blob: dict, device: torch.device | str = "cpu") -> nn.Module:
    from safs.activations import apply_genome
    from safs.models import create_model
    from safs.sparsity.masks import ensure_mask_buffers

    meta = blob["model"]
    model = create_model(meta["name"], meta["num_classes"], tuple(meta["input_shape"]), meta["activation"], **meta["options"])
    if blob.get("architecture") is not None:  # absent in files written before it existed
        from safs.sparsity import rebuild

        rebuild(model, blob["architecture"])
    apply_genome(model, blob["genome"])
    ensure_mask_buffers(model, blob["state_dict"])
    model.load_state_dict(blob["state_dict"], strict=True)
    return model.to(device)
