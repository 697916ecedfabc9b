"""Downsampled ImageNet 16x16, all 1000 classes (Chrabaszcz, Loshchilov & Hutter, 2017).

Files: ``train_data_batch_1`` .. ``train_data_batch_10`` and ``val_data``,
directly in ``data_dir`` or in one of ``IMGNET-batches/``, ``ImageNet16/``,
``Imagenet16_train/`` / ``Imagenet16_val/`` (each file is looked up on its
own). Each is a pickle dict (str or bytes keys) with ``data`` uint8 (N, 768)
channel-planar, ``labels`` in 1..1000 and, in training files, ``mean``: the
768-value mean image in 0..255 units.

Differences from the original SAFS pipeline, on purpose:

* Validation is a seeded hold-out of the training batches (default 2%) and
  ``val_data`` is the test split. The original used ``val_data`` for both
  validation and test, which leaks test data into model selection.
* The training set is not doubled with mirrored copies; random horizontal
  flips (plus a 2-pixel random crop) do the same job without 2x memory.
* Pixels stay uint8 (~1 GB for 1.28M images); normalisation to
  ``x/255 - mean/255`` (per-pixel mean image, no std) happens per batch.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import (
    DataError,
    Dataset,
    assignment_from_parts,
    dict_get,
    find_files,
    load_pickle,
    make_split,
    require_data_dir,
    split_fractions,
    split_indices,
    take_parts,
)

TRAIN_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
VAL_FILE = "val_data"
FILES = TRAIN_FILES + (VAL_FILE,)
SUBDIRS = ("", "IMGNET-batches", "ImageNet16", "Imagenet16_train", "Imagenet16_val")
SIDE = 16
NUM_CLASSES = 1000


def read_batch(path: Path):
    """Return (x uint8 (N, 3, 16, 16), y int64 (N,) in 0..999, the raw dict) from one file."""
    import numpy as np

    # latin1 decodes Python-2 pickles of numpy arrays correctly; py3 pickles are unaffected.
    batch = load_pickle(path, encoding="latin1")
    data = np.asarray(dict_get(batch, "data", path))
    labels = np.asarray(dict_get(batch, "labels", path), dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        raise DataError(
            f"data.data_dir: '{path}' holds data of shape {data.shape} {data.dtype}; expected uint8 (N, 768)"
        )
    if len(labels) != len(data):
        raise DataError(f"data.data_dir: '{path}' has {len(data)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 1 or labels.max() > NUM_CLASSES):
        raise DataError(f"data.data_dir: '{path}' has labels outside 1..{NUM_CLASSES}")
    return data.reshape(-1, 3, SIDE, SIDE), labels - 1, batch


def locate(data_dir: str | os.PathLike | None) -> dict[str, Path]:
    """The eleven pickles, or a DataError listing what is missing."""
    root = require_data_dir("imagenet16", data_dir, FILES)
    return find_files("imagenet16", root, FILES, subdirs=SUBDIRS)


def load_imagenet16(
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
) -> Dataset:
    """ImageNet16 (1000 classes): uint8 (N, 3, 16, 16), mean-image normalisation, crop(2)+flip."""
    import numpy as np
    import torch

    val_fraction, _ = split_fractions("imagenet16", val_fraction, test_fraction, val=0.02)
    paths = locate(data_dir)

    xs, ys = [], []
    mean = None
    for name in TRAIN_FILES:
        x, y, batch = read_batch(paths[name])
        if mean is None:
            mean = np.asarray(dict_get(batch, "mean", paths[name]), dtype=np.float64).reshape(-1)
            if mean.size != 3 * SIDE * SIDE:
                raise DataError(f"data.data_dir: '{paths[name]}' has a mean of {mean.size} values; expected 768")
        del batch
        xs.append(x)
        ys.append(y)
    y_all = np.concatenate(ys)
    del ys
    train_idx, val_idx = split_indices(len(y_all), [val_fraction], seed)
    assignment = assignment_from_parts(len(y_all), [train_idx, val_idx])
    # Scatter chunk by chunk (freeing each) instead of concatenating: peak RAM ~1x the pixels.
    x_train, x_val = take_parts(xs, assignment, 2)
    x_test, y_test, _ = read_batch(paths[VAL_FILE])

    mean_image = torch.from_numpy((mean / 255.0).astype(np.float32)).view(1, 3, SIDE, SIDE)
    return Dataset(
        name="imagenet16",
        train=make_split(x_train, y_all[train_idx]),
        val=make_split(x_val, y_all[val_idx]),
        test=make_split(x_test, y_test),
        num_classes=NUM_CLASSES,
        input_shape=(3, SIDE, SIDE),
        scale=1.0 / 255.0,
        mean=mean_image,
        std=None,
        crop_padding=2,
        flip=True,
    )
