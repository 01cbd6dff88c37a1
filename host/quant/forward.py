"""Forward (weight and activation) quantizers: deterministic round-to-nearest (RDN) onto integer grids.

Three families (docs/NUMERICS.md, "LBT and forward quantizers"):

* :func:`int_symmetric` -- plain symmetric max scaling onto the symmetric-restricted grid
  ``[-(2**(b-1)-1), 2**(b-1)-1]``, per tensor, row or column (the hardware-default INT grid).
* :func:`int_unsigned` -- the same zero-point-free max scaling onto the unsigned grid ``[0, 2**b-1]``
  for non-negative tensors (activations after a ReLU), per tensor.
* DSQ learned-clip quantizers of the LBT reference code (ALGORITHMS.md §1(a) "Forward quantizers"):
  :func:`dsq_weight` and :func:`dsq_activation` (codes, for the integer GEMM), their differentiable
  counterparts :func:`dsq_weight_ste` / :func:`dsq_activation_ste` (STE round, clamp mask, gradients
  for the learned clips ``s_W`` / ``u_A``), and the initialisers :func:`init_weight_clip` /
  :func:`init_activation_clip`.
* :func:`int8_per_tensor` -- the StatQuant INT8 forward baseline (ALGORITHMS.md §2(a) "Forward
  quantizers"): zero-aligned min-max for weights, plain min-max for activations.

Every quantizer returns an :class:`~host.quant.core.AffineQuantized` with integer ``codes`` and ``grid``
set; ``dequantize()`` is ``codes * step (+ offset)``. Rounding is ``torch.round`` (half to even), as in
every reference code (ALGORITHMS.md §0).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from hw import numerics as nx
from host.quant import native
from host.quant.core import (AffineQuantized, check_bits, check_choice, check_input, check_input_range,
                             codes_dtype, elementwise_out, round_nearest, round_to_dtype, scalar_tensor)

__all__ = ["int_symmetric", "int_unsigned", "dsq_weight", "dsq_activation", "dsq_weight_ste", "dsq_activation_ste",
           "dsq_ste_quantize", "init_weight_clip", "init_activation_clip", "int8_per_tensor", "UINT8", "STATQUANT_EPS"]

UINT8 = nx.IntGrid(8, signed=False)
"""The unsigned ``[0, 255]`` grid of :func:`int8_per_tensor` (StatQuant's ``num_bins = 2**8 - 1``)."""

STATQUANT_EPS = 1e-8
"""StatQuant's range guard: ``min - 1e-8`` / ``max + 1e-8`` (``ScalarPreconditioner*.transform``)."""

_NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}
_GRANULARITIES = ("tensor", "row", "col")


def _round_to(value: float, dtype: torch.dtype) -> float:
    """A float64 scalar rounded once (to nearest even) to ``dtype``, as a Python float."""
    return float(_NP_DTYPE[dtype](value))


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(value, dtype=like.dtype, device=like.device)


# ---------------------------------------------------------------------------------------------------
# Symmetric max scaling
# ---------------------------------------------------------------------------------------------------

def _step_shape(x: torch.Tensor, granularity: str) -> tuple[int, ...]:
    if granularity == "tensor":
        return ()
    if granularity == "row":
        return (x.shape[0],) + (1,) * (x.dim() - 1)
    return (1, x.shape[1])


def _abs_max_along(x: torch.Tensor, granularity: str) -> torch.Tensor:
    """``max |x|`` per tensor / row (dim 0, the rest flattened) / column, shaped like the step."""
    if granularity == "tensor":
        mn, mx = torch.aminmax(x)
    elif granularity == "row":
        mn, mx = torch.aminmax(x.reshape(x.shape[0], -1), dim=1)
    else:
        mn, mx = torch.aminmax(x, dim=0)
    return torch.maximum(mn.neg(), mx).reshape(_step_shape(x, granularity))


