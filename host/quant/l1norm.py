"""L1 normalization layers (Guo et al. 2024, ALGORITHMS.md §3): float golden model and integer path.

Proposed reading of ALGORITHMS.md §3(a) (the paper body was not available; **everything here beyond
"L1 normalization ... facilitates fully quantized normalization layers" is [PROPOSED]**). Over a
normalization set (a token's features for LayerNorm, ``(N, H, W)`` of a channel for BatchNorm)::

    mu = mean(x),  sigma_1 = mean|x - mu|,  sigma = kappa * sigma_1 + eps,
    y = gamma * (x - mu) / sigma + beta,          kappa = sqrt(pi/2) by default (alternative: 1)

``kappa = sqrt(pi/2)`` makes ``kappa * sigma_1`` equal the standard deviation for Gaussian data, so an L1
layer is a drop-in for an L2 one. The backward pass is analytic (:class:`L1NormFunction`)::

    dL/dx = (1/sigma) [g - mean(g) - kappa * mean(g * yhat) * (sgn - mean(sgn))],
    g = gamma * dL/dy,  yhat = (x - mu)/sigma,  sgn = sign(x - mu)

It needs only ``sign(x - mu)``, adds and per-set scalars -- no square or square root anywhere.

:func:`l1_norm_int` is the fully quantized forward: integer codes in, exact integer statistics, one
integer reciprocal per set, fixed-point multiply and requantization -- every step integer arithmetic
so a hardware ``L1Norm`` unit can be bit-exact with it (docs/numerics/shiftquant_l1norm.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from numbers import Real

import torch
from torch.autograd.function import once_differentiable

from hw import numerics as nx
from host.quant import native
from host.quant.core import AffineQuantized, check_choice, check_input, codes_dtype, draws_for

__all__ = [
    "KAPPA", "L1NormFunction", "l1_norm", "l1_layer_norm", "l1_batch_norm",
    "L1NormIntResult", "l1_norm_int",
]

KAPPA = math.sqrt(math.pi / 2)
"""Default ``kappa``: ``E|x - mu| * sqrt(pi/2) = std`` for Gaussian ``x`` (ALGORITHMS.md §3(a))."""

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
_I64_LIMIT = 1 << 62          # every int64 intermediate is kept below this (headroom for one add)
_SIGN_SUM_EXACT = 1 << 24     # float32 holds every integer up to this: a sum of this many signs is exact
_WHO = "l1_norm"              # the name in the float path's input-check errors


# ---------------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------------

def _check_pos_float(value, name: str, who: str, *, allow_zero: bool = False) -> float:
    if type(value) is float and 0.0 < value < math.inf:     # the common case, without the Real ABC check
        return value
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)) \
            or float(value) < 0 or (float(value) == 0 and not allow_zero):
        rng = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{who}: {name} must be a finite number {rng}, got {value!r}")
    return float(value)


def _check_int(value, name: str, who: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{who}: {name} must be an int in {lo}..{hi}, got {value!r}")
    return value


def _norm_dims(dim, ndim: int, who: str) -> tuple[int, ...]:
    """``dim`` (an int or a sequence of ints, negatives allowed) as sorted unique non-negative dims."""
    dims = (dim,) if isinstance(dim, int) and not isinstance(dim, bool) else tuple(dim)
    out = set()
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or not -ndim <= d < ndim:
            raise ValueError(f"{who}: dim {d!r} is out of range for a {ndim}-D tensor")
        out.add(d % ndim)
    if not out:
        raise ValueError(f"{who}: dim must name at least one dimension")
    return tuple(sorted(out))


# ---------------------------------------------------------------------------------------------------
# Float path
# ---------------------------------------------------------------------------------------------------

def _per_channel(op, x: torch.Tensor, v: torch.Tensor, left: bool = False) -> torch.Tensor:
    """``op(x, v)`` (``op(v, x)`` with ``left``) for a per-channel ``v``, the same values and layout.

    A channels-last ``(N, C, H, W)`` ``x`` (a quantized convolution's output) with a ``(1, C, 1, 1)``
    ``v`` makes ATen's elementwise loop run C elements at a time; tiled to the ``H*W*C`` elements of one
    sample (``v`` repeated H*W times, a view of ``x``), the loop is long and 2-3x faster. Each element is
    the same single float operation on the same two numbers, and the result has ``op``'s channels-last
    strides, so nothing downstream (reductions included) sees a difference."""
    if (x.dim() == 4 and v.dim() == 4 and v.shape[0] == 1 and v.shape[2] == 1 and v.shape[3] == 1
            and v.shape[1] == x.shape[1] and v.dtype == x.dtype and v.device == x.device
            and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)):
        n, c, h, w = x.shape
        xv = x.permute(0, 2, 3, 1).reshape(n, h * w * c)
        vt = v.reshape(c).repeat(h * w)
        out = op(vt, xv) if left else op(xv, vt)
        return out.view(n, h, w, c).permute(0, 3, 1, 2)
    return op(v, x) if left else op(x, v)


class L1NormFunction(torch.autograd.Function):
    """``y = w * (x - mu)/(kappa*sigma_1 + eps) + b`` over ``dims``, with the analytic backward.

    ``forward(ctx, x, weight, bias, dims, eps, kappa)``: ``weight``/``bias`` are ``None`` or tensors
    broadcastable against ``x``; ``dims`` is a tuple of the normalization dims. A NaN/Inf in ``x`` raises
    ``ValueError`` (the input check of :func:`l1_norm`, made here: the fused forward tests finiteness in
    a pass it makes anyway, instead of a reduction of its own). The backward is the
    closed form of ALGORITHMS.md §3(a) (exact for any ``eps``; at ``x = mu`` it uses ``sign(0) = 0``,
    a valid subgradient of ``|x - mu|``). First-order only.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, dims, eps, kappa, stats=None):
        lay = _native_layout(x, dims, weight, bias)
        lib = native.kernels() if lay is not None else None
        if lib is None:
            check_input(x, _WHO)             # NaN/Inf raise (the fused pass below tests that itself)
        mu = x.mean(dims, keepdim=True)
        if lib is None:
            xc = _per_channel(torch.sub, x, mu)
            dev = xc.abs()
        else:      # the same passes fused (host.quant.native): |x - mu| here, yhat and y below
            mu = mu.contiguous()
            dev = torch.empty_like(x)
            if _absdev_native(lib, x, lay, mu, dev):
                check_input(x, _WHO)         # x has a NaN/Inf: the input check's own error (with the count)
        s1 = dev.mean(dims, keepdim=True)
        del dev
        if lib is None:
            sigma = s1.mul_(kappa)
            scale = sigma.clone() if stats is not None else None
            sigma.add_(eps)
        else:
            scale, sigma = _sigma_native(lib, s1, kappa, eps)
        if stats is not None:      # l1_batch_norm's running statistics: mu and kappa * sigma_1
            stats["mu"], stats["scale"] = mu, scale
        if lib is None:
            yhat = _per_channel(torch.div, xc, sigma)
            y = yhat
            if weight is not None:
                y = _per_channel(torch.mul, y, weight)
            if bias is not None:
                y = _per_channel(torch.add, y, bias)
        else:
            sigma = sigma.contiguous()
            w = None if weight is None else weight.contiguous()
            b = None if bias is None else bias.contiguous()
            yhat = torch.empty_like(x)
            y = yhat if w is None and b is None else torch.empty_like(x)
            args = (mu.data_ptr(), sigma.data_ptr(), None if w is None else w.data_ptr(),
                    None if b is None else b.data_ptr(), yhat.data_ptr(), None if y is yhat else y.data_ptr())
            if lay[2] != 1 or lib.tetrad_sq_l1_fwd_cl(x.data_ptr(), lay[0], lay[1], *args) < 0:
                lib.tetrad_l1_fwd_f32(x.data_ptr(), *lay, *args)
        ctx.save_for_backward(yhat, sigma, weight, bias)
        ctx.dims, ctx.kappa, ctx.lay = dims, kappa, lay
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        yhat, sigma, weight, bias = ctx.saved_tensors
        dims, kappa = ctx.dims, ctx.kappa
        lib = native.kernels() if ctx.lay is not None and dy.dtype == yhat.dtype and dy.shape == yhat.shape \
            and dy.stride() == yhat.stride() else None
        if lib is not None:
            return _backward_native(lib, ctx, dy, yhat, sigma, weight, bias) + (None,) * 4
        g = _per_channel(torch.mul, dy, weight) if weight is not None else dy
        sgn = torch.sign(yhat)                       # sign(x - mu): sigma > 0
        mg = g.mean(dims, keepdim=True)
        mgy = (g * yhat).mean(dims, keepdim=True)
        msgn = sgn.mean(dims, keepdim=True)
        # (g - mg - kappa * mgy * (sgn - msgn)) / sigma, operation by operation
        dx = _per_channel(torch.sub, g, mg) - _per_channel(torch.mul, _per_channel(torch.sub, sgn, msgn),
                                                           kappa * mgy, left=True)
        dx = _per_channel(torch.div, dx, sigma)
        dw = db = None
        if weight is not None and ctx.needs_input_grad[1]:
            dw = (dy * yhat).sum_to_size(weight.shape)
        if bias is not None and ctx.needs_input_grad[2]:
            db = dy.sum_to_size(bias.shape)
        return dx, dw, db, None, None, None, None


