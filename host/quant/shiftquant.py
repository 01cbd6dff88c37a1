"""ShiftQuant (Guo et al. 2024, ALGORITHMS.md §3): per-channel power-of-two scales under one shared scale.

Golden model of the proposed reading in ALGORITHMS.md §3(a) (the paper body and code were not
available; **every choice below beyond the abstract is [PROPOSED]** and is a keyword argument):

1. ``r_i = max_j |A_ij|`` per channel ``i`` along the grouping ``axis``; ``r = max_i r_i``.
2. ``e_i = min(E_max, floor(log2(r / r_i)))``, computed exactly (no rounded ``log2``); ``r_i = 0 -> E_max``.
3. ``s_0 = r / q_max`` (``scale="float"``) or ``2**ceil(log2(r / q_max))`` (``scale="pow2"``);
   ``s_i = s_0 * 2**-e_i``.
4. ``q_ij = clamp(SR(A_ij / s_i), -q_max, q_max)`` (or RDN), ``q_max = 2**(bits-1) - 1``.
5. ``A_ij ~ s_0 * 2**-e_i * q_ij`` -- a :class:`~host.quant.core.ShiftQuantized`.

The exact arithmetic (which float operations round, and where) is spelled out in :func:`shiftquant`
and in ``docs/numerics/shiftquant_l1norm.md``; a hardware ShiftQuantizer reproduces it bit for bit.
"""

from __future__ import annotations

import ctypes
import functools
import math

import torch

from hw import numerics as nx
from host.quant.core import (
    ShiftQuantized, check_bits, check_choice, check_input, check_input_range, codes_dtype, draw_seed, round_nearest,
    round_to_dtype, scalar_tensor, sr_codes,
)
from host.quant import native
from host.quant.rng import resolve_seed

__all__ = ["shiftquant", "channel_exponents", "shift_operands"]

_NAME = "shiftquant"
_E_MAX_LIMIT = 15          # nx.ShiftFormat's range: the PE shift field is 4 bits wide


def _check_e_max(e_max) -> int:
    if isinstance(e_max, bool) or not isinstance(e_max, int) or not 0 <= e_max <= _E_MAX_LIMIT:
        raise ValueError(f"{_NAME}: e_max must be an int in 0..{_E_MAX_LIMIT}, got {e_max!r}")
    return e_max


def channel_exponents(r_channel: torch.Tensor, e_max: int) -> torch.Tensor:
    """Exact ShiftQuant exponents ``e_i = min(E_max, floor(log2(r / r_i)))`` with ``r = max_i r_i``.

    Computed without any rounded operation: with ``r = m_r * 2**E_r`` and ``r_i = m_i * 2**E_i``
    (``frexp``, mantissas in ``[0.5, 1)``), ``floor(log2(r / r_i)) = E_r - E_i - [m_i > m_r]``, because
    ``m_r / m_i`` lies in ``(1/2, 2)``. Equivalently ``e_i`` is the largest ``e <= E_max`` with
    ``r_i * 2**e <= r``: in hardware, the difference of two leading-one positions minus one exact
    comparison of the aligned mantissas.

    Parameters
    ----------
    r_channel : torch.Tensor
        Per-channel maxima ``r_i >= 0`` (finite floats, any shape).
    e_max : int
        Largest exponent, ``0..15``.

    Returns
    -------
    torch.Tensor
        ``int8`` tensor of ``r_channel``'s shape with values in ``[0, e_max]``; channels with
        ``r_i = 0`` (and every channel of an all-zero tensor) get ``e_max``.
    """
    _check_e_max(e_max)
    return _exponents(r_channel, float(r_channel.max()), e_max)   # exact: float32/64 -> Python float


