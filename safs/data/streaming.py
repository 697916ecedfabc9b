"""Image trees larger than memory: file lists decoded batch by batch by DataLoader workers.

A streamed split (:class:`FileSplit`) is the image tree's file list for that split, with the
labels; nothing is decoded up front. :class:`StreamedBatches` iterates it with the interface
and the order of the in-memory ``Batches``:

* the epoch's order and augmentation parameters are drawn exactly as ``Batches`` draws them,
  from a generator seeded by (seed, epoch) only, so a resumed trial replays the same data order
  and, with one rank, a streamed epoch yields the very batches the in-memory one does;
* DataLoader worker processes read and decode the files of each batch (``decode_file``, the
  in-memory cache's own decoder), persistent across epochs, into pinned memory on CUDA;
* the crop and flip run on the batch on the trial's device, as in memory, and so does the
  normalisation; labels never leave the device.

``rank``/``world_size`` give a data-parallel worker its share of each training batch, as
``Batches`` does (``batching.worker_share``): together the workers' shares of a step are
the one-worker batch.

Whether a dataset streams is ``data.in_memory``: true, false, or ``auto``, which holds it in
memory when its decoded pixels fit the memory budget (:func:`fits_in_memory`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .base import DataError, Dataset
from .batching import augmentation, check_worker, steps_per_epoch, worker_share
from .decode import decode_file, quiet_decoder

__all__ = ["FileSplit", "StreamedBatches", "fits_in_memory", "loader_workers", "memory_budget"]

log = logging.getLogger("safs")

# auto: the decoded dataset is held in memory when it takes at most this share of the memory
# available (and, on CUDA, of the GPU's free memory). The other half is left to the model,
# its activations, the optimizer state and everything else running on the machine.
BUDGET_SHARE = 0.5


# ------------------------------------------------------------------ the memory rule


def memory_budget(device: Any = None, budget_gb: float | None = None) -> tuple[int, str]:
    """(bytes, how it was set): ``budget_gb`` (``data.memory_budget_gb``) when given, else
    BUDGET_SHARE of the available RAM, and on a CUDA device at most that share of its free
    memory (a dataset held in memory on a GPU trial is held there as well)."""
    if budget_gb is not None:
        return int(float(budget_gb) * 1e9), f"data.memory_budget_gb={budget_gb:g}"
    budget, how = int(_available_ram() * BUDGET_SHARE), f"{BUDGET_SHARE:.0%} of the available memory"
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        if free * BUDGET_SHARE < budget:
            budget, how = int(free * BUDGET_SHARE), f"{BUDGET_SHARE:.0%} of the GPU's free memory"
    return budget, how


def _available_ram() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil comes with Ray; this is for a bare install
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def fits_in_memory(dataset: str, nbytes: int, device: Any = None, budget_gb: float | None = None) -> bool:
    """``data.in_memory: auto``: whether ``nbytes`` of decoded pixels fit the memory budget.
    Says which way it went and why, in one log line (once per trial process: the trial
    caches its dataset)."""
    budget, how = memory_budget(device, budget_gb)
    fits = nbytes <= budget
    log.info("data: %s decodes to %.2f GB, budget %.2f GB (%s): %s", dataset, nbytes / 1e9, budget / 1e9, how,
             "held in memory" if fits else "streamed from its files")
    return fits


# ------------------------------------------------------------------ file lists


@dataclass(frozen=True)
class FileSplit:
    """One split of an image tree as its files: ``paths`` relative to ``root``, labels ``y``
    (on the trial's device after ``to``), decoded by ``transform`` to uint8 ``shape``."""

    root: Path
    paths: tuple[str, ...]
    y: torch.Tensor
    transform: dict
    shape: tuple[int, int, int]
    workers: int | None = None  # DataLoader processes (``data.loader_workers``); None: loader_workers()
    device: torch.device = torch.device("cpu")

    @classmethod
    def of(cls, root: Path, files: Sequence[tuple], rows: Any, transform: dict, shape: tuple,
           workers: int | None = None) -> FileSplit:
        """The rows ``rows`` (None: all) of a part's ``list_files`` entries (path, size, mtime, label)."""
        picked = files if rows is None else [files[int(i)] for i in rows]
        return cls(Path(root), tuple(f[0] for f in picked),
                   torch.tensor([f[3] for f in picked], dtype=torch.int64), dict(transform), tuple(shape), workers)

    def __len__(self) -> int:
        return len(self.paths)

    def to(self, device: Any) -> FileSplit:
        device = torch.device(device)
        return dataclasses.replace(self, y=self.y.to(device), device=device)


class _Files(torch.utils.data.Dataset):
    """What a DataLoader worker sees: file index -> decoded uint8 image."""

    def __init__(self, split: FileSplit) -> None:
        self.root, self.paths, self.transform = split.root, split.paths, split.transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return decode_file(self.root / self.paths[i], self.transform)


def _worker_init(_: int) -> None:
    quiet_decoder()


class _Order(torch.utils.data.Sampler):
    """The batches of file indices of the pass being read. The DataLoader iterates its batch
    sampler in the trial's process at the start of each pass, so persistent workers read
    whatever order was set before it."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def loader_workers(workers: int | None = None) -> int:
    """DataLoader worker processes: ``data.loader_workers``, else the trial's CPUs (Ray sets
    OMP_NUM_THREADS to them; else the machine's), at most 8."""
    if workers is not None:
        return int(workers)
    n = os.environ.get("OMP_NUM_THREADS", "")
    cpus = int(n) if n.isdigit() and int(n) > 0 else (os.cpu_count() or 1)
    return max(1, min(8, cpus))


# ------------------------------------------------------------------ batching


class StreamedBatches:
    """``Batches`` for a streamed split: ``epoch(e)`` yields normalised float32 ``x`` and
    ``y`` on the dataset's device, in the order and with the augmentation ``Batches`` would
    use; ``len()`` is the number of batches of this rank. Worker processes start at the first
    epoch and persist until this object is dropped."""

    def __init__(self, dataset: Dataset, split: str = "train", batch_size: int = 128, *, train: bool = True,
                 seed: int = 0, augment: bool | None = None, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1, workers: int | None = None) -> None:
        from .batching import _coefficients

        check_worker(batch_size, rank, world_size)
        data = dataset.split(split)
        if not isinstance(data, FileSplit):
            raise DataError(f"split '{split}' of dataset '{dataset.name}' is in memory: use safs.data.Batches")
        self.files = data
        self.y = data.y
        self.device = data.device
        self.num_samples = len(data)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.rank, self.world_size = (int(rank), int(world_size)) if self.train else (0, 1)  # evaluation: unsplit
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.crop_padding, self.flip = augmentation(dataset, augment, self.train)
        self._mult, self._bias = _coefficients(dataset, self.device)
        self.workers = loader_workers(data.workers if workers is None else workers)
        self._order = _Order()
        self._loader: torch.utils.data.DataLoader | None = None

    def __len__(self) -> int:
        return steps_per_epoch(self.num_samples, self.batch_size, self.drop_last, self.world_size)

    def _data_loader(self) -> torch.utils.data.DataLoader:
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                _Files(self.files), batch_sampler=self._order, num_workers=self.workers,
                pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0,
                worker_init_fn=_worker_init if self.workers > 0 else None)
        return self._loader

    def plan(self, epoch: int) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """This worker's samples of epoch ``epoch``, on the CPU: the file indices of each of its
        batches, and the crop offsets and flips of the samples in that order (None: not
        augmented). ``Batches``'s draws, then this worker's share of each batch."""
        from .batching import _draw_params, _epoch_generator

        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        n, bs, share = self.num_samples, self.batch_size, worker_share(self.rank, self.world_size)
        positions = [torch.arange(i * bs, min((i + 1) * bs, n))[share] for i in range(len(self))]
        if not self.train:
            return positions, None, None
        gen = _epoch_generator(self.seed, epoch)
        perm = torch.randperm(n, generator=gen)
        shifts, flips = _draw_params(n, self.crop_padding, self.flip, gen, torch.device("cpu"))
        pick = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long)
        return ([perm[p] for p in positions], None if shifts is None else shifts[pick],
                None if flips is None else flips[pick])

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the batches of epoch ``epoch`` (0-based; only matters when training)."""
        from .batching import _apply_augment, _apply_norm

        order, shifts, flips = self.plan(epoch)
        device = self.device
        if shifts is not None:
            shifts = shifts.to(device, non_blocking=True)
        if flips is not None:
            flips = flips.to(device, non_blocking=True)
        augment = shifts is not None or flips is not None
        self._order.batches = [b.tolist() for b in order]
        start = 0
        for i, xb in enumerate(_one_line_errors(self._data_loader())):
            b = order[i]
            sl = slice(start, start + len(b))
            start = sl.stop
            xb = xb.to(device, non_blocking=True)
            if augment:
                xb = _apply_augment(xb, self.crop_padding, None if shifts is None else shifts[sl],
                                    None if flips is None else flips[sl])
            yield _apply_norm(xb, self._mult, self._bias), self.y[b.to(device, non_blocking=True)]


def _one_line_errors(loader: Iterator) -> Iterator:
    """The loader's batches; a file that does not decode in a worker process is the one-line
    DataError the in-memory path gives (the worker's is re-raised with its traceback inside)."""
    it = iter(loader)
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except DataError as e:
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            last = lines[-1] if lines else ""
            raise DataError(last.split("DataError: ", 1)[-1]) from None