def _native_layout(x: torch.Tensor, dims, *per_channel) -> tuple[int, int, int] | None:
    """``(outer, C, inner)`` of a float32 CPU ``(N, C, H, W)`` ``x`` normalized over ``(0, 2, 3)`` (NCHW or
    channels-last memory, per-channel ``(1, C, 1, 1)`` float32 parameters): where :class:`L1NormFunction`
    runs its elementwise passes fused (host.quant.native), else ``None`` (the torch passes)."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4 or tuple(dims) != (0, 2, 3) \
            or x.numel() == 0:
        return None
    n, c, h, w = x.shape
    for p in per_channel:
        if p is not None and (tuple(p.shape) != (1, c, 1, 1) or p.dtype != torch.float32
                              or p.device.type != "cpu"):
            return None
    if x.is_contiguous():
        return n, c, h * w
    if x.is_contiguous(memory_format=torch.channels_last):
        return n * h * w, c, 1
    return None


def _absdev_native(lib, x: torch.Tensor, lay, mu: torch.Tensor, dev: torch.Tensor) -> bool:
    """``dev = |x - mu|`` by the native pass (its AVX2 channels-last form where it applies); whether ``x``
    has a NaN/Inf."""
    if lay[2] == 1:
        bad = lib.tetrad_sq_l1_absdev_cl(x.data_ptr(), lay[0], lay[1], mu.data_ptr(), dev.data_ptr())
        if bad >= 0:
            return bool(bad)
    return bool(lib.tetrad_l1_absdev_f32(x.data_ptr(), *lay, mu.data_ptr(), dev.data_ptr()))


def _sigma_native(lib, s1: torch.Tensor, kappa: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, sigma)`` with ``scale = s1 * kappa`` and ``sigma = scale + eps`` per channel, in one native
    call: the torch path's ``s1.mul_(kappa)``, ``clone`` and ``add_(eps)`` -- float32 operations with the
    Python floats cast to float32, as torch casts a scalar operand -- on the same numbers. Both have
    ``s1``'s shape (contiguous)."""
    s1 = s1.contiguous()
    scale, sigma = torch.empty((2,) + tuple(s1.shape), dtype=s1.dtype).unbind(0)
    lib.tetrad_sq_l1_sigma_f32(s1.data_ptr(), s1.numel(), kappa, eps, scale.data_ptr(), sigma.data_ptr())
    return scale, sigma