def int_symmetric(x: torch.Tensor, bits: int = 4, *, scale=None,
                  granularity: str = "tensor") -> AffineQuantized:
    """Symmetric max-scaled RDN quantizer onto the symmetric-restricted grid (ALGORITHMS.md §0).

    With ``q_max = 2**(bits-1) - 1``::

        scale = RN(max|x| / q_max)               (per tensor, row or column; or the given scale)
        inv   = RN(q_max / max|x|)               (or RN(1 / scale) for a given scale)
        codes = clamp(round(x * inv), -q_max, q_max)         round = torch.round, half to even
        value = codes * scale

    One reciprocal per slice and one multiply per element (``RN`` = round to the compute dtype), the
    arithmetic a hardware quantizer uses; it is bit-identical to ``shiftquant(x, bits, e_max=0,
    rounding="rdn")`` (a test pins this). [PROPOSED] ``round(x / scale)`` differs from it on rare ties.

    Parameters
    ----------
    x : torch.Tensor
        Tensor to quantize (float; computed in float32, or float64 for float64 input).
    bits : int
        Bit width in ``2..16`` (default 4: codes ``-7..7``, 15 levels).
    scale : float, sequence or torch.Tensor, optional
        A given step instead of ``max|x| / q_max``: a scalar for ``"tensor"``, ``N`` values for
        ``"row"``, ``D`` values for ``"col"`` (any shape with that many elements); finite and > 0.
        Values beyond ``±q_max * scale`` saturate.
    granularity : {"tensor", "row", "col"}
        One scale for the tensor (default); one per row -- index along dim 0, the other dims
        flattened, as for a ``(N, C, H, W)`` tensor in ALGORITHMS.md §0 (needs ``x.dim() >= 2``); or
        one per column of a 2-D ``x``.

    Returns
    -------
    AffineQuantized
        ``codes`` (int8 for ``bits <= 8``), ``step`` of shape ``()``, ``(N, 1, ...)`` or ``(1, D)``,
        ``offset = None``, ``grid = int_grid(bits)``.

    Notes
    -----
    [PROPOSED] A slice whose ``max|x| / q_max`` is below the smallest normal number of the compute
    dtype (``finfo.tiny``, 1.2e-38 in float32) -- in particular an all-zero slice -- gets
    ``scale = 1``: its codes are all 0 and the step stays finite and exact. Otherwise the scale is
    ``fl(max|x| / q_max)`` in the compute dtype.
    """
    name = "int_symmetric"
    bits = check_bits(bits, name, 2, 16)
    check_choice(granularity, _GRANULARITIES, name, "granularity")
    if granularity == "tensor":
        x, lo, hi = check_input_range(x, name, any_order=True)    # only max(-lo, hi): zero signs never matter
        x = x.detach()
    elif granularity == "row":
        x = check_input(x, name, min_dim=2).detach()
    else:
        x = check_input(x, name, min_dim=2, max_dim=2).detach()
    grid = nx.int_grid(bits)
    qm = grid.qmax
    cdt = codes_dtype(grid.qmin, grid.qmax)
    if scale is None and granularity == "tensor":
        # per tensor, on Python floats (no 0-d tensor ops): r = max|x| is a dtype number. ``r / q_max`` is a
        # float64 division rounded once more to float32 for float32 -- the same bits as the division in
        # float32 (double rounding is innocuous for division and multiplication since 53 >= 2 * 24 + 2);
        # ``q_max / r`` on a tensor is torch's ``r.reciprocal() * q_max``, so the same two roundings here
        dt = x.dtype
        r = max(-lo, hi)
        s = round_to_dtype(r / qm, dt)
        if s < torch.finfo(dt).tiny:     # a subnormal or zero step: flushed, as below
            s = inv_f = 1.0
        else:
            inv_f = round_to_dtype(round_to_dtype(1.0 / r, dt) * qm, dt)
        step = scalar_tensor(s, dt, x.device)
        codes = _mulround_native_f(x, inv_f, -qm, qm, cdt)
        if codes is None:
            codes = round_nearest(x * torch.tensor(inv_f, dtype=dt, device=x.device)).clamp_(-qm, qm).to(cdt)
        return AffineQuantized(codes=codes, method=name, step=step, offset=None, grid=grid)
    if scale is None:
        r = _abs_max_along(x, granularity)
        step = r / qm
        # a subnormal or zero step would scale imprecisely or divide by zero: flush such slices
        flush = step < torch.finfo(step.dtype).tiny
        step = torch.where(flush, torch.ones_like(step), step)
        inv = torch.where(flush, torch.ones_like(r), qm / r)
    else:
        step = _given_scale(scale, x, granularity, name)
        inv = 1.0 / step
    codes = _mulround_native(x, inv, -qm, qm, cdt) if inv.dim() == 0 else None
    if codes is None:
        codes = round_nearest(x * inv).clamp_(-qm, qm).to(cdt)
    return AffineQuantized(codes=codes, method=name, step=step, offset=None, grid=grid)


def _mulround_native_f(x: torch.Tensor, inv: float, qmin: int, qmax: int, cdt) -> torch.Tensor | None:
    """:func:`_mulround_native` with ``inv`` a Python float holding an ``x.dtype`` number."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or cdt != torch.int8:
        return None
    lib = native.kernels()
    if lib is None:
        return None
    xc, codes = elementwise_out(x, cdt)
    lib.tetrad_mulround_codes_f32(xc.data_ptr(), xc.numel(), inv, qmin, qmax, codes.data_ptr())
    return codes


def _mulround_native(x: torch.Tensor, inv: torch.Tensor, qmin: int, qmax: int, cdt) -> torch.Tensor | None:
    """``round_nearest(x * inv).clamp_(qmin, qmax).to(cdt)`` for a per-tensor ``inv`` in one pass of
    :mod:`host.quant.native` (the same bits; elementwise in memory order, so a channels-last ``x`` gives
    channels-last codes as the torch passes do), or ``None`` where it does not apply."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or cdt != torch.int8 or inv.dtype != torch.float32:
        return None
    lib = native.kernels()
    if lib is None:
        return None
    xc, codes = elementwise_out(x, cdt)
    lib.tetrad_mulround_codes_f32(xc.data_ptr(), xc.numel(), float(inv), qmin, qmax, codes.data_ptr())
    return codes


