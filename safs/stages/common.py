"""What every trial shares: device, cached datasets, seeds, threads and epoch checkpoints
(the ``model.pt`` format is ``safs.model_file``'s)."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

_DATASETS: dict[tuple, Any] = {}  # one load per worker process; reused actors keep it


def trial_device(spec: dict) -> torch.device:
    res = spec["resources"]
    gpus = res["gpus_per_worker"] if res.get("workers_per_trial", 1) > 1 else res["gpus_per_trial"]
    if gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def dataset(spec: dict, device: torch.device):
    from safs.data import load_dataset

    d = spec["data"]
    size = d.get("image_size")
    reading = {"in_memory": d.get("in_memory", True), "memory_budget_gb": d.get("memory_budget_gb"),
               "loader_workers": d.get("loader_workers")}
    key = (d["name"], d["data_dir"], d["split_seed"], d["val_fraction"], d["test_fraction"],
           None if size is None else tuple(size), str(device), *reading.values())
    if key not in _DATASETS:
        _DATASETS.clear()  # keep at most one dataset per worker in memory
        # a streamed image tree is its file lists here; its batches decode the files
        ds = load_dataset(d["name"], d["data_dir"], seed=d["split_seed"],
                          val_fraction=d["val_fraction"], test_fraction=d["test_fraction"], image_size=size,
                          device=device, **reading)
        _DATASETS[key] = ds.to(device)
    return _DATASETS[key]


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


def attach_method(spec: dict, model: nn.Module):
    """The trial's sparse method (``None`` without one) attached to ``model``: (method, model).

    A one-shot method asked to train a dense model (``sparse: true`` with no prune stage
    before) follows its protocol: prune once here, then train with the masks fixed."""
    from safs.sparsity import create_method, method_protocol
    from safs.sparsity.masks import has_pruned

    sp = spec["sparsity"]
    if sp is None:
        return None, model
    method = create_method(sp["method"], sp["target"], sp["options"])
    model = method.attach(model)
    if method_protocol(sp["method"]) == "one_shot" and not has_pruned(model):
        method.prune(model)
    return method, model


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

    The session's own checkpoint comes first (a retry within this attempt), then the checkpoints of
    earlier attempts (``spec["resume_from"]``, newest first). A checkpoint that does not load
    (cut short by a kill) is skipped for the one before it."""
    from safs.stages.session import restored_checkpoint

    with restored_checkpoint() as d:
        state = None if d is None else _load_state(d / "state.pt", device)
        if state is not None:
            yield state, d
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
    """A scratch directory that the session copies into the trial's checkpoint on report."""
    with tempfile.TemporaryDirectory(prefix="safs-ckpt-") as d:
        yield Path(d)


def write_history(d: Path, history: list[dict]) -> None:
    (d / "history.json").write_text(json.dumps(history))


def threads_from_resources() -> None:
    # Ray sets OMP_NUM_THREADS from the trial's CPU share; make torch follow it.
    n = os.environ.get("OMP_NUM_THREADS")
    if n and n.isdigit() and int(n) > 0:
        torch.set_num_threads(int(n))
