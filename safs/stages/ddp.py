"""Data parallelism inside one trial: what a training run needs when it is one worker of
several (``resources.workers_per_trial``; the process group is set up by Ray Train, see
``safs.tune.workers``). With one worker every function here is the identity.

Every worker runs the whole trial: the same model, the same sparse method and the same
seeded draws (``common.seed_trial``); only its share of each batch differs. Gradients are
averaged by DistributedDataParallel during backward, so each optimizer step, and every
mask, threshold or logit the method derives from the weights after it, is the same on
every rank. :func:`sparse_digest` lets a test (and the records) check that it is.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sync_batchnorm(model: nn.Module, enabled: bool) -> nn.Module:
    """Batch norm over the whole batch instead of each worker's share (GPU only, as PyTorch's
    SyncBatchNorm is); the parameters stay the same objects."""
    if not enabled or world()[1] == 1:
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def for_training(model: nn.Module, device: torch.device) -> nn.Module:
    """The module the training step runs: ``model`` wrapped in DistributedDataParallel when
    there are several workers. Evaluation, checkpoints and the method use ``model`` itself.

    ``find_unused_parameters``: a sparse method may leave parameters out of a forward (a
    one-shot mixture's unchosen operators); DDP would otherwise wait for their gradients."""
    if world()[1] == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def mean_over_workers(*values: float) -> tuple[float, ...]:
    """The workers' mean of each value (a training loss, an accuracy): what every rank then
    uses, so a schedule stepped on the loss (``plateau``) stays the same on every rank."""
    if world()[1] == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return tuple((t / world()[1]).tolist())


def share_batchnorm_statistics(model: nn.Module) -> None:
    """Rank 0's batch-norm running statistics on every rank (each rank's own are of its share
    of the batches; DDP would broadcast them at the next forward anyway), so that evaluation
    gives the same numbers on every rank."""
    if world()[1] == 1:
        return
    import torch.distributed as dist

    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
            for buf in (mod.running_mean, mod.running_var, mod.num_batches_tracked):
                if buf is not None:
                    dist.broadcast(buf, 0)


def sparse_digest(method, model: nn.Module) -> str | None:
    """A digest of the sparse method's state (its state_dict: masks, thresholds, logits) and
    of the model's mask buffers; None without a method."""
    if method is None:
        return None
    h = hashlib.sha256()
    tensors = {**{f"method.{k}": v for k, v in _flat(method.state_dict())},
               **{k: v for k, v in model.named_buffers() if "mask" in k}}
    for key in sorted(tensors):
        value = tensors[key]
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            h.update(value.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                     if value.numel() else b"")
        else:
            h.update(repr(value).encode())
    return h.hexdigest()[:16]


def _flat(state, prefix: str = ""):
    if isinstance(state, dict):
        for k, v in state.items():
            yield from _flat(v, f"{prefix}{k}.")
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            yield from _flat(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), state
