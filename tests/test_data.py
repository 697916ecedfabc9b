"""Tests for safs.data: loaders (on tiny files in the official formats), splits, batching, augmentation."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from safs.data import (
    Batches,
    DataError,
    Dataset,
    Split,
    augment_batch,
    dataset_info,
    list_datasets,
    load_dataset,
    normalise,
)
from safs.data.base import assignment_from_parts, split_indices, take_parts
from safs.data.batching import _apply_augment, _draw_params

# --------------------------------------------------------------------------- helpers


def _write(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def idx_bytes(arr: np.ndarray) -> bytes:
    """Standard idx encoding: magic 0x0000 08 <ndim>, big-endian int32 dims, uint8 data."""
    magic = 0x0800 | arr.ndim  # 2051 for 3-d images, 2049 for 1-d labels
    return struct.pack(">i", magic) + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.astype(np.uint8).tobytes()


def write_mnist(root: Path, suffix: str = "", n_train: int = 30, n_test: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    xtr = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    ytr = rng.integers(0, 10, n_train, dtype=np.uint8)
    xte = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    yte = rng.integers(0, 10, n_test, dtype=np.uint8)
    for name, arr in [
        ("train-images-idx3-ubyte", xtr),
        ("train-labels-idx1-ubyte", ytr),
        ("t10k-images-idx3-ubyte", xte),
        ("t10k-labels-idx1-ubyte", yte),
    ]:
        _write(root / (name + suffix), idx_bytes(arr))
    return xtr, ytr, xte, yte


def write_cifar(root: Path, n: int = 4, n_test: int = 6, protocol: int = pickle.DEFAULT_PROTOCOL):
    rng = np.random.default_rng(1)
    xs, ys = [], []
    for i in range(1, 7):
        name = f"data_batch_{i}" if i <= 5 else "test_batch"
        m = n if i <= 5 else n_test
        data = rng.integers(0, 256, (m, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, m)]
        d = {
            b"batch_label": f"batch {i}".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}_{k}.png".encode() for k in range(m)],
        }
        _write(root / name, pickle.dumps(d, protocol=protocol))
        xs.append(data)
        ys.append(np.array(labels))
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def write_imagenet16(root: Path, n: int = 3, n_val: int = 5):
    rng = np.random.default_rng(2)
    mean = rng.uniform(0, 255, 768)
    xs, ys = [], []
    for i in range(1, 11):
        data = rng.integers(0, 256, (n, 768), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(1, 1001, n)]
        _write(root / f"train_data_batch_{i}", pickle.dumps({"data": data, "labels": labels, "mean": mean}))
        xs.append(data)
        ys.append(labels)
    vdata = rng.integers(0, 256, (n_val, 768), dtype=np.uint8)
    vlabels = [1000, 1] + [int(v) for v in rng.integers(1, 1001, n_val - 2)]
    _write(root / "val_data", pickle.dumps({"data": vdata, "labels": vlabels}))
    return np.concatenate(xs), np.concatenate(ys), vdata, np.array(vlabels), mean


def toy_dataset(n: int = 50, dtype=torch.float32, c: int = 1, h: int = 4, w: int = 4, **kw) -> Dataset:
    """Dataset whose x encodes the sample index, so batches can be traced back."""
    x = torch.arange(n * c * h * w).reshape(n, c, h, w).to(dtype)
    y = torch.arange(n)
    fields = dict(scale=1.0, mean=None, std=None, crop_padding=0, flip=False)
    fields.update(kw)
    return Dataset("toy", Split(x, y), Split(x[:7], y[:7]), Split(x[:3], y[:3]), 10, (c, h, w), **fields)


# --------------------------------------------------------------------------- registry


def test_registry_is_light_and_lists_names():
    assert list_datasets() == sorted(["cifar10", "digits", "imagefolder", "imagenet", "imagenet16", "mnist", "mnist5k"])
    for name in list_datasets():
        assert dataset_info(name).startswith(f"{name}: ")
    code = (
        "import sys, safs.data as d; d.list_datasets(); d.dataset_info('mnist'); d.DataError;"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_unknown_dataset():
    with pytest.raises(DataError, match=r"data\.name: unknown dataset 'foo'; accepted: cifar10, digits"):
        load_dataset("foo")
    with pytest.raises(DataError, match="unknown dataset"):
        dataset_info("foo")


def test_bad_fractions():
    with pytest.raises(DataError, match="data.val_fraction"):
        load_dataset("digits", val_fraction=1.5)
    with pytest.raises(DataError, match="data.test_fraction"):
        load_dataset("digits", test_fraction=-0.1)


# --------------------------------------------------------------------------- splits


def test_split_indices_partition_and_determinism():
    parts = split_indices(100, [0.1, 0.2], seed=3)
    assert [len(p) for p in parts] == [70, 10, 20]
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    again = split_indices(100, [0.1, 0.2], seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = split_indices(100, [0.1, 0.2], seed=4)
    assert not np.array_equal(parts[1], other[1])
    assert len(split_indices(10, [0.0], seed=-5)[1]) == 0  # negative seeds are fine, empty parts too


def test_take_parts_matches_concatenate():
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, 256, (k, 3, 2, 2), dtype=np.uint8) for k in (5, 7, 4)]
    full = np.concatenate(chunks)
    parts = split_indices(len(full), [0.25], seed=1)
    out = take_parts(list(chunks), assignment_from_parts(len(full), parts), 2)
    for got, idx in zip(out, parts):
        assert np.array_equal(got, full[idx])


# --------------------------------------------------------------------------- embedded datasets


@pytest.mark.parametrize(
    "name,total,shape,dtype,sizes",
    [
        ("digits", 1797, (1, 8, 8), torch.float32, None),
        ("mnist5k", 5000, (1, 28, 28), torch.uint8, (3500, 500, 1000)),
    ],
)
def test_embedded_datasets(name, total, shape, dtype, sizes):
    ds = load_dataset(name, seed=0)
    assert ds.input_shape == shape and ds.num_classes == 10
    assert ds.train.x.dtype == dtype and ds.train.y.dtype == torch.int64
    assert ds.train.x.shape[1:] == shape
    n = [len(ds.train), len(ds.val), len(ds.test)]
    assert sum(n) == total
    if sizes:
        assert tuple(n) == sizes
    assert ds.crop_padding == 0 and not ds.flip and ds.mean is None and ds.std is None
    # Split is exactly split_indices' partition of the source order, so it is disjoint and complete.
    same = load_dataset(name, seed=0)
    other = load_dataset(name, seed=1)
    assert torch.equal(same.val.x, ds.val.x) and torch.equal(same.test.y, ds.test.y)
    assert not torch.equal(other.val.x, ds.val.x)
    xmax = float((ds.train.x.float() * ds.scale).max())
    assert 0.99 <= xmax <= 1.0  # scale maps raw values to [0, 1]


def test_digits_split_is_disjoint_and_complete():
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images.astype(np.float32))[:, None]
    ds = load_dataset("digits", seed=7, val_fraction=0.2, test_fraction=0.1)
    tr, va, te = split_indices(len(raw), [0.2, 0.1], seed=7)
    assert torch.equal(ds.train.x, raw[tr]) and torch.equal(ds.val.x, raw[va]) and torch.equal(ds.test.x, raw[te])
    assert len(set(tr) | set(va) | set(te)) == len(raw)


# --------------------------------------------------------------------------- mnist


@pytest.mark.parametrize("suffix,sub", [("", ""), (".gz", ""), ("", "MNIST/raw"), (".gz", "MNIST/raw")])
def test_mnist_idx_roundtrip(tmp_path, suffix, sub):
    xtr, ytr, xte, yte = write_mnist(tmp_path / sub, suffix)
    ds = load_dataset("mnist", tmp_path, seed=5)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and ds.scale == pytest.approx(1 / 255)
    assert ds.train.x.dtype == torch.uint8 and ds.test.y.dtype == torch.int64
    assert (len(ds.train), len(ds.val), len(ds.test)) == (25, 5, 10)  # default val_fraction 1/6
    tr, va = split_indices(30, [1 / 6], seed=5)
    assert np.array_equal(ds.train.x.numpy()[:, 0], xtr[tr]) and np.array_equal(ds.train.y.numpy(), ytr[tr])
    assert np.array_equal(ds.val.x.numpy()[:, 0], xtr[va]) and np.array_equal(ds.val.y.numpy(), ytr[va])
    assert np.array_equal(ds.test.x.numpy()[:, 0], xte) and np.array_equal(ds.test.y.numpy(), yte)


def test_mnist_bad_magic_and_truncation(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[3] = 0x03  # 2051 instead of 2049
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="magic number 2051, expected 2049"):
        load_dataset("mnist", tmp_path)
    write_mnist(tmp_path)
    img = tmp_path / "train-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-1])
    with pytest.raises(DataError, match="idx header"):
        load_dataset("mnist", tmp_path)
    (tmp_path / "train-images-idx3-ubyte").unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset("mnist", tmp_path)


def test_mnist_missing_files(tmp_path):
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    for data_dir in (None, tmp_path / "nope", tmp_path):
        with pytest.raises(DataError) as err:
            load_dataset("mnist", data_dir)
        msg = str(err.value)
        assert msg.startswith("data.data_dir") and "\n" not in msg
        assert all(n in msg for n in names)
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte "):
        load_dataset("mnist", tmp_path)
    write_mnist(tmp_path)
    with pytest.raises(DataError, match="data.test_fraction"):
        load_dataset("mnist", tmp_path, test_fraction=0.1)


# --------------------------------------------------------------------------- cifar10


@pytest.mark.parametrize("sub,protocol", [("", pickle.DEFAULT_PROTOCOL), ("cifar-10-batches-py", 2)])
def test_cifar10_layout_and_labels(tmp_path, sub, protocol):
    xtr, ytr, xte, yte = write_cifar(tmp_path / sub, protocol=protocol)
    ds = load_dataset("cifar10", str(tmp_path), seed=2, val_fraction=0.25)
    assert ds.input_shape == (3, 32, 32) and ds.crop_padding == 4 and ds.flip
    assert ds.train.x.dtype == torch.uint8 and ds.train.x.shape == (15, 3, 32, 32)
    assert (len(ds.val), len(ds.test)) == (5, 6)
    tr, va = split_indices(20, [0.25], seed=2)
    assert np.array_equal(ds.train.y.numpy(), ytr[tr]) and np.array_equal(ds.val.y.numpy(), ytr[va])
    assert np.array_equal(ds.test.y.numpy(), yte)
    # Channel-planar: row value at c*1024 + h*32 + w is pixel (c, h, w).
    k, c, h, w = 3, 2, 5, 17
    assert int(ds.test.x[k, c, h, w]) == int(xte[k, c * 1024 + h * 32 + w])
    assert int(ds.train.x[0, 1, 31, 0]) == int(xtr[tr[0], 1024 + 31 * 32])
    assert np.array_equal(ds.val.x.numpy().reshape(5, -1), xtr[va])
    assert ds.mean.shape == (1, 3, 1, 1) and ds.std.shape == (1, 3, 1, 1)


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless if it ever ran, but any non-numpy global must be refused


def test_cifar10_refuses_foreign_globals(tmp_path):
    write_cifar(tmp_path)
    d = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 4, b"x": _Evil()}
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(d))
    with pytest.raises(DataError, match="not allowed"):
        load_dataset("cifar10", tmp_path)


def test_cifar10_missing(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_5").unlink()
    with pytest.raises(DataError, match=r"missing data_batch_5 .*cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path)


# --------------------------------------------------------------------------- imagenet16


@pytest.mark.parametrize("sub", ["", "IMGNET-batches"])
def test_imagenet16(tmp_path, sub):
    xtr, ytr, xva, yva, mean = write_imagenet16(tmp_path / sub)
    ds = load_dataset("imagenet16", tmp_path, seed=1, val_fraction=0.2)
    assert ds.num_classes == 1000 and ds.input_shape == (3, 16, 16)
    assert ds.std is None and ds.mean.shape == (1, 3, 16, 16) and ds.crop_padding == 2 and ds.flip
    assert ds.train.x.dtype == torch.uint8 and (len(ds.train), len(ds.val), len(ds.test)) == (24, 6, 5)
    tr, va = split_indices(30, [0.2], seed=1)
    assert np.array_equal(ds.train.x.numpy().reshape(24, -1), xtr[tr])
    assert np.array_equal(ds.train.y.numpy(), ytr[tr] - 1) and np.array_equal(ds.val.y.numpy(), ytr[va] - 1)
    assert np.array_equal(ds.test.y.numpy(), yva - 1) and ds.test.y[0] == 999 and ds.test.y[1] == 0
    out = normalise(ds.test.x, ds)
    k, c, h, w = 2, 1, 7, 3
    flat = c * 256 + h * 16 + w
    expected = xva[k, flat] / 255.0 - mean[flat] / 255.0
    assert float(out[k, c, h, w]) == pytest.approx(expected, abs=1e-6)
    ref = torch.from_numpy(xva.reshape(5, 3, 16, 16) / 255.0 - mean.reshape(1, 3, 16, 16) / 255.0)
    assert torch.allclose(out.double(), ref, atol=1e-6)


def test_imagenet16_missing_lists_all_files(tmp_path):
    write_imagenet16(tmp_path)
    (tmp_path / "val_data").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("imagenet16", tmp_path)
    msg = str(err.value)
    assert "missing val_data" in msg and str(tmp_path) in msg
    assert all(f"train_data_batch_{i}" in msg for i in range(1, 11))


# --------------------------------------------------------------------------- batching


def test_batches_train_cover_and_determinism():
    ds = toy_dataset(50)
    b = Batches(ds, "train", 8, seed=3)
    assert len(b) == 7
    ys = [y for _, y in b.epoch(0)]
    assert [len(y) for y in ys] == [8] * 6 + [2]
    order = torch.cat(ys)
    assert sorted(order.tolist()) == list(range(50))
    assert torch.equal(order, torch.cat([y for _, y in Batches(ds, "train", 8, seed=3).epoch(0)]))
    assert not torch.equal(order, torch.cat([y for _, y in b.epoch(1)]))
    assert not torch.equal(order, torch.cat([y for _, y in Batches(ds, "train", 8, seed=4).epoch(0)]))
    for x, y in b.epoch(2):  # x rows still belong to their labels
        assert torch.equal(x[:, 0, 0, 0], (y * 16).float())
    assert len(Batches(ds, "train", 8, drop_last=True)) == 6
    assert sum(len(y) for _, y in Batches(ds, "train", 8, drop_last=True).epoch(0)) == 48


def test_batches_eval_in_order_no_augmentation():
    ds = toy_dataset(50, dtype=torch.uint8, crop_padding=2, flip=True)
    b = Batches(ds, "train", 16, train=False, augment=True)
    got = list(b.epoch(0))
    assert torch.equal(torch.cat([y for _, y in got]), torch.arange(50))
    assert torch.equal(torch.cat([x for x, _ in got]), ds.train.x.float())
    assert [len(y) for _, y in Batches(ds, "val", 4, train=False).epoch(0)] == [4, 3]


def test_batches_resume_reproduces_augmentation():
    ds = toy_dataset(40, dtype=torch.uint8, c=3, h=6, w=6, crop_padding=2, flip=True, scale=1 / 255)
    a = [(x.clone(), y) for x, y in Batches(ds, "train", 16, seed=9).epoch(4)]
    b = list(Batches(ds, "train", 16, seed=9).epoch(4))
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    plain = torch.cat([x for x, _ in Batches(ds, "train", 16, seed=9, augment=False).epoch(4)])
    assert not torch.equal(torch.cat([x for x, _ in a]), plain)


def test_float_identity_normalise_no_copy():
    ds = toy_dataset(10)
    assert normalise(ds.train.x, ds) is ds.train.x
    x, _ = next(Batches(ds, "train", 10, train=False).epoch(0))
    assert x.data_ptr() == ds.train.x.data_ptr()


def test_normalise_uint8_mean_std():
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
    ds = toy_dataset(4, dtype=torch.uint8, c=3, scale=1 / 255, mean=mean, std=std)
    x = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    ref = (x.double() / 255 - mean.double()) / std.double()
    out = normalise(x, ds)
    assert out.dtype == torch.float32 and torch.allclose(out.double(), ref, atol=1e-5)
    digits = toy_dataset(4, scale=1 / 16)
    assert torch.equal(normalise(digits.train.x, digits), digits.train.x / 16)
    assert torch.equal(digits.train.x, toy_dataset(4).train.x)  # input untouched


def test_dataset_to_returns_new():
    ds = toy_dataset(5, mean=torch.zeros(1, 1, 1, 1), std=torch.ones(1, 1, 1, 1))
    moved = ds.to("cpu")
    assert moved is not ds and moved.train.x.device.type == "cpu" and moved.name == "toy"


# --------------------------------------------------------------------------- augmentation


def _reference_augment(x, p, shifts, flips):
    """Per-sample torchvision-style reference: zero pad, crop, then flip."""
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    h, w = x.shape[-2:]
    out = []
    for i in range(len(x)):
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        crop = padded[i, :, dy : dy + h, dx : dx + w]
        out.append(crop.flip(-1) if flips is not None and flips[i] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("flip", [False, True])
def test_augment_matches_reference_crop(flip):
    x = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)  # no zeros: padding is visible
    p = 3
    out = augment_batch(x, p, flip, torch.Generator().manual_seed(11))
    shifts, flips = _draw_params(64, p, flip, torch.Generator().manual_seed(11), x.device)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, _reference_augment(x, p, shifts, flips))
    # Same generator state -> same result; zeros only where padding was read.
    assert torch.equal(out, augment_batch(x, p, flip, torch.Generator().manual_seed(11)))
    assert int((out == 0).sum()) > 0


def test_augment_identity_and_flip():
    x = torch.randn(6, 2, 5, 7)
    assert augment_batch(x, 0, False, torch.Generator().manual_seed(0)) is x
    always = torch.ones(6, dtype=torch.bool)
    once = _apply_augment(x, 0, None, always)
    assert torch.equal(once, x.flip(-1))
    assert torch.equal(_apply_augment(once, 0, None, always), x)
    centred = torch.full((6, 2), 2)  # offset p = no shift: general path is the identity too
    assert torch.equal(_apply_augment(x, 2, centred, None), x)
    assert torch.equal(_apply_augment(x, 2, centred, always), x.flip(-1))
    flips = augment_batch(torch.zeros(4000, 1, 1, 2) + torch.tensor([0.0, 1.0]), 0, True)
    assert 0.45 < float(flips[:, 0, 0, 0].mean()) < 0.55  # about half flipped