def _exponents(r_channel: torch.Tensor, r: float, e_max: int) -> torch.Tensor:
    """:func:`channel_exponents` given ``r = max_i r_i`` (a Python float) and a checked ``e_max``."""
    if r == 0.0:
        return torch.full(r_channel.shape, e_max, dtype=torch.int8, device=r_channel.device)
    lib = native.kernels() if r_channel.dtype == torch.float32 and r_channel.device.type == "cpu" else None
    if lib is not None:
        # the same integers in one pass (host.quant.native: the equivalent compare form below), instead of
        # a dozen elementwise torch operations -- their per-call cost dominates on a few channels
        rc = r_channel.contiguous()
        e = torch.empty(rc.shape, dtype=torch.int8)
        lib.tetrad_shift_exponents_f32(rc.data_ptr(), rc.numel(), r, e_max, e.data_ptr())
        return e
    m_r, exp_r = math.frexp(r)
    m_i, exp_i = torch.frexp(r_channel)        # exact, subnormals included
    # m_r is a mantissa of the tensor's dtype, so comparing it with m_i in that dtype is exact.
    d = (exp_r - exp_i.to(torch.int64)) - (m_i > m_r).to(torch.int64)
    e = torch.where(r_channel == 0, torch.full_like(d, e_max), d.clamp(0, e_max))
    return e.to(torch.int8)


@functools.lru_cache(maxsize=None)
def _shift_format(bits: int, e_max: int) -> nx.ShiftFormat:
    """``nx.ShiftFormat(nx.int_grid(bits), e_max)`` (frozen, so one instance per checked argument pair
    serves every call)."""
    return nx.ShiftFormat(nx.int_grid(bits), e_max)


_NORMAL_RANGE = {dt: (torch.finfo(dt).tiny, torch.finfo(dt).max) for dt in (torch.float32, torch.float64)}


def _native_channels(x, e_max):
    """The kernel library where :func:`shiftquant` will take ``x``'s channel statistics (for ``e_max = 0``
    only ``max|x|``) from the native pass (float32 compute dtype on the CPU, kernels available) -- which
    also tests ``x`` for NaN/Inf -- else ``None``."""
    if isinstance(x, torch.Tensor) and x.dtype in (torch.float32, torch.float16, torch.bfloat16) \
            and x.device.type == "cpu" and type(e_max) is int and 0 <= e_max <= _E_MAX_LIMIT:
        return native.kernels()
    return None


def _native_abs_max(lib, a2: torch.Tensor, x: torch.Tensor) -> float:
    """``max|a2|`` of a contiguous float32 matrix from the native channel pass (per column, its fastest
    form; the maxima and exponents are scratch), raising the input check's error for a NaN/Inf in it."""
    cols = a2.shape[1]
    # named: a temporary tensor would be freed before the kernel writes to its memory
    r_ch, e = torch.empty(cols, dtype=torch.float32), torch.empty(cols, dtype=torch.int8)
    r = lib.tetrad_sq_shift_channels_f32(a2.data_ptr(), a2.shape[0], cols, 1, 0, r_ch.data_ptr(), e.data_ptr())
    if r < 0:
        check_input_range(x, _NAME, min_dim=2)
    return r


def _pow2_factors(k: int, dtype: torch.dtype) -> list[float]:
    """Powers of two whose product is ``2**k``, each a normal number of ``dtype`` (at most two here)."""
    fi = torch.finfo(dtype)
    lo, hi = math.frexp(fi.tiny)[1] - 1, math.frexp(fi.max)[1] - 1   # normal exponent range
    out = []
    while k > hi or k < lo:
        step = hi if k > hi else lo
        out.append(math.ldexp(1.0, step))
        k -= step
    out.append(math.ldexp(1.0, k))
    return out