def _backward_native(lib, ctx, dy, yhat, sigma, weight, bias):
    """:meth:`L1NormFunction.backward` with its elementwise passes fused: the same operations on the same
    numbers, in the same memory layout (so the torch reductions between them are the same too)."""
    dims, kappa, lay = ctx.dims, ctx.kappa, ctx.lay
    dy = dy.contiguous(memory_format=torch.channels_last) if lay[2] == 1 else dy.contiguous()   # no-ops
    w = None if weight is None else weight.contiguous()
    g = dy if w is None else torch.empty_like(yhat)
    gy = torch.empty_like(yhat)
    sgn_sum = torch.empty(lay[1], dtype=torch.int64)
    dyy = torch.empty_like(yhat) if weight is not None and ctx.needs_input_grad[1] else None
    lib.tetrad_l1_bwd_prep_f32(dy.data_ptr(), yhat.data_ptr(), *lay, None if w is None else w.data_ptr(),
                               None if w is None else g.data_ptr(), gy.data_ptr(), sgn_sum.data_ptr(),
                               None if dyy is None else dyy.data_ptr())
    mg = g.mean(dims, keepdim=True).contiguous()
    mgy = gy.mean(dims, keepdim=True)
    del gy
    n = lay[0] * lay[2]
    if n <= _SIGN_SUM_EXACT:
        # sign(yhat).mean() without a sign tensor: torch's float sum of the n signs is the exact integer
        # sgn_sum (every partial sum is an integer of magnitude <= n <= 2**24), and its mean is that sum
        # divided by n (sum, then div_): sgn_sum.to(float32).div_(n) and kappa * mgy in one native call
        mgy = mgy.contiguous()
        msgn, km = torch.empty((2,) + tuple(mg.shape), dtype=torch.float32).unbind(0)
        lib.tetrad_sq_l1_bwd_stats_f32(sgn_sum.data_ptr(), lay[1], n, mgy.data_ptr(), kappa, msgn.data_ptr(),
                                       km.data_ptr())
    else:
        msgn = torch.sign(yhat).mean(dims, keepdim=True).contiguous()
        km = (kappa * mgy).contiguous()
    sig = sigma.contiguous()
    dx = torch.empty_like(yhat)
    args = (mg.data_ptr(), msgn.data_ptr(), km.data_ptr(), sig.data_ptr(), dx.data_ptr())
    if lay[2] != 1 or lib.tetrad_sq_l1_bwd_dx_cl(g.data_ptr(), yhat.data_ptr(), lay[0], lay[1], *args) < 0:
        lib.tetrad_l1_bwd_dx_f32(g.data_ptr(), yhat.data_ptr(), *lay, *args)
    dw = db = None
    if dyy is not None:
        dw = dyy.sum_to_size(weight.shape)
    if bias is not None and ctx.needs_input_grad[2]:
        db = dy.sum_to_size(bias.shape)
    return dx, dw, db


