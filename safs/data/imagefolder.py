"""Image trees on disk: ``imagefolder`` (any class-per-folder tree) and ``imagenet`` (ILSVRC).

Layouts (class names are the sorted sub-folder names; hidden entries are ignored):

* ``train/<class>/*`` and ``val/<class>/*``: ``val`` becomes the test split and a validation
  split is held out of ``train`` by seed (``val_fraction``, default 0.1), as the other loaders
  with an official test set do.
* ``<class>/*``: one tree, split by seed into train/val/test (defaults 0.1 and 0.2).

``imagenet`` is the same loader for the ILSVRC layout (``train/<wnid>/*.JPEG``,
``val/<wnid>/*.JPEG``; the validation images sorted into class folders, as torchvision's
``ImageNet`` prepares them) with the standard evaluation crop: resize the shorter side to 256,
centre-crop 224 (``image_size`` sets the crop; the resize keeps the 256/224 ratio).
``imagefolder`` resizes every image to ``image_size`` (default 32x32, aspect not kept).

Images are JPEG or PNG (any case of ``.jpg``, ``.jpeg``, ``.png``), decoded with
``torchvision.io.decode_image`` as 3-channel RGB (grey and palette images are converted, alpha
dropped). A file that does not decode is a one-line :class:`DataError` naming it.

Decoding happens once. The decoded pixels are cached as uint8 tensors in
``safs-cache-<hash>.pt``, where ``<hash>`` is the SHA-256 (first 16 hex digits) of the file
list (relative paths, sizes, modification times) and the preprocessing (layout, sizes), in the
data directory; if that is not writable, in ``<data_dir>-safs-cache/`` next to it, else in
``$SAFS_CACHE_DIR`` or ``~/.cache/safs``. Adding, changing or touching an image gives a new
hash, hence a fresh decode; old cache files are never deleted by safs. The cache does not
depend on the split seed: splits are drawn when it is loaded (memory-mapped, so a load costs
about one copy of the pixels and takes seconds).

Memory: held in memory, the whole dataset is uint8, ``N x 3 x H x W`` bytes (on the trial's
device too, when it trains on a GPU): 60,000 images at 32x32 are 184 MB, ImageNet's 1.28M
training images at 224x224 are 193 GB (at 64x64: 16 GB). ``in_memory=False`` (or ``"auto"``
over the memory budget) gives the splits as file lists instead, with the same rows; their
batches are decoded by DataLoader workers (``safs.data.streaming``) and nothing is cached.

Normalisation uses ImageNet's per-channel mean and std; the default training augmentation is
a random crop after zero padding by 1/8 of the side (28 px at 224, as CIFAR-10's 4 of 32) and
a horizontal flip, applied to the batch on the device (``augment: false`` turns it off).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from .base import DataError, Dataset, Split, check_fraction, fixed_test_fraction, split_indices
from .decode import decode_file, quiet_decoder

SUFFIXES = (".jpg", ".jpeg", ".png")
CACHE_VERSION = 1
CACHE_PREFIX = "safs-cache-"
DEFAULT_SIZE = {"imagefolder": (32, 32), "imagenet": (224, 224)}
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_EXPECTED = "train/<class>/*.jpg|png and val/<class>/*.jpg|png, or <class>/*.jpg|png"
_EXPECTED_IMAGENET = "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (ILSVRC layout, val sorted into class folders)"


class Layout(NamedTuple):
    root: Path
    split: bool  # train/ + val/ (True) or one class-per-folder tree (False)
    classes: tuple[str, ...]


def _subdirs(path: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise DataError(f"data.data_dir: cannot list '{path}': {exc.strerror or exc}") from None


def locate(data_dir: str | os.PathLike | None, dataset: str = "imagefolder") -> Layout:
    """The layout and class names of ``data_dir`` (folders only, no image is opened), or a
    one-line DataError: no directory, no class folders, val classes unknown to train."""
    expected = _EXPECTED_IMAGENET if dataset == "imagenet" else _EXPECTED
    if data_dir is None:
        raise DataError(f"data.data_dir: dataset '{dataset}' needs an image directory but no data_dir was "
                        f"given; expected: {expected}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data.data_dir: '{root}' is not a directory (dataset '{dataset}'); expected: {expected}")
    train, val = root / "train", root / "val"
    split = train.is_dir() and val.is_dir() and bool(_subdirs(train))
    if dataset == "imagenet" and not split:
        raise DataError(f"data.data_dir: '{root}' has no train/ and val/ class folders (dataset 'imagenet'); "
                        f"expected: {expected}")
    classes = _subdirs(train if split else root)
    if not classes:
        raise DataError(f"data.data_dir: '{root}' holds no class folders (dataset '{dataset}'); expected: {expected}")
    if split:
        unknown = sorted(set(_subdirs(val)) - set(classes))
        if unknown:
            shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            raise DataError(f"data.data_dir: '{val}' has classes that train/ lacks: {shown}")
    return Layout(root, split, tuple(classes))


def check_image_size(dataset: str, image_size: Any) -> tuple[int, int]:
    """``image_size`` as (H, W): an int or a list of two ints >= 1; None: the dataset's default."""
    if image_size is None:
        return DEFAULT_SIZE[dataset]
    size = [image_size, image_size] if isinstance(image_size, int) and not isinstance(image_size, bool) else image_size
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)):
        raise DataError(f"data.image_size: expected [H, W] (two integers >= 1) or one integer, got {image_size!r}")
    return int(size[0]), int(size[1])