def int_unsigned(x: torch.Tensor, bits: int = 4, *, x_range: tuple[float, float] | None = None) -> AffineQuantized:
    """Zero-point-free max-scaled RDN quantizer of a non-negative tensor onto the unsigned grid.

    With ``q_max = 2**bits - 1`` (UINT4: ``[0, 15]``), per tensor::

        scale = RN(max(x) / q_max),   inv = RN(q_max / max(x))
        codes = clamp(round(x * inv), 0, q_max)              round = torch.round, half to even
        value = codes * scale

    The arithmetic of :func:`int_symmetric` (one reciprocal, one multiply per element) with the sign bit
    spent on magnitude: for a tensor with no negative value -- an activation after a ReLU -- the symmetric
    grid's negative half is never used, so this halves the step for the same bit width. Like
    :func:`int_symmetric` it has no zero-point (``value = codes * scale``, code 0 is the value 0), so a
    GEMM factors the scale out exactly ([PROPOSED] forward activation quantizer of ``shiftquant4``,
    docs/NUMERICS.md).

    Parameters
    ----------
    x : torch.Tensor
        Non-negative float tensor (computed in float32, or float64 for float64 input).
    bits : int
        Bit width in ``1..16`` (default 4: codes ``0..15``, 16 levels).
    x_range : (float, float), optional
        ``(min, max)`` of ``x`` as :func:`host.quant.core.check_input_range` (``any_order=True``) returned
        them, from a caller that has reduced this very tensor already: its reduction is not repeated.
        ``None``: computed here.

    Returns
    -------
    AffineQuantized
        ``codes`` (int8 for ``bits <= 7``, int16 up to 15 bits, else int32), ``step`` of shape ``()``,
        ``offset = None``, ``grid = IntGrid(bits, signed=False)``. A tensor whose ``max(x) / q_max`` is
        below ``finfo.tiny`` (e.g. all zero) gets ``scale = 1`` and all-zero codes (as
        :func:`int_symmetric`).

    Raises
    ------
    ValueError
        A negative element (use :func:`int_symmetric`), bad ``bits``, NaN/Inf or empty input.
    """
    name = "int_unsigned"
    bits = check_bits(bits, name, 1, 16)
    # the input check's own aminmax of x gives min and max (no second reduction)
    if x_range is None or not (math.isfinite(x_range[0]) and math.isfinite(x_range[1])):
        x, lo, hi = check_input_range(x, name, any_order=True)    # lo < 0 and hi: zero signs never matter
    else:
        x, (lo, hi) = check_input(x, name, finite=False), x_range
    x = x.detach()
    if lo < 0:
        raise ValueError(f"{name}: the unsigned grid needs x >= 0, got min(x) = {lo!r}; "
                         f"use int_symmetric for signed tensors")
    grid = nx.IntGrid(bits, signed=False)
    qm = grid.qmax
    # on Python floats, as int_symmetric's per-tensor path: the same bits as the 0-d tensor divisions
    dt = x.dtype
    s = round_to_dtype(hi / qm, dt)
    if s < torch.finfo(dt).tiny:
        s = inv_f = 1.0
    else:
        inv_f = round_to_dtype(round_to_dtype(1.0 / hi, dt) * qm, dt)   # torch's qm / hi
    step = scalar_tensor(s, dt, x.device)
    cdt = codes_dtype(0, qm)
    codes = _mulround_native_f(x, inv_f, 0, qm, cdt)
    if codes is None:
        codes = round_nearest(x * torch.tensor(inv_f, dtype=dt, device=x.device)).clamp_(0, qm).to(cdt)
    return AffineQuantized(codes=codes, method=name, step=step, offset=None, grid=grid)


def _given_scale(scale, x: torch.Tensor, granularity: str, name: str) -> torch.Tensor:
    shape = _step_shape(x, granularity)
    if isinstance(scale, bool) or not isinstance(scale, (numbers.Real, torch.Tensor, np.ndarray, list,
                                                        tuple)):
        raise ValueError(f"{name}: scale must be a real number, a sequence or a tensor, "
                         f"got {type(scale).__name__}")
    try:
        s = torch.as_tensor(scale).detach().to(device=x.device, dtype=x.dtype)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name}: scale is not numeric: {e}") from None
    want = math.prod(shape)
    if s.numel() != want:
        raise ValueError(f"{name}: granularity={granularity!r} needs {want} scale value(s), "
                         f"got {s.numel()} (shape {tuple(s.shape)})")
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError(f"{name}: scale must be finite and > 0, got {s.flatten()[:8].tolist()}")
    return s.reshape(shape)


# ---------------------------------------------------------------------------------------------------
# DSQ learned-clip quantizers (LBT reference, models/modules.py DSQConv_a.w_quan / a_quan)
# ---------------------------------------------------------------------------------------------------

