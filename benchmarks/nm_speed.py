"""Dense vs 2:4 semi-structured sparse linear layers on a GPU (``torch.sparse.to_sparse_semi_structured``).

Run: ``python benchmarks/nm_speed.py`` (options: ``--repeats``, ``--dtype``, ``--backend``, ``--json``).

Each case is one GEMM ``y = x @ W.T`` with W of shape [out, in] made 2:4 along ``in`` by
``safs.sparsity.nm.nm_magnitude_mask`` (the ``im2col`` order; for Linear layers both orders
agree). Shapes: LeNet-5's and VGG's classifier layers, two VGG-16 3x3 convs as the im2col
GEMM a sparse conv would run (PyTorch has no semi-structured conv; CIFAR-10 32x32, batch 128),
a 4096x4096 MLP layer at batch 1024 and at batch 1 (a small GEMM, reported slower in
PyTorch issue #111339), and the PyTorch tutorial's 10240 -> 3072 layer at batch 3072.

Timing: dense ``F.linear(x, W)`` and sparse ``F.linear(x, to_sparse_semi_structured(W))`` in
the same process, interleaved, CUDA events around ``--inner`` calls, median over
``--repeats``; ratio = dense time / sparse time (> 1: sparse is faster). Both backends are
measured (``SparseSemiStructuredTensor._FORCE_CUTLASS`` set explicitly: its default changed
between versions). A shape a backend rejects is reported as such. Each sparse result is checked
against the dense product of the same 2:4 weight.

Without a CUDA GPU, on a GPU below compute capability 8.0, or without the semi-structured
API, it prints that the measurement was skipped and why, and exits 0. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F

# (label, out_features, in_features, batch rows)
CASES = [
    ("lenet5.fc1 (28x28 input)", 120, 256, 1024),
    ("lenet5.fc2", 84, 120, 1024),
    ("lenet5.fc3", 10, 84, 1024),
    ("vgg.classifier", 10, 512, 1024),
    ("vgg16.conv5 im2col (8x8, bs128)", 256, 128 * 9, 128 * 8 * 8),
    ("vgg16.conv9 im2col (4x4, bs128)", 512, 512 * 9, 128 * 4 * 4),
    ("mlp 4096x4096, batch 1024", 4096, 4096, 1024),
    ("mlp 4096x4096, batch 1", 4096, 4096, 1),
    ("tutorial 10240->3072, batch 3072", 3072, 10240, 3072),
]
BACKENDS = {"cusparselt": False, "cutlass": True}  # value: _FORCE_CUTLASS


def skip(reason: str) -> None:
    print(f"nm_speed: SKIPPED - {reason}. Nothing was measured.")
    sys.exit(0)


def median_ms(fn, inner: int, start, end) -> float:
    start.record()
    for _ in range(inner):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / inner


def run_case(out_f, in_f, rows, dtype, backends, repeats, inner, warmup):
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    from safs.sparsity.nm import nm_magnitude_mask

    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(out_f, in_f, device="cuda", dtype=dtype, generator=g)
    w = (w * nm_magnitude_mask(w)).contiguous()
    x = torch.randn(rows, in_f, device="cuda", dtype=dtype, generator=g)
    ref = F.linear(x, w)
    result = {"dense_ms": None}
    sparse = {}
    for name, force_cutlass in backends.items():
        SparseSemiStructuredTensor._FORCE_CUTLASS = force_cutlass
        try:
            ws = to_sparse_semi_structured(w)
            y = F.linear(x, ws)
            torch.cuda.synchronize()
        except Exception as e:  # shape/dtype/arch not supported by this backend
            result[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
            continue
        err = (y.float() - ref.float()).abs().max().item() / max(ref.float().abs().max().item(), 1e-6)
        sparse[name] = ws
        result[name] = {"rel_err": err}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fns = {"dense": lambda: F.linear(x, w)}
    for name, ws in sparse.items():
        fns[name] = (lambda ws=ws: F.linear(x, ws))
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    times = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved, so clock and thermal drift hit every variant alike
        for k, fn in fns.items():
            times[k].append(median_ms(fn, inner, start, end))
    result["dense_ms"] = statistics.median(times["dense"])
    for name in sparse:
        ms = statistics.median(times[name])
        result[name].update({"ms": ms, "ratio": result["dense_ms"] / ms})
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--inner", type=int, default=20, help="calls per timed repeat")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    ap.add_argument("--backend", choices=["both", *BACKENDS], default="both")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    if not torch.cuda.is_available():
        skip("no CUDA GPU (torch.cuda.is_available() is False)")
    try:
        from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured  # noqa: F401
    except ImportError as e:
        skip(f"this torch ({torch.__version__}) has no semi-structured sparse tensors ({e})")
    cap = torch.cuda.get_device_capability()
    if cap < (8, 0):
        skip(f"{torch.cuda.get_device_name()} has compute capability {cap[0]}.{cap[1]}; 2:4 sparse tensor cores "
             "need 8.0 or newer")

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    backends = BACKENDS if args.backend == "both" else {args.backend: BACKENDS[args.backend]}
    cusparselt = getattr(getattr(torch.backends, "cusparselt", None), "version", lambda: None)()
    print(f"nm_speed: {torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]}), torch {torch.__version__}, "
          f"cuSPARSELt {cusparselt}, {args.dtype}, median of {args.repeats} x {args.inner} calls")
    print("ratio = dense time / sparse time (> 1: 2:4 is faster)\n")
    default_cutlass = SparseSemiStructuredTensor._FORCE_CUTLASS
    head = f"{'case':36s} {'W [out, in]':>13s} {'rows':>6s} {'dense ms':>9s}"
    for b in backends:
        head += f" {b + ' ms':>14s} {'ratio':>6s}"
    print(head)
    rows, measured = [], 0
    try:
        for label, out_f, in_f, n in CASES:
            r = run_case(out_f, in_f, n, dtype, backends, args.repeats, args.inner, args.warmup)
            line = f"{label:36s} {f'{out_f}x{in_f}':>13s} {n:6d} {r['dense_ms']:9.4f}"
            for b in backends:
                if "ms" in r[b]:
                    measured += 1
                    line += f" {r[b]['ms']:14.4f} {r[b]['ratio']:6.2f}"
                else:
                    line += f" {'unsupported':>14s} {'-':>6s}"
            print(line, flush=True)
            rows.append({"case": label, "out": out_f, "in": in_f, "rows": n, **r})
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = default_cutlass
    notes = [f"  {row['case']} / {b}: {row[b]['error']}" for row in rows for b in backends if "error" in row[b]]
    notes += [f"  {row['case']} / {b}: max relative error {row[b]['rel_err']:.1e} vs the dense product"
              for row in rows for b in backends if row[b].get("rel_err", 0) > 1e-2]
    if notes:
        print("\nnotes:\n" + "\n".join(notes))
    if measured == 0:
        print("\nnm_speed: SKIPPED - no backend accepted any shape on this GPU/torch; nothing was measured.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "capability": list(cap), "torch": torch.__version__,
                       "cusparselt": cusparselt, "dtype": args.dtype, "repeats": args.repeats,
                       "inner": args.inner, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