def shape(data_dir: str | os.PathLike | None, dataset: str = "imagefolder",
          image_size: Any = None) -> tuple[int, tuple[int, int, int]]:
    """(num_classes, (3, H, W)) from the folder names, without opening an image."""
    h, w = check_image_size(dataset, image_size)
    return len(locate(data_dir, dataset).classes), (3, h, w)


# --------------------------------------------------------------------------- files


def _list_class(folder: Path, rel: str) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of the images in one class folder, sorted by name."""
    out = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"data.data_dir: cannot list '{folder}': {exc.strerror or exc}") from None
    for e in entries:
        if e.name.startswith(".") or not e.name.lower().endswith(SUFFIXES) or not e.is_file():
            continue
        st = e.stat()
        out.append((f"{rel}/{e.name}", int(st.st_size), int(st.st_mtime_ns)))
    return out


def list_files(layout: Layout) -> dict[str, list[tuple[str, int, int, int]]]:
    """Part name ("train"/"test" or "all") -> [(relative path, size, mtime_ns, label)]."""
    parts = {"train": "train", "test": "val"} if layout.split else {"all": ""}
    out: dict[str, list[tuple[str, int, int, int]]] = {}
    for part, sub in parts.items():
        base = layout.root / sub if sub else layout.root
        files = []
        present = set(_subdirs(base)) if part == "test" else set(layout.classes)
        for label, name in enumerate(layout.classes):
            if name not in present:
                continue
            rel = f"{sub}/{name}" if sub else name
            found = _list_class(base / name, rel)
            if not found and part != "test":
                raise DataError(f"data.data_dir: class folder '{base / name}' holds no JPEG or PNG images")
            files.extend((p, size, mtime, label) for p, size, mtime in found)
        if not files:
            raise DataError(f"data.data_dir: '{base}' holds no JPEG or PNG images in its class folders")
        out[part] = files
    return out


def _transform(dataset: str, size: tuple[int, int]) -> dict[str, Any]:
    if dataset == "imagenet":
        return {"op": "resize_shorter_center_crop", "resize": round(min(size) * 256 / 224), "crop": list(size)}
    return {"op": "resize", "size": list(size)}


def cache_key(layout: Layout, files: dict[str, list], transform: dict[str, Any]) -> str:
    """SHA-256 (16 hex digits) of the file list (paths, sizes, mtimes, labels) and preprocessing."""
    payload = {"v": CACHE_VERSION, "split": layout.split, "classes": list(layout.classes),
               "transform": transform, "files": files}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def cache_dir(root: Path) -> Path:
    """Where the decoded tensors go: the data directory, a sibling ``<name>-safs-cache/``, or
    ``$SAFS_CACHE_DIR`` (default ``~/.cache/safs``), the first that is writable."""
    if os.access(root, os.W_OK | os.X_OK):
        return root
    sibling = root.parent / f"{root.name}-safs-cache"
    if _writable(sibling):
        return sibling
    user = Path(os.environ.get("SAFS_CACHE_DIR") or Path.home() / ".cache" / "safs").expanduser()
    if _writable(user):
        return user
    raise DataError(f"data.data_dir: '{root}' is read-only and no cache directory is writable "
                    f"(tried '{sibling}', '{user}'; set SAFS_CACHE_DIR)")


def _decode_all(root: Path, files: list[tuple[str, int, int, int]], transform: dict[str, Any], shape_: tuple):
    """Decode ``files`` into one uint8 (N, 3, H, W) tensor and int64 labels, on threads."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    x = torch.empty((len(files), *shape_), dtype=torch.uint8)
    y = torch.tensor([f[3] for f in files], dtype=torch.int64)

    def one(i: int) -> None:
        x[i] = decode_file(root / files[i][0], transform)

    quiet_decoder()
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(one, range(len(files))):  # re-raises the first failure
            pass
    return x, y


def _read_cache(path: Path, classes: Sequence[str]) -> dict | None:
    import torch

    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a damaged cache is decoded again, never an error
        return None
    if not isinstance(blob, dict) or blob.get("version") != CACHE_VERSION or list(blob.get("classes", ())) != list(classes):
        return None
    return blob


