"""Shared pieces of the golden-model quantizers: input checks, rounding primitives, result types.

Every quantizer in ``host.quant`` is a pure function ``f(x, bits=..., *, seed=None, generator=None,
**config)`` returning a :class:`Quantized` subclass with integer ``.codes`` (same shape as ``x``), the
scale data, and ``.dequantize()``. Stochastic rounding draws element ``i`` (row-major, in the tensor that
is rounded) from draw ``i`` of the contract's stream for the result's ``seed`` (``hw.numerics``), so the
same seed reproduces the codes bit for bit on any backend.
"""

from __future__ import annotations

import abc
import ctypes
import math
import struct
from dataclasses import dataclass, field
from typing import Literal

import torch

from hw import numerics as nx
from host.quant import native
from host.quant.rng import check_draws, resolve_seed, uniform

__all__ = [
    "Rounding", "check_input", "check_input_range", "check_bits", "check_choice", "compute_dtype",
    "stochastic_round", "round_nearest", "sr_or_rdn", "draws_for", "draw_seed", "sr_codes", "codes_dtype",
    "Quantized", "AffineQuantized", "ShiftQuantized", "LogQuantized", "scalar_tensor",
]

Rounding = Literal["sr", "rdn"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_input(x, quantizer: str, *, min_dim: int = 0, max_dim: int | None = None,
                finite: bool = True) -> torch.Tensor:
    """Validate a tensor to quantize and return it in the compute dtype (float64 stays float64,
    every other float type is computed in float32).

    Raises ``TypeError`` for a non-tensor or non-float tensor and ``ValueError`` for an empty tensor,
    a wrong number of dimensions, or NaN/Inf -- naming the quantizer, never producing NaN codes.
    ``finite=False`` leaves out the NaN/Inf test (a reduction over ``x``), for a caller that makes it
    itself, in a pass over ``x`` it needs anyway (by calling this again when that pass finds one).
    """
    return _check_input(x, quantizer, min_dim, max_dim, need_range=False, check_finite=finite)[0]


def check_input_range(x, quantizer: str, *, min_dim: int = 0, max_dim: int | None = None,
                      any_order: bool = False) -> tuple[torch.Tensor, float, float]:
    """:func:`check_input`, also returning ``(min, max)`` of ``x`` as Python floats (exact, and the same
    in the compute dtype: widening a float is exact), which the check computes anyway -- for quantizers
    that need the tensor's range (one reduction fewer).

    ``any_order``: the caller never looks at the sign of a zero extreme (it tests ``lo < 0``, takes
    ``max(-lo, hi)``, compares with 0 ...): a dense permuted (channels-last) ``x`` is then reduced in
    storage order, which gives the same values up to the sign of a zero extreme (min and max of finite
    floats are otherwise unique) without aminmax's contiguous copy."""
    return _check_input(x, quantizer, min_dim, max_dim, need_range=True, any_order=any_order)


def _check_input(x, quantizer: str, min_dim: int, max_dim: int | None, need_range: bool,
                 any_order: bool = False, check_finite: bool = True) -> tuple[torch.Tensor, float, float]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{quantizer}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{quantizer}: expected a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < min_dim or (max_dim is not None and x.dim() > max_dim):
        want = f"{min_dim}..{max_dim}" if max_dim is not None else f">= {min_dim}"
        raise ValueError(f"{quantizer}: expected a tensor with {want} dimensions, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{quantizer}: cannot quantize an empty tensor (shape {tuple(x.shape)})")
    if not check_finite:
        return (x if x.dtype in _COMPUTE_DTYPES else x.to(torch.float32)), None, None
    # NaN propagates through aminmax and an Inf is an extreme: one reduction instead of a full mask, read
    # back as two Python floats (no further tensor ops: per-call overhead matters on small tensors)
    xs = x.detach()
    if (any_order or not need_range) and xs.dim() == 4 and not xs.is_contiguous() \
            and xs.is_contiguous(memory_format=torch.channels_last):
        # only finiteness is wanted: reduce in storage order (aminmax copies a non-contiguous tensor
        # first); NaN propagates and an Inf is an extreme in any order. (The range itself is read from
        # the tensor as it is: which zero a -0.0/+0.0 extreme is may depend on the order.)
        xs = xs.permute(0, 2, 3, 1)
    rng = _native_range(xs) if any_order or not need_range else None
    lo, hi = rng if rng is not None else (float(v) for v in torch.aminmax(xs))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{quantizer}: input has {bad} NaN/Inf value(s); refusing to quantize")
    return (x if x.dtype in _COMPUTE_DTYPES else x.to(torch.float32)), lo, hi


def _native_range(xs: torch.Tensor) -> tuple[float, float] | None:
    """``(min, max)`` of a contiguous float32 CPU ``xs`` from one native pass (host.quant.native), for
    callers that never look at the sign of a zero extreme (which zero is found may depend on the order);
    ``None`` where it does not apply or ``xs`` has a NaN (then torch's aminmax, which the error path
    needs)."""
    if xs.dtype != torch.float32 or xs.device.type != "cpu" or not xs.is_contiguous():
        return None
    lib = native.kernels()
    if lib is None:
        return None
    # the two results in a ctypes array, read back as Python floats (float32 values widened exactly, as
    # a float32 tensor's tolist() gives them), without a tensor allocation and its readback
    out = _F32_PAIR()
    if lib.tetrad_sq_minmax_f32(xs.data_ptr(), xs.numel(), ctypes.addressof(out)):
        return None
    return out[0], out[1]


_COMPUTE_DTYPES = (torch.float32, torch.float64)   # check_input returns a tensor of these as it is
_F32_PAIR = ctypes.c_float * 2
_F32 = struct.Struct("<f")


def round_to_dtype(value: float, dtype: torch.dtype) -> float:
    """A Python float rounded once (to nearest even) to ``dtype``, as a Python float: the bits of
    ``float(torch.tensor(value, dtype=torch.float64).to(dtype))`` without creating tensors (float32 through
    the C cast of :mod:`struct`, the same IEEE conversion; ``inf`` where it overflows, as torch's)."""
    if dtype == torch.float64:
        return float(value)
    if dtype == torch.float32:
        try:
            return _F32.unpack(_F32.pack(value))[0]
        except OverflowError:
            return math.copysign(math.inf, value)
    return float(torch.tensor(value, dtype=torch.float64).to(dtype))


def scalar_tensor(value: float, dtype: torch.dtype, device=None) -> torch.Tensor:
    """``torch.tensor(value, dtype=dtype, device=device)`` -- the same 0-d tensor, bit for bit -- for a
    ``value`` that ``dtype`` holds exactly (a scale rounded with :func:`round_to_dtype`, a float64 value),
    an infinity or a NaN: built by ``torch.full``, which converts the one Python float the same way and
    skips ``torch.tensor``'s parsing of a Python sequence (about half the cost of a call; a training step
    makes some twenty of them). ``torch.full`` refuses a finite value beyond the dtype's range, which
    ``torch.tensor`` would round to infinity: callers that may have one keep ``torch.tensor``."""
    return torch.full((), value, dtype=dtype, device=device)


def elementwise_out(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(src, out)`` for a fused elementwise kernel that runs over memory in storage order: ``x`` itself
    when it is dense (contiguous up to a permutation of its dims: channels-last, transposed) with
    ``out`` a new ``dtype`` tensor of the same strides -- the layout torch's elementwise passes give --
    else a contiguous copy of ``x`` and a contiguous ``out``."""
    if not x.is_contiguous():
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            # the common dense permutation (a quantized convolution's output), without sorting the strides
            out = torch.empty_like(x, dtype=dtype)
            if out.stride() == x.stride():
                return x, out
        perm = sorted(range(x.dim()), key=lambda d: (x.stride(d), x.shape[d]), reverse=True)
        if x.permute(perm).is_contiguous():
            out = torch.empty_like(x, dtype=dtype)
            if out.stride() == x.stride():
                return x, out
        x = x.contiguous()
    return x, torch.empty(x.shape, dtype=dtype, device=x.device)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_bits(bits, quantizer: str, lo: int = 2, hi: int = 16) -> int:
    """``bits`` must be an int in ``[lo, hi]``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= hi:
        raise ValueError(f"{quantizer}: bits must be an int in {lo}..{hi}, got {bits!r}")
    return bits


def check_choice(value, allowed, quantizer: str, name: str):
    """``value`` must be one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{quantizer}: {name} must be one of {list(allowed)}, got {value!r}")
    return value


def draws_for(x: torch.Tensor, seed: int | None, generator: torch.Generator | None,
              rand_bits: int, offset: int = 0) -> tuple[int, torch.Tensor]:
    """``(seed, u)``: the resolved stream seed and one uniform per element of ``x`` (row-major)."""
    s = draw_seed(x, seed, generator, rand_bits, offset)
    return s, uniform(s, x.shape, rand_bits, offset=offset, device=x.device, dtype=x.dtype)


def draw_seed(x: torch.Tensor, seed: int | None, generator: torch.Generator | None, rand_bits: int,
              offset: int = 0) -> int:
    """What :func:`draws_for` checks and resolves (the same errors, the generator advanced the same way),
    without drawing: for :func:`sr_codes` and the fused kernels, which draw inside their own pass."""
    nx._check_bits(rand_bits)
    s = resolve_seed(seed, generator)
    check_draws(s, x.numel(), rand_bits, offset)
    return s


def sr_codes(v: torch.Tensor, seed: int, rand_bits: int, qmin: int, qmax: int) -> torch.Tensor:
    """``stochastic_round(v, u).clamp_(qmin, qmax)`` as ``codes_dtype(qmin, qmax)`` integers, ``u`` the
    uniforms of draws ``0 ..`` of stream ``seed`` in ``v``'s dtype and row-major order (as
    :func:`draws_for` gives them; ``seed`` comes from :func:`draw_seed`).

    A contiguous float32 CPU ``v`` with int8/int16 codes takes one fused pass (:mod:`host.quant.native`)
    where the kernels are available; otherwise these torch passes. The bits are the same.
    """
    dt = codes_dtype(qmin, qmax)
    lib = native.kernels() if (v.dtype == torch.float32 and v.device.type == "cpu" and v.is_contiguous()
                               and dt in (torch.int8, torch.int16)) else None
    if lib is None:
        u = uniform(seed, v.shape, rand_bits, device=v.device, dtype=v.dtype)
        return stochastic_round(v, u).clamp_(qmin, qmax).to(dt)
    codes = torch.empty(v.shape, dtype=dt)
    lib.tetrad_sr_codes_f32(v.data_ptr(), v.numel(), seed, 0, rand_bits, qmin, qmax,
                            1 if dt == torch.int8 else 2, codes.data_ptr())
    return codes


def stochastic_round(v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """SR(v) = floor(v + u), exactly (``hw.numerics.stochastic_round``). Returns a float tensor holding
    the integers (float64 for float32 input, ``v``'s dtype otherwise).

    float32 ``v`` is widened: with ``u`` on the ``2**-17`` grid (``rand_bits <= 16``) the float64 sum
    ``v + u`` is exact for ``|v| < 2**35`` (at most 53 significant bits), so ``floor`` of it is the exact
    result -- and three passes are faster than the split form. Every quantizer calls this with
    ``|v| <= 2**16``. float64 ``v`` uses the split form ``floor(v) + (frac(v) >= 1 - u)``, exact because
    ``v - floor(v)`` is exact (Sterbenz) except for ``-1/2 < v < 0``, where the equivalent exact
    comparison ``v >= -u`` replaces it.
    """
    if v.dtype == torch.float32:
        return v.to(torch.float64).add_(u).floor_()
    fl = torch.floor(v)
    up = torch.where(fl == -1, v >= -u, (v - fl) >= (1.0 - u))
    return fl.add_(up.to(v.dtype))


def round_nearest(v: torch.Tensor) -> torch.Tensor:
    """RDN: round half to even, as ``torch.round`` in every reference code (ALGORITHMS.md §0)."""
    return torch.round(v)


def sr_or_rdn(v: torch.Tensor, rounding: Rounding, u: torch.Tensor | None) -> torch.Tensor:
    if rounding == "sr":
        if u is None:
            raise ValueError("stochastic rounding needs uniform draws")
        return stochastic_round(v, u)
    return round_nearest(v)


# (dtype, min, max) of the narrower code dtypes: read per quantizer call, so not a torch.iinfo each time
_CODE_DTYPES = tuple((dt, torch.iinfo(dt).min, torch.iinfo(dt).max) for dt in (torch.int8, torch.int16, torch.int32))


def codes_dtype(qmin: int, qmax: int) -> torch.dtype:
    """The narrowest signed torch integer dtype holding ``[qmin, qmax]`` (int8 for every 4/5-bit grid)."""
    for dt, lo, hi in _CODE_DTYPES:
        if lo <= qmin and qmax <= hi:
            return dt
    return torch.int64


# ---------------------------------------------------------------------------------------------------
# Result types
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Quantized(abc.ABC):
    """A quantized tensor: integer ``codes`` with the input's shape, and the data to dequantize them.

    ``method`` names the quantizer, ``seed`` is the random stream used (``None`` for deterministic
    rounding) and ``rand_bits`` the bits per draw, so hardware can be handed the same random bits.
    """

    codes: torch.Tensor
    method: str
    seed: int | None = None
    rand_bits: int | None = None

    @abc.abstractmethod
    def dequantize(self) -> torch.Tensor:
        """The real values the codes stand for (float, the input's shape)."""

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape


@dataclass(frozen=True, eq=False)
class AffineQuantized(Quantized):
    """``value = codes * step + offset``; ``step``/``offset`` broadcast against ``codes`` (a scalar
    tensor for per-tensor scales, shape ``(N, 1)`` for per-row, ``(1, D)`` for per-column).

    ``grid`` is the integer grid the codes lie on (symmetric quantizers have ``offset = 0``).
    """

    step: torch.Tensor = field(default=None)
    offset: torch.Tensor | None = None
    grid: nx.IntGrid | None = None

    def dequantize(self) -> torch.Tensor:
        out = self.codes.to(self.step.dtype) * self.step
        return out if self.offset is None else out + self.offset


@dataclass(frozen=True, eq=False)
class ShiftQuantized(Quantized):
    """ShiftQuant result: ``value = codes * scale * 2**-exponents`` where ``exponents`` holds one
    ``e in [0, e_max]`` per channel along ``axis`` (shape broadcastable against ``codes``)."""

    scale: torch.Tensor = field(default=None)
    exponents: torch.Tensor = field(default=None)
    axis: int = 0
    fmt: nx.ShiftFormat | None = None

    def dequantize(self) -> torch.Tensor:
        dt = self.scale.dtype
        return self.codes.to(dt) * (self.scale * torch.exp2(-self.exponents.to(dt)))


@dataclass(frozen=True, eq=False)
class LogQuantized(Quantized):
    """LUQ result: signed LOG codes ``c`` with ``value = sign(c) * alpha * 2**(|c| - 1)`` (0 for c = 0)."""

    alpha: torch.Tensor = field(default=None)
    fmt: nx.LogFormat | None = None

    def dequantize(self) -> torch.Tensor:
        dt = self.alpha.dtype
        c = self.codes
        mag = torch.where(c == 0, torch.zeros((), dtype=dt, device=c.device),
                          torch.exp2((c.abs() - 1).to(dt)))
        return torch.sign(c).to(dt) * mag * self.alpha