def _check_clip(value, name: str, what: str, like: torch.Tensor) -> torch.Tensor:
    """A learned clip as a 0-dim tensor of ``like``'s dtype; must be one finite value > 0."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise ValueError(f"{name}: {what} must be a positive real number or a 1-element tensor, "
                         f"got {type(value).__name__}")
    s = torch.as_tensor(value).detach()
    if s.numel() != 1:
        raise ValueError(f"{name}: {what} must be a single (per-tensor) value, got shape {tuple(s.shape)}")
    s = s.to(device=like.device, dtype=like.dtype).reshape(())
    v = float(s)
    if not (math.isfinite(v) and v > 0):
        # The reference divides by |s_W| but multiplies by s_W, so s_W < 0 would flip every weight;
        # a non-positive learned clip means training diverged, so it is rejected rather than copied.
        raise ValueError(f"{name}: {what} must be finite and > 0, got {v!r}")
    return s


def _dsq_codes(x: torch.Tensor, s: torch.Tensor, bits: int, kind: str,
               want_mask: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Integer-valued float codes of a DSQ quantizer, the in-range mask, and the code divisor.

    The normalised value ``t`` is formed with the reference's operation order so that the codes are
    bit-identical to it: weights ``t = (x / |s| + 1) * 0.5``; signed activations
    ``t = (x + u) / (2u)`` (``a_quan(x, u, -u)``); unsigned activations ``t = x / u``. Then
    ``k = round(n * clamp(t, 0, 1))`` with ``n = 2**b - 2`` (symmetric) or ``2**b - 1`` (unsigned),
    and the symmetric code is ``k - q_max``. The mask is ``0 <= t <= 1`` (torch.clamp's gradient).
    """
    if kind == "weight":
        t = torch.div(x, s).add_(1.0).mul_(0.5)
    elif kind == "act_signed":
        t = torch.add(x, s).div_(s + s)
    else:
        t = torch.div(x, s)
    mask = ((t >= 0) & (t <= 1)) if want_mask else None
    if kind == "act":
        n = 2 ** bits - 1
        k = t.clamp_(0.0, 1.0).mul_(n).round_()
        return k, mask, n
    n = 2 ** bits - 2
    qm = n // 2
    k = t.clamp_(0.0, 1.0).mul_(n).round_()
    return k.sub_(qm), mask, qm


def _dsq(x, s, bits, kind, name) -> AffineQuantized:
    bits = check_bits(bits, name, 2, 16)
    x = check_input(x, name).detach()
    what = "s_w" if kind == "weight" else "u_a"
    s = _check_clip(s, name, what, x)
    codes, _, div = _dsq_codes(x, s, bits, kind)
    return _dsq_result(codes, _scalar(_round_to(float(s) / div, x.dtype), x), bits, kind, name)


def _dsq_result(codes: torch.Tensor, step: torch.Tensor, bits: int, kind: str, name: str) -> AffineQuantized:
    """The :class:`AffineQuantized` of DSQ codes ``codes`` (from :func:`_dsq_codes`) and their ``step``."""
    grid = nx.IntGrid(bits, signed=False) if kind == "act" else nx.int_grid(bits)
    return AffineQuantized(codes=codes.to(codes_dtype(grid.qmin, grid.qmax)), method=name, step=step,
                           offset=None, grid=grid)


def dsq_weight(w: torch.Tensor, s_w, bits: int = 4) -> AffineQuantized:
    r"""DSQ weight quantizer of the LBT reference code (ALGORITHMS.md §1(a), [CODE] ``w_quan``).

    The reference computes::

        Q_W(W) = s_W * ( 2 * R_n( clamp((W/|s_W| + 1)/2, 0, 1) ) - 1 ),   R_n(v) = round(n v)/n,
        n = 2**b - 2.

    With ``k = round(n * clamp((W/s_W + 1)/2, 0, 1))`` in ``{0 .. n}`` and ``q_max = n/2 = 2**(b-1) - 1``:
    ``2 k/n - 1 = (k - q_max)/q_max``, so ``Q_W(W) = (k - q_max) * s_W/q_max`` [DERIVED]. The codes are
    the integers ``k - q_max`` in ``[-q_max, q_max]`` (15 levels at 4 bits) and the step is
    ``s_W / q_max``; weights beyond ``±s_W`` saturate to ``±q_max``.

    Rounding is RDN on ``k`` (``torch.round``, half to even), i.e. ties are broken to even ``k``, which
    for odd ``q_max`` (every ``b >= 2``) means odd codes -- the reference's behaviour, kept so codes
    match it bit for bit (``t`` is formed in the reference's operation order).

    Parameters
    ----------
    w : torch.Tensor
        Weights (float; computed in float32, or float64 for float64 input).
    s_w : float or torch.Tensor
        The learned clip ``s_W`` (one per-tensor value, finite and > 0; see :func:`init_weight_clip`).
    bits : int
        Bit width in ``2..16`` (default 4).

    Returns
    -------
    AffineQuantized
        ``codes`` in ``[-q_max, q_max]``, ``step = fl(s_W / q_max)``, ``grid = int_grid(bits)``.
    """
    return _dsq(w, s_w, bits, "weight", "dsq_weight")


