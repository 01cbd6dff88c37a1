"""SAWB: statistics-aware weight binning, the forward INT4 quantizer of LUQ (ALGORITHMS.md §4(a)).

Per tensor, with coefficients ``(c1, c2)`` and an integer range ``[Qn, Qp]``:

    clip  = c1 * sqrt(mean(x**2)) - c2 * mean(|x|)
    scale = 2 * clip / (Qp - Qn)
    codes = round(clamp(x / scale, Qn, Qp))        (RDN: torch.round, half to even; STE in training)

The paper (§6) uses SAWB (Choi et al. 2018) for weights and activations; the coefficients and ranges are
the LUQ reference code's ``UniformQuantizeSawb`` [CODE]. See docs/numerics/luq.md.
"""

from __future__ import annotations

import ctypes
import functools
import math
from fractions import Fraction
from dataclasses import dataclass, field
from typing import Literal

import torch

from hw import numerics as nx
from host.quant import native
from host.quant.core import (AffineQuantized, round_to_dtype, check_bits, check_choice, check_input_range, codes_dtype,
                             elementwise_out, scalar_tensor)

__all__ = ["sawb", "sawb_range", "SawbQuantized", "SAWB_COEFFS", "WEIGHT_GRIDS", "SIGNED_ACT_GRIDS"]

SAWB_COEFFS = {
    "ref": (12.1, 12.2),    # LUQ reference code, 4-bit [CODE]; the default ([PROPOSED] §4(a))
    "alt": (12.68, 12.80),  # third-party SAWB code, "SAWB formula for 403" (4-bit; file not tied to a repo)
}
WEIGHT_GRIDS = ("sym15", "ref17", "int4")
SIGNED_ACT_GRIDS = ("ref24", "int4", "sym15")

Kind = Literal["weight", "activation"]


def sawb_range(bits: int = 4, *, kind: Kind = "weight", weight_grid: str = "sym15",
               signed: bool = False, signed_act_grid: str = "ref24") -> tuple[int, int]:
    """The integer range ``(Qn, Qp)`` SAWB clamps to.

    With ``h = 2**(bits-1)``:

    ============ ========================= ===========================================================
    weights      ``sym15`` (default)       ``[-(h-1), h-1]`` (4-bit: [-7, 7], 15 levels) [PROPOSED]
                 ``ref17``                 ``[-h, h]`` (4-bit: [-8, 8], 17 levels -- the reference
                                           code's ``Qn = -2**(b-1), Qp = 2**(b-1)``; not 4-bit)
                 ``int4``                  ``[-h, h-1]`` (4-bit two's complement [-8, 7])
    activations  no negative input seen    ``[0, 2**bits - 1]`` ([0, 15])
                 ``signed``, ``ref24``     ``[-h, 2**bits - 1]`` ([-8, 15]: the reference's sticky
                                           ``Qn = -8`` with ``Qp`` unchanged; 24 levels, 5 bits)
                 ``signed``, ``int4``      ``[-h, h-1]`` ([PROPOSED] alternative that fits 4 bits)
                 ``signed``, ``sym15``     ``[-(h-1), h-1]`` ([PROPOSED] alternative, symmetric)
    ============ ========================= ===========================================================

    Parameters
    ----------
    bits : int, default 4
        Code width, 2..16.
    kind : {"weight", "activation"}, default "weight"
    weight_grid : {"sym15", "ref17", "int4"}, default "sym15"
        Used for weights only.
    signed : bool, default False
        Activations only: whether the range is signed (``seen_negative or min(x) < 0`` in :func:`sawb`).
    signed_act_grid : {"ref24", "int4", "sym15"}, default "ref24"
        Used for signed activations only.

    Returns
    -------
    (int, int)
        ``(Qn, Qp)``.
    """
    check_bits(bits, "sawb", 2, 16)
    check_choice(kind, ("weight", "activation"), "sawb", "kind")
    check_choice(weight_grid, WEIGHT_GRIDS, "sawb", "weight_grid")
    check_choice(signed_act_grid, SIGNED_ACT_GRIDS, "sawb", "signed_act_grid")
    h = 2 ** (bits - 1)
    grid = weight_grid if kind == "weight" else (signed_act_grid if signed else "unsigned")
    return {"sym15": (-(h - 1), h - 1), "ref17": (-h, h), "int4": (-h, h - 1),
            "unsigned": (0, 2 ** bits - 1), "ref24": (-h, 2 ** bits - 1)}[grid]


