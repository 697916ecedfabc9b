"""GPU training throughput: safs's train loop vs a minimal hand-written loop.

Run: ``python benchmarks/gpu_train.py`` on a CUDA machine (ResNet-18 CIFAR and VGG-16 from
``safs.models.create_model``; CIFAR-10-shaped random uint8 data on the device, 50,000 images;
batch 512; SGD with Nesterov momentum; bf16 autocast; channels_last). Both variants use the
same model, tensors, batch size and optimizer and run interleaved in one process:

- safs: ``safs.training.loop.train_epoch`` over ``safs.data.Batches`` (on-device crop and
  flip, fused normalisation), as every train stage runs it;
- hand: a loop in the style of airbench: one permutation, index gather, the same
  crop/flip and normalisation written out, forward, backward, step.

Prints epochs/s of each and the ratio safs/hand (goal >= 0.9). ``--smoke`` runs tiny sizes on
the CPU to check that the benchmark works (no ratio is claimed).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from safs.data import Batches
from safs.data.base import Dataset, Split
from safs.data.batching import augment_batch
from safs.models import create_model
from safs.stages.common import prepare_for_device
from safs.training.loop import autocast_for, train_epoch
from safs.training.optim import fused_option

MEAN = torch.tensor([125.3, 123.0, 113.9]).view(1, 3, 1, 1)
STD = torch.tensor([63.0, 62.1, 66.7]).view(1, 3, 1, 1)


def random_cifar(n: int, size: int, device: torch.device) -> Dataset:
    g = torch.Generator().manual_seed(0)
    split = lambda k: Split(torch.randint(0, 256, (k, 3, size, size), generator=g, dtype=torch.uint8),  # noqa: E731
                            torch.randint(0, 10, (k,), generator=g))
    return Dataset("random-cifar", split(n), split(64), split(64), 10, (3, size, size), 1.0, MEAN, STD,
                   4, True).to(device)


def fresh(name: str, size: int, device: torch.device):
    torch.manual_seed(0)
    model = prepare_for_device(create_model(name, 10, (3, size, size)), device)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
                          **fused_option(params, torch.optim.SGD))
    return model, opt


def hand_epoch(model, opt, ds: Dataset, bs: int, epoch: int, autocast) -> None:
    x_all, y_all = ds.train.x, ds.train.y
    mean, std = ds.mean.float(), ds.std.float()
    g = torch.Generator().manual_seed(epoch)
    perm = torch.randperm(len(y_all), generator=g).to(x_all.device, non_blocking=True)
    model.train()
    for i in range(0, len(perm), bs):
        idx = perm[i:i + bs]
        x = augment_batch(x_all[idx], 4, True)
        x = (x.float() - mean) / std
        with autocast():
            loss = F.cross_entropy(model(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def safs_epoch(model, opt, ds: Dataset, bs: int, epoch: int, autocast) -> None:
    train_epoch(model, Batches(ds, "train", bs, train=True, seed=0).epoch(epoch), opt, autocast=autocast)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name: str, ds: Dataset, bs: int, repeats: int, device: torch.device) -> dict[str, float]:
    autocast = (lambda: autocast_for(device)) if device.type == "cuda" else contextlib.nullcontext
    runs = {"safs": (safs_epoch, *fresh(name, ds.input_shape[1], device)),
            "hand": (hand_epoch, *fresh(name, ds.input_shape[1], device))}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(repeats + 1):  # the first round warms up (cuDNN autotuning, allocator)
        for k, (fn, model, opt) in runs.items():
            sync(device)
            t = time.perf_counter()
            fn(model, opt, ds, bs, r, autocast)
            sync(device)
            if r:
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU; checks it runs, claims no ratio")
    ap.add_argument("--models", nargs="+", default=["resnet18", "vgg16"])
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    if a.smoke:
        device, n, size, bs, repeats = torch.device("cpu"), 4, 32, 4, 1
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_train: no CUDA device (use --smoke to check it on the CPU)")
        device, n, size, bs, repeats = torch.device("cuda"), a.images, 32, a.batch_size, a.repeats
        torch.backends.cudnn.benchmark = True
    ds = random_cifar(n, size, device)
    out = {}
    print(f"{'model':<10} {'safs ep/s':>10} {'hand ep/s':>10} {'safs/hand':>10}")
    for name in a.models:
        t = bench(name, ds, bs, repeats, device)
        ratio = t["hand"] / t["safs"]
        out[name] = {"safs_epochs_per_s": 1 / t["safs"], "hand_epochs_per_s": 1 / t["hand"], "ratio": ratio}
        shown = "(smoke)" if a.smoke else f"{ratio:.3f}"
        print(f"{name:<10} {1 / t['safs']:>10.3f} {1 / t['hand']:>10.3f} {shown:>10}")
    if not a.smoke:
        print("goal: safs/hand >= 0.9")
    return out


if __name__ == "__main__":
    main()
