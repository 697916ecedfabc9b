"""On-device batching, augmentation and normalisation.

Datasets are small enough (or, for ImageNet16, uint8-compact enough) to live
wholly on the trial's device, so an epoch is just: one seeded permutation,
then per step an index gather, an optional vectorised augmentation and a fused
normalisation. No DataLoader, no workers, no per-sample Python. This keeps a
safs epoch within noise of a hand-written loop over the same tensors.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .base import Dataset

__all__ = ["Batches", "augment_batch", "normalise"]

# ----------------------------------------------------------------- normalisation

# out = x.float() * mult + bias. ``mult`` is a python float when it is a plain
# scalar (cheapest kernel); ``bias`` is None when there is nothing to add.


def _coefficients(dataset: Dataset, device: torch.device) -> tuple[float | torch.Tensor, torch.Tensor | None]:
    """Fold ``(x*scale - mean)/std`` into one multiply-add: ``x*(scale/std) + (-mean/std)``.

    Computed once, in float64 on the CPU (some devices, e.g. MPS, lack float64),
    then rounded and moved, so each batch costs at most one dtype conversion
    plus one fused kernel.
    """
    scale = float(dataset.scale)
    mean = None if dataset.mean is None else dataset.mean.detach().to("cpu", torch.float64)
    std = None if dataset.std is None else dataset.std.detach().to("cpu", torch.float64)
    if std is None:
        mult: float | torch.Tensor = scale
        bias = None if mean is None else -mean
    else:
        mult = (scale / std).to(device, torch.float32)
        bias = None if mean is None else -mean / std
    return mult, None if bias is None else bias.to(device, torch.float32)


def _apply_norm(x: torch.Tensor, mult: float | torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    xf = x.float()  # no-op (same tensor) for float32 input
    fresh = xf is not x  # only a fresh conversion may be modified in place
    if bias is None:
        if isinstance(mult, float) and mult == 1.0:
            return xf  # float32, scale 1, no mean/std: hand back the data untouched
        return xf.mul_(mult) if fresh else xf * mult
    if isinstance(mult, float):
        return torch.add(bias, xf, alpha=mult)
    return torch.addcmul(bias, xf, mult)


def normalise(x: torch.Tensor, dataset: Dataset) -> torch.Tensor:
    """Return ``(x.float() * scale - mean) / std`` for ``dataset`` (mean/std optional).

    For float32 data with scale 1 and no mean/std the input itself is returned
    (no copy), so callers must not modify the result in place.
    """
    mult, bias = _coefficients(dataset, x.device)
    return _apply_norm(x, mult, bias)


# ------------------------------------------------------------------ augmentation


def _draw_params(
    n: int, crop_padding: int, flip: bool, generator: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Random crop offsets (n, 2) in [0, 2p] and flip flags (n,), on ``device``.

    Drawn on the generator's own device (so a CPU generator gives the same
    numbers whatever device the data is on), then moved in one copy.
    """
    gen_device = generator.device if generator is not None else device
    shifts = flips = None
    if crop_padding > 0:
        shifts = torch.randint(0, 2 * crop_padding + 1, (n, 2), generator=generator, device=gen_device)
        shifts = shifts.to(device, non_blocking=True)
    if flip:
        flips = (torch.rand(n, generator=generator, device=gen_device) < 0.5).to(device, non_blocking=True)
    return shifts, flips


def _apply_augment(
    x: torch.Tensor, crop_padding: int, shifts: torch.Tensor | None, flips: torch.Tensor | None
) -> torch.Tensor:
    """Crop-with-zero-padding then horizontal flip, for the whole batch at once.

    Instead of materialising a padded copy we compute, for every output pixel,
    which input pixel it reads (``row = i + dy - p``; ``col = j + dx - p``, with
    ``j`` mirrored first when flipping) and gather; out-of-range reads become 0,
    exactly what zero padding would have produced.
    """
    if shifts is None:
        if flips is None:
            return x
        return torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
    b, c, h, w = x.shape
    dev = x.device
    p = crop_padding
    rows = torch.arange(h, device=dev) + (shifts[:, :1] - p)  # (B, H)
    cols = torch.arange(w, device=dev).expand(b, w)
    if flips is not None:
        cols = torch.where(flips[:, None], (w - 1) - cols, cols)
    cols = cols + (shifts[:, 1:] - p)  # (B, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    index = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]  # (B, H, W)
    out = x.reshape(b, c, h * w).gather(2, index.view(b, 1, h * w).expand(b, c, h * w))
    out = out.view(b, c, h, w)
    return out.masked_fill_(~inside[:, None], 0)