@functools.lru_cache(maxsize=None)
def _container_grid(qn: int, qp: int) -> nx.IntGrid:
    """The narrowest ``IntGrid`` holding ``[qn, qp]`` (symmetric preferred; exact for the 4-bit grids).
    A pure function of the range (a frozen grid), cached: the search costs more than a small tensor's
    quantization."""
    for b in range(1, 33):
        cands = [nx.IntGrid(b, signed=False)] if qn >= 0 else []
        if b >= 2:
            cands += [nx.IntGrid(b, signed=True, symmetric=True), nx.IntGrid(b, signed=True)]
        for g in cands:
            if g.qmin <= qn and qp <= g.qmax:
                return g
    raise AssertionError(f"no grid holds [{qn}, {qp}]")


@dataclass(frozen=True, eq=False)
class SawbQuantized(AffineQuantized):
    """SAWB result: ``value = codes * step`` (``offset`` is None) with ``Qn <= codes <= Qp``.

    ``grid`` is the narrowest :class:`hw.numerics.IntGrid` holding ``[qmin, qmax]`` (exactly the grid
    for ``sym15``/``int4``/unsigned activations; a 5-bit container for ``ref17`` and ``ref24``).
    ``clip`` is the clipping value actually used (after the degenerate-case fallback, flagged by
    ``clip_fallback``). ``seen_negative`` is the activation state to pass to the next call.
    """

    qmin: int = 0
    qmax: int = 0
    clip: torch.Tensor | None = None
    clip_fallback: bool = False
    seen_negative: bool = False


def _round_down(value: Fraction, dtype: torch.dtype) -> float:
    """The largest ``dtype`` number <= ``value`` (``value`` > 0)."""
    t = torch.tensor(float(value), dtype=dtype)
    while Fraction(float(t)) > value:
        t = torch.nextafter(t, torch.tensor(0.0, dtype=dtype))
    return float(t)


def _round_up(value: Fraction, dtype: torch.dtype) -> float:
    """The smallest ``dtype`` number >= ``value`` (``inf`` past the largest finite one)."""
    t = torch.tensor(float(value), dtype=dtype)
    while math.isfinite(float(t)) and Fraction(float(t)) < value:
        t = torch.nextafter(t, torch.tensor(math.inf, dtype=dtype))
    return float(t)


@functools.lru_cache(maxsize=None)
def _scale_cap(qmag: int, dtype: torch.dtype) -> float:
    """The largest ``dtype`` scale with ``qmag * scale`` finite (a pure function of its arguments, cached:
    the exact search costs more than the quantization of a small tensor)."""
    return _round_down(Fraction(torch.finfo(dtype).max) / qmag, dtype)


def _coeffs(coeffs, bits: int) -> tuple[float, float]:
    if isinstance(coeffs, str):
        check_choice(coeffs, tuple(SAWB_COEFFS), "sawb", "coeffs")
        if bits != 4:
            raise ValueError(f"sawb: the {coeffs!r} coefficients {SAWB_COEFFS[coeffs]} are for 4 bits only "
                             f"(other widths' coefficients are not known); got bits={bits}. "
                             f"Pass coeffs=(c1, c2) explicitly")
        return SAWB_COEFFS[coeffs]
    try:
        c1, c2 = (float(c) for c in coeffs)
    except (TypeError, ValueError):
        raise ValueError(f"sawb: coeffs must be 'ref', 'alt' or a pair (c1, c2) of numbers, got {coeffs!r}") from None
    if not (math.isfinite(c1) and math.isfinite(c2)):
        raise ValueError(f"sawb: coeffs must be finite, got {coeffs!r}")
    return c1, c2