def dsq_activation(x: torch.Tensor, u_a, bits: int = 4, signed: bool = False) -> AffineQuantized:
    r"""DSQ activation quantizer of the LBT reference code (ALGORITHMS.md §1(a), [CODE] ``a_quan``).

    Unsigned (``DSQConv_a``, activations after a ReLU)::

        Q_A(X) = u_A * R_n(clamp(X/u_A, 0, 1)),  n = 2**b - 1
        codes k = round(n * clamp(X/u_A, 0, 1)) in [0, 2**b - 1],  step = u_A / n   (16 levels at 4 bits)

    Signed (``DSQConv_a_mobile`` when the input has negative values)::

        Q_A(X) = u_A * (2 R_n(clamp((X + u_A)/(2 u_A), 0, 1)) - 1),  n = 2**b - 2
        codes k - q_max in [-q_max, q_max],  step = u_A / q_max      (as for dsq_weight)

    Rounding is RDN (half to even on ``k``); the normalisation uses the reference's operation order.

    Parameters
    ----------
    x : torch.Tensor
        Activations (float).
    u_a : float or torch.Tensor
        The learned clip ``u_A`` (one value, finite and > 0; see :func:`init_activation_clip`).
    bits : int
        Bit width in ``2..16`` (default 4).
    signed : bool
        False (default): the unsigned grid ``IntGrid(bits, signed=False)``; True: the symmetric grid.

    Returns
    -------
    AffineQuantized
    """
    if not isinstance(signed, bool):
        raise ValueError(f"dsq_activation: signed must be a bool, got {signed!r}")
    return _dsq(x, u_a, bits, "act_signed" if signed else "act", "dsq_activation")


_DSQ_KINDS = {"weight": 0, "act_signed": 1, "act": 2}


def _dsq_native(x, s, bits, kind, name):
    """``_DSQSTE.forward``'s quantities -- ``(xc, sc, out, int codes, mask, div, step)`` -- from one pass
    of :mod:`host.quant.native` (``tetrad_dsq_fwd_f32``: the same float operations as :func:`_dsq_codes`
    and ``codes * step``, with the finiteness test of ``check_input``), for a float32 CPU tensor in
    contiguous or channels-last memory (every result in its layout, as torch's elementwise passes give)
    with int8 codes; ``None`` otherwise, or for a bad clip or a non-finite value: the torch code then runs
    (and raises, in its order)."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or not (
            x.is_contiguous() or x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return None
    div = 2 ** bits - 1 if kind == "act" else 2 ** (bits - 1) - 1
    if codes_dtype(0 if kind == "act" else -div, div) != torch.int8:
        return None
    lib = native.kernels()
    if lib is None:
        return None
    xc = check_input(x, name, finite=False).detach()
    try:
        sc = _check_clip(s, name, "s_w" if kind == "weight" else "u_a", xc)
    except ValueError:
        return None
    step = _scalar(_round_to(float(sc) / div, xc.dtype), xc)
    out = torch.empty_like(xc)
    codes = torch.empty_like(xc, dtype=torch.int8)
    mask = torch.empty_like(xc, dtype=torch.bool)
    n, qm = (div, 0) if kind == "act" else (2 * div, div)
    if lib.tetrad_dsq_fwd_f32(xc.data_ptr(), xc.numel(), float(sc), _DSQ_KINDS[kind], float(n), float(qm),
                              float(step), out.data_ptr(), codes.data_ptr(), mask.data_ptr()):
        return None
    return xc, sc, out, codes, mask, div, step


class _DSQSTE(torch.autograd.Function):
    """DSQ quantizer with the reference's gradients: STE through the round, zero gradient where the
    clamp is active, and the learned clip differentiated through the divide and the multiply."""

    @staticmethod
    def forward(ctx, x, s, bits, kind, name, grad_like_x):
        """Returns ``Q(x)``, the integer codes and the step (not differentiable: those of ``dsq_*(x, s, bits)``).
        ``grad_like_x``: hand the gradient of ``x`` back in ``x``'s memory layout (see :func:`dsq_ste_quantize`)."""
        fused = _dsq_native(x, s, bits, kind, name)
        if fused is not None:
            xc, sc, out, icodes, mask, div, step = fused
        else:
            xc = check_input(x, name).detach()
            sc = _check_clip(s, name, "s_w" if kind == "weight" else "u_a", xc)
            codes, mask, div = _dsq_codes(xc, sc, bits, kind, want_mask=True)
            step = _scalar(_round_to(float(sc) / div, xc.dtype), xc)
            out = codes * step                       # == dsq_*(...).dequantize() bit for bit
            lo = 0 if kind == "act" else -div
            # integer codes (int8 up to 8 bits) and a bool mask keep the saved state small
            icodes = codes.to(codes_dtype(lo, div))
        ctx.save_for_backward(xc, sc, icodes, mask)
        ctx.mark_non_differentiable(icodes, step)
        ctx.div, ctx.grad_like_x = div, grad_like_x
        ctx.s_meta = (s.shape, s.dtype, s.device)
        return out.to(x.dtype), icodes, step

    @staticmethod
    def backward(ctx, g, _g_codes, _g_step):
        xc, sc, codes, mask = ctx.saved_tensors
        need_x, need_s = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        fused = _dsq_backward_native(g, xc, codes, mask, ctx.grad_like_x) if need_x and need_s else None
        if fused is not None:
            grad_x, p_codes, p_x = fused
        else:
            gc = g.to(xc.dtype)
            gm = gc * mask
            grad_x = None
            if need_x:
                grad_x = gm.to(g.dtype)              # dQ/dx = 1 inside [lo, hi] (s > 0), 0 where clamped
                if ctx.grad_like_x and grad_x.stride() != xc.stride():
                    grad_x = torch.empty_like(xc, dtype=grad_x.dtype).copy_(grad_x)   # the same values
            if need_s:
                p_codes, p_x = gc * codes.to(gc.dtype), gm * xc
        grad_s = None
        if need_s:
            # dQ/ds = code/div - mask * x/s   (ALGORITHMS.md §1(a): LSQ/PACT-like; derivation in
            # docs/NUMERICS.md): inside, (Q - x)/s; clamped high/low, the saturated level/s.
            grad_s = p_codes.sum() / ctx.div - p_x.sum() / sc
            shape, dtype, device = ctx.s_meta
            grad_s = grad_s.reshape(shape).to(device=device, dtype=dtype)
        return grad_x, grad_s, None, None, None, None


