"""CIFAR-10 from the official "python version" pickles.

Files (``data_batch_1..5``, ``test_batch``) are looked for directly in
``data_dir`` or in ``cifar-10-batches-py/``. Each is a pickle dict with bytes
keys: ``b"data"`` uint8 (N, 3072) stored channel-planar (1024 R, 1024 G,
1024 B, each row-major 32x32) and ``b"labels"``. Pickles are loaded with a
restricted unpickler (only numpy array reconstruction is allowed), so a
tampered file cannot run code.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import (
    DataError,
    Dataset,
    dict_get,
    find_files,
    load_pickle,
    make_split,
    require_data_dir,
    split_fractions,
    split_indices,
)

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
FILES = TRAIN_FILES + (TEST_FILE,)

# Standard CIFAR-10 statistics used by the original SAFS transforms.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


def read_batch(path: Path):
    """Return (x uint8 (N, 3, 32, 32), y int64 (N,)) from one CIFAR-10 pickle."""
    import numpy as np

    batch = load_pickle(path, encoding="bytes")
    data = np.asarray(dict_get(batch, "data", path))
    labels = np.asarray(dict_get(batch, "labels", path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"data.data_dir: '{path}' holds data of shape {data.shape} {data.dtype}; expected uint8 (N, 3072)"
        )
    if labels.shape != (len(data),):
        raise DataError(f"data.data_dir: '{path}' has {len(data)} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"data.data_dir: '{path}' has labels outside 0..9")
    # Channel-planar rows reshape directly to (C, H, W): no transpose needed.
    return data.reshape(-1, 3, 32, 32), labels


def locate(data_dir: str | os.PathLike | None) -> dict[str, Path]:
    """The six pickles, or a DataError listing what is missing."""
    root = require_data_dir("cifar10", data_dir, FILES)
    return find_files("cifar10", root, FILES, subdirs=("", "cifar-10-batches-py"))


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
) -> Dataset:
    """CIFAR-10: uint8 (N, 3, 32, 32), per-channel mean/std, crop(4)+flip augmentation."""
    import numpy as np
    import torch

    val_fraction, _ = split_fractions("cifar10", val_fraction, test_fraction, val=0.1)
    paths = locate(data_dir)
    train = [read_batch(paths[name]) for name in TRAIN_FILES]
    x_all = np.concatenate([x for x, _ in train])
    y_all = np.concatenate([y for _, y in train])
    del train
    x_test, y_test = read_batch(paths[TEST_FILE])
    train_idx, val_idx = split_indices(len(y_all), [val_fraction], seed)
    return Dataset(
        name="cifar10",
        train=make_split(x_all[train_idx], y_all[train_idx]),
        val=make_split(x_all[val_idx], y_all[val_idx]),
        test=make_split(x_test, y_test),
        num_classes=10,
        input_shape=(3, 32, 32),
        scale=1.0 / 255.0,
        mean=torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1),
        std=torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1),
        crop_padding=4,
        flip=True,
    )