def _range_and_norms(x: torch.Tensor) -> tuple[torch.Tensor, float, float, float, float]:
    """``(xc, lo, hi, norm2, norm1)``: :func:`check_input_range`'s ``(xc, lo, hi)`` (the sign of a zero
    extreme never matters to SAWB) and the float64 norms ``torch.linalg.vector_norm(x.double(), p)`` for
    ``p = 2, 1`` as Python floats. From one native pass (:func:`_native_stats`) where it gives the same
    numbers, else from torch."""
    stats = _native_stats(x)
    if stats is not None:
        return x, *stats
    xc, lo, hi = check_input_range(x, "sawb", any_order=True)
    # One float64 copy for both norms: ``vector_norm(x, p, dtype=float64)`` converts x to float64 (the
    # same memory layout) and reduces that, so reducing our own copy is the same bits (tests/test_sawb.py).
    xd = xc.to(torch.float64)
    return xc, lo, hi, float(torch.linalg.vector_norm(xd, 2)), float(torch.linalg.vector_norm(xd, 1))


# ATen reduces a tensor of at least this many elements in per-thread pieces when it has several threads
# (at::internal::GRAIN_SIZE), which changes the 1-norm's order; below it, or on one thread, the order is
# the element order the kernel uses.
_ATEN_GRAIN = 32768


def _native_stats(x: torch.Tensor) -> tuple[float, float, float, float] | None:
    """``(lo, hi, norm2, norm1)`` of a dense float32 CPU tensor (contiguous or channels-last, finite)
    from ``tetrad_sawb_stats_f32``, or None where the kernel does not apply (then the torch code runs,
    and raises for bad input): no kernels, another dtype/layout/device, NaN/Inf, several torch threads
    on a large tensor, or a torch whose reduction order differs from the kernel's."""
    lib = native.kernels()
    if lib is None or not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.device.type != "cpu" \
            or x.numel() == 0:
        return None
    if not (x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))):
        return None
    if x.numel() >= _ATEN_GRAIN and torch.get_num_threads() != 1:
        return None
    if not _kernel_order_is_torchs(lib):
        return None
    lo, hi, s1, s2 = _stats_call(lib, x.detach())
    if not math.isfinite(s1):
        return None
    return lo, hi, math.sqrt(s2), s1


def _stats_call(lib, x: torch.Tensor) -> tuple[float, float, float, float]:
    """The kernel's ``(min, max, sum |x|, sum x**2)`` of dense float32 ``x`` in storage order."""
    out = (ctypes.c_double * 4)()
    lib.tetrad_sawb_stats_f32(x.data_ptr(), x.numel(), out)
    return out[0], out[1], out[2], out[3]


def _order_probes() -> tuple[torch.Tensor, torch.Tensor]:
    """Two float32 tensors whose float64 norms tell the lane counts apart: 1.0 then 1002 tiny values, whose
    magnitudes (first tensor, 2**-53) and squares (second, 2**-54) the 1.0 absorbs one at a time (a tie or
    less than half its ulp), while lane sums of them do not vanish when added to it."""
    return tuple(torch.cat([torch.ones(1), torch.full((1002,), 2.0 ** e)]) for e in (-53, -27))


@functools.lru_cache(maxsize=None)
def _kernel_order_is_torchs(lib) -> bool:
    """Whether this torch sums its float64 norms with the kernel's lane counts (element order for the
    1-norm, four lanes for the 2-norm): checked once on :func:`_order_probes`, a guard against another
    torch build or CPU dispatch (e.g. eight-lane vectors). It does not see every possible difference (the
    order in which the four lane sums are combined, say): tests/test_fast_luq.py compares many tensors
    with this torch's norms bit for bit."""
    for p in _order_probes():
        _, _, s1, s2 = _stats_call(lib, p)
        pd = p.double()
        if s1 != float(torch.linalg.vector_norm(pd, 1)) or math.sqrt(s2) != float(torch.linalg.vector_norm(pd, 2)):
            return False
    return True


