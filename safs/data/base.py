"""Core data containers and helpers shared by every dataset loader.

Deliberately torch-free at import time: ``DataError`` and the registry in
``safs.data`` must be importable by the CLI without paying for ``import torch``.
Torch and numpy are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch


class DataError(ValueError):
    """A dataset could not be loaded; the message is one line meant for the user."""


@dataclass
class Split:
    """One split of a dataset, held entirely in memory (and later on the device).

    ``x`` is (N, C, H, W), either uint8 raw pixels (1 byte/value keeps even
    ImageNet16 at ~1 GB) or float32; ``y`` is (N,) int64 class indices.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: Any) -> Split:
        return Split(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True))

    @property
    def device(self) -> torch.device:
        return self.x.device


@dataclass
class Dataset:
    """A dataset's splits plus how to turn raw ``x`` into model input.

    The splits are in memory (:class:`Split`), or, for a streamed image tree, file lists
    (``safs.data.streaming.FileSplit``) decoded batch by batch; ``safs.data.batches`` iterates
    either.

    Normalisation is ``(x.float() * scale - mean) / std``; ``mean``/``std`` are
    optional and broadcast against (B, C, H, W) (per-channel (1, C, 1, 1) or a
    per-pixel mean image (1, C, H, W)). ``crop_padding``/``flip`` are the default
    training augmentation (see ``safs.data.batching``).
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]
    scale: float
    mean: torch.Tensor | None
    std: torch.Tensor | None
    crop_padding: int
    flip: bool
    classes: tuple[str, ...] | None = None  # class names by label, where the data names them

    def split(self, name: str) -> Split:
        """Return the split called ``name`` ("train", "val" or "test")."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; accepted: train, val, test")
        return getattr(self, name)

    def to(self, device: Any) -> Dataset:
        """Return a new Dataset with every tensor (splits, mean, std) on ``device``."""
        return dataclasses.replace(
            self,
            train=self.train.to(device),
            val=self.val.to(device),
            test=self.test.to(device),
            mean=None if self.mean is None else self.mean.to(device),
            std=None if self.std is None else self.std.to(device),
        )

    @property
    def device(self) -> torch.device:
        return self.train.device

    @property
    def streamed(self) -> bool:
        """Whether the splits are file lists read batch by batch (not tensors in memory)."""
        return not isinstance(self.train, Split)


# --------------------------------------------------------------------------- splits


def check_fraction(field: str, value: float) -> float:
    """Validate a split fraction from the config (``data.val_fraction`` etc.)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise DataError(f"data.{field}: expected a number in [0, 1), got {value!r}") from None
    if not 0.0 <= value < 1.0:
        raise DataError(f"data.{field}: expected a number in [0, 1), got {value}")
    return value


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Seeded random partition of ``range(n)``; the one split rule for all datasets.

    Returns ``[rest, part_1, ..., part_k]`` where part_i holds
    ``round(n * fractions[i])`` indices and ``rest`` the remainder. Each part is
    sorted so that gathering from the source arrays stays cache friendly (the
    order inside a split is irrelevant: training batches are shuffled anyway).
    The same (n, fractions, seed) always gives the same partition.
    """
    import numpy as np

    sizes = [int(round(n * f)) for f in fractions]
    if sum(sizes) > n:
        raise DataError(f"data: split fractions {list(fractions)} leave no samples out of {n}")
    # numpy's SeedSequence rejects negative entropy; fold any int into 64 bits.
    perm = np.random.default_rng(int(seed) % 2**64).permutation(n)
    parts: list[np.ndarray] = []
    start = 0
    for size in sizes:
        parts.append(np.sort(perm[start : start + size]))
        start += size
    return [np.sort(perm[start:])] + parts


def take_parts(chunks: list[np.ndarray], assignment: np.ndarray, num_parts: int) -> list[np.ndarray]:
    """Scatter rows of consecutive ``chunks`` into ``num_parts`` arrays by ``assignment``.

    Equivalent to ``[np.concatenate(chunks)[assignment == p] for p in parts]``
    but never materialises the concatenation, and empties ``chunks`` as it goes,
    so peak memory stays near one copy of the data (matters for ImageNet16's
    ~1 GB of pixels).
    """
    import numpy as np

    counts = np.bincount(assignment, minlength=num_parts)
    first = chunks[0]
    out = [np.empty((int(c),) + first.shape[1:], dtype=first.dtype) for c in counts]
    filled = [0] * num_parts
    offset = 0
    while chunks:
        chunk = chunks.pop(0)
        which = assignment[offset : offset + len(chunk)]
        for p in range(num_parts):
            rows = chunk[which == p]
            out[p][filled[p] : filled[p] + len(rows)] = rows
            filled[p] += len(rows)
        offset += len(chunk)
        del chunk
    return out


