"""Numerics report: every golden-model quantizer's bias, error and levels on a heavy-tailed gradient.

    python -m host.numerics_report [--rows 256] [--cols 512] [--samples 64] [--seed 0] [--json PATH]

The synthetic gradient has Student-t(3) entries with per-row scales spread by ``exp(N(0, 1))``, the
shape of real neural gradients (heavy tails, rows of very different magnitude). Each stochastic
quantizer is sampled ``--samples`` times with seeds ``seed .. seed+S-1`` and the report gives:

* ``rel MSE``   -- mean over samples of ``||Q - G||^2 / ||G||^2``;
* ``rel bias``  -- ``||mean(Q) - G|| / ||G||``;
* ``bias/noise`` -- rel bias divided by the value an *unbiased* quantizer would show with the same
  number of samples (``sqrt(sum of per-element sample variances / S) / ||G||``): about 1 for an unbiased
  quantizer, far above 1 for a biased one (clipping, round-to-nearest);
* ``levels``    -- distinct codes used in one sample / the size of the code grid.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from host import quant


@dataclass
class Row:
    name: str
    kind: str            # "SR" or "RDN"
    code_grid: str
    rel_mse: float
    rel_bias: float
    bias_over_noise: float | None   # None for deterministic quantizers (no sampling noise)
    levels_used: int
    levels_grid: int


def heavy_tailed_gradient(rows: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t3 = torch.distributions.StudentT(3.0)
    torch.manual_seed(seed)   # StudentT samples from the global generator
    return t3.sample((rows, cols)) * torch.exp(torch.randn(rows, 1, generator=g))


def quantizers():
    """(name, kind, grid description, grid size, fn(G, seed) -> Quantized)."""
    q = quant
    return [
        ("shiftquant int4, row groups, e_max 3", "SR", "int4 sym + e[0..3]", 15, lambda g, s: q.shiftquant(g, 4, seed=s)),
        ("shiftquant int4, pow2 scale", "SR", "int4 sym + e[0..3]", 15, lambda g, s: q.shiftquant(g, 4, scale="pow2", seed=s)),
        ("luq log4, max_exp 6 (strict)", "SR", "sign + 3-bit exp", 15, lambda g, s: q.luq(g, seed=s)),
        ("luq log4, max_exp 7 (reference)", "SR", "sign + 4-bit exp", 17, lambda g, s: q.luq(g, max_exp=7, seed=s)),
        ("luq log4, power-of-two alpha", "SR", "sign + 3-bit exp", 15, lambda g, s: q.luq(g, alpha_mode="pow2", seed=s)),
        ("luq + SMP (2 samples)", "SR", "mean of 2 log4", 15, lambda g, s: q.luq_smp(g, samples=2, seed=s)),
        ("ptq 4-bit (per tensor)", "SR", "uint4 + zero point", 16, lambda g, s: q.ptq(g, 4, seed=s)),
        ("psq 4-bit (per sample)", "SR", "uint4 per row", 16, lambda g, s: q.psq(g, 4, seed=s)),
        ("bhq 4-bit (block Householder)", "SR", "uint4 per row of T.G", 16, lambda g, s: q.bhq(g, 4, seed=s)),
        ("bhq 5-bit", "SR", "uint5 per row of T.G", 32, lambda g, s: q.bhq(g, 5, seed=s)),
        ("lbt 4-bit, gamma 1 (min-max)", "SR", "int4 sym", 15, lambda g, s: q.lbt(g, 4, gamma=1.0, seed=s)),
        ("lbt 4-bit, gamma 0.3 (clipped)", "SR", "int4 sym", 15, lambda g, s: q.lbt(g, 4, gamma=0.3, seed=s)),
        ("int4 symmetric RDN (naive)", "RDN", "int4 sym", 15, lambda g, s: q.int_symmetric(g, 4)),
    ]


def measure(g: torch.Tensor, fn, kind: str, samples: int, seed: int) -> tuple[float, float, float | None, int]:
    g64 = g.double()
    norm2 = float((g64 ** 2).sum())
    n = samples if kind == "SR" else 1
    total = torch.zeros_like(g64)
    total_sq = torch.zeros_like(g64)
    mse = 0.0
    levels = 0
    for s in range(n):
        qz = fn(g, seed + s)
        d = qz.dequantize().double()
        total += d
        total_sq += d * d
        mse += float(((d - g64) ** 2).sum()) / norm2
        if s == 0:
            levels = int(torch.unique(qz.codes).numel()) if qz.codes is not None else 0
    mean = total / n
    rel_bias = math.sqrt(float(((mean - g64) ** 2).sum()) / norm2)
    if n == 1:
        return mse, rel_bias, None, levels
    var = (total_sq - n * mean * mean).clamp_min(0) / (n - 1)       # per-element sample variance
    noise = math.sqrt(float(var.sum()) / n / norm2)
    return mse / n, rel_bias, rel_bias / noise if noise > 0 else float("inf"), levels


def report(rows: int = 256, cols: int = 512, samples: int = 64, seed: int = 0) -> list[Row]:
    g = heavy_tailed_gradient(rows, cols, seed)
    out = []
    for name, kind, grid, size, fn in tqdm(quantizers(), desc="quantizers", leave=False):
        mse, bias, ratio, levels = measure(g, fn, kind, samples, seed + 1000)
        out.append(Row(name, kind, grid, mse, bias, ratio, levels, size))
    return out


def format_table(rows: list[Row], shape, samples: int) -> str:
    head = (f"Quantizers on a heavy-tailed {shape[0]}x{shape[1]} gradient (Student-t(3) x exp(N(0,1)) "
            f"row scales), {samples} samples each\n"
            f"bias/noise ~ 1 means unbiased; >> 1 means biased.\n\n")
    cols = ["quantizer", "rounding", "codes", "rel MSE", "rel bias", "bias/noise", "levels"]
    lines = [[r.name, r.kind, r.code_grid, f"{r.rel_mse:.3e}", f"{r.rel_bias:.3e}",
              "det." if r.bias_over_noise is None else f"{r.bias_over_noise:.2f}",
              f"{r.levels_used}/{r.levels_grid}"] for r in rows]
    widths = [max(len(c), *(len(l[i]) for l in lines)) for i, c in enumerate(cols)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return head + "\n".join([fmt(cols), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m host.numerics_report",
                                 description="Bias, MSE and levels of every golden-model quantizer on a "
                                             "heavy-tailed synthetic gradient.")
    ap.add_argument("--rows", type=int, default=256, help="gradient rows (samples), default 256")
    ap.add_argument("--cols", type=int, default=512, help="gradient columns, default 512")
    ap.add_argument("--samples", type=int, default=64, help="stochastic samples per quantizer, default 64")
    ap.add_argument("--seed", type=int, default=0, help="seed of the gradient and the first sample")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    for name in ("rows", "cols", "samples"):
        if getattr(args, name) < (2 if name == "samples" else 1):
            ap.error(f"--{name} must be at least {2 if name == 'samples' else 1}")
    rows = report(args.rows, args.cols, args.samples, args.seed)
    print(format_table(rows, (args.rows, args.cols), args.samples))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)


if __name__ == "__main__":
    main()
