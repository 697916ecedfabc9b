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

``--smoke`` (CI): tiny shapes on the CPU in float32, so the code path keeps working without a
GPU. It builds the 2:4 weights, checks them, times the dense product and the masked product
(``F.linear(x, W ⊙ mask)``: the path safs trains with), and tries the semi-structured
conversion, which PyTorch has only on CUDA (reported as unsupported there). It claims no speed
ratio: CPU timings of tiny GEMMs say nothing about sparse tensor cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

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
SMOKE_CASES = [("smoke 64x128, batch 32", 64, 128, 32), ("smoke 32x64, batch 8", 32, 64, 8)]
BACKENDS = {"cusparselt": False, "cutlass": True}  # value: _FORCE_CUTLASS
SMOKE_NOTE = ("nm_speed (smoke): CPU, tiny shapes, float32 - checks that the code path runs. "
              "NO SPEED CLAIM is made: 2:4 speed needs a CUDA GPU with sparse tensor cores.")


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


def cpu_ms(fn, inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) * 1000 / inner


def is_two_four(w: torch.Tensor) -> bool:
    """At most 2 non-zeros in every group of 4 consecutive weights along ``in``."""
    return bool(((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def run_case(out_f, in_f, rows, dtype, backends, repeats, inner, warmup, device="cuda", masked=False):
    """One GEMM shape: the dense product, each semi-structured backend and (``masked``) the
    masked dense product, timed interleaved; each sparse result checked against the dense one."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    from safs.sparsity.nm import nm_magnitude_mask

    cuda = torch.device(device).type == "cuda"
    g = torch.Generator(device=device).manual_seed(0)
    raw = torch.randn(out_f, in_f, device=device, dtype=dtype, generator=g)
    mask = nm_magnitude_mask(raw)
    w = (raw * mask).contiguous()
    if not is_two_four(w):
        raise AssertionError(f"nm_speed: the {out_f}x{in_f} weight is not 2:4 after masking")
    x = torch.randn(rows, in_f, device=device, dtype=dtype, generator=g)
    ref = F.linear(x, w)

    def rel_err(y):
        return (y.float() - ref.float()).abs().max().item() / max(ref.float().abs().max().item(), 1e-6)

    result = {"dense_ms": None}
    fns = {"dense": lambda: F.linear(x, w)}
    if masked:  # what a masked layer computes in training: the mask applied to the stored weight
        fns["masked"] = lambda: F.linear(x, raw * mask)
        result["masked"] = {"rel_err": rel_err(fns["masked"]())}
    sparse = {}
    for name, force_cutlass in backends.items():
        SparseSemiStructuredTensor._FORCE_CUTLASS = force_cutlass
        try:
            ws = to_sparse_semi_structured(w)
            y = F.linear(x, ws)
            if cuda:
                torch.cuda.synchronize()
        except Exception as e:  # shape/dtype/arch/device not supported by this backend
            result[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e)
                            else type(e).__name__}
            continue
        sparse[name] = ws
        result[name] = {"rel_err": rel_err(y)}
    for name, ws in sparse.items():
        fns[name] = (lambda ws=ws: F.linear(x, ws))
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        timed = lambda fn: median_ms(fn, inner, start, end)  # noqa: E731
    else:
        timed = lambda fn: cpu_ms(fn, inner)  # noqa: E731
    times = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved, so clock and thermal drift hit every variant alike
        for k, fn in fns.items():
            times[k].append(timed(fn))
    result["dense_ms"] = statistics.median(times["dense"])
    for name in fns:
        if name != "dense":
            ms = statistics.median(times[name])
            result[name].update({"ms": ms, "ratio": result["dense_ms"] / ms})
    return result


def smoke(backends: dict) -> dict:
    """Tiny shapes on the CPU (see the module docstring); returns the rows, claims no ratio."""
    print(SMOKE_NOTE)
    print(f"{'case':36s} {'W [out, in]':>13s} {'rows':>6s} {'dense ms':>9s} {'masked ms':>10s}  semi-structured")
    from torch.sparse import SparseSemiStructuredTensor

    rows = []
    default_cutlass = SparseSemiStructuredTensor._FORCE_CUTLASS
    for label, out_f, in_f, n in SMOKE_CASES:
        try:
            r = run_case(out_f, in_f, n, torch.float32, backends, repeats=3, inner=2, warmup=1, device="cpu",
                         masked=True)
        finally:
            SparseSemiStructuredTensor._FORCE_CUTLASS = default_cutlass
        for b in ("masked", *backends):
            r[b].pop("ratio", None)  # no ratio is claimed from the CPU
        semi = "; ".join(f"{b}: {r[b]['ms']:.4f} ms" if "ms" in r[b] else f"{b}: unsupported ({r[b]['error']})"
                         for b in backends)
        print(f"{label:36s} {f'{out_f}x{in_f}':>13s} {n:6d} {r['dense_ms']:9.4f} {r['masked']['ms']:10.4f}  {semi}")
        rows.append({"case": label, "out": out_f, "in": in_f, "rows": n, **r})
    print("nm_speed (smoke): no speed claim; run without --smoke on a CUDA GPU for the 2:4 figures.")
    return {"smoke": True, "device": "cpu", "results": rows}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU; checks it runs, claims no ratio")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--inner", type=int, default=20, help="calls per timed repeat")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    ap.add_argument("--backend", choices=["both", *BACKENDS], default="both")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    backends = BACKENDS if args.backend == "both" else {args.backend: BACKENDS[args.backend]}
    if args.smoke:
        out = smoke(backends)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
        return out

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
    out = {"smoke": False, "device": torch.cuda.get_device_name(), "capability": list(cap), "torch": torch.__version__,
           "cusparselt": cusparselt, "dtype": args.dtype, "repeats": args.repeats, "inner": args.inner,
           "results": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
