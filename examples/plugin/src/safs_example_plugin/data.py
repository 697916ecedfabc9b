"""The dataset: a loader with the signature of safs's own, returning ``safs.data.Dataset``.
Its ``num_classes`` and ``input_shape`` attributes tell safs the shape of the data without
loading it (checking a pipeline imports this module, not the data)."""

from __future__ import annotations

import os

from safs.data import Dataset
from safs.data.base import make_split, split_fractions, split_indices


def load_blobs(data_dir: str | os.PathLike | None = None, *, seed: int = 0, val_fraction: float | None = None,
               test_fraction: float | None = None) -> Dataset:
    """Gaussian blobs, 4 classes, 1,200 samples as 1x8x8 inputs; generated, no files needed"""
    import numpy as np
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=1200, n_features=64, centers=4, cluster_std=12.0, random_state=0)
    x = x.astype(np.float32).reshape(-1, 1, 8, 8)
    val_fraction, test_fraction = split_fractions("blobs", val_fraction, test_fraction, val=0.15, test=0.15)
    train, val, test = split_indices(len(y), [val_fraction, test_fraction], seed)
    return Dataset(name="blobs", train=make_split(x[train], y[train]), val=make_split(x[val], y[val]),
                   test=make_split(x[test], y[test]), num_classes=4, input_shape=(1, 8, 8), scale=0.1,
                   mean=None, std=None, crop_padding=0, flip=False)


load_blobs.num_classes = 4
load_blobs.input_shape = (1, 8, 8)