def shiftquant(x: torch.Tensor, bits: int = 4, *, axis: str = "row", e_max: int = 3,
               rounding: str = "sr", scale: str = "float", seed: int | None = None,
               generator: torch.Generator | None = None, rand_bits: int = nx.DEFAULT_RAND_BITS,
               x_range: tuple[float, float] | None = None) -> ShiftQuantized:
    """ShiftQuant a tensor: symmetric integer codes with a per-channel power-of-two ratio to one scale.

    Value represented: ``A_ij ~ s_0 * 2**-e_i * q_ij`` with ``q_ij`` on the symmetric grid
    ``[-q_max, q_max]``, ``q_max = 2**(bits-1) - 1``, and ``e_i in [0, e_max]`` (ALGORITHMS.md §3(a),
    proposed reading; every choice below is [PROPOSED]).

    **Exact arithmetic** (what a hardware ShiftQuantizer must reproduce). The compute dtype is float64
    for float64 input and float32 otherwise; ``RN`` is round-to-nearest-even to that dtype's significand
    (24 or 53 bits).

    1. ``r_i = max_j |A_ij|`` (exact), ``r = max_i r_i``.
    2. ``e_i`` by :func:`channel_exponents` (exact integer/compare logic, no ``log2``).
    3. Write ``r = m_r * 2**E_r`` with ``m_r in [0.5, 1)``.

       * ``scale="float"`` (default): ``c = RN(q_max / m_r)`` -- the one rounded division per tensor --
         and the per-channel multiplier ``c_i = c * 2**(e_i - E_r)`` (exact). ``c * 2**-E_r`` equals
         ``RN(q_max / r)`` whenever that is a normal number, so ``v_ij = RN(A_ij * RN(q_max / r)) * 2**e_i``.
         Returned ``scale = RN(r / q_max)``.
       * ``scale="pow2"``: ``s_0 = 2**k`` with ``k = ceil(log2(r / q_max))``, found exactly as the
         smallest integer with ``q_max * 2**k >= r``; ``c_i = 2**(e_i - k)``. Every step is a shift.
         Returned ``scale = 2**k``.

    4. ``v_ij = RN(A_ij * c_i)`` -- one rounded multiply per element (exact for ``scale="pow2"``).
       The rounding is to the significand only (unbounded exponent range); an ``RN`` that underflows in
       IEEE arithmetic only affects ``|v| < 2**-17``, which rounds to code 0 in every mode, so codes are
       unaffected. Scaling by ``2**e_i`` commutes with ``RN``, so hardware may multiply by ``c`` and then
       shift left by ``e_i``.
    5. ``q_ij = clamp(SR(v_ij), -q_max, q_max)`` with ``SR(v) = floor(v + u)`` and ``u`` draw ``i``
       (row-major index in ``x``'s shape) of the contract's stream (``hw.numerics``), or
       ``clamp(RDN(v_ij))`` with half-to-even ties. The clamp only acts on the channel maxima when
       ``RN`` rounds ``v`` a hair above ``q_max`` (by construction ``r_i * 2**e_i <= r``).

    Parameters
    ----------
    x : torch.Tensor
        Float tensor with at least 2 dimensions (float16/bfloat16 are computed in float32). An N-D tensor
        is viewed as the matrix ``(x.shape[0], prod(x.shape[1:]))`` -- for a conv gradient
        ``(N, C, H, W)`` the rows are samples, as in ALGORITHMS.md §0. [PROPOSED]; to group differently
        (e.g. tokens of a ``(B, T, D)`` tensor) reshape before calling. NaN/Inf raise ``ValueError``.
    bits : int, default 4
        Code width, ``2..16``; the grid is the symmetric-restricted ``int_grid(bits)``.
    axis : {"row", "col"}, default "row"
        The axis carrying per-channel exponents: ``"row"`` gives one exponent per row (channel = row,
        max taken along the row), ``"col"`` one per column. Choose it so the exponents fall on the
        reduction index of the GEMM (``"row"`` for ``G^T X``, ``"col"`` for ``G W``). [PROPOSED]
    e_max : int, default 3
        Largest exponent ``E_max`` (``E_max + 1`` groups), ``0..15``; ``0`` is per-tensor symmetric
        quantization bit for bit. Channels with ``r / r_i >= 2**(E_max+1)`` are clamped to ``E_max`` and
        lose the "step <= 2x per-channel step" guarantee. [PROPOSED: 3, i.e. 4 groups; the paper's value
        was not retrieved]
    rounding : {"sr", "rdn"}, default "sr"
        Stochastic rounding (gradients) or round-to-nearest-even (forward W/A). [PROPOSED]
    scale : {"float", "pow2"}, default "float"
        Shared scale ``s_0 = r / q_max`` (one float multiply per element; the largest channel uses the
        whole grid) or the power of two ``2**ceil(log2(r/q_max))`` (everything is shifts, but the step
        can be up to 2x larger, i.e. up to 4x the SR variance of ``"float"`` and the largest channel may
        use only half the grid). [PROPOSED]
    seed, generator : optional
        Random stream for SR: ``seed`` (``0 <= seed < 2**32``) or 32 bits drawn from ``generator`` /
        torch's default generator. Ignored for RDN.
    rand_bits : {4, 8, 16}, default 16
        Random bits per SR draw.
    x_range : (float, float), optional
        ``(min, max)`` of ``x`` as :func:`host.quant.core.check_input_range` returned them, from a caller
        that has checked this very tensor already (e.g. one gradient quantized for two GEMMs): the NaN/Inf
        test -- a reduction over ``x`` -- is not repeated. ``None``: ``x`` is checked here.

    Returns
    -------
    ShiftQuantized
        ``codes`` (int8 for ``bits <= 8``, int16 above; ``x``'s shape), ``scale`` (0-d, compute dtype),
        ``exponents`` (int8; shape ``(R, 1, ..., 1)`` for ``"row"``, ``(1, *x.shape[1:])`` for ``"col"``),
        ``axis`` (0 for ``"row"``, 1 for ``"col"``), ``fmt = ShiftFormat(int_grid(bits), e_max)``, and the
        ``seed``/``rand_bits`` used (``None`` for RDN). An all-zero input gives all-zero codes,
        ``scale = 1`` and every exponent ``e_max``.
    """
    # NaN/Inf: tested by the native channel pass where that runs (it reads every element anyway), else by
    # the input check's reduction here
    ch_lib = _native_channels(x, e_max) if x_range is None else None
    defer = ch_lib is not None
    if x_range is None and not defer:
        a, lo, hi = check_input_range(x, _NAME, min_dim=2)
    else:
        a = check_input(x, _NAME, min_dim=2, finite=False)
        lo, hi = (None, None) if defer else x_range
    try:
        check_bits(bits, _NAME, 2, 16)
        _check_e_max(e_max)
        check_choice(axis, ("row", "col"), _NAME, "axis")
        check_choice(rounding, ("sr", "rdn"), _NAME, "rounding")
        check_choice(scale, ("float", "pow2"), _NAME, "scale")
        if rounding == "sr":
            nx._check_bits(rand_bits)
    except ValueError:
        if defer:
            check_input_range(x, _NAME, min_dim=2)    # a NaN/Inf error comes first, as without the deferral
        raise
    fmt = _shift_format(bits, e_max)
    qmax = fmt.grid.qmax
    dt = a.dtype
    shape = a.shape
    a2 = a.reshape(shape[0], -1)
    row = axis == "row"
    # the native kernels (float32 on the CPU), looked up once per call; they read a2 as a dense matrix
    lib = ch_lib if defer else native.kernels() if dt == torch.float32 and a.device.type == "cpu" else None
    if lib is not None:
        a2 = a2.contiguous()

    # 1. channel maxima (exact: |A| and max round nothing). One |A| pass and one amax reduction are
    # faster on CPU than max(amax, -amin) -- two strided reductions -- or aminmax along a dim (1.6-2x on
    # the benchmark CNN's gradients); the sign of a zero maximum never matters (only r_i == 0 is tested).
    red = 1 if row else 0
    if e_max == 0:
        # One group (per-tensor quantization, §3(f)4): every exponent is 0 and only max|A| matters, so
        # the input check's whole-tensor min and max replace the per-channel reductions (the same r) --
        # or, where the check was deferred, the native pass's r (max|A|, the same float) and NaN/Inf test
        r = max(-lo, hi) if not defer else _native_abs_max(lib, a2, x)
        e = torch.zeros(a2.shape[1 - red], dtype=torch.int8, device=a.device)
    else:
        if lib is None:
            r_ch = a2.abs().amax(dim=red)
            # 2. exact exponents
            r = float(r_ch.max())
            e = _exponents(r_ch, r, e_max)
        else:
            # steps 1-2 in one native call (host.quant.native): the same maxima (no |A| tensor), the same r
            # and exponents; r_ch is only scratch here (reused below for the channels' multipliers)
            r_ch = torch.empty(a2.shape[1 - red], dtype=dt)
            e = torch.empty(a2.shape[1 - red], dtype=torch.int8)
            r = lib.tetrad_sq_shift_channels_f32(a2.data_ptr(), a2.shape[0], a2.shape[1], red ^ 1, e_max,
                                                 r_ch.data_ptr(), e.data_ptr())
            if r < 0:      # a NaN/Inf (tested in that pass: x_range was given, or the check was deferred)
                check_input_range(x, _NAME, min_dim=2)
    e_shape = (shape[0],) + (1,) * (len(shape) - 1) if row else (1,) + tuple(shape[1:])

    seed_used = None
    if r == 0.0:
        # All-zero tensor: zero codes with a finite scale (and no draws are needed: SR(0) = 0).
        if rounding == "sr":
            seed_used = resolve_seed(seed, generator)    # recorded (and the generator advanced) as usual
        return ShiftQuantized(
            codes=torch.zeros(shape, dtype=codes_dtype(-qmax, qmax), device=a.device), method=_NAME,
            seed=seed_used, rand_bits=rand_bits if rounding == "sr" else None,
            scale=torch.ones((), dtype=dt, device=a.device), exponents=e.reshape(e_shape),
            axis=0 if row else 1, fmt=fmt)

    # 3. shared scale and per-exponent multipliers c_e (e_max + 1 distinct values, built exactly).
    m_r, exp_r = math.frexp(r)
    if scale == "float":
        # RN(q_max / m_r) and RN(r / q_max) in dt, on Python floats: one float64 division rounded once more
        # to float32 is the float32 division's result (double rounding is innocuous for a quotient: 53 >=
        # 2 * 24 + 2), and float64 is the same division -- no 0-d tensor ops
        c_hat = round_to_dtype(float(qmax) / m_r, dt)
        base = exp_r                                     # c_e = c_hat * 2**(e - E_r)
        s0 = scalar_tensor(round_to_dtype(r / qmax, dt), dt, a.device)
    else:
        p = qmax.bit_length() - 1                        # 2**p <= q_max < 2**(p+1)
        k = exp_r - p - (1 if math.ldexp(float(qmax), exp_r - p - 1) >= r else 0)
        c_hat, base = 1.0, k                             # c_e = 2**(e - k)
        # 2**k as a dtype value (for float32 and r below ~2**-126 * q_max it is subnormal; the codes
        # never depend on it).
        s0 = torch.tensor(math.ldexp(1.0, k), dtype=dt, device=a.device)
    table = [math.ldexp(c_hat, ei - base) for ei in range(e_max + 1)]
    tiny, big = _NORMAL_RANGE[dt]
    normal = tiny <= table[0] and table[-1] <= big     # the table ascends: c_hat > 0
    cdt = codes_dtype(-qmax, qmax)
    if lib is not None and rounding == "sr" and normal and cdt in (torch.int8, torch.int16):
        # Steps 4-5 in one pass of host.quant.native: the same float32 multiply by the channel's c_e
        # (one value for e_max = 0) and the same stochastic rounding as sr_codes, the same bits.
        seed_used = draw_seed(a, seed, generator, rand_bits)
        if e_max == 0:
            # the one multiplier (a float32 value, so exact as a c_float) as a ctypes array: no tensor
            mult, m_axis = (ctypes.c_float * 1)(table[0]), 2
        else:
            # the channels' c_e, table[e], in one native lookup (e is contiguous int8 in [0, e_max]), written
            # over the channel maxima (no longer needed; the same length and dtype): one allocation less
            mult, m_axis = r_ch.data_ptr(), 0 if row else 1
            lib.tetrad_lookup_f32(e.data_ptr(), e.numel(), (ctypes.c_float * len(table))(*table), mult)
        codes = torch.empty(shape, dtype=cdt)        # a2's row-major layout, so no reshape of the result
        # (the multiply pass in AVX2 where the channels make whole vectors: tetrad_sq_sr_scaled_codes_f32)
        lib.tetrad_sq_sr_scaled_codes_f32(a2.data_ptr(), a2.shape[0], a2.shape[1], mult, m_axis,
                                          seed_used, rand_bits, -qmax, qmax, 1 if cdt == torch.int8 else 2,
                                          codes.data_ptr())
        return ShiftQuantized(codes=codes, method=_NAME, seed=seed_used, rand_bits=rand_bits,
                              scale=s0, exponents=e.reshape(e_shape), axis=0 if row else 1, fmt=fmt)
    e_b = e.reshape(-1, 1) if row else e.reshape(1, -1)     # broadcasts against a2
    if normal:
        mult = torch.tensor(table, dtype=dt, device=a.device)[e_b.long()]   # exact (normal numbers)
        v = a2 * mult                                                        # 4. one RN per element
    else:
        # Extreme r (near the dtype's exponent limits): scale A by 2**-E_r first (exact, in at most two
        # normal power-of-two factors), then multiply by c_hat * 2**(e + E_r - base), which is now in range.
        v = a2
        for f in _pow2_factors(-exp_r, dt):
            v = v * f
        mult = torch.tensor([math.ldexp(c_hat, ei + exp_r - base) for ei in range(e_max + 1)],
                            dtype=dt, device=a.device)[e_b.long()]
        v = v * mult

    # 5. rounding and clamp
    if rounding == "sr":
        seed_used = draw_seed(a, seed, generator, rand_bits)
        codes = sr_codes(v, seed_used, rand_bits, -qmax, qmax).reshape(shape)
    else:
        codes = round_nearest(v).clamp_(-qmax, qmax).to(codes_dtype(-qmax, qmax)).reshape(shape)
    return ShiftQuantized(codes=codes, method=_NAME, seed=seed_used,
                          rand_bits=rand_bits if rounding == "sr" else None, scale=s0,
                          exponents=e.reshape(e_shape), axis=0 if row else 1, fmt=fmt)