def load_parts(layout: Layout, dataset: str, size: tuple[int, int], files: dict | None = None) -> dict:
    """{"classes", "parts": {part: {"x", "y"}}} from the cache, decoding (and caching) on a miss.
    ``files``: ``list_files(layout)``, when the caller has it already."""
    from safs.io import exclusive, torch_save

    files = list_files(layout) if files is None else files
    transform = _transform(dataset, size)
    key = cache_key(layout, files, transform)
    where = cache_dir(layout.root)
    path = where / f"{CACHE_PREFIX}{key}.pt"
    blob = _read_cache(path, layout.classes)
    if blob is not None:
        return blob
    # One decoder per cache file: a second trial waits and then reads what the first wrote.
    with exclusive(where / f".{CACHE_PREFIX}{key}.lock", wait=True):
        blob = _read_cache(path, layout.classes)
        if blob is not None:
            return blob
        parts = {}
        for part, listed in files.items():
            x, y = _decode_all(layout.root, listed, transform, (3, *size))
            parts[part] = {"x": x, "y": y}
        blob = {"version": CACHE_VERSION, "classes": list(layout.classes), "transform": transform, "parts": parts}
        try:
            torch_save(blob, path)
        except OSError:  # a full disk costs the next trial a decode, not this one its run
            pass
    return blob


# --------------------------------------------------------------------------- loaders


def _rows(layout: Layout, files: dict[str, list], dataset: str, seed: int, val_fraction, test_fraction) -> dict:
    """Split name -> (part, row indices into that part's file list, or None for all of it).

    The one split rule of both paths: the decoded tensors (in memory) and the file lists
    (streamed) take the same rows, so either gives the same samples for the same seed."""
    if layout.split:
        fixed_test_fraction(dataset, test_fraction)
    val_fraction = check_fraction("val_fraction", 0.1 if val_fraction is None else val_fraction)
    if layout.split:
        train_idx, val_idx = split_indices(len(files["train"]), [val_fraction], seed)
        return {"train": ("train", train_idx), "val": ("train", val_idx), "test": ("test", None)}
    test_fraction = check_fraction("test_fraction", 0.2 if test_fraction is None else test_fraction)
    train_idx, val_idx, test_idx = split_indices(len(files["all"]), [val_fraction, test_fraction], seed)
    return {"train": ("all", train_idx), "val": ("all", val_idx), "test": ("all", test_idx)}


def _dataset(dataset: str, layout: Layout, size: tuple[int, int], splits: dict) -> Dataset:
    import torch

    return Dataset(
        name=dataset,
        **splits,
        num_classes=len(layout.classes),
        input_shape=(3, *size),
        scale=1.0 / 255.0,
        mean=torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1),
        std=torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1),
        crop_padding=max(1, min(size) // 8),
        flip=True,
        classes=layout.classes,
    )


def _load(dataset: str, data_dir, seed: int, val_fraction, test_fraction, image_size, in_memory: Any = True,
          memory_budget_gb: float | None = None, device: Any = None, loader_workers: int | None = None) -> Dataset:
    from .streaming import FileSplit, fits_in_memory

    size = check_image_size(dataset, image_size)
    layout = locate(data_dir, dataset)
    files = list_files(layout)
    rows = _rows(layout, files, dataset, seed, val_fraction, test_fraction)
    if in_memory == "auto":
        images = sum(len(f) for f in files.values())
        in_memory = fits_in_memory(dataset, images * 3 * size[0] * size[1], device, memory_budget_gb)
    if not in_memory:
        transform = _transform(dataset, size)
        return _dataset(dataset, layout, size, {
            split: FileSplit.of(layout.root, files[part], idx, transform, (3, *size), loader_workers)
            for split, (part, idx) in rows.items()})
    parts = load_parts(layout, dataset, size, files)["parts"]
    splits = {}
    for split, (part, idx) in rows.items():
        x, y = parts[part]["x"], parts[part]["y"]
        splits[split] = Split(x.clone(), y.clone()) if idx is None else Split(*_take(x, y, idx))
    return _dataset(dataset, layout, size, splits)


def _take(x, y, idx):
    """Rows ``idx`` of the (memory-mapped) cache as tensors in memory."""
    import torch

    index = torch.from_numpy(idx).long()
    return x.index_select(0, index), y.index_select(0, index)


def load_imagefolder(data_dir: str | os.PathLike | None = None, *, seed: int = 0, val_fraction: float | None = None,
                     test_fraction: float | None = None, image_size: Any = None, in_memory: Any = True,
                     memory_budget_gb: float | None = None, device: Any = None,
                     loader_workers: int | None = None) -> Dataset:
    """A class-per-folder tree of JPEG/PNG images: uint8 (N, 3, H, W) at ``image_size``
    (``in_memory``: True, False (file lists, streamed) or "auto", see ``safs.data.streaming``)."""
    return _load("imagefolder", data_dir, seed, val_fraction, test_fraction, image_size, in_memory,
                 memory_budget_gb, device, loader_workers)


def load_imagenet(data_dir: str | os.PathLike | None = None, *, seed: int = 0, val_fraction: float | None = None,
                  test_fraction: float | None = None, image_size: Any = None, in_memory: Any = True,
                  memory_budget_gb: float | None = None, device: Any = None,
                  loader_workers: int | None = None) -> Dataset:
    """ILSVRC train/ and val/ class folders: resize 256, centre crop 224 (or ``image_size``)."""
    return _load("imagenet", data_dir, seed, val_fraction, test_fraction, image_size, in_memory,
                 memory_budget_gb, device, loader_workers)


__all__ = ["load_imagefolder", "load_imagenet", "locate", "shape", "decode_file", "cache_key", "cache_dir"]