def assignment_from_parts(n: int, parts: Sequence[np.ndarray]) -> np.ndarray:
    """Inverse of ``split_indices``: an (n,) array giving each sample's part number."""
    import numpy as np

    assignment = np.empty(n, dtype=np.int8)
    for p, idx in enumerate(parts):
        assignment[idx] = p
    return assignment


def make_split(x: np.ndarray, y: np.ndarray) -> Split:
    """Wrap numpy arrays as a Split without copying (labels become int64)."""
    import numpy as np
    import torch

    x = np.ascontiguousarray(x)
    if not x.flags.writeable:  # torch.from_numpy warns on read-only memory
        x = x.copy()
    return Split(torch.from_numpy(x), torch.from_numpy(np.asarray(y, dtype=np.int64).copy()))


# --------------------------------------------------------------------------- files


def require_data_dir(dataset: str, data_dir: str | os.PathLike | None, expected: Sequence[str]) -> Path:
    """Resolve ``data_dir`` or raise a DataError naming the expected files."""
    listing = ", ".join(expected)
    if data_dir is None:
        raise DataError(
            f"data.data_dir: dataset '{dataset}' needs files on disk but no data_dir was given; "
            f"expected: {listing}"
        )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(
            f"data.data_dir: '{path}' is not a directory (dataset '{dataset}'); expected files: {listing}"
        )
    return path


def find_files(
    dataset: str,
    data_dir: Path,
    names: Sequence[str],
    subdirs: Sequence[str] = ("",),
    suffixes: Sequence[str] = ("",),
    hint: str = "",
) -> dict[str, Path]:
    """Locate each of ``names`` in ``data_dir`` or one of its ``subdirs``.

    Each file is looked up independently (first match wins), so layouts that
    put train and val files in different sub-folders work. Raises one DataError
    listing every missing file and every folder searched.
    """
    found: dict[str, Path] = {}
    missing: list[str] = []
    folders = [data_dir / s if s else data_dir for s in subdirs]
    for name in names:
        for folder in folders:
            hit = next((folder / (name + sfx) for sfx in suffixes if (folder / (name + sfx)).is_file()), None)
            if hit is not None:
                found[name] = hit
                break
        else:
            missing.append(name)
    if missing:
        searched = ", ".join(f"'{f}'" for f in folders)
        raise DataError(
            f"data.data_dir: dataset '{dataset}' is missing {', '.join(missing)} "
            f"(expected: {', '.join(names)}{hint}; searched {searched})"
        )
    return found


def read_bytes(path: Path) -> bytes:
    """Read a file, transparently gunzipping ``*.gz``; I/O problems become DataError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # includes gzip.BadGzipFile and truncated archives
        raise DataError(f"data.data_dir: cannot read '{path}': {exc}") from None


# --------------------------------------------------------------------------- pickles

# The only globals a dataset pickle legitimately references: numpy's array
# reconstruction (old and numpy>=2 module paths; ``_frombuffer`` is what
# protocol-5 pickles of arrays use) and ``_codecs.encode``, which Python 3 emits
# for bytes in protocol<3 pickles. Anything else (os.system, eval, ...) is refused.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a dataset file")
        return super().find_class(module, name)


def load_pickle(path: Path, encoding: str = "bytes") -> Any:
    """Unpickle a dataset file, allowing only numpy array reconstruction globals."""
    data = read_bytes(path)
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    except Exception as exc:  # any unpickling failure is a bad data file for the user
        raise DataError(f"data.data_dir: cannot load '{path}': {type(exc).__name__}: {exc}") from None


def dict_get(d: Any, key: str, path: Path) -> Any:
    """``d[key]`` accepting both str and bytes keys (py2 vs py3 pickles)."""
    if isinstance(d, dict):
        if key in d:
            return d[key]
        if key.encode() in d:
            return d[key.encode()]
    raise DataError(f"data.data_dir: '{path}' is not a valid dataset pickle (no '{key}' entry)")


def split_fractions(dataset: str, val_fraction: float | None, test_fraction: float | None, *,
                    val: float, test: float | None = None) -> tuple[float, float | None]:
    """A loader's ``(val_fraction, test_fraction)``: each checked, or the dataset's default
    (``val``, ``test``). A dataset with an official test set (``test=None``) refuses a
    ``test_fraction`` and gets ``None`` for it."""
    if test is None:
        fixed_test_fraction(dataset, test_fraction)
    val_fraction = check_fraction("val_fraction", val if val_fraction is None else val_fraction)
    if test is None:
        return val_fraction, None
    return val_fraction, check_fraction("test_fraction", test if test_fraction is None else test_fraction)


def fixed_test_fraction(dataset: str, test_fraction: float | None) -> None:
    """Datasets with an official test set take no ``test_fraction``: refuse it loudly."""
    if test_fraction is not None:
        raise DataError(
            f"data.test_fraction: dataset '{dataset}' has a fixed official test set; leave test_fraction unset"
        )
