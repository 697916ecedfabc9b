"""Full MNIST from the standard idx files (parsed here with numpy, no torchvision).

Files are looked for directly in ``data_dir`` or under ``MNIST/raw/`` (the
torchvision layout), each either plain or gzipped. The 60k training images are
split (seeded) into train/val, 50k/10k by default as in the original SAFS;
test is the official t10k set.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import (
    DataError,
    Dataset,
    find_files,
    make_split,
    read_bytes,
    require_data_dir,
    split_fractions,
    split_indices,
)

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# idx magic: 0x00 0x00 <dtype 0x08 = uint8> <ndim>
IMAGES_MAGIC = 2051  # uint8, 3 dims (n, rows, cols)
LABELS_MAGIC = 2049  # uint8, 1 dim (n,)


def read_idx(path: Path, expected_magic: int):
    """Parse an idx file holding uint8 data; returns a (read-only) numpy array."""
    import numpy as np

    raw = read_bytes(path)
    kind = "images" if expected_magic == IMAGES_MAGIC else "labels"
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != expected_magic:
        raise DataError(
            f"data.data_dir: '{path}' is not an MNIST idx {kind} file "
            f"(magic number {magic}, expected {expected_magic})"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"data.data_dir: '{path}' is truncated (incomplete idx header)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(
            f"data.data_dir: '{path}' has {len(raw)} bytes but its idx header {dims} implies {expected}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_pair(images_path: Path, labels_path: Path):
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(
            f"data.data_dir: '{images_path}' has {len(images)} images but '{labels_path}' has {len(labels)} labels"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"data.data_dir: '{labels_path}' contains label {int(labels.max())}; MNIST labels are 0..9")
    return images[:, None], labels  # add the channel axis: (N, 1, rows, cols)


def locate(data_dir: str | os.PathLike | None) -> dict[str, Path]:
    """The four idx files, or a DataError listing what is missing."""
    root = require_data_dir("mnist", data_dir, FILES)
    return find_files("mnist", root, FILES, subdirs=("", "MNIST/raw"), suffixes=("", ".gz"),
                      hint=", each optionally gzipped as .gz")


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
) -> Dataset:
    """MNIST from idx files: uint8 (N, 1, 28, 28), scale 1/255, no mean/std, no augmentation."""
    val_fraction, _ = split_fractions("mnist", val_fraction, test_fraction, val=1.0 / 6.0)
    paths = locate(data_dir)
    x_train, y_train = _read_pair(paths[TRAIN_IMAGES], paths[TRAIN_LABELS])
    x_test, y_test = _read_pair(paths[TEST_IMAGES], paths[TEST_LABELS])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"data.data_dir: MNIST train images are {x_train.shape[2:]} but test images {x_test.shape[2:]}"
        )
    train_idx, val_idx = split_indices(len(y_train), [val_fraction], seed)
    return Dataset(
        name="mnist",
        train=make_split(x_train[train_idx], y_train[train_idx]),
        val=make_split(x_train[val_idx], y_train[val_idx]),
        test=make_split(x_test, y_test),
        num_classes=10,
        input_shape=tuple(int(d) for d in x_train.shape[1:]),  # type: ignore[arg-type]
        scale=1.0 / 255.0,
        mean=None,
        std=None,
        crop_padding=0,
        flip=False,
    )
