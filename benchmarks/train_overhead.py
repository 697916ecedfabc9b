"""One training epoch: safs's loop vs a minimal hand-written loop vs a DataLoader.

Run: ``python benchmarks/train_overhead.py`` (LeNet-5 on mnist5k, batch 128, Adam, 1 thread,
as a 1-CPU trial runs). All three variants use the same model architecture and the same
uint8 tensors and run interleaved in one process; the figures are medians of the repeats.

- safs: ``safs.training.loop.train_epoch`` over ``safs.data.Batches`` (device-resident
  tensors, permutation slicing, fused normalisation), the loop every train stage runs;
- hand: the shortest reasonable PyTorch loop over the same tensors;
- dataloader: ``torch.utils.data.DataLoader`` over a torchvision-style dataset (a PIL image
  per sample, ``transforms.ToTensor()``, default collate) and the model in its default
  layout: the way the original SAFS code trains on MNIST.
The safs and hand variants use the model as a safs trial prepares it
(``prepare_for_device``: channels_last), so their ratio isolates the framework's overhead.
Targets: safs/hand <= 1.10; dataloader/safs >= 2.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from safs.data import Batches, load_dataset
from safs.models import create_model
from safs.sparsity import create_method
from safs.stages.common import prepare_for_device
from safs.training.loop import train_epoch


def fresh(seed=0, safs_layout=True):
    torch.manual_seed(seed)
    model = create_model("lenet5", 10, (1, 28, 28))
    if safs_layout:
        model = prepare_for_device(model, torch.device("cpu"))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def hand_epoch(model, opt, x_u8, y, bs, epoch, keeper=None):
    g = torch.Generator().manual_seed(epoch)
    perm = torch.randperm(len(y), generator=g)
    model.train()
    for i in range(0, len(y), bs):
        idx = perm[i:i + bs]
        xb = x_u8[idx].float().div_(255)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if keeper:
            keeper.mask_grads()
        opt.step()
        if keeper:
            keeper.mask_weights()


class PerSample(torch.utils.data.Dataset):
    """What torchvision's MNIST does per sample: uint8 array -> PIL image -> ToTensor()."""

    def __init__(self, x_u8, y):
        from torchvision import transforms

        self.x, self.y = x_u8[:, 0].numpy(), y.numpy()
        self.transform = transforms.ToTensor()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def loader_epoch(model, opt, loader):
    model.train()
    for xb, yb in loader:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bs = args.batch_size
    ds = load_dataset("mnist5k", seed=0)
    x_u8, y = ds.train.x, ds.train.y
    batches = Batches(ds, "train", bs, train=True, seed=0)

    def run_safs(e):
        train_epoch(m_safs, batches.epoch(e), o_safs)

    def run_hand(e):
        hand_epoch(m_hand, o_hand, x_u8, y, bs, e)

    def run_safs_sparse(e):
        train_epoch(m_sp, batches.epoch(e), o_sp, method)

    def run_hand_sparse(e):
        hand_epoch(m_hsp, o_hsp, x_u8, y, bs, e, keeper)

    loader = torch.utils.data.DataLoader(PerSample(x_u8, y), batch_size=bs, shuffle=True, num_workers=0)

    def run_loader(e):
        loader_epoch(m_dl, o_dl, loader)

    m_safs, o_safs = fresh()
    m_hand, o_hand = fresh()
    m_dl, o_dl = fresh(safs_layout=False)
    m_sp, o_sp = fresh()
    method = create_method("lwm", 0.99)
    method.attach(m_sp)
    method.prune(m_sp)
    m_hsp, o_hsp = fresh()
    from safs.sparsity.masks import MaskKeeper, set_mask

    for (_, a), (_, b) in zip(m_sp.named_modules(), m_hsp.named_modules()):
        if hasattr(a, "weight_mask"):
            set_mask(b, a.weight_mask)
    keeper = MaskKeeper(m_hsp)

    variants = {"safs": run_safs, "hand": run_hand, "dataloader": run_loader,
                "safs_lwm99": run_safs_sparse, "hand_lwm99": run_hand_sparse}
    times = {k: [] for k in variants}
    for r in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn(r)
            if r:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"LeNet-5 on mnist5k ({len(y)} training images), batch {bs}, {args.threads} thread(s), "
          f"median of {args.repeats} epochs:")
    for k, v in med.items():
        print(f"  {k:<12} {v * 1000:8.1f} ms/epoch")
    print(f"safs / hand            = {med['safs'] / med['hand']:.3f}   (target <= 1.10)")
    print(f"safs_lwm99 / hand_lwm99 = {med['safs_lwm99'] / med['hand_lwm99']:.3f}   (target <= 1.10)")
    print(f"dataloader / safs      = {med['dataloader'] / med['safs']:.2f}   (target >= 2)")


if __name__ == "__main__":
    main()