def augment_batch(
    x: torch.Tensor, crop_padding: int, flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomly crop (after zero padding by ``crop_padding``) and flip each sample of ``x``.

    ``x`` is (B, C, H, W) of any dtype; apply it to raw pixels *before*
    normalisation so padded zeros mean black pixels, as in torchvision's
    RandomCrop(padding=p) followed by ToTensor/Normalize. Each sample gets its
    own offset and a flip with probability 1/2; randomness comes from
    ``generator`` (or torch's default RNG when None).
    """
    if crop_padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
    shifts, flips = _draw_params(x.shape[0], crop_padding, flip, generator, x.device)
    return _apply_augment(x, crop_padding, shifts, flips)


# ---------------------------------------------------------------------- batching


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch) only.

    Because the stream depends on nothing else, resuming at epoch k replays
    exactly the order and augmentation an uninterrupted run would have used.
    SeedSequence mixes the pair so nearby seeds/epochs give unrelated streams.
    """
    state = np.random.SeedSequence([int(seed) % 2**64, int(epoch)]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(((int(state[0]) << 32) | int(state[1])) & (2**63 - 1))
    return gen


def augmentation(dataset: Dataset, augment: bool | None, train: bool) -> tuple[int, bool]:
    """(crop padding, flip) of a split's batches: the dataset's own when ``augment`` is None
    (it has crop_padding or flip), none when ``augment`` is false or in evaluation."""
    if augment is None:
        augment = dataset.crop_padding > 0 or dataset.flip
    if not (augment and train):
        return 0, False
    return int(dataset.crop_padding), bool(dataset.flip)


def check_worker(batch_size: int, rank: int, world_size: int) -> None:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= int(rank) < int(world_size):
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
    if int(world_size) > int(batch_size):
        raise ValueError(f"batch_size {batch_size} is smaller than world_size {world_size}")


def worker_share(rank: int, world_size: int) -> slice:
    """A data-parallel worker's samples of each training batch. Every worker draws the same
    epoch order and takes every ``world_size``-th sample of each batch from ``rank`` on, so
    the workers' shares of a step are disjoint, differ in size by at most one, and together
    are the one-worker batch: N workers train the one-worker run's steps. Evaluation is not
    split (every worker evaluates the whole split)."""
    return slice(int(rank), None, int(world_size))


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = False, world_size: int = 1) -> int:
    """Batches of an epoch of ``n`` samples; a last batch too small to give each of
    ``world_size`` workers a sample is dropped."""
    if drop_last or (world_size > 1 and 0 < n % batch_size < world_size):
        return n // batch_size
    return -(-n // batch_size)


class Batches:
    """Iterates one split of a (device-resident) Dataset in mini-batches.

    ``train=True``: each epoch shuffles with a permutation seeded from
    (seed, epoch) and, if ``augment`` (default: the dataset has crop_padding or
    flip), augments with parameters from the same seeded stream.
    ``train=False``: samples in stored order, never augmented (``augment`` is
    ignored). Yields ``(x, y)`` with ``x`` normalised float32 and both on the
    dataset's device. The tensors are captured at construction: build a new
    Batches after ``dataset.to(device)``.

    ``rank``/``world_size``: one worker of a data-parallel trial (:func:`worker_share`).
    """

    def __init__(
        self,
        dataset: Dataset,
        split: str = "train",
        batch_size: int = 128,
        *,
        train: bool = True,
        seed: int = 0,
        augment: bool | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        check_worker(batch_size, rank, world_size)
        self.rank, self.world_size = int(rank), int(world_size)
        data = dataset.split(split)
        self.x = data.x
        self.y = data.y
        self.num_samples = len(data)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.crop_padding, self.flip = augmentation(dataset, augment, self.train)
        self._mult, self._bias = _coefficients(dataset, self.x.device)

    def __len__(self) -> int:
        return steps_per_epoch(self.num_samples, self.batch_size, self.drop_last, self.world_size if self.train else 1)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the batches of epoch ``epoch`` (0-based; only matters when training)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        bs, steps = self.batch_size, len(self)
        mult, bias = self._mult, self._bias
        if not self.train:
            for i in range(steps):
                # Contiguous slices are views: no gather needed in evaluation.
                yield _apply_norm(self.x[i * bs : (i + 1) * bs], mult, bias), self.y[i * bs : (i + 1) * bs]
            return
        gen = _epoch_generator(self.seed, epoch)
        device = self.x.device
        # Everything random for the epoch is drawn up front on the CPU and moved
        # once, so steps do no host<->device traffic and results are device independent.
        perm = torch.randperm(self.num_samples, generator=gen).to(device, non_blocking=True)
        shifts, flips = _draw_params(self.num_samples, self.crop_padding, self.flip, gen, device)
        augment = shifts is not None or flips is not None
        share = worker_share(self.rank, self.world_size)
        for i in range(steps):
            sl = slice(i * bs, (i + 1) * bs)
            idx = perm[sl][share]
            xb = self.x[idx]
            if augment:
                xb = _apply_augment(
                    xb,
                    self.crop_padding,
                    None if shifts is None else shifts[sl][share],
                    None if flips is None else flips[sl][share],
                )
            yield _apply_norm(xb, mult, bias), self.y[idx]
