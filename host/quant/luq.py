"""LUQ: logarithmic unbiased quantization of neural gradients (Chmiel et al., ICLR 2023).

Golden model of ALGORITHMS.md §4 (the backward quantizer ``Q_FP``) and of SMP, its multiple-sample
variance reduction (§4 "SMP"). The forward INT4 quantizer of the same paper is :mod:`host.quant.sawb`.

With ``y = |x| / alpha`` and one uniform ``u`` per element (draw ``i`` of the contract's stream for
element ``i``, row-major; ``hw.numerics.rng_draw`` / ``draw_to_uniform``):

* ``y < 1`` (stochastic underflow, paper Eq. 10): ``alpha * SR(y)``, i.e. ``alpha`` with probability ``y``;
* ``2**n <= y < 2**(n+1)`` (log-domain SR, Eq. 12): ``alpha * 2**n * (1 + SR(y / 2**n - 1))``;

where ``SR(v) = floor(v + u)`` (ALGORITHMS.md §0), the sign is kept, and zero and exact powers of two
are deterministic. ``rounding="rdn"`` is the paper's biased naive baseline (round to the nearest level in
linear value, deterministic underflow): the same rule with ``u = 1/2`` for every element, and with
``underflow="flush"`` every ``|x| < alpha`` is set to 0 (the hard threshold without stochastic underflow). The result is the signed LOG code ``c`` of ``hw.numerics.LogFormat``:
``value = sign(c) * alpha * 2**(|c| - 1)``, ``c = 0`` for zero.

Exactness. The decisions above are made *as if in exact arithmetic* on the float inputs ``x``,
``alpha`` and ``u`` -- the semantics a fixed-point datapath (compare ``|x|`` against ``alpha * 2**n *
(2 - u)``, §5.1) implements. The fast path divides in the input's float type and adds the random bits to
the quotient's mantissa (a carry into the exponent is the "round up" of log-domain SR); because every
threshold is representable and rounding is monotone, the rounded quotient can only mislead when it lands
exactly on a threshold, which shows up as a zero mantissa after the add. Those elements (at most
``2**-(rand_bits)`` of them) are re-decided exactly (float64 products for float32 inputs, rationals for
float64 inputs). See docs/numerics/luq.md.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import torch

from hw import numerics as nx
from host.quant.core import (
    LogQuantized, Quantized, Rounding, check_choice, check_input_range, codes_dtype, draw_seed, draws_for,
    round_to_dtype, scalar_tensor,
)
from host.quant import native
from host.quant.rng import resolve_seed

__all__ = ["luq", "luq_smp", "luq_alpha", "smp_draw_stride", "LogSMPQuantized",
           "ALPHA_MODES", "MAX_SOURCES", "ROUNDINGS", "UNDERFLOWS"]

ALPHA_MODES = ("float", "pow2")
MAX_SOURCES = ("absmax", "signed")
ROUNDINGS = ("sr", "rdn")
UNDERFLOWS = ("nearest", "flush")

AlphaMode = Literal["float", "pow2"]
MaxSource = Literal["absmax", "signed"]

# Bit layout of the compute dtypes: (same-width int type, mantissa bits, exponent bias, smallest
# positive power of two). float16/bfloat16 inputs are computed in float32 (core.check_input).
_LAYOUT = {
    torch.float32: (torch.int32, 23, 127, -149),
    torch.float64: (torch.int64, 52, 1023, -1074),
}


# ---------------------------------------------------------------------------------------------------
# alpha
# ---------------------------------------------------------------------------------------------------

def _round_up_to(value: Fraction, dtype: torch.dtype) -> float:
    """The smallest ``dtype`` number >= ``value`` (``value`` > 0, within the dtype's range)."""
    if dtype not in (torch.float32, torch.float64):
        t = torch.tensor(float(value), dtype=dtype)
        inf = torch.tensor(math.inf, dtype=dtype)
        while Fraction(float(t)) < value:
            t = torch.nextafter(t, inf)
        return float(t)
    # the same steps on Python floats (no tensors): float(value) rounded to dtype as torch.tensor does,
    # then the next dtype number up (IEEE bit patterns of non-negative numbers are ordered)
    t = round_to_dtype(float(value), dtype)
    while Fraction(t) < value:
        t = math.nextafter(t, math.inf) if dtype == torch.float64 else _F32_NEXT_UP(t)
    return t


def _F32_NEXT_UP(t: float) -> float:
    """``torch.nextafter(t, inf)`` of a float32 number ``t >= 0`` (``+0.0`` included), as a Python float."""
    bits = struct.unpack("<I", struct.pack("<f", t))[0]
    return struct.unpack("<f", struct.pack("<I", bits + 1))[0]


_NORMAL_MIN = {torch.float32: math.ldexp(1.0, -126), torch.float64: math.ldexp(1.0, -1022)}


def _alpha_value(m: float, max_exp: int, alpha_mode: str, dtype: torch.dtype) -> float:
    """alpha for a tensor whose selected max is ``m >= 0`` (a Python float holding a ``dtype`` value)."""
    if m == 0.0:
        # All-zero tensor: every code is 0 whatever alpha is; 1 = 2**0 is finite and a power of two
        # in both modes (spec §4 leaves it open; documented choice).
        return 1.0
    if alpha_mode == "float":
        # Eq. 11 / reference code: the top level alpha * 2**max_exp is max|x| itself (no clipping).
        # Dividing by a power of two is exact unless alpha is subnormal and loses bits; then round alpha
        # up to the next representable number, which keeps "no clipping" and unbiasedness (any alpha
        # is unbiased) but makes the top level exceed m by less than one ulp * 2**max_exp.
        if dtype in _NORMAL_MIN:
            a = math.ldexp(m, -max_exp)          # exact in float64; a dtype number itself if normal
            if a >= _NORMAL_MIN[dtype]:
                return a                         # = _round_up_to(m / 2**max_exp): the exact value
        return _round_up_to(Fraction(m) / 2 ** max_exp, dtype)
    # pow2 (App. A.7, [PROPOSED] reading): the smallest power of two >= m / 2**max_exp, computed from
    # the binary exponent of m (frexp is exact; a float log2 could misround near powers of two).
    mant, e = math.frexp(m)                      # m = mant * 2**e, 0.5 <= mant < 1
    k = e - max_exp - (1 if mant == 0.5 else 0)  # m == 2**(e-1) exactly fits one binade lower
    k = max(k, _LAYOUT[dtype][3])                # still >= m / 2**max_exp: tiny m, smallest power
    return math.ldexp(1.0, k)


def luq_alpha(x: torch.Tensor, *, max_exp: int = 6, alpha_mode: AlphaMode = "float",
              max_source: MaxSource = "absmax") -> torch.Tensor:
    """The per-tensor LUQ scale ``alpha`` (ALGORITHMS.md §4(a), Eq. 11 and discrepancies 1-2).

    .. math::

        \\alpha = M / 2^{E}                                    \\quad (\\text{alpha\\_mode="float"})

        \\alpha = 2^{\\lceil \\log_2 (M / 2^{E}) \\rceil}         \\quad (\\text{alpha\\_mode="pow2"})

    with ``E = max_exp`` and ``M = max|x|`` (``max_source="absmax"``) or ``M = max(x)``
    (``max_source="signed"``).

    Parameters
    ----------
    x : torch.Tensor
        Floating-point tensor (float16/bfloat16 are computed in float32), finite, non-empty.
    max_exp : {6, 7}, default 6
        Exponent of the top level: 6 is the strict 16-code FP4 [1,3,0] format ``LOG4`` (hardware
        default, [PROPOSED]); 7 reproduces the reference code (``/2**7``, 17 codes, ``LOG4_REF``).
    alpha_mode : {"float", "pow2"}, default "float"
        "float": ``alpha = M / 2**E`` exactly, so the top level equals ``M`` (rounded *up* to the next
        representable number in the rare case that it would be an inexact subnormal).
        "pow2" ([PROPOSED] reading of App. A.7, not retrieved): the smallest power of two
        ``>= M / 2**E`` (the smallest positive power of two of the dtype if that is larger); rounding up
        keeps "no clipping" and dequantization becomes a shift.
    max_source : {"absmax", "signed"}, default "absmax"
        "absmax" follows the paper (``max|x|``). "signed" reproduces the reference code's
        ``torch.max(grad)``; it needs ``max(x) > 0`` unless ``x`` is all zero.

    Returns
    -------
    torch.Tensor
        0-dim tensor in the compute dtype. An all-zero ``x`` gives ``alpha = 1`` (every code is 0).

    Raises
    ------
    ValueError
        Bad argument, NaN/Inf/empty input, or ``max_source="signed"`` with ``max(x) <= 0`` for a
        non-zero tensor (the reference code would produce ``alpha <= 0`` and NaN).
    """
    xc, lo, hi = check_input_range(x, "luq")
    _check_config(max_exp, alpha_mode, max_source)
    return _alpha(xc, lo, hi, max_exp, alpha_mode, max_source)


def _check_config(max_exp, alpha_mode, max_source) -> nx.LogFormat:
    if isinstance(max_exp, bool) or max_exp not in (6, 7):
        raise ValueError(f"luq: max_exp must be 6 (strict FP4) or 7 (reference code), got {max_exp!r}")
    check_choice(alpha_mode, ALPHA_MODES, "luq", "alpha_mode")
    check_choice(max_source, MAX_SOURCES, "luq", "max_source")
    return nx.LogFormat(max_exp=max_exp)


def _alpha(xc: torch.Tensor, lo: float, hi: float, max_exp: int, alpha_mode: str,
           max_source: str) -> torch.Tensor:
    """``alpha`` of ``xc`` whose min and max are ``lo``, ``hi`` (from :func:`check_input_range`)."""
    absmax = max(-lo, hi)
    if max_source == "absmax":
        m = absmax
    else:
        m = hi
        if absmax != 0.0 and m <= 0.0:
            raise ValueError(
                f"luq: max_source='signed' needs max(x) > 0 (the reference code's alpha = max(x)/2**E "
                f"would be {m!r}/2**{max_exp} <= 0 and give NaN); got max(x) = {m!r}. "
                f"Use max_source='absmax' (the paper's max|x|)")
    alpha = _alpha_value(m, max_exp, alpha_mode, xc.dtype)
    fmax = torch.finfo(xc.dtype).max
    if absmax / alpha > fmax:
        raise ValueError(f"luq: max|x| / alpha = {absmax!r} / {alpha!r} overflows {xc.dtype} "
                         f"(max_source='signed' with max(x) tiny next to min(x)); use max_source='absmax'")
    if absmax > 0.0 and not 2.0 * absmax <= fmax:
        # (skipped when 2 max|x| <= fmax: alpha * 2**k < 2 alpha y = 2 max|x| then, so it cannot raise)
        # The highest level an element can reach is alpha * 2**ceil(log2(max|x| / alpha)); it must be
        # finite. Only pow2 alpha near the top of the range (or the signed quirk) can break this.
        y = Fraction(absmax) / Fraction(alpha)
        k = y.numerator.bit_length() - y.denominator.bit_length()   # 2**(k-1) < y < 2**(k+1)
        k = k + 1 if Fraction(2) ** k < y else (k - 1 if Fraction(2) ** (k - 1) >= y else k)
        if Fraction(alpha) * 2 ** k > Fraction(fmax):
            raise ValueError(f"luq: the top level alpha * 2**{k} = {alpha!r} * 2**{k} overflows {xc.dtype} "
                             f"(max|x| = {absmax!r}, alpha_mode={alpha_mode!r}, max_source={max_source!r}); "
                             f"use alpha_mode='float' with max_source='absmax'")
    return scalar_tensor(alpha, xc.dtype, xc.device)


# ---------------------------------------------------------------------------------------------------
# codes
# ---------------------------------------------------------------------------------------------------

def _log_sr_codes(xc: torch.Tensor, alpha: torch.Tensor, u: torch.Tensor, narrow: bool) -> torch.Tensor:
    """Signed LOG codes of ``x / alpha`` (``u`` is consumed): int8 if ``narrow`` (float32 input whose
    codes are known to lie in [-8, 8]), else int16.

    Fast path: ``y = fl(|x| / alpha)``, and ``y <- max(y, (y + 1) / 2)``, which maps the underflow
    range ``[0, 1)`` onto ``[1/2, 1)`` (mantissa ``y``, one binade below bin 0) and leaves ``y >= 1``
    alone. With ``R = u * 2**mbits`` (an integer: ``u`` has at most 17 significant bits), the SR
    decision ``frac >= 1 - u`` is the carry of ``mantissa + R``, so the biased exponent field of
    ``bits(y) + R`` is ``bias - 1 + |c|``: one integer add and a shift give the code.
    """
    ity, mbits, bias, _ = _LAYOUT[xc.dtype]
    y = torch.abs(xc).div_(alpha)
    half = torch.tensor(0.5, dtype=y.dtype, device=y.device)
    z = torch.add(half, y, alpha=0.5)           # (y + 1) / 2, monotone in y (rounds only if y is tiny)
    torch.maximum(y, z, out=y)
    bits = y.view(ity)
    r = u.view(ity)                             # R = u * 2**mbits, exact, converted in place
    r.copy_(u.mul_(2.0 ** mbits))               # (exact overlap: each element reads then writes itself)
    bits.add_(r)
    # A zero mantissa after the add means mantissa + R == 2**mbits exactly: the rounded quotient sits
    # on the SR threshold, where the exact quotient may lie just below it. Re-decide those exactly.
    low = torch.bitwise_and(bits, (1 << mbits) - 1, out=z.view(ity))   # z's storage is free now
    idx = low.eq_(0).view(-1).nonzero().squeeze(1)
    field = bits.bitwise_right_shift_(mbits)
    if narrow:
        # float32 with |c| <= 8: the field (<= 255) fits uint8 and |c| = field - 126 lies in [0, 8],
        # so uint8 arithmetic (modulo 256) is exact; reinterpret as int8 for the sign.
        mags = field.to(torch.uint8).sub_(bias - 1).view(torch.int8)
    else:
        # The field is at most 2**11 - 1: int16 holds every code (float64, max_source="signed").
        mags = field.to(torch.int16).sub_(bias - 1)
    if idx.numel():
        _resolve_exact(xc, alpha, r.view(-1)[idx] * 2.0 ** -mbits, mags, idx)
    neg = torch.signbit(xc).view(torch.uint8).to(mags.dtype) if not narrow else \
        torch.signbit(xc).view(torch.int8)
    return mags.bitwise_xor_(neg.neg()).add_(neg)   # two's-complement negate where x < 0 (-0.0 -> 0)


def _resolve_exact(xc, alpha, uu, mags, idx) -> None:
    """Exact decision for the elements ``idx`` (flat) whose rounded quotient landed on the SR threshold.

    The fast path rounded them *up* (to ``|c|``); the exact rule rounds up iff
    ``|x| >= alpha * (1 - u)`` (``|c| == 1``, underflow) or ``|x| >= alpha * 2**(|c|-2) * (2 - u)``
    (``|c| >= 2``). Rounding is monotone and ``2**k`` is representable, so the rounded quotient lies in
    the exact quotient's bin and only this one comparison can differ.
    """
    flat = mags.view(-1)
    a = xc.reshape(-1)[idx].abs()
    c = flat[idx]
    if xc.dtype == torch.float32:
        # float64 holds these products exactly: alpha (24 bits) * (2 - u) (<= 18 bits) * 2**k.
        k = (c - 2).clamp_(min=0).to(torch.float64)
        lead = torch.where(c == 1, 1.0, 2.0).to(torch.float64)
        thr = alpha.double() * torch.exp2(k) * (lead - uu.double())
        down = a.double() < thr
    else:
        al = Fraction(float(alpha))
        down_l = []
        for ai, ui, ci in zip(a.tolist(), uu.tolist(), c.tolist()):
            thr = al * (1 - Fraction(ui)) if ci == 1 else al * 2 ** (ci - 2) * (2 - Fraction(ui))
            down_l.append(Fraction(ai) < thr)
        down = torch.tensor(down_l, dtype=torch.bool, device=mags.device)
    flat[idx] = c - down.to(c.dtype)


def _narrow_codes_native(lib, xc, alpha, seed, rand_bits, draw_offset) -> torch.Tensor:
    """:func:`_log_sr_codes` for the narrow case in one fused pass (``native.c``), the draws of stream
    ``seed`` from ``draw_offset`` included (``seed=None``: u = 1/2, RDN). The kernel leaves the elements on
    an SR threshold unsigned and lists them; they get the same exact decision and sign as there."""
    n = xc.numel()
    codes = torch.empty(xc.shape, dtype=torch.int8)
    amb_idx = torch.empty(n, dtype=torch.int64)
    amb_u = torch.empty(n, dtype=torch.float32)
    k = lib.tetrad_luq_codes_f32(xc.data_ptr(), n, float(alpha), 0 if seed is None else seed, draw_offset,
                                 rand_bits or nx.DEFAULT_RAND_BITS, seed is None, codes.data_ptr(),
                                 amb_idx.data_ptr(), amb_u.data_ptr())
    if k:
        _settle_threshold_elements(xc, alpha, amb_u[:k], codes, amb_idx[:k])
    return codes


def _settle_threshold_elements(xc, alpha, uu, codes, idx) -> None:
    """The native kernels' threshold elements ``idx`` (flat, their codes unsigned): the exact decision of
    :func:`_resolve_exact`, then the sign, as :func:`_log_sr_codes` gives them."""
    _resolve_exact(xc, alpha, uu, codes, idx)
    flat = codes.view(-1)
    neg = torch.signbit(xc.reshape(-1)[idx]).view(torch.int8)
    flat[idx] = flat[idx].bitwise_xor_(neg.neg()).add_(neg)


def _smp2_codes_native(xc, alpha, seed, rand_bits, stride) -> torch.Tensor | None:
    """:func:`luq_smp`'s stacked codes ``(2, *x.shape)`` for two samples of a float32 CPU ``x`` with
    ``max_source="absmax"``, in one pass of :mod:`host.quant.native` (``tetrad_luq_smp2_codes_f32``: the
    quotient ``|x| / alpha`` once, each sample's draws ``j * stride + i`` and codes as
    ``tetrad_luq_codes_f32`` computes them); ``None`` where the kernels are unavailable."""
    lib = native.kernels() if xc.dtype == torch.float32 and xc.device.type == "cpu" else None
    if lib is None:
        return None
    n = xc.numel()
    codes = torch.empty((2, *xc.shape), dtype=torch.int8)
    amb_idx = torch.empty(2 * n, dtype=torch.int64)
    amb_u = torch.empty(2 * n, dtype=torch.float32)
    k = lib.tetrad_luq_smp2_codes_f32(xc.data_ptr(), n, float(alpha), seed, stride, rand_bits, codes.data_ptr(),
                                      amb_idx.data_ptr(), amb_u.data_ptr())
    if k:
        idx, uu = amb_idx[:k], amb_u[:k]
        for j in range(2):      # the listed elements of sample j, as indices into x
            sel = (idx >= n) if j else (idx < n)
            if bool(sel.any()):
                _settle_threshold_elements(xc, alpha, uu[sel], codes[j], idx[sel] - j * n)
    return codes


def _quantize(xc, alpha, fmt, max_source, seed, generator, rand_bits, draw_offset,
              method="luq", rounding="sr", underflow=None) -> LogQuantized:
    # With max|x| as the source every |y| <= 2**max_exp, so |c| <= max_exp + 1 <= 8 by construction.
    narrow = xc.dtype == torch.float32 and max_source == "absmax"
    lib = native.kernels() if narrow and xc.device.type == "cpu" else None
    if rounding == "rdn":
        # Round to the nearest level in linear value = SR with u = 1/2 for every element: floor(y + 1/2)
        # below alpha (0 or alpha, tie at alpha/2 up) and 2**n * (1 + floor(y/2**n - 1/2)) in bin n
        # (tie at 1.5 * 2**n up, the paper's RDNP midpoint 3/4 * 2**(n+1), Eq. 13). 1/2 is a draw value
        # the fast path handles exactly (R = 2**(mbits-1)), so the codes are exact as for SR.
        seed, rand_bits = None, None
        u = None if lib is not None else torch.full(xc.shape, 0.5, dtype=xc.dtype, device=xc.device)
    else:
        try:
            if lib is None:
                seed, u = draws_for(xc, seed, generator, rand_bits, offset=draw_offset)
            else:   # the kernel draws
                seed = draw_seed(xc, seed, generator, rand_bits, draw_offset)
        except ValueError as e:
            raise ValueError(f"{method}: {e}") from None
    if lib is not None:
        codes = _narrow_codes_native(lib, xc, alpha, seed, rand_bits, draw_offset)
    else:
        codes = _log_sr_codes(xc, alpha, u, narrow)
    if underflow == "flush":
        _flush_below(xc, alpha, codes, lib)
    if not narrow:
        lo, hi = (int(v) for v in torch.aminmax(codes))
        top = max(-lo, hi)
        if max_source == "absmax" and top > fmt.max_code:
            raise AssertionError(f"{method}: code {top} outside LogFormat(max_exp={fmt.max_exp}) (a bug)")
        codes = codes.to(codes_dtype(-top, top))
    return LogQuantized(codes=codes, method="luq", seed=seed, rand_bits=rand_bits, alpha=alpha, fmt=fmt)


def _flush_below(xc: torch.Tensor, alpha: torch.Tensor, codes: torch.Tensor, lib) -> None:
    """Set ``codes`` to 0 where ``|x| < alpha``: the format's hard threshold T_alpha without its stochastic
    part (an exact compare). In one native pass where ``lib`` is loaded and ``x``, ``codes`` are
    contiguous float32 and int8 (the narrow case), else torch's mask."""
    if lib is not None and codes.dtype == torch.int8 and codes.is_contiguous() and xc.is_contiguous() \
            and xc.dtype == torch.float32 and codes.shape == xc.shape:
        lib.tetrad_luq_flush_f32(xc.data_ptr(), xc.numel(), float(alpha), codes.data_ptr())
    else:
        codes.masked_fill_(torch.abs(xc) < alpha, 0)


def _check_run(rand_bits, draw_offset, method):
    check_choice(rand_bits, nx.RAND_BITS_ALLOWED, method, "rand_bits")
    if isinstance(draw_offset, bool) or not isinstance(draw_offset, int) or draw_offset < 0:
        raise ValueError(f"{method}: draw_offset must be a non-negative int, got {draw_offset!r}")


def luq(x: torch.Tensor, *, max_exp: int = 6, alpha_mode: AlphaMode = "float",
        max_source: MaxSource = "absmax", seed: int | None = None,
        generator: torch.Generator | None = None, rand_bits: int = nx.DEFAULT_RAND_BITS,
        draw_offset: int = 0, rounding: Rounding = "sr",
        underflow: Literal["nearest", "flush"] | None = None) -> LogQuantized:
    """LUQ: stochastic underflow + logarithmic stochastic rounding to FP4 [1,3,0] (ALGORITHMS.md §4(a)).

    With ``alpha`` from :func:`luq_alpha`, ``y = |x| / alpha`` and one uniform ``u`` per element:

    .. math::

        Q(x) = \\operatorname{sign}(x)\\,\\alpha \\cdot
        \\begin{cases}
          \\mathrm{SR}(y) & y < 1 \\quad(\\text{underflow, Eq. 10: } \\alpha \\text{ w.p. } y)\\\\
          2^n\\,\\bigl(1 + \\mathrm{SR}(y/2^n - 1)\\bigr) & 2^n \\le y < 2^{n+1},\\ n \\ge 0
          \\quad(\\text{Eq. 12})
        \\end{cases}

    ``SR(v) = floor(v + u)``, evaluated exactly (see the module docstring), so ``E[Q(x)] = x`` (up to
    the ``2**-(rand_bits+1)`` draw resolution), ``Var = y(1-y) alpha**2`` below ``alpha`` and
    ``(|x| - l)(h - |x|)`` between adjacent levels ``l < h``. Zero and exact powers ``alpha * 2**k``
    are deterministic. The code of a value is ``c = sign(x) * (k + 1)`` for ``|Q| = alpha * 2**k``
    (``hw.numerics.LogFormat``), ``c = 0`` for 0.

    Parameters
    ----------
    x : torch.Tensor
        The neural gradient (any shape; float16/bfloat16 computed in float32). NaN/Inf, empty and
        non-float tensors are rejected.
    max_exp : {6, 7}, default 6
        Top exponent (``|c| <= max_exp + 1``). 6 = strict FP4 ``LOG4`` [PROPOSED hardware default];
        7 = the reference code's ``/2**7`` (``LOG4_REF``, 17 codes). See ALGORITHMS.md §4 discrepancy 1.
    alpha_mode : {"float", "pow2"}, default "float"
        See :func:`luq_alpha`. "pow2" is [PROPOSED] (App. A.7 not retrieved); both are unbiased.
    max_source : {"absmax", "signed"}, default "absmax"
        "absmax": ``max|x|`` as in the paper (default, [PROPOSED] per §4 discrepancy 2). "signed": the
        reference code's ``max(x)``; negative values beyond ``max(x)`` get codes *above*
        ``max_exp + 1`` (no clipping, more levels, as in the reference), so such results are for
        reproducing the reference in simulation and do not fit the hardware format; all-negative
        input raises ``ValueError`` instead of the reference's NaN.
    seed, generator :
        The random stream: ``seed`` (int in ``[0, 2**32)``), else 32 bits drawn from ``generator``
        (or torch's default generator). The seed used is recorded in the result.
    rand_bits : {4, 8, 16}, default 16
        Random bits per draw (``hw.numerics.RAND_BITS_ALLOWED``).
    draw_offset : int, default 0
        First draw of the stream to use: element ``i`` (row-major) uses draw ``draw_offset + i``.
        :func:`luq_smp` uses it for its samples.
    rounding : {"sr", "rdn"}, default "sr"
        "sr": LUQ as above (stochastic underflow + log-domain SR, unbiased). "rdn": the *biased*
        deterministic baseline of the paper's §3 / Eq. 13 ("naive" FP4 with round-to-nearest, which
        LUQ is shown to fix): every ``|x|`` goes to the nearest level of ``{0} ∪ {alpha * 2**k}`` *in
        linear value*, ties away from zero -- ``y < 1/2 -> 0``, ``1/2 <= y < 1 -> alpha`` (deterministic
        underflow), ``y`` in bin ``[2**n, 2**(n+1))`` rounds up iff ``y >= 1.5 * 2**n`` (the midpoint
        ``3/4 * 2**(n+1)`` of RDNP). Identical to "sr" with every ``u = 1/2``. ``seed``, ``generator``,
        ``rand_bits`` and ``draw_offset`` are ignored and the result records ``seed=None``,
        ``rand_bits=None``. [PROPOSED] reading: the paper's text names RDN; "nearest" in linear value is
        the natural one for a grid with a zero.
    underflow : {None, "nearest", "flush"}, default None
        Only with ``rounding="rdn"`` (``None`` there means "nearest"): what happens below ``alpha``.
        "nearest": to 0 or ``alpha``, whichever is closer (above). "flush": every ``|x| < alpha`` becomes
        0 -- the threshold ``T_alpha`` of Eq. 10 without its stochastic part (flush-to-zero, the
        format's smallest magnitude is ``alpha``); in-range values still round to nearest. With
        ``rounding="sr"`` underflow is stochastic by definition and ``underflow`` must be ``None``.

    Returns
    -------
    LogQuantized
        ``codes`` (int8, ``|c| <= max_exp + 1``; int16 only for ``max_source="signed"`` codes beyond
        127), ``alpha`` (0-dim, compute dtype), ``fmt``
        (``LogFormat(max_exp)``), ``seed``, ``rand_bits``; ``dequantize()`` gives ``Q(x)``. With
        ``max_source="absmax"`` and ``alpha_mode="float"``, ``max|Q(x)| == max|x|`` exactly.

    Raises
    ------
    ValueError
        Bad argument or input (the message names ``luq``). ``TypeError`` for a non-float tensor.
    """
    fmt = _check_config(max_exp, alpha_mode, max_source)
    check_choice(rounding, ROUNDINGS, "luq", "rounding")
    if rounding == "sr":
        if underflow is not None:
            raise ValueError(f"luq: underflow applies to rounding='rdn' (SR underflow is stochastic), "
                             f"got underflow={underflow!r}")
        _check_run(rand_bits, draw_offset, "luq")
    elif underflow is not None:
        check_choice(underflow, UNDERFLOWS, "luq", "underflow")
    xc, lo, hi = check_input_range(x, "luq")
    xc = xc.contiguous()
    alpha = _alpha(xc, lo, hi, max_exp, alpha_mode, max_source)
    return _quantize(xc, alpha, fmt, max_source, seed, generator, rand_bits, draw_offset,
                     rounding=rounding, underflow=underflow)


# ---------------------------------------------------------------------------------------------------
# SMP
# ---------------------------------------------------------------------------------------------------

def smp_draw_stride(numel: int, rand_bits: int = nx.DEFAULT_RAND_BITS) -> int:
    """Draws reserved per SMP sample (the stride ``S`` of :func:`luq_smp`'s stream layout).

    Parameters
    ----------
    numel : int
        Elements in the quantized tensor.
    rand_bits : {4, 8, 16}, default 16
        Bits per draw.

    Returns
    -------
    int
        ``numel`` rounded up to whole 64-bit words (a multiple of ``64 // rand_bits``), so every
        sample starts on a word boundary of the stream.
    """
    per_word = 64 // rand_bits
    return -(-numel // per_word) * per_word


@dataclass(frozen=True, eq=False)
class LogSMPQuantized(Quantized):
    """SMP result: ``N`` independent LUQ samples of one tensor sharing one ``alpha``.

    ``codes`` has shape ``(N, *x.shape)``; ``codes[j]`` is sample ``j``, which used draws
    ``j * draw_stride + i`` of stream ``seed`` for element ``i``. ``shape`` is the input's shape.
    ``dequantize()`` is the average ``(alpha / N) * sum_j sign(c_j) 2**(|c_j| - 1)`` (the integer sum is
    exact; one rounding by the product with ``alpha``, none by ``/ N`` when ``N`` is a power of two).
    Note the average is *not* FP4-representable: hardware runs one FP4 GEMM per :attr:`samples` entry
    and averages the outputs (equal by linearity, ALGORITHMS.md §4 SMP).
    """

    alpha: torch.Tensor = field(default=None)
    fmt: nx.LogFormat | None = None
    draw_stride: int = 0

    @property
    def num_samples(self) -> int:
        return self.codes.shape[0]

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape[1:]

    @property
    def samples(self) -> tuple[LogQuantized, ...]:
        """The individual samples as :class:`LogQuantized` (sample ``j`` equals
        ``luq(x, seed=seed, draw_offset=j * draw_stride, ...)``)."""
        return tuple(LogQuantized(codes=self.codes[j], method="luq", seed=self.seed,
                                  rand_bits=self.rand_bits, alpha=self.alpha, fmt=self.fmt)
                     for j in range(self.num_samples))

    def dequantize(self) -> torch.Tensor:
        dt = self.alpha.dtype
        c = self.codes.to(torch.int64)
        if int(c.abs().max()) > 62:   # only max_source="signed" gets here: sum the float samples
            return sum(s.dequantize() for s in self.samples) / self.num_samples
        # sum_j sign(c_j) 2**(|c_j|-1) as an exact integer (0 for c = 0; |c| <= 8 in the formats)
        mags = torch.where(c == 0, 0, torch.ones_like(c) << (c.abs() - 1).clamp_(min=0))
        total = (torch.sign(c) * mags).sum(dim=0)
        return (total.to(dt) * self.alpha) / self.num_samples


def luq_smp(x: torch.Tensor, samples: int = 2, *, max_exp: int = 6, alpha_mode: AlphaMode = "float",
            max_source: MaxSource = "absmax", seed: int | None = None,
            generator: torch.Generator | None = None,
            rand_bits: int = nx.DEFAULT_RAND_BITS) -> LogSMPQuantized:
    """SMP: the average of ``samples`` independent LUQ samples (ALGORITHMS.md §4 "SMP", paper §5.1).

    .. math::

        \\bar Q(x) = \\frac1N \\sum_{j=0}^{N-1} Q_j(x), \\qquad
        E[\\bar Q(x)] = x, \\qquad \\operatorname{Var}[\\bar Q(x)] = \\operatorname{Var}[Q(x)] / N

    All samples share ``alpha`` (it depends only on ``x``). Stream layout ([PROPOSED]; the paper
    does not define one): one seed; sample ``j``, element ``i`` (row-major) uses draw
    ``j * S + i`` with ``S = smp_draw_stride(x.numel(), rand_bits)`` (``numel`` rounded up to whole
    64-bit words), so sample 0 is exactly ``luq(x, seed=seed)``, every sample starts word-aligned, and
    the samples never reuse a draw -- nor overlap any other seed's stream (unlike derived seeds such
    as ``seed + j``, which would collide with a caller's consecutive seeds).

    Parameters
    ----------
    x : torch.Tensor
        As for :func:`luq`.
    samples : int, default 2
        ``N >= 1``. The paper uses 2 ("LUQ + SMP", Table 2).
    max_exp, alpha_mode, max_source, seed, generator, rand_bits :
        As for :func:`luq`.

    Returns
    -------
    LogSMPQuantized
        Stacked codes ``(N, *x.shape)``, ``samples`` (one :class:`LogQuantized` each, for N FP4 GEMMs
        in hardware) and ``dequantize()`` = the average (for simulation, as the reference's
        ``repeatBwd``).
    """
    fmt = _check_config(max_exp, alpha_mode, max_source)
    _check_run(rand_bits, 0, "luq_smp")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"luq_smp: samples must be an int >= 1, got {samples!r}")
    xc, lo, hi = check_input_range(x, "luq_smp")
    xc = xc.contiguous()
    stride = smp_draw_stride(xc.numel(), rand_bits)
    if samples * stride > nx.RNG_MAX_WORDS * (64 // rand_bits):
        raise ValueError(f"luq_smp: {samples} samples of {xc.numel()} elements exceed one stream "
                         f"({nx.RNG_MAX_WORDS * (64 // rand_bits)} draws at rand_bits={rand_bits})")
    alpha = _alpha(xc, lo, hi, max_exp, alpha_mode, max_source)
    try:
        seed = resolve_seed(seed, generator)
    except ValueError as e:
        raise ValueError(f"luq_smp: {e}") from None
    # two samples of the narrow case (|c| <= 8 by construction, as in _quantize) in one fused pass
    codes = _smp2_codes_native(xc, alpha, seed, rand_bits, stride) \
        if samples == 2 and max_source == "absmax" else None
    if codes is None:
        qs = [_quantize(xc, alpha, fmt, max_source, seed, None, rand_bits, j * stride, "luq_smp")
              for j in range(samples)]
        dt = max((q.codes.dtype for q in qs), key=lambda d: torch.iinfo(d).bits)
        codes = torch.stack([q.codes.to(dt) for q in qs])
    return LogSMPQuantized(codes=codes, method="luq_smp", seed=seed, rand_bits=rand_bits,
                           alpha=alpha, fmt=fmt, draw_stride=stride)