def shift_operands(q: ShiftQuantized, *, broadcast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The processing-element operand ``(mantissa, shift)`` of every element of a ShiftQuant tensor.

    ``mantissa = q.codes`` and ``shift = e_max - e`` of the element's channel (``hw.numerics.ShiftFormat``),
    so the operand value is ``mantissa << shift`` and the PE computes ``acc += (b * mantissa) << shift``.
    With the exponents on the reduction index ``k`` the shift-and-add GEMM is
    ``sum_k (q_k * b_k) << (E_max - e_k)``, equal to ``2**E_max / s_0`` times the dequantized GEMM (the
    readout multiplies by ``s_0 * 2**-E_max``); no permutation of ``k`` into groups is needed. The
    accumulator needs ``nx.accumulator_width(K, q_max, b_max, e_max)`` bits.

    Parameters
    ----------
    q : ShiftQuantized
        A result of :func:`shiftquant` (``fmt`` must be a ``ShiftFormat``).
    broadcast : bool, default False
        Return ``shift`` in the exponents' shape (one per channel, broadcastable to the codes) instead of
        a contiguous copy in the codes' shape: the same operand values, without writing one shift per
        element (the GEMMs broadcast it).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``mantissa`` (the codes, their dtype) and ``shift`` (``int8`` in ``[0, e_max]``), both with the
        codes' shape (contiguous); ``shift`` in the exponents' shape with ``broadcast``.
    """
    if not isinstance(q, ShiftQuantized) or not isinstance(q.fmt, nx.ShiftFormat):
        raise TypeError(f"shift_operands: expected a ShiftQuantized with a ShiftFormat, got {type(q).__name__}")
    # in int8 directly: 0 <= e <= e_max <= 15, so e_max - e cannot wrap (no widening and narrowing pass)
    shift = torch.rsub(q.exponents.to(torch.int8), q.fmt.e_max)
    return q.codes, shift if broadcast else shift.expand(q.codes.shape).contiguous()
