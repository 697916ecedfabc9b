"""What every trial shares: device, cached datasets, model files and epoch checkpoints."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from safs.io import torch_save

MODEL_FORMAT = 1
_DATASETS: dict[tuple, Any] = {}  # one load per worker process; reused actors keep it


def trial_device(spec: dict) -> torch.device:
    if spec["resources"]["gpus_per_trial"] > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def dataset(spec: dict, device: torch.device):
    from safs.data import load_dataset

    d = spec["data"]
    key = (d["name"], d["data_dir"], d["split_seed"], d["val_fraction"], d["test_fraction"], str(device))
    if key not in _DATASETS:
        _DATASETS.clear()  # keep at most one dataset per worker in memory
        ds = load_dataset(d["name"], d["data_dir"], seed=d["split_seed"],
                          val_fraction=d["val_fraction"], test_fraction=d["test_fraction"])
        _DATASETS[key] = ds.to(device)
    return _DATASETS[key]


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

    ``architecture`` records an architecture transform the model went through (SAS's
    conversion, ``safs.sparsity.sas.architecture``; ``None`` for none), independently of
    ``method``: a later stage without the method (an activation search) still saves it.
    """
    from safs.activations import genome
    from safs.sparsity.sas import architecture

    return {"format": MODEL_FORMAT, "model": meta, "genome": genome(model), "method": method,
            "architecture": architecture(model),
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}


def save_model(path: Path, model: nn.Module, meta: dict, method: str | None) -> None:
    torch_save(model_blob(model, meta, method), path)


def seed_trial(spec: dict, candidate: int | None = None, epoch: int | None = None) -> int:
    """Seed every generator a trial draws from (torch on every device, numpy, random) from
    (pipeline seed, stage, candidate, epoch), so the same pipeline gives the same rows.

    Reseeding at each epoch makes a resumed trial draw what an uninterrupted one would have
    (Gumbel noise, dropout masks) without keeping generator states in the checkpoint."""
    import hashlib
    import random

    import numpy as np

    key = f"{spec['seed']}/{spec['name']}/{candidate}/{epoch}".encode()
    seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)
    return seed


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
        from safs.sparsity.sas import rebuild

        rebuild(model, blob["architecture"])
    apply_genome(model, blob["genome"])
    ensure_mask_buffers(model, blob["state_dict"])
    model.load_state_dict(blob["state_dict"], strict=True)
    return model.to(device)


def prepare_for_device(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to the trial's device in the faster memory layout: channels_last for conv nets
    (tensor cores on GPU; oneDNN on CPU, 25% faster per LeNet-5 step, benchmarks/train_overhead.py)."""
    model = model.to(device)
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    return model


@contextmanager
def resume_point(spec: dict, device: torch.device) -> Iterator[tuple[dict | None, Path | None]]:
    """The training state to continue from and its checkpoint directory, or (None, None).

    Tune's own checkpoint comes first (a retry within this attempt), then the checkpoints of
    earlier attempts (``spec["resume_from"]``, newest first). A checkpoint that does not load
    (cut short by a kill) is skipped for the one before it."""
    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = _load_state(Path(d) / "state.pt", device)
            if state is not None:
                yield state, Path(d)
                return
    for trial in spec.get("resume_from") or []:
        for d in sorted(Path(trial).glob("checkpoint_*"), reverse=True):
            state = _load_state(d / "state.pt", device)
            if state is not None:
                yield state, d
                return
    yield None, None


def _load_state(path: Path, device: torch.device) -> dict | None:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle opcode, missing file: all mean "unusable"
        import logging

        logging.getLogger("safs").warning("skipping checkpoint %s: %s", path.parent.name, e)
        return None


@contextmanager
def checkpoint_dir() -> Iterator[Path]:
    """A scratch directory that Tune copies into the trial's checkpoint on report."""
    with tempfile.TemporaryDirectory(prefix="safs-ckpt-") as d:
        yield Path(d)


def write_history(d: Path, history: list[dict]) -> None:
    (d / "history.json").write_text(json.dumps(history))


def threads_from_resources() -> None:
    # Ray sets OMP_NUM_THREADS from the trial's CPU share; make torch follow it.
    n = os.environ.get("OMP_NUM_THREADS")
    if n and n.isdigit() and int(n) > 0:
        torch.set_num_threads(int(n))
