"""The train/eval loop.

Deliberately plain: batches come from device-resident tensors, loss and accuracy accumulate
on the device and are read once per epoch, and the sparse method's hooks are the only
per-step extras. A hand-written PyTorch loop over the same model is the baseline it is
benchmarked against (``benchmarks/train_overhead.py``).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn


class Diverged(RuntimeError):
    """Training produced a non-finite loss; the trial fails and the search goes on."""


def autocast_for(device: torch.device):
    # bf16 autocast on GPU only; on CPU it is slower for these small models.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TrainTally:
    """A training epoch's mean loss and accuracy, summed on the device and read once at the
    end (no per-step host sync)."""

    def __init__(self):
        self.loss_sum = self.correct = None
        self.n = 0

    @torch.no_grad()
    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        batch_loss = loss.detach() * y.shape[0]
        batch_correct = (out.argmax(1) == y).sum()
        self.loss_sum = batch_loss if self.loss_sum is None else self.loss_sum + batch_loss
        self.correct = batch_correct if self.correct is None else self.correct + batch_correct
        self.n += y.shape[0]

    def result(self) -> tuple[float, float]:
        """(mean loss, accuracy); ``Diverged`` on a non-finite loss."""
        if self.n == 0:
            raise ValueError("no training batches (empty training split?)")
        mean_loss = self.loss_sum.item() / self.n
        if not math.isfinite(mean_loss):
            raise Diverged(f"training loss is {mean_loss}")
        return mean_loss, self.correct.item() / self.n


def train_epoch(model: nn.Module, batches, optimizer: torch.optim.Optimizer, method=None, *,
                label_smoothing: float = 0.0, autocast=contextlib.nullcontext, recipe=None,
                ema=None, distill=None) -> tuple[float, float]:
    """One pass over ``batches`` (an iterable of (x, y)); returns (mean loss, accuracy).
    ``recipe``: a ``safs.training.recipes.BatchRecipe`` (image policy, mixup, cutmix, random
    erasing) applied to each batch; ``ema``: a ``WeightEMA`` updated after each step;
    ``distill``: a ``Distiller`` whose teacher's soft targets join the loss."""
    model.train()
    tally = TrainTally()
    for x, y in batches:
        mix = None
        if recipe is not None:
            x, mix = recipe(x, y)
        with autocast():
            out = model(x)
            if mix is None:
                loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
            else:
                loss = recipe.loss(out, y, mix, label_smoothing)
            if distill is not None:
                loss = distill.loss(out, x, loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if method is not None:
            method.before_step()
        optimizer.step()
        if method is not None:
            method.after_step()
        if ema is not None:
            ema.update()
        tally.add(loss, out, y)
    return tally.result()


def compile_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``torch.compile(model)`` for training, or ``model`` itself, with one log line saying why,
    where it is not supported (a device without a compiler backend, reparametrised layers).
    The compiled module shares the model's parameters: state dicts and checkpoints stay the
    model's own."""
    import logging

    from torch.nn.utils import parametrize

    log = logging.getLogger("safs")
    why = None
    if device.type not in ("cuda", "cpu"):
        why = f"no compiler backend for {device.type}"
    elif any(parametrize.is_parametrized(m) for m in model.modules()):
        why = "the model has reparametrised layers"
    elif not hasattr(torch, "compile"):
        why = "this torch has no torch.compile"
    if why:
        log.warning("compile: skipped (%s); training without it", why)
        return model
    return torch.compile(model)


@torch.inference_mode()
def evaluate(model: nn.Module, batches, *, autocast=contextlib.nullcontext) -> tuple[float, float]:
    """(mean loss, accuracy) over ``batches``."""
    model.eval()
    loss_sum = correct = None
    n = 0
    for x, y in batches:
        with autocast():
            out = model(x)
        batch_loss = F.cross_entropy(out.float(), y, reduction="sum")
        batch_correct = (out.argmax(1) == y).sum()
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        correct = batch_correct if correct is None else correct + batch_correct
        n += y.shape[0]
    if n == 0:
        return float("nan"), float("nan")
    return loss_sum.item() / n, correct.item() / n