def _broadcasts(a, b) -> bool:
    """Whether shapes ``a`` and ``b`` broadcast (``torch.broadcast_shapes`` succeeds): every trailing-aligned
    pair of sizes is equal or has a 1 -- checked here without torch's Python reference implementation."""
    return all(m == n or m == 1 or n == 1 for m, n in zip(reversed(a), reversed(b)))


def l1_norm(x: torch.Tensor, dim, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
            *, eps: float = 1e-5, kappa: float = KAPPA, _stats: dict | None = None) -> torch.Tensor:
    """Generic L1 normalization over the dims ``dim`` (float golden model, analytic backward).

    ``y = weight * (x - mu) / (kappa * mean|x - mu| + eps) + bias`` with ``mu = mean(x)``, both means
    over ``dim``. :func:`l1_layer_norm` and :func:`l1_batch_norm` are this with their usual dims.

    Parameters
    ----------
    x : torch.Tensor
        Float tensor (float16/bfloat16 are computed in float32 and the result cast back). NaN/Inf raise
        ``ValueError``.
    dim : int or sequence of int
        The normalization set's dims (negatives allowed).
    weight, bias : torch.Tensor, optional
        Affine parameters ``gamma``/``beta``, broadcastable against ``x`` (default: none, i.e. 1 and 0).
    eps : float, default 1e-5
        Added to ``kappa * sigma_1`` (must be > 0 so a constant set gives ``y = bias``, not NaN).
    kappa : float, default sqrt(pi/2)
        Scale of the mean absolute deviation. [PROPOSED; alternative 1]

    Returns
    -------
    torch.Tensor
        ``y``, ``x``'s shape and dtype.
    """
    who = _WHO
    xc = check_input(x, who, finite=False)      # finiteness: checked by L1NormFunction's forward
    dims = _norm_dims(dim, xc.dim(), who)
    eps = _check_pos_float(eps, "eps", who)
    kappa = _check_pos_float(kappa, "kappa", who)
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            if not _broadcasts(p.shape, xc.shape):
                raise ValueError(f"{who}: {name} of shape {tuple(p.shape)} does not broadcast against "
                                 f"input of shape {tuple(xc.shape)}")
    return _l1_norm_checked(x, xc, dims, weight, bias, eps, kappa, _stats)


def _l1_norm_checked(x, xc, dims, weight, bias, eps: float, kappa: float, stats) -> torch.Tensor:
    """:func:`l1_norm` after its argument checks: ``xc`` is ``check_input(x, ...)``, ``dims`` sorted valid
    dims, ``weight``/``bias`` broadcastable against ``x``."""
    w = weight if weight is None or weight.dtype == xc.dtype else weight.to(xc.dtype)
    b = bias if bias is None or bias.dtype == xc.dtype else bias.to(xc.dtype)
    y = L1NormFunction.apply(xc, w, b, dims, eps, kappa, stats)
    return y if y.dtype == x.dtype else y.to(x.dtype)     # (.to of the same dtype returns y itself)