def _dsq_backward_native(g, xc, codes, mask, grad_like_x):
    """``(grad_x, g * codes, (g * mask) * x)`` of ``_DSQSTE.backward`` from one pass of
    :mod:`host.quant.native` (``tetrad_dsq_bwd_f32``), or ``None`` where it does not apply (then the torch
    code runs). For float32 tensors whose memory orders the kernel maps onto each other (the forward's
    mask and codes share ``x``'s layout): both the same dense layout; ``g`` contiguous and ``x``
    channels-last (a convolution's input); or ``x`` contiguous and ``g`` its transposed layout, dim 0
    fastest (a linear layer's B GEMM result, a weight gradient). torch's products take ``g``'s layout
    (the first operand decides where the layouts differ), so the kernel writes them in ``g``'s memory
    order and torch sums them in the same order; ``grad_x`` is ``g * mask`` in ``g``'s layout, or in
    ``x``'s with ``grad_like_x``, as the torch code gives it."""
    if g.dtype != torch.float32 or xc.dtype != torch.float32 or g.device.type != "cpu" \
            or g.shape != xc.shape or codes.dtype != torch.int8 \
            or codes.stride() != xc.stride() or mask.stride() != xc.stride():
        return None
    if g.stride() == xc.stride() and g.is_contiguous():
        rows, c, hw, cl = 1, 1, g.numel(), 0
    elif g.is_contiguous() and xc.dim() == 4 and xc.is_contiguous(memory_format=torch.channels_last):
        rows, c, hw, cl = g.shape[0], g.shape[1], g.shape[2] * g.shape[3], 1
    elif xc.is_contiguous() and xc.dim() >= 2 and g.movedim(0, -1).is_contiguous():
        # g's memory is x's (M, K) matrix transposed: element (m, k) at k * M + m
        rows, c, hw, cl = 1, g.numel() // g.shape[0], g.shape[0], 1
    else:
        return None
    lib = native.kernels()
    if lib is None:
        return None
    gx_cl = cl and grad_like_x
    grad_x = torch.empty_like(xc) if gx_cl else torch.empty_like(g)
    p_codes, p_x = torch.empty_like(g), torch.empty_like(g)
    lib.tetrad_dsq_bwd_f32(g.data_ptr(), mask.data_ptr(), codes.data_ptr(), xc.data_ptr(), rows, c, hw, int(cl),
                           int(gx_cl), grad_x.data_ptr(), p_codes.data_ptr(), p_x.data_ptr())
    return grad_x, p_codes, p_x


