"""Benchmark: the exact integer GEMM fallback vs plain FP32 matmul, and each quantizer's cost.

Every figure is a ratio measured in this one run (medians of repeated timings), so machines and load
cancel out:

* ``int_gemm`` throughput / FP32 ``torch.mm`` throughput on INT4 codes, at 256^3, 1024^3 and
  128x4608x512 (M x K x N). Target >= 0.95.
* Quantizer time on a 4M-element tensor / the FP32 matmul of the layer it belongs to: a 2048-token,
  2048 -> 2048 linear layer, so X, W and the output gradient G are each 2048x2048 = 4M elements and the
  layer's GEMM is 2048^3. Target <= 0.5 for every gradient quantizer.

Run: ``.venv/bin/python bench/bench_gemm.py [--repeats N] [--threads T] [--clock wall|cpu]``

On a shared, busy machine use ``--threads 1 --clock cpu``: process CPU time of a single-threaded run
is not inflated by other processes the way wall time is (multi-threaded ops then wait on descheduled
threads), so the ratios stay meaningful.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from tqdm import tqdm

from host.gemm import int_gemm


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = _clock()
        fn()
        times.append(_clock() - t0)
    return statistics.median(times)


def gemm_cases(repeats: int):
    g = torch.Generator().manual_seed(0)
    rows = []
    for m, k, n in tqdm([(256, 256, 256), (1024, 1024, 1024), (128, 4608, 512)], desc="int_gemm", leave=False):
        a = torch.randint(-7, 8, (m, k), generator=g, dtype=torch.int8)
        b = torch.randint(-7, 8, (k, n), generator=g, dtype=torch.int8)
        af, bf = a.float(), b.float()
        assert torch.equal(int_gemm(a, b).long(), a.long() @ b.long())
        # interleave the two so that drifting machine load hits both alike
        t_fp, t_int = [], []
        for _ in range(3):
            t_fp.append(median_time(lambda: torch.mm(af, bf), repeats))
            t_int.append(median_time(lambda: int_gemm(a, b), repeats))
        t_fp, t_int = min(t_fp), min(t_int)
        flops = 2 * m * k * n
        rows.append((f"{m}x{k}x{n}", t_fp * 1e3, t_int * 1e3, flops / t_fp / 1e9, t_fp / t_int))
    return rows


def quantizer_cases():
    """(name, kind, fn(x, seed)) for every quantizer in host.quant; kind is 'gradient' or 'forward'."""
    from host import quant as q
    return [
        ("shiftquant (SR, row groups)", "gradient", lambda x, s: q.shiftquant(x, 4, seed=s)),
        ("luq (max_exp 6)", "gradient", lambda x, s: q.luq(x, seed=s)),
        ("luq pow2-alpha", "gradient", lambda x, s: q.luq(x, alpha_mode="pow2", seed=s)),
        ("luq SMP x2", "gradient", lambda x, s: q.luq_smp(x, samples=2, seed=s)),
        ("ptq 4-bit", "gradient", lambda x, s: q.ptq(x, 4, seed=s)),
        ("psq 4-bit (rows)", "gradient", lambda x, s: q.psq(x, 4, seed=s)),
        ("psq 8-bit (cols, U path)", "gradient", lambda x, s: q.psq(x, 8, axis="col", seed=s)),
        ("bhq 5-bit", "gradient", lambda x, s: q.bhq(x, 5, seed=s)),
        ("lbt 4-bit (gamma 0.5)", "gradient", lambda x, s: q.lbt(x, 4, gamma=0.5, seed=s)),
        ("int4 symmetric RDN", "forward", lambda x, s: q.int_symmetric(x, 4)),
        ("sawb int4 (weights)", "forward", lambda x, s: q.sawb(x, 4, kind="weight")),
        ("dsq weight int4", "forward", lambda x, s: q.dsq_weight(x, torch.tensor(3 * float(x.std())), 4)),
        ("int8 per-tensor", "forward", lambda x, s: q.int8_per_tensor(x)),
    ]


def quantizer_rows(repeats: int):
    g = torch.Generator().manual_seed(1)
    n = 2048
    x = torch.randn(n, n, generator=g)
    w = torch.randn(n, n, generator=g)
    # heavy-tailed gradient: Student-t(3) entries, row scales spread over ~2 decades
    grad = torch.distributions.StudentT(3.0).sample((n, n)) * torch.exp(torch.randn(n, 1, generator=g))
    t_mm = min(median_time(lambda: torch.mm(x, w), repeats) for _ in range(2))
    rows = []
    for name, kind, fn in tqdm(quantizer_cases(), desc="quantizers", leave=False):
        t = [median_time(lambda: fn(grad if kind == "gradient" else x, 7), repeats) for _ in range(2)]
        rows.append((name, kind, min(t) * 1e3, min(t) / t_mm))
    return t_mm * 1e3, rows


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=9, help="timed repetitions per median (default 9)")
    ap.add_argument("--skip-quantizers", action="store_true", help="only the GEMM comparison")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall (default) or cpu: process CPU time, robust to other load with --threads 1")
    args = ap.parse_args(argv)
    global _clock
    _clock = CLOCKS[args.clock]
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)

    print(f"machine: {machine()}, clock: {args.clock}\n")
    print("| GEMM (MxKxN) | FP32 mm (ms) | int_gemm (ms) | FP32 GFLOP/s | int_gemm / FP32 throughput |")
    print("|---|---:|---:|---:|---:|")
    for shape, t_fp, t_int, gflops, ratio in gemm_cases(args.repeats):
        print(f"| {shape} | {t_fp:.3f} | {t_int:.3f} | {gflops:.1f} | {ratio:.3f} |")
    if args.skip_quantizers:
        return
    t_mm, rows = quantizer_rows(args.repeats)
    print(f"\nlayer: 2048x2048 input, 2048->2048 linear; its FP32 GEMM (2048^3) takes {t_mm:.1f} ms\n")
    print("| quantizer on a 4M-element tensor | kind | time (ms) | / layer FP32 matmul |")
    print("|---|---|---:|---:|")
    for name, kind, t, ratio in rows:
        print(f"| {name} | {kind} | {t:.1f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
