"""Test tensors (used by tests/test_hwquant_*.py and the benchmarks) for the quantizer units: heavy tails, all-zero rows, a single huge outlier, the
extreme fixed-point values, rows that cross zero, and channels small enough to clamp at E_max."""

from __future__ import annotations

import torch


def fixed_tensor(rows: int, cols: int, width: int, *, seed: int, kind: str = "mixed") -> torch.Tensor:
    """An int64 ``rows x cols`` tensor of ``width``-bit signed integers.

    ``kind``: "mixed" (every row type below, cycling), "heavy" (Cauchy-scaled rows), "zero" (all zero),
    "outlier" (tiny values and one element at the top of the range), "extreme" (only
    ``-2**(w-1)``, ``2**(w-1) - 1``, 0 and +-1).
    """
    g = torch.Generator().manual_seed(seed)
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    top = float(hi)

    def clamp(t):
        return t.round().clamp(lo, hi).to(torch.int64)

    if kind == "zero":
        return torch.zeros(rows, cols, dtype=torch.int64)
    if kind == "outlier":
        x = clamp(torch.randn(rows, cols, generator=g) * 3)
        r, c = int(torch.randint(rows, (1,), generator=g)), int(torch.randint(cols, (1,), generator=g))
        x[r, c] = lo if torch.rand(1, generator=g) < 0.5 else hi
        return x
    if kind == "extreme":
        choices = torch.tensor([lo, hi, 0, 1, -1, lo + 1], dtype=torch.int64)
        return choices[torch.randint(len(choices), (rows, cols), generator=g)]
    out = torch.empty(rows, cols, dtype=torch.int64)
    for i in range(rows):
        t = i % 8 if kind == "mixed" else 1
        if t == 0:                                   # Gaussian, full range
            v = torch.randn(cols, generator=g) * top / 4
        elif t == 1:                                 # heavy-tailed: Cauchy with a random row scale
            v = torch.distributions.Cauchy(0.0, 1.0).sample((cols,)) * (2.0 ** float(torch.randint(0, width, (1,), generator=g)))
        elif t == 2:                                 # all-zero row
            v = torch.zeros(cols)
        elif t == 3:                                 # zero-crossing ramp (negative to positive)
            v = torch.linspace(-top / 3, top / 5, cols) + torch.randn(cols, generator=g)
        elif t == 4:                                 # tiny channel: clamps at E_max
            v = torch.randint(-3, 4, (cols,), generator=g).float()
        elif t == 5:                                 # extreme values
            v = torch.tensor([[lo, hi, 0, -1, 1][j % 5] for j in range(cols)], dtype=torch.float64)
        elif t == 6:                                 # log-uniform magnitudes, random signs
            v = torch.exp2(torch.rand(cols, generator=g) * (width - 1)) * torch.sign(torch.randn(cols, generator=g))
        else:                                        # mostly negative, a few positive
            v = -torch.rand(cols, generator=g).abs() * top / 2 + (torch.rand(cols, generator=g) < 0.1) * top / 8
        out[i] = clamp(v.double())
    return out
