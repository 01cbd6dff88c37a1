"""Benchmark: training step time of each recipe vs FP32 for the MNIST-5k CNN (issue 7, "Speed").

One step = forward, loss, backward, optimizer step on a batch of real MNIST-5k images. FP32 is the plain
PyTorch model (``nn.Conv2d``/``nn.Linear``, the honest baseline); every other recipe runs the converted
model whose F/B/U GEMMs are exact integer GEMMs (``TorchBackend``) with the golden-model quantizers.
The recipes are timed interleaved (round-robin, ``--rounds`` rounds of ``--steps`` steps each) and the
median per-step time of each is divided by FP32's from the same run, so machine load mostly cancels.
Target: <= 1.3x for the 4-bit recipes on CPU; on a GPU the same ratio with ``--device cuda``.

Run: ``.venv/bin/python bench/bench_step_time.py [--device cpu|cuda] [--threads N] [--clock wall|cpu]
[--markdown]``. On a shared machine use ``--threads 1 --clock cpu``: process CPU time is not inflated by
other jobs (it still is, a little, by cache and memory-bandwidth contention).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from host.backends import use_backend
from host.data import load_dataset
from host.nn import quantize_model
from host.nn.models import build_model
from host.recipes import get_recipe

DEFAULT = "fp32,int8,shiftquant4,luq4,luq4-smp2,psq4,bhq5,lbt4,lbt5,naive-log4,naive4"
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default=DEFAULT)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="steps per round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=list(CLOCKS), default="wall",
                   help="wall: elapsed time; cpu: this process's CPU time (user + system, all threads), "
                        "which other jobs on a shared machine do not inflate (use with --threads 1)")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--breakdown", action="store_true",
                   help="also profile each quantized recipe: where its step time goes")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    data = load_dataset("mnist5k")
    x, y = data.train.tensors
    torch.manual_seed(0)
    base = build_model("cnn", data.input_shape, data.num_classes)
    names = [n for n in args.recipes.split(",") if n]
    models, opts = {}, {}
    for n in names:
        m = quantize_model(base, get_recipe(n), seed=0).to(dev).train()
        models[n] = m
        opts[n] = torch.optim.Adam(m.parameters(), lr=1e-3)
    backend = "cuda" if dev.type == "cuda" else "cpu"

    def step(n, i):
        idx = torch.randint(0, len(y), (args.batch_size,), generator=torch.Generator().manual_seed(i))
        xb, yb = x[idx].to(dev), y[idx].to(dev)
        loss = F.cross_entropy(models[n](xb), yb)
        opts[n].zero_grad(set_to_none=True)
        loss.backward()
        opts[n].step()

    if args.clock == "cpu" and dev.type == "cuda":
        p.error("--clock cpu measures host CPU time only; use --clock wall with --device cuda")
    clock = CLOCKS[args.clock]
    times = {n: [] for n in names}
    with use_backend(backend):
        for n in names:                 # warm-up (allocations, LBT calibration, DSQ init)
            for i in range(3):
                step(n, i)
        for r in tqdm(range(args.rounds), desc="rounds"):
            for n in names:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = clock()
                for i in range(args.steps):
                    step(n, 1000 * r + i)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times[n].append((clock() - t0) / args.steps)
    med = {n: statistics.median(t) for n, t in times.items()}
    ref = med.get("fp32")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {dev}, batch {args.batch_size}, "
          f"{args.rounds} rounds x {args.steps} steps (median), clock {args.clock}")
    if args.markdown:
        print("| recipe | step time (ms) | × fp32 |\n|---|---|---|")
    for n in names:
        ratio = "" if ref is None else f"{med[n] / ref:.2f}"
        if args.markdown:
            print(f"| {n} | {1000 * med[n]:.1f} | {ratio} |")
        else:
            print(f"{n:12s} {1000 * med[n]:8.1f} ms  x{ratio}")
    if args.breakdown:
        print()
        print(breakdown(names, step, args.steps))
    return 0


_PARTS = {   # cProfile cumulative time of these functions (see _part_time for the one nesting)
    "gradient quantizers (host.quant)": [("host/nn/quantizers.py", "grad_operands")],
    "forward quantizers (host.quant)": [("host/nn/quantizers.py", "forward_operand")],
    "integer GEMMs (qgemm, qconv2d)": [("host/gemm.py", "qgemm"), ("host/gemm.py", "qconv2d"),
                                       ("host/gemm.py", "qconv2d_weight")],
    "im2col / col2im": [("host/nn/functional.py", "im2col"), ("host/nn/functional.py", "col2im")],
}
_CONV = ("qconv2d", "qconv2d_weight")


def _part_time(st, fns) -> float:
    """Cumulative time of ``fns``; a qgemm/im2col called from qconv2d* (their im2col fallback) is counted
    once, in the GEMM column."""
    total = 0.0
    for (f, _, fn), v in st.items():
        for ff, name in fns:
            if fn != name or not f.endswith(ff):
                continue
            if name in ("qgemm", "im2col"):
                # callers: {func: (cc, nc, tt, ct)}; skip the time spent under qconv2d / qconv2d_weight
                total += sum(c[3] for cf, c in v[4].items() if cf[2] not in _CONV)
            else:
                total += v[3]
            if name in _CONV:
                sub = [s for (sf, _, sfn), s in st.items() if sfn == "im2col" and sf.endswith("functional.py")]
                total -= sum(c[3] for s in sub for cf, c in s[4].items() if cf[2] == name)
    return total


def breakdown(names, step, steps: int) -> str:
    """Share of a step spent in the quantizers, the integer GEMMs and im2col (cProfile, one recipe at a time)."""
    import cProfile
    import pstats
    lines = ["| recipe | step (ms, profiled) | " + " | ".join(_PARTS) + " | rest |",
             "|---|---|" + "---|" * (len(_PARTS) + 1)]
    with use_backend("cpu"):
        for n in names:
            if n == "fp32":
                continue
            pr = cProfile.Profile()
            pr.enable()
            for i in range(steps):
                step(n, 10_000 + i)
            pr.disable()
            st = pstats.Stats(pr).stats
            total = max(v[3] for v in st.values())
            cells, acc = [], 0.0
            for fns in _PARTS.values():
                t = _part_time(st, fns)
                acc += t
                cells.append(f"{100 * t / total:.0f} %")
            lines.append(f"| {n} | {1000 * total / steps:.0f} | " + " | ".join(cells)
                         + f" | {100 * (1 - acc / total):.0f} % |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