def sawb(x: torch.Tensor, bits: int = 4, *, kind: Kind = "weight",
         coeffs: str | tuple[float, float] = "ref", weight_grid: str = "sym15",
         seen_negative: bool = False, signed_act_grid: str = "ref24") -> SawbQuantized:
    """SAWB per-tensor INT quantization with round-to-nearest (ALGORITHMS.md §4(a), LUQ's ``Q_INT``).

    .. math::

        \\mathrm{clip} = c_1 \\sqrt{\\overline{x^2}} - c_2\\,\\overline{|x|}, \\qquad
        s = \\frac{2\\,\\mathrm{clip}}{Q_p - Q_n}, \\qquad
        q = \\mathrm{round}\\bigl(\\mathrm{clamp}(x / s,\\ Q_n,\\ Q_p)\\bigr), \\qquad
        \\hat x = q\\,s

    ``round`` is ``torch.round`` (half to even, as the reference). The statistics are accumulated in
    float64 (no overflow of ``x**2``; the reference uses float32) and ``clip``/``s`` are computed in
    float64 and rounded once to the compute dtype; ``x / s`` is a division in the compute dtype.

    Parameters
    ----------
    x : torch.Tensor
        Weights or activations (float; float16/bfloat16 computed in float32), finite, non-empty.
    bits : int, default 4
        Code width. The named coefficient sets are 4-bit values; any other width needs explicit
        ``coeffs=(c1, c2)`` (then 2..16 bits, with the ranges of :func:`sawb_range`).
    kind : {"weight", "activation"}, default "weight"
        Selects the range (:func:`sawb_range`).
    coeffs : {"ref", "alt"} or (c1, c2), default "ref"
        "ref" = (12.1, 12.2), the LUQ reference code (default, [PROPOSED] §4(a));
        "alt" = (12.68, 12.80), third-party SAWB code; or explicit numbers.
    weight_grid : {"sym15", "ref17", "int4"}, default "sym15"
        Weight range: ``sym15`` = [-7, 7] (hardware default, [PROPOSED]); ``ref17`` = [-8, 8] (the
        reference code: 17 levels, does not fit 4 bits; use only to reproduce it); ``int4`` = [-8, 7].
        Ignored for activations.
    seen_negative : bool, default False
        Activation state (ignored for weights). The reference switches a layer's activation range to
        ``Qn = -2**(bits-1)`` once any input has been negative and never switches back; that state is
        this explicit argument instead of hidden module state. The range is signed if
        ``seen_negative or min(x) < 0``; the result's ``seen_negative`` is the updated state::

            q = sawb(a, kind="activation", seen_negative=state); state = q.seen_negative

    signed_act_grid : {"ref24", "int4", "sym15"}, default "ref24"
        Range of a signed activation: ``ref24`` = [-8, 15] as the reference (24 levels, 5 bits);
        ``int4`` = [-8, 7] and ``sym15`` = [-7, 7] are [PROPOSED] 4-bit alternatives.

    Returns
    -------
    SawbQuantized
        ``codes`` (int8 for every grid here), ``step = s`` (0-dim), ``offset = None``, ``grid``,
        ``qmin``/``qmax``, ``clip``, ``clip_fallback``, ``seen_negative``; ``seed``/``rand_bits`` are
        None (deterministic).

    Notes
    -----
    Degenerate statistics ([PROPOSED]; the reference would divide by ``scale <= 0``): if
    ``clip <= 0`` -- an all-zero tensor, or ``sqrt(mean x**2) / mean|x| <= c2 / c1`` (nearly
    constant magnitudes: a ``±a`` tensor gives ``clip = (c1 - c2) a = -0.1 a`` with "ref") -- then
    ``s`` is the smallest scale that clips nothing, ``max(max(x) / Qp, min(x) / Qn, 0)`` rounded up
    to the compute dtype (a ``±a`` weight tensor is then exact, ``±7``), ``clip`` is reported as
    ``s (Qp - Qn) / 2`` and ``clip_fallback`` is set. If ``s`` is 0 or rounds to 0 (all-zero or
    subnormal-only input) ``s = 1`` (all codes 0). Finally ``s`` is capped at the largest value with
    ``max(|Qn|, Qp) * s`` finite (only inputs within ~10x of the dtype's largest value reach it), so
    every dequantized value is finite. Alternatives (raise, or ``clip = max|x|``) were
    rejected: a training step must not fail on a degenerate tensor, and ``max|x|`` wastes half of
    an unsigned activation range.

    Raises
    ------
    ValueError
        Bad argument, NaN/Inf or empty input (the message names ``sawb``); ``TypeError`` for a
        non-float tensor.
    """
    check_bits(bits, "sawb", 2, 16)
    c1, c2 = _coeffs(coeffs, bits)
    check_choice(kind, ("weight", "activation"), "sawb", "kind")
    check_choice(weight_grid, WEIGHT_GRIDS, "sawb", "weight_grid")
    check_choice(signed_act_grid, SIGNED_ACT_GRIDS, "sawb", "signed_act_grid")
    if not isinstance(seen_negative, bool):
        raise ValueError(f"sawb: seen_negative must be a bool, got {seen_negative!r}")
    xc, lo, hi, norm2, norm1 = _range_and_norms(x)
    dt = xc.dtype

    signed = False
    if kind == "activation":
        # The reference switches QnA to -2**(b-1) for good once min(input) < 0 (§4(a)); the state is
        # the caller's, passed in and returned, never hidden in this module.
        signed = seen_negative or lo < 0
    qn, qp = sawb_range(bits, kind=kind, weight_grid=weight_grid, signed=signed,
                        signed_act_grid=signed_act_grid)

    # §4(a): clip = c1 sqrt(mean x^2) - c2 mean|x|. Accumulate in float64 so x**2 cannot overflow.
    n = xc.numel()
    rms = norm2 / math.sqrt(n)
    mean_abs = norm1 / n
    clip = c1 * rms - c2 * mean_abs
    fallback = not clip > 0.0          # also catches NaN from an overflowing float64 norm
    if not fallback:
        scale = round_to_dtype(2.0 * clip / (qp - qn), dt)    # one rounding, as a float64 tensor's .to(dt)
    else:
        # [PROPOSED] degenerate statistics: the smallest scale that clips nothing, rounded up so that
        # x / scale stays inside [Qn, Qp] after the (monotone) float division.
        lo, hi = Fraction(lo), Fraction(hi)
        need = max(hi / qp, lo / qn if qn < 0 else Fraction(0), Fraction(0))
        scale = _round_up(need, dt) if need > 0 else 0.0
        clip = scale * (qp - qn) / 2.0
    if scale == 0.0:                   # all-zero input, or a scale that underflows: codes are all 0
        scale = 1.0
    # Cap the scale so that every code * scale is finite (matters only for |x| within ~10x of the
    # dtype's largest value, where clip can exceed it).
    scale = min(scale, _scale_cap(max(-qn, qp), dt))
    step = scalar_tensor(scale, dt, xc.device)

    # The reference's order: divide, clamp, round half to even (RDN, §0). A float32 CPU tensor with int8
    # codes takes one fused pass (host.quant.native) where the kernels are available: the same bits.
    cdt = codes_dtype(qn, qp)
    lib = native.kernels() if dt == torch.float32 and xc.device.type == "cpu" and cdt == torch.int8 else None
    if lib is None:
        codes = torch.div(xc, step).clamp_(qn, qp).round_().to(cdt)
    else:
        # elementwise in memory order: a channels-last x (a convolution's input) is read as it lies and
        # its codes come out channels-last, as the torch passes give them (no contiguous copy)
        xcc, codes = elementwise_out(xc, cdt)
        lib.tetrad_sawb_codes_f32(xcc.data_ptr(), n, scale, qn, qp, codes.data_ptr())
    return SawbQuantized(codes=codes, method="sawb", seed=None, rand_bits=None,
                         step=step, offset=None, grid=_container_grid(qn, qp), qmin=qn, qmax=qp,
                         clip=scalar_tensor(clip, torch.float64), clip_fallback=fallback,
                         seen_negative=signed if kind == "activation" else False)