def l1_layer_norm(x: torch.Tensor, normalized_shape, weight: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None, *, eps: float = 1e-5,
                  kappa: float = KAPPA) -> torch.Tensor:
    """L1 LayerNorm: normalize each token over its trailing ``normalized_shape`` dims (as ``F.layer_norm``).

    ``mu = mean(x)``, ``sigma_1 = mean|x - mu|`` over the last ``len(normalized_shape)`` dims,
    ``y = weight * (x - mu) / (kappa * sigma_1 + eps) + bias`` (ALGORITHMS.md §3(a), [PROPOSED]).
    Backward: analytic (:class:`L1NormFunction`).

    Parameters
    ----------
    x : torch.Tensor
        Float tensor ``(..., *normalized_shape)``.
    normalized_shape : int or sequence of int
        Trailing shape to normalize over; must match ``x.shape[-len(normalized_shape):]``.
    weight, bias : torch.Tensor, optional
        Element-wise affine of shape ``normalized_shape`` (default: none).
    eps : float, default 1e-5
    kappa : float, default sqrt(pi/2)
        [PROPOSED; alternative 1]

    Returns
    -------
    torch.Tensor
    """
    who = "l1_layer_norm"
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor, got {type(x).__name__}")
    if not ns or len(ns) > x.dim() or tuple(x.shape[x.dim() - len(ns):]) != ns:
        raise ValueError(f"{who}: normalized_shape {ns} does not match the trailing dims of input "
                         f"shape {tuple(x.shape)}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != ns:
            raise ValueError(f"{who}: {name} must have shape {ns}, got {tuple(p.shape)}")
    dims = tuple(range(x.dim() - len(ns), x.dim()))
    return l1_norm(x, dims, weight, bias, eps=eps, kappa=kappa)


def l1_batch_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_scale: torch.Tensor | None,
                  weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                  training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
                  kappa: float = KAPPA) -> torch.Tensor:
    """L1 BatchNorm over ``(N, *spatial)`` per channel (argument order of ``F.batch_norm``).

    Training (or no running statistics): per channel ``c`` of ``x`` (shape ``(N, C, *)``),
    ``mu_c = mean(x)``, ``sigma_1c = mean|x - mu_c|`` over ``N`` and the spatial dims, and
    ``y = weight_c * (x - mu_c) / (kappa * sigma_1c + eps) + bias_c``, with the analytic backward.
    When ``training`` and the running buffers are given they are updated in place as in
    ``nn.BatchNorm``: ``running_mean <- (1 - momentum) * running_mean + momentum * mu`` and
    ``running_scale <- (1 - momentum) * running_scale + momentum * kappa * sigma_1`` (the batch value,
    no Bessel-like correction; [PROPOSED]). Evaluation uses
    ``y = weight * (x - running_mean) / (running_scale + eps) + bias``.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C)`` or ``(N, C, *spatial)`` float tensor.
    running_mean, running_scale : torch.Tensor or None
        ``(C,)`` buffers: the EMA of ``mu`` and of ``kappa * sigma_1`` (a standard-deviation estimate,
        so ``running_scale`` plays the role of ``sqrt(running_var)``). Required when not training.
    weight, bias : torch.Tensor, optional
        ``(C,)`` affine parameters.
    training : bool, default False
    momentum : float, default 0.1
        EMA factor in ``[0, 1]`` (``None``, the cumulative average of ``nn.BatchNorm``, is not supported).
    eps : float, default 1e-5
    kappa : float, default sqrt(pi/2)
        [PROPOSED; alternative 1]

    Returns
    -------
    torch.Tensor
    """
    who = "l1_batch_norm"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{who}: expected input of shape (N, C, *), got {tuple(x.shape)}")
    c = x.shape[1]
    for name, p in (("running_mean", running_mean), ("running_scale", running_scale),
                    ("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (c,):
            raise ValueError(f"{who}: {name} must have shape ({c},), got {tuple(p.shape)}")
    if (running_mean is None) != (running_scale is None):
        raise ValueError(f"{who}: pass both running_mean and running_scale, or neither")
    if not (type(momentum) is float and 0.0 <= momentum <= 1.0) and (
            isinstance(momentum, bool) or not isinstance(momentum, Real) or not 0.0 <= float(momentum) <= 1.0):
        raise ValueError(f"{who}: momentum must be a number in [0, 1], got {momentum!r}")
    eps = _check_pos_float(eps, "eps", who)
    kappa = _check_pos_float(kappa, "kappa", who)
    view = (1, c) + (1,) * (x.dim() - 2)
    w = None if weight is None else weight.reshape(view)
    b = None if bias is None else bias.reshape(view)

    if not training:
        if running_mean is None:
            raise ValueError(f"{who}: evaluation (training=False) needs running_mean and running_scale")
        xc = check_input(x, who)
        y = (xc - running_mean.to(xc.dtype).reshape(view)) / (running_scale.to(xc.dtype).reshape(view) + eps)
        if w is not None:
            y = y * w.to(xc.dtype)
        if b is not None:
            y = y + b.to(xc.dtype)
        return y.to(x.dtype)

    dims = (0,) + tuple(range(2, x.dim()))
    # The running statistics are the forward's own mu and kappa * sigma_1 (before + eps): the same
    # reductions of the same tensor (x in the compute dtype) as computing them again here, only with
    # keepdim (tests/test_l1norm.py checks the bits against that recomputation).
    stats = {} if running_mean is not None else None
    # l1_norm's own checks hold here (x is at least 2-D, dims are valid, w/b are (1, C, 1, ...)), so only
    # its input conversion is made
    y = _l1_norm_checked(x, check_input(x, _WHO, finite=False), dims, w, b, eps, kappa, stats)
    if running_mean is not None:
        with torch.no_grad():
            mu, scale = stats["mu"].reshape(c), stats["scale"].reshape(c)
            m = float(momentum)
            # (.to of the same dtype would return the tensor itself)
            running_mean.mul_(1 - m).add_(mu if mu.dtype == running_mean.dtype else mu.to(running_mean.dtype),
                                          alpha=m)
            running_scale.mul_(1 - m).add_(scale if scale.dtype == running_scale.dtype
                                           else scale.to(running_scale.dtype), alpha=m)
    return y


# ---------------------------------------------------------------------------------------------------
# Integer ("fully quantized") path
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class L1NormIntResult(AffineQuantized):
    """Output of :func:`l1_norm_int`: an :class:`AffineQuantized` (``codes``, ``step = 2**-out_frac_bits``,
    ``grid``) plus the exact per-set statistics and reciprocal, for hardware comparison.

    The statistics are in input-code units and have ``keepdim`` shape (size 1 along the normalized
    dims), so they broadcast against ``codes``. ``mean = sum / n`` and
    ``mean|q - mean| = abs_dev / n**2`` exactly (``abs_dev = sum_j |n*q_j - sum|``).
    """

    n: int = 0
    sum: torch.Tensor = field(default=None)
    abs_dev: torch.Tensor = field(default=None)
    recip: torch.Tensor = field(default=None)
    recip_shift: torch.Tensor = field(default=None)

    def mean(self) -> torch.Tensor:
        """``mu = sum / n`` in code units (float64 value of the exact rational)."""
        return self.sum.to(torch.float64) / self.n

    def mad(self) -> torch.Tensor:
        """``sigma_1 = abs_dev / n**2`` in code units (float64 value of the exact rational)."""
        return self.abs_dev.to(torch.float64) / (self.n * self.n)


def _round_half_even_fraction(v: Fraction) -> int:
    return round(v)              # Python's round() on a Fraction is exact, ties to even


def _shift_floor(a: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """``floor(a * 2**-sh)`` for int64 ``|a| < 2**62`` and integer shifts of either sign (caller checks
    that left shifts stay below ``2**62``)."""
    if bool((sh >= 0).all()):                   # the usual case: one in-place arithmetic shift
        return a.bitwise_right_shift_(sh.clamp(max=62))  # floor; sh >= 62 gives 0 or -1 as |a| < 2**62
    right = a >> sh.clamp(0, 62)
    left = a << (-sh).clamp(0, 62)
    return torch.where(sh >= 0, right, left)


def l1_norm_int(codes: torch.Tensor, *, dim, scale: float | None = None, out_bits: int = 8,
                out_frac_bits: int | None = None, rounding: str = "rdn", eps: float = 1e-5,
                kappa: float = KAPPA, kappa_frac_bits: int = 16, recip_bits: int = 16,
                gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None,
                gamma_frac_bits: int = 16, acc_frac_bits: int = 16, seed: int | None = None,
                generator: torch.Generator | None = None,
                rand_bits: int = nx.DEFAULT_RAND_BITS) -> L1NormIntResult:
    """Fully quantized L1 normalization: integer codes in, integer codes out, integer arithmetic only.

    The input represents ``x = scale * q``; the output codes ``c`` represent ``y ~ c * 2**-F_y`` with
    ``y = gamma * (x - mu)/(kappa*sigma_1 + eps) + beta`` over the normalization set ``dim``. Each set
    (row) of ``n`` elements is processed as follows, all in exact integers ([PROPOSED] throughout):

    1. ``S = sum_j q_j``; ``t_j = n*q_j - S``; ``D = sum_j |t_j|`` -- so ``mu = S/n`` and
       ``sigma_1 = D/n**2`` exactly (code units). Two passes of adds; no division.
    2. Constants (host-side, once per call): ``K = round(kappa * 2**F_k)``,
       ``E = round(eps/scale * n**2 * 2**F_k)`` (ties to even, from the exact rationals of the floats).
       ``Den = K*D + E`` approximates ``2**F_k * n**2 * (kappa*sigma_1 + eps/scale)``.
    3. One reciprocal per row: with ``L = bitlen(Den)``, ``L_n = bitlen(n)``,
       ``R = round_half_up(n * 2**(B_r + L - L_n) / Den)`` (an integer division; ``R`` lies in
       ``(2**(B_r-1), 2**(B_r+1))``, relative error ``<= 2**-B_r``) and ``w = B_r + L - L_n - F_k``, so
       that ``yhat_j = (x_j - mu)/sigma ~ t_j * R * 2**-w``. ``Den = 0`` (a constant row with
       ``eps = 0``) gives ``R = 0``, i.e. ``yhat = 0``.
    4. ``h_j = floor(t_j * R * 2**(F_y + F_a - w))`` -- ``yhat`` in output steps with ``F_a`` extra
       fraction bits (an arithmetic shift; a left shift when the exponent is positive).
       With ``gamma``: ``h_j <- floor(h_j * G_j * 2**-F_g)``, ``G_j = round(gamma_j * 2**F_g)``.
       With ``beta``: ``h_j <- h_j + round(beta_j * 2**(F_y + F_a))``.
    5. Requantize ``v_j = h_j / 2**F_a``: RDN (ties to even) or SR ``floor(v_j + u_j)`` with ``u_j`` draw
       ``j`` (row-major in ``codes``' shape) of the contract's stream, computed exactly as
       ``(h_j * 2**(b+1) + (2r'+1) * 2**F_a) >> (F_a + b + 1)`` where ``u = (2r'+1)/2**(b+1)``
       (``hw.numerics.draw_to_uniform``); then clamp to ``[-q_max, q_max]``.

    The output is within ``1/2`` (RDN) or ``1`` (SR) output step of the float L1 norm (clamped to the
    grid), plus the fixed-point error, to first order and in output steps,
    ``|gamma*yhat|*2**F_y * (2**-B_r + 2**-F_k/kappa) + |yhat| * 2**(F_y-F_g-1) + 3 * 2**-F_a``
    (reciprocal and ``K``/``E`` rounding; ``G`` rounding; the two floors and ``beta``'s rounding).

    Parameters
    ----------
    codes : torch.Tensor
        Integer input codes (int8/16/32/64 or uint8), any shape.
    dim : int or sequence of int
        The normalization set: ``-1`` for LayerNorm over features, ``(0, 2, 3)`` for BatchNorm of an
        ``(N, C, H, W)`` tensor.
    scale : float, optional
        Input step ``s_x`` (only ``eps`` depends on it: the normalization is scale invariant). ``None``
        means ``eps`` is in code units.
    out_bits : int, default 8
        Output code width (symmetric grid ``[-(2**(b-1)-1), 2**(b-1)-1]``), ``2..16``. [PROPOSED; 4 for
        4-bit activations]
    out_frac_bits : int, optional
        ``F_y``: the output step is ``2**-F_y``. Default ``out_bits - 3``, i.e. an output range of about
        ``+-4`` (4 standard deviations of ``yhat``) at any width (4 bits: step 1/2). [PROPOSED]
    rounding : {"rdn", "sr"}, default "rdn"
        Output rounding (RDN for the forward pass, §3(b)). [PROPOSED]
    eps : float, default 1e-5
        As in the float layer, in the units of ``x`` (``>= 0``).
    kappa : float, default sqrt(pi/2)
        [PROPOSED; alternative 1]
    kappa_frac_bits : int, default 16
        ``F_k``: fraction bits of ``K`` (and ``E``). ``1..30``.
    recip_bits : int, default 16
        ``B_r``: precision of the per-row reciprocal ``R``. ``2..30``.
    gamma, beta : torch.Tensor, optional
        Float affine parameters broadcastable against ``codes`` (for BatchNorm pass ``(C, 1, 1)``);
        quantized to ``F_g`` fraction bits (``gamma``) and to ``F_y + F_a`` fraction bits (``beta``).
    gamma_frac_bits : int, default 16
        ``F_g``, ``0..30``.
    acc_frac_bits : int, default 16
        ``F_a``: fraction bits kept below the output step before the final rounding, ``1..30``.
    seed, generator, rand_bits :
        The SR stream (ignored for RDN), as in every quantizer.

    Returns
    -------
    L1NormIntResult
        ``codes`` (int8 for ``out_bits <= 8``) with ``step = 2**-F_y`` (float32 0-d) and the exact
        statistics ``n``, ``sum``, ``abs_dev`` and the reciprocal ``recip``/``recip_shift`` per set.

    Raises
    ------
    ValueError
        For bad arguments, and when a size/magnitude combination could overflow the int64 datapath
        (``2 * n**2 * max|q| >= 2**62`` and similar bounds, checked up front).
    """
    who = "l1_norm_int"
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor, got {type(codes).__name__}")
    if codes.dtype not in _INT_DTYPES:
        raise TypeError(f"{who}: expected integer codes (int8/16/32/64, uint8), got dtype {codes.dtype}")
    if codes.numel() == 0 or codes.dim() == 0:
        raise ValueError(f"{who}: expected a non-empty tensor with at least one dimension, "
                         f"got shape {tuple(codes.shape)}")
    dims = _norm_dims(dim, codes.dim(), who)
    _check_int(out_bits, "out_bits", who, 2, 16)
    f_y = out_bits - 3 if out_frac_bits is None else _check_int(out_frac_bits, "out_frac_bits", who, -16, 30)
    check_choice(rounding, ("rdn", "sr"), who, "rounding")
    eps = _check_pos_float(eps, "eps", who, allow_zero=True)
    kappa = _check_pos_float(kappa, "kappa", who)
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"{who}: scale must be one number (a per-tensor step), got shape {tuple(scale.shape)}")
        scale = float(scale)
    s_x = 1.0 if scale is None else _check_pos_float(scale, "scale", who)
    f_k = _check_int(kappa_frac_bits, "kappa_frac_bits", who, 1, 30)
    b_r = _check_int(recip_bits, "recip_bits", who, 2, 30)
    f_g = _check_int(gamma_frac_bits, "gamma_frac_bits", who, 0, 30)
    f_a = _check_int(acc_frac_bits, "acc_frac_bits", who, 1, 30)
    if rounding == "sr":
        nx._check_bits(rand_bits)
    grid = nx.int_grid(out_bits)
    qmax = grid.qmax

    shape = codes.shape
    rest = tuple(d for d in range(codes.dim()) if d not in dims)
    perm = rest + dims
    n = math.prod(shape[d] for d in dims)
    rows = codes.numel() // n
    keep_shape = tuple(1 if d in dims else shape[d] for d in range(codes.dim()))

    def to_rows(t: torch.Tensor) -> torch.Tensor:
        return t.permute(perm).reshape(rows, n)

    q = to_rows(codes.to(torch.int64))
    qabs = int(q.abs().max())
    # int64 safety of step 1: |S| <= n*|q|, |t| <= 2n|q|, D <= 2n^2|q|.
    if 2 * n * n * max(qabs, 1) >= _I64_LIMIT:
        raise ValueError(f"{who}: n = {n} elements per set with max |code| = {qabs} overflows the exact "
                         f"int64 statistics (need 2*n**2*max|q| < 2**62)")

    # 1. exact statistics
    s = q.sum(dim=1)
    t = q * n
    t.sub_(s[:, None])
    d = t.abs().sum(dim=1)

    # 2.-3. constants and one reciprocal per row (Python integers: exact at any width)
    k_int = _round_half_even_fraction(Fraction(kappa) * (1 << f_k))
    e_int = _round_half_even_fraction(Fraction(eps) / Fraction(s_x) * n * n * (1 << f_k))
    ln = n.bit_length()
    r_list, w_list = [], []
    for d_row in d.tolist():
        den = k_int * d_row + e_int
        if den == 0:
            r_list.append(0)
            w_list.append(0)
            continue
        ll = den.bit_length()
        num = n << (b_r + ll - ln)
        r_list.append((2 * num + den) // (2 * den))          # round half up
        w_list.append(b_r + ll - ln - f_k)
    recip = torch.tensor(r_list, dtype=torch.int64, device=q.device)
    w = torch.tensor(w_list, dtype=torch.int64, device=q.device)

    # 4. fixed-point yhat (in output steps, F_a extra fraction bits), gamma, beta
    max_t = 2 * n * max(qabs, 1)
    if max_t * (1 << (b_r + 1)) >= _I64_LIMIT:
        raise ValueError(f"{who}: t*R overflows int64 (n = {n}, max |code| = {qabs}, recip_bits = {b_r})")
    a = t.mul_(recip[:, None])                          # t is not needed any more
    sh = (w - (f_y + f_a))[:, None]
    # |t_j| <= D/2 (the t_j sum to 0), so |yhat| <= n / (2 kappa') with kappa' = K / 2**F_k, and
    # |h| <= |yhat| * 2**(F_y+F_a) * (1 + 2**-B_r) + 1: bound it before any left shift.
    h_bound = Fraction(n * 2 ** (f_k + max(f_y + f_a, 0)), max(k_int, 1)) + 2
    if h_bound >= _I64_LIMIT:
        raise ValueError(f"{who}: output fixed point overflows int64 (n = {n}, out_frac_bits + acc_frac_bits "
                         f"= {f_y + f_a})")
    h = _shift_floor(a, sh)
    if gamma is not None:
        g = torch.round(torch.as_tensor(gamma).detach().to(device=q.device, dtype=torch.float64) * 2.0 ** f_g)
        if not bool(torch.isfinite(g).all()):
            raise ValueError(f"{who}: gamma has NaN/Inf values")
        g = to_rows(torch.broadcast_to(g.to(torch.int64), shape))
        if int(h.abs().max()) * max(int(g.abs().max()), 1) >= _I64_LIMIT:
            raise ValueError(f"{who}: gamma * yhat overflows int64; lower gamma_frac_bits")
        h = (h * g) >> f_g
    if beta is not None:
        bq = torch.round(torch.as_tensor(beta).detach().to(device=q.device, dtype=torch.float64)
                         * 2.0 ** (f_y + f_a))
        if not bool(torch.isfinite(bq).all()) or float(bq.abs().max()) >= 2.0 ** 61:
            raise ValueError(f"{who}: beta has NaN/Inf or out-of-range values")
        h = h + to_rows(torch.broadcast_to(bq.to(torch.int64), shape))

    # 5. requantize (clamping h first is equivalent and keeps the SR arithmetic small)
    lim = (qmax + 1) << f_a
    h = h.clamp_(-lim, lim)
    seed_used = None
    if rounding == "rdn":
        out = (h + ((1 << (f_a - 1)) - 1) + ((h >> f_a) & 1)) >> f_a      # ties to even
    else:
        seed_used, u = draws_for(torch.empty(shape, dtype=torch.float64, device=q.device), seed,
                                 generator, rand_bits)
        u_odd = to_rows((u * 2.0 ** (rand_bits + 1)).to(torch.int64))      # 2r'+1, exact
        out = (h * (1 << (rand_bits + 1)) + u_odd * (1 << f_a)) >> (f_a + rand_bits + 1)
    out = out.clamp_(-qmax, qmax).to(codes_dtype(-qmax, qmax))
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    out = out.reshape([shape[p] for p in perm]).permute(inv).contiguous()

    def stat(v: torch.Tensor) -> torch.Tensor:
        return v.reshape([shape[p] for p in rest] + [1] * len(dims)).permute(inv).reshape(keep_shape)

    return L1NormIntResult(
        codes=out, method=who, seed=seed_used, rand_bits=rand_bits if rounding == "sr" else None,
        step=torch.tensor(2.0 ** -f_y, dtype=torch.float32), offset=None, grid=grid,
        n=n, sum=stat(s), abs_dev=stat(d), recip=stat(recip), recip_shift=stat(w))
