"""Exact fixed-point view of a tensor: the input convention of the quantizer gateware.

A float tensor is ``x = xi * 2**E_x`` with ``xi`` a signed ``in_width``-bit integer and one exponent for
the whole tensor. The quantizer units work on ``xi`` (their decisions are invariant under an exact
power-of-two scaling), so the RTL simulation (``sim.quant``) and the board driver
(``host.backends.board``) both convert with this one function.
"""

from __future__ import annotations

import torch

__all__ = ["to_fixed", "EXP_RANGE"]

#: Tensor exponents the units' scale fields can carry back to the host.
EXP_RANGE = (-100, 100)


def to_fixed(x: torch.Tensor, in_width: int, who: str = "to_fixed", *,
             exp_range: tuple[int, int] = EXP_RANGE) -> tuple[torch.Tensor, int]:
    """``(xi, E_x)`` with ``x == xi * 2**E_x`` exactly, ``xi`` int64 in the signed ``in_width``-bit range.

    ``E_x`` is the exponent of the lowest set bit over all elements (0 for an all-zero tensor).
    Raises ``ValueError`` if the tensor needs more than ``in_width`` bits at that exponent, or if
    ``E_x`` falls outside ``exp_range``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor, got {type(x).__name__}")
    if x.numel() == 0:
        raise ValueError(f"{who}: cannot quantize an empty tensor (shape {tuple(x.shape)})")
    if not x.is_floating_point():
        xi = x.to(torch.int64)
        e = 0
    else:
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{who}: input has NaN/Inf values")
        xd = x.detach().to(torch.float64).cpu()
        nz = xd[xd != 0]
        if nz.numel() == 0:
            return torch.zeros(x.shape, dtype=torch.int64), 0
        m, ex = torch.frexp(nz)                       # nz = m * 2**ex, |m| in [0.5, 1)
        mi = (m * 2.0 ** 53).to(torch.int64)          # exact 53-bit integer mantissa
        tz = (mi & -mi).to(torch.float64).log2().round().to(torch.int64)   # trailing zeros (exact: power of 2)
        e = int((ex.to(torch.int64) - 53 + tz).min())
        xi = torch.ldexp(xd, torch.tensor(-e, dtype=torch.float64)).to(torch.int64)
        if not bool((torch.ldexp(xi.to(torch.float64), torch.tensor(e, dtype=torch.float64)) == xd).all()):
            raise ValueError(f"{who}: input is not a fixed-point tensor")   # cannot happen for |xi| < 2**53
    lim = 1 << (in_width - 1)
    lo, hi = int(xi.min()), int(xi.max())
    if lo < -lim or hi > lim - 1:
        raise ValueError(f"{who}: input needs more than in_width={in_width} bits as fixed point "
                         f"(integers {lo}..{hi} at tensor exponent 2**{e}); allowed -{lim}..{lim - 1}")
    if x.is_floating_point() and not exp_range[0] <= e <= exp_range[1]:
        raise ValueError(f"{who}: tensor exponent 2**{e} outside the supported range "
                         f"2**{exp_range[0]}..2**{exp_range[1]}")
    return xi.reshape(x.shape), e