def _ste(x, s, bits, kind, name, grad_like_x=False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Q(x) with the STE gradients, the integer codes, the step)``."""
    bits = check_bits(bits, name, 2, 16)
    if not isinstance(s, torch.Tensor):
        _check_clip(s, name, "s_w" if kind == "weight" else "u_a", torch.empty(0))
        s = torch.tensor(float(s))
    return _DSQSTE.apply(x, s, bits, kind, name, grad_like_x)


def dsq_ste_quantize(x: torch.Tensor, clip, bits: int, kind: str, *, signed: bool = False,
                     grad_like_input: bool = False) -> tuple[torch.Tensor, AffineQuantized]:
    """:func:`dsq_weight_ste` (``kind="weight"``) or :func:`dsq_activation_ste` (``kind="act"``) together
    with :func:`dsq_weight` / :func:`dsq_activation` of the same tensor, from one quantization pass:
    ``(Q(x) with the STE gradients, the AffineQuantized codes)``, each bit for bit what the two calls give
    (the codes are the STE's own, which the two functions compute with the same operations).

    ``grad_like_input``: the gradient of ``x`` comes back in ``x``'s memory layout (the same values; one
    copy where the incoming gradient's layout differs). For a caller whose ``x`` comes from an autograd
    node that computes the same whatever its gradient's layout (host.nn.functional's max-pool and ReLU
    rule), where a gradient in the other layout would cost that node several copies.
    """
    if kind not in ("weight", "act"):
        raise ValueError(f"dsq_ste_quantize: kind must be 'weight' or 'act', got {kind!r}")
    if not isinstance(signed, bool):
        raise ValueError(f"dsq_ste_quantize: signed must be a bool, got {signed!r}")
    k = "weight" if kind == "weight" else ("act_signed" if signed else "act")
    name = "dsq_weight_ste" if kind == "weight" else "dsq_activation_ste"
    out, codes, step = _ste(x, clip, bits, k, name, grad_like_input)
    return out, _dsq_result(codes, step, bits, k, "dsq_weight" if kind == "weight" else "dsq_activation")


def dsq_weight_ste(w: torch.Tensor, s_w, bits: int = 4) -> torch.Tensor:
    r"""Differentiable :func:`dsq_weight` for training: returns the dequantized weights (float, ``w``'s
    dtype), equal bit for bit to ``dsq_weight(w, s_w, bits).dequantize()``.

    Gradients (reference: ``RoundFunction`` STE, ``torch.clamp``, autograd through ``W/|s_W|`` and
    ``* s_W``), with ``t = (W/s_W + 1)/2``, mask ``M = [0 <= t <= 1]`` and ``code = k - q_max``::

        dQ/dW   = M                                  (zero for clipped weights)
        dQ/ds_W = code/q_max - M * W/s_W             (= (Q - W)/s_W inside, ±1 when clipped)

    Parameters
    ----------
    w : torch.Tensor
        Weights (may require grad).
    s_w : torch.Tensor or float
        The learned clip (a 1-element tensor, typically an ``nn.Parameter``; a float gets no gradient).
    bits : int
        Bit width in ``2..16`` (default 4).

    Returns
    -------
    torch.Tensor
        ``Q_W(W)`` with ``w``'s shape and dtype.
    """
    return _ste(w, s_w, bits, "weight", "dsq_weight_ste")[0]


def dsq_activation_ste(x: torch.Tensor, u_a, bits: int = 4, signed: bool = False) -> torch.Tensor:
    r"""Differentiable :func:`dsq_activation`, equal bit for bit to its ``dequantize()``.

    Gradients, with mask ``M = [0 <= t <= 1]`` (``t = X/u_A``, or ``(X + u_A)/(2 u_A)`` if signed)::

        dQ/dX   = M
        dQ/du_A = k/n - M * X/u_A          unsigned (PACT-like: 1 above the clip, 0 below zero)
        dQ/du_A = code/q_max - M * X/u_A   signed

    Parameters
    ----------
    x : torch.Tensor
        Activations (may require grad).
    u_a : torch.Tensor or float
        The learned clip (1-element tensor; a float gets no gradient).
    bits : int
        Bit width in ``2..16`` (default 4).
    signed : bool
        Symmetric grid if True, unsigned (default) otherwise.

    Returns
    -------
    torch.Tensor
        ``Q_A(X)`` with ``x``'s shape and dtype.
    """
    if not isinstance(signed, bool):
        raise ValueError(f"dsq_activation_ste: signed must be a bool, got {signed!r}")
    return _ste(x, u_a, bits, "act_signed" if signed else "act", "dsq_activation_ste")[0]


def _std_clip(x: torch.Tensor, factor: float, name: str) -> torch.Tensor:
    x = check_input(x, name).detach()
    if x.numel() < 2:
        raise ValueError(f"{name}: needs at least 2 elements for a standard deviation, got {x.numel()}")
    clip = x.std() * factor      # unbiased std, as torch's x.std() in the reference
    if not float(clip) > 0:
        raise ValueError(f"{name}: the tensor is constant (std = 0), so the initial clip would be 0; "
                         "the reference would divide by zero here -- initialise the clip explicitly")
    return clip


def init_weight_clip(w: torch.Tensor) -> torch.Tensor:
    """Initial DSQ weight clip ``s_W = 3 * std(W)`` ([CODE] ``sW.data.fill_(weight.std() * 3)``, at the
    first forward pass).

    Parameters
    ----------
    w : torch.Tensor
        The weights (at least 2 elements, not constant).

    Returns
    -------
    torch.Tensor
        A 0-dim tensor (compute dtype); ``std`` is the unbiased (``n - 1``) estimate, as ``torch.std``.

    Raises
    ------
    ValueError
        Fewer than 2 elements or a constant tensor (the clip would be 0 and the quantizer divide by 0).
    """
    return _std_clip(w, 3.0, "init_weight_clip")


def init_activation_clip(x: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """Initial DSQ activation clip ([CODE], first forward pass).

    ``u_A = 3 * std(X) / sqrt(1 - 2/pi)`` for the unsigned quantizer (``sqrt(1 - 2/pi)`` is the ratio
    of a half-normal's standard deviation to its scale, so this is 3 scale units of the pre-ReLU
    Gaussian); ``u_A = 3 * std(X)`` when ``signed`` (``DSQConv_a_mobile``).

    Parameters
    ----------
    x : torch.Tensor
        The first batch's activations (at least 2 elements, not constant).
    signed : bool
        Use the signed initialiser (default False).

    Returns
    -------
    torch.Tensor
        A 0-dim tensor (compute dtype).
    """
    if not isinstance(signed, bool):
        raise ValueError(f"init_activation_clip: signed must be a bool, got {signed!r}")
    factor = 3.0 if signed else 3.0 / math.sqrt(1.0 - 2.0 / math.pi)
    return _std_clip(x, factor, "init_activation_clip")


# ---------------------------------------------------------------------------------------------------
# StatQuant INT8 forward baseline
# ---------------------------------------------------------------------------------------------------

def int8_per_tensor(x: torch.Tensor, *, zero_aligned: bool = True) -> AffineQuantized:
    r"""StatQuant's INT8 per-tensor forward quantizer (ALGORITHMS.md §2(a) "Forward quantizers"), RDN.

    ``B = 255``, ``m``/``M`` the tensor's min/max widened by ``1e-8`` (scalars in float64):

    ``zero_aligned=True`` (default; StatQuant's **weights**, ``ScalarPreconditioner`` = PTQ)::

        m = min(min(x) - 1e-8, 0),  M = max(max(x) + 1e-8, 0),  s = B/(M - m),  z = floor(-m s)
        z > 0:  step = -m / z   (the PTQ widening M' = (z - B) m / z gives s' = -z/m exactly)
                codes = clamp(round(x / step) + z, 0, B),   value = (codes - z) * step
        z = 0:  [PROPOSED, ALGORITHMS.md §2(a)] fall back to s' = s (the reference divides by 0):
                step = (M - m)/B,  codes = clamp(round((x - m)/step), 0, B),  value = codes*step + m

    Real zero is exactly code ``z`` and dequantizes to exactly 0 (``offset = -fl(z * step)``); no
    element is clipped (``s' <= s``). [PROPOSED] The rounding is done in the zero-centred domain
    (``round(x/step) + z``); the reference rounds ``(x - m) s'``, equal in exact arithmetic except on
    exact ties when ``z`` is odd.

    ``zero_aligned=False`` (StatQuant's **activations**, ``ScalarPreconditionerAct``)::

        m = min(x) - 1e-8,  M = max(x) + 1e-8,  step = (M - m)/B
        codes = clamp(round((x - m)/step), 0, B),  value = codes*step + m     (no zero alignment)

    Why this and not symmetric INT8: it is the baseline the StatQuant paper compares against
    ("comparable to the existing INT8 baseline", §2) and what its code runs in the forward pass; the
    symmetric alternative, ``int_symmetric(x, 8)`` (grid ``[-127, 127]``, no zero-point), is the
    hardware-friendlier option (no column-sum correction in the GEMM, ALGORITHMS.md §5.1) and is
    available for recipes that prefer it.

    Parameters
    ----------
    x : torch.Tensor
        Tensor to quantize (float; computed in float32, or float64 for float64 input).
    zero_aligned : bool
        Weight variant (True, default) or activation variant (False).

    Returns
    -------
    AffineQuantized
        ``codes`` (int16 holding ``0..255``), 0-dim ``step`` and ``offset``, ``grid = UINT8``.
    """
    name = "int8_per_tensor"
    if not isinstance(zero_aligned, bool):
        raise ValueError(f"{name}: zero_aligned must be a bool, got {zero_aligned!r}")
    # The NaN/Inf test's reduction gives the extrema too, in storage order (any_order: no copy of a
    # channels-last activation): only the sign of a zero extreme may differ, which nothing below sees --
    # m, M, z, step and offset take mn - 1e-8 / mx + 1e-8 or a min/max with 0, and the overflow message
    # cannot occur with a zero extreme.
    x, mn, mx = check_input_range(x, name, any_order=True)
    x = x.detach()
    dt = x.dtype
    B = UINT8.qmax
    if zero_aligned:
        m, M = min(mn - STATQUANT_EPS, 0.0), max(mx + STATQUANT_EPS, 0.0)
        z = math.floor(-m * (B / (M - m)))
    else:
        m, M = mn - STATQUANT_EPS, mx + STATQUANT_EPS
        z = 0
    aligned = zero_aligned and z > 0
    if aligned:
        step = _round_to(-m / z, dt)
        offset = -_round_to(z * step, dt)          # so that code z dequantizes to exactly 0
    else:
        step = _round_to((M - m) / B, dt)
        offset = _round_to(m, dt)
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"{name}: the range [{mn}, {mx}] overflows the step")
    codes = _int8_codes_native(x, aligned, offset, step, z, B)
    if codes is None:
        v = round_nearest(x / step).add_(z) if aligned else round_nearest((x - offset) / step)
        codes = v.clamp_(0, B).to(codes_dtype(0, B))
    # step and offset are held exactly by x's dtype (rounded to it above): torch.full gives torch.tensor's bits
    return AffineQuantized(codes=codes, method=name, step=scalar_tensor(step, dt, x.device),
                           offset=scalar_tensor(offset, dt, x.device), grid=UINT8)


def _int8_codes_native(x: torch.Tensor, aligned: bool, offset: float, step: float, z: int,
                       qmax: int) -> torch.Tensor | None:
    """:func:`int8_per_tensor`'s codes, ``clamp(round(x / step) + z, 0, qmax)`` (``aligned``) or
    ``clamp(round((x - offset) / step), 0, qmax)``, as int16 in one pass of :mod:`host.quant.native` (the
    same float32 division, subtraction and round-half-to-even; elementwise in memory order, so a
    channels-last ``x`` gives channels-last codes, as the torch passes do), or ``None`` for anything but
    a float32 CPU ``x`` (then the torch passes run)."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or codes_dtype(0, qmax) != torch.int16:
        return None
    lib = native.kernels()
    if lib is None:
        return None
    src, codes = elementwise_out(x, torch.int16)
    lib.tetrad_stat_int8_codes_f32(src.data_ptr(), src.numel(), 0 if aligned else 1, offset, step, z, qmax,
                                   codes.data_ptr())
    return codes
