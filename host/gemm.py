"""Exact integer GEMM: the reference every backend (CPU/GPU fallback, RTL simulation, board) must equal.

``int_gemm(a, b)`` multiplies integer-valued operands -- INT4/INT8 codes, LOG4 values ``±2**k``,
shift-scaled values ``m * 2**s`` -- and returns the exact integer result. It runs on the BLAS float path
because a float32 GEMM of integers is exact while every partial sum is an integer of magnitude
``<= 2**24`` (``hw.numerics.FLOAT32_EXACT_LIMIT``): that holds when ``K * max|a| * max|b| <= 2**24``,
whatever order the BLAS accumulates in. Beyond that the reduction is split into K-chunks that each
satisfy the bound (summed in int64), or computed in float64 (exact to ``2**53``).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch

from hw import numerics as nx

__all__ = ["int_gemm", "gemm_plan", "qgemm", "qconv2d", "qconv2d_weight", "GemmRecord", "record_gemms"]

_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
_FLOAT64_EXACT_LIMIT = 2 ** 53
_MAX_FLOAT32_CHUNKS = 2   # beyond this many float32 passes, one float64 pass is cheaper


def _int_range(t: torch.Tensor) -> tuple[int, int]:
    """``(min, max)`` of a non-empty integer tensor as Python ints, reduced in storage order."""
    if t.dim() == 2 and not t.is_contiguous() and t.t().is_contiguous():
        t = t.t()               # reduce in storage order: a strided scan of a transposed view is slow
    elif t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        t = t.permute(0, 2, 3, 1)   # (aminmax copies a non-contiguous tensor first; integers: any order)
    lo, hi = torch.aminmax(t)
    return int(lo), int(hi)


def _abs_max(t: torch.Tensor) -> int:
    lo, hi = _int_range(t)
    return max(abs(lo), abs(hi))


def gemm_plan(k: int, a_max: int, b_max: int, device_type: str = "cpu") -> tuple[torch.dtype, int]:
    """``(dtype, k_chunk)``: the float dtype and the longest K-chunk for which a GEMM of operands with
    ``|a| <= a_max``, ``|b| <= b_max`` is exact. ``k_chunk >= k`` means a single pass."""
    p = a_max * b_max
    if p == 0:
        return torch.float32, max(k, 1)
    if _float32_matmul_is_ieee(device_type):
        k32 = nx.FLOAT32_EXACT_LIMIT // p
        if k32 >= 1 and -(-k // k32) <= _MAX_FLOAT32_CHUNKS:
            return torch.float32, k32
    k64 = _FLOAT64_EXACT_LIMIT // p
    if k64 < 1:
        raise ValueError(f"int_gemm: operand magnitudes {a_max} x {b_max} exceed what a float64 GEMM "
                         f"holds exactly (2**53 per product)")
    return torch.float64, k64


def _float32_matmul_is_ieee(device_type: str) -> bool:
    """A float32 matmul is exact on integers only if it really is float32 (no TF32/bf16 shortcuts)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    if device_type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return False
    return True


def _iinfo_abs_max(dtype: torch.dtype) -> int:
    info = torch.iinfo(dtype)
    return max(abs(info.min), info.max)


# looked up per GEMM operand (several times a GEMM): a dict read instead of constructing torch.iinfo
_DTYPE_ABS_MAX = {dt: _iinfo_abs_max(dt) for dt in _INT_DTYPES}


def _dtype_abs_max(t: torch.Tensor) -> int:
    """The largest magnitude ``t``'s integer dtype holds (``TypeError`` for a non-integer dtype)."""
    v = _DTYPE_ABS_MAX.get(t.dtype)
    return _iinfo_abs_max(t.dtype) if v is None else v


def _check_operands(who: str, a, b) -> None:
    """Both operands integer 2-D tensors on one device with matching inner dimensions, else a clear error."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{who}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _INT_DTYPES:
            raise TypeError(f"{who}: {name} must have an integer dtype, got {t.dtype} "
                            f"(quantize first; the GEMM multiplies codes, not floats)")
        if t.dim() != 2:
            raise ValueError(f"{who}: {name} must be 2-D, got shape {tuple(t.shape)}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"{who}: inner dimensions differ: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"{who}: a is on {a.device} but b is on {b.device}")


def int_gemm(a: torch.Tensor, b: torch.Tensor, *, out_dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """Exact ``a @ b`` of integer tensors.

    Parameters
    ----------
    a : (M, K) integer tensor (any integer dtype, any strides, e.g. a transposed view).
    b : (K, N) integer tensor on the same device.
    out_dtype : ``torch.int32`` (default, the hardware accumulator width) or ``torch.int64``. With int32 an
        ``OverflowError`` is raised whenever the worst case ``K * max|a| * max|b|`` could exceed it, so a
        result is never silently wrapped; pass ``torch.int64`` for wide 8-bit or long-K GEMMs.

    Returns
    -------
    (M, N) tensor of ``out_dtype`` equal, element for element, to the int64 product.

    Cost: one float32 BLAS GEMM when ``K * max|a| * max|b| <= 2**24`` (every INT4 x INT4 and INT4 x LOG4
    training GEMM up to K = 2**24 / 64 = 262,144 or 2**24 / 1024 = 16,384), plus the operand and output
    conversions; otherwise, for an output small next to the operands (a long reduction), one batched
    float32 GEMM over exact K-chunks; else up to two float32 K-chunks, else float64. The operands are scanned
    (``aminmax``) only when their dtype's range alone does not already prove the bound.
    """
    _check_operands("int_gemm", a, b)
    if out_dtype not in (torch.int64, torch.int32):
        raise ValueError(f"int_gemm: out_dtype must be torch.int64 or torch.int32, got {out_dtype}")
    return _int_gemm(a, b, out_dtype, float32_ok=False)


def _int_gemm(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype, *, float32_ok: bool) -> torch.Tensor:
    """:func:`int_gemm` on checked operands. ``float32_ok``: when the product is one exact float32 GEMM,
    return its float32 result as is (the same integers, every one ``<= 2**24`` in magnitude) instead of
    converting it to ``out_dtype`` -- for callers that rescale in float32 anyway, which saves two
    elementwise passes (float -> int -> float) over the output."""
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0 or k == 0:
        return torch.zeros((m, n), dtype=out_dtype, device=a.device)
    a_max, b_max = _dtype_abs_max(a), _dtype_abs_max(b)
    if k * a_max * b_max > nx.FLOAT32_EXACT_LIMIT or out_dtype == torch.int32 and k * a_max * b_max > 2 ** 31 - 1:
        a_max, b_max = _abs_max(a), _abs_max(b)   # the dtype bound is not enough: measure
    if out_dtype == torch.int32 and k * a_max * b_max > 2 ** 31 - 1:
        raise OverflowError(f"int_gemm: worst case K*max|a|*max|b| = {k * a_max * b_max} does not fit "
                            f"int32; use out_dtype=torch.int64")
    if k * a_max * b_max >= 2 ** 63:
        raise OverflowError(f"int_gemm: worst case K*max|a|*max|b| = {k * a_max * b_max} overflows int64")

    dtype, k_chunk = gemm_plan(k, a_max, b_max, a.device.type)
    k32 = nx.FLOAT32_EXACT_LIMIT // (a_max * b_max) if a_max * b_max and \
        _float32_matmul_is_ieee(a.device.type) else 0
    chunks = -(-k // k32) if k32 else 0
    batched = k32 and chunks * m * n <= 2 * k * (m + n) and chunks <= 2 ** 29
    if k_chunk >= k and (dtype == torch.float32 or not batched):
        out = torch.mm(_to_float(a, dtype), _to_float(b, dtype))
        return out if float32_ok and dtype == torch.float32 else out.to(out_dtype)
    if batched:
        # Long reduction, small output (a weight gradient over batch x positions): one batched float32
        # GEMM over K-chunks that each satisfy the exactness bound, then an exact float64 sum of the
        # chunk results (each an integer <= 2**24, at most 2**29 of them). Cheaper than a float64 GEMM,
        # even one in a single pass (1.3-1.8x on the INT8 x 8-bit U GEMMs of the benchmark CNN).
        pad = chunks * k32 - k
        af, bf = _to_float(a, torch.float32), _to_float(b, torch.float32)
        if pad:
            af = torch.nn.functional.pad(af, (0, pad))
            bf = torch.nn.functional.pad(bf, (0, 0, 0, pad))
        parts = torch.bmm(af.reshape(m, chunks, k32).transpose(0, 1), bf.reshape(chunks, k32, n))
        return parts.to(torch.float64).sum(dim=0).to(out_dtype)
    out = torch.zeros((m, n), dtype=torch.int64, device=a.device)
    for k0 in range(0, k, k_chunk):
        part = torch.mm(_to_float(a[:, k0:k0 + k_chunk], dtype), _to_float(b[k0:k0 + k_chunk], dtype))
        out += part.to(torch.int64)
    return out.to(out_dtype)


def _to_float(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as ``dtype`` (values unchanged: integers this small are exact). A transposed view is converted
    in its storage order and transposed back (BLAS takes either layout), not gathered with a stride."""
    if t.dim() == 2 and not t.is_contiguous() and t.t().is_contiguous():
        return t.t().to(dtype).t()
    return t.to(dtype)


# ---------------------------------------------------------------------------------------------------
# qgemm: the one entry point for a quantized training GEMM
# ---------------------------------------------------------------------------------------------------

_QGEMM_FORMATS = ("int", "log", "shift")


@dataclass(frozen=True, eq=False)
class GemmRecord:
    """One :func:`qgemm` call as seen by :func:`record_gemms`: the operands exactly as the backend got
    them, the integer result, and who asked (``tag``, e.g. ``"conv2.B"``)."""

    tag: str
    a: torch.Tensor
    b: torch.Tensor
    b_format: str
    b_shift: torch.Tensor | None
    out: torch.Tensor
    backend: str


_recorders = threading.local()


@contextlib.contextmanager
def record_gemms():
    """Record every :func:`qgemm` call made inside the block (this thread) into the yielded list.

    Tests use it to check that the F/B/U GEMMs consume exactly the operands a recipe specifies and that
    two backends produce the same integers.
    """
    stack = getattr(_recorders, "stack", None)
    if stack is None:
        stack = _recorders.stack = []
    log: list[GemmRecord] = []
    stack.append(log)
    try:
        yield log
    finally:
        stack.pop()


def _b_abs_bound(b: torch.Tensor, b_format: str, b_shift: torch.Tensor | None,
                 code_range: tuple[int, int] | None = None, shift_max: int | None = None) -> int:
    """``max|value(b)|`` of a B operand; ``code_range`` (``(min, max)`` of ``b``) and ``shift_max`` (the
    largest shift), where given, are the ones the caller measured on these tensors (no second pass)."""
    if b.numel() == 0:
        return 0
    lo, hi = _int_range(b) if code_range is None else code_range
    c = max(abs(lo), abs(hi))
    if b_format == "int":
        return c
    if b_format == "log":
        return 0 if c == 0 else 1 << (c - 1)
    if shift_max is None:
        from host.backends.torch_backend import stored_values
        shift_max = int(stored_values(b_shift).max()) if b_shift.numel() else 0
    return c << shift_max


def qgemm(a: torch.Tensor, b: torch.Tensor, *, b_format: str = "int", b_shift: torch.Tensor | None = None,
          backend=None, out_dtype: torch.dtype | None = None, tag: str = "", float_out: bool = False) -> torch.Tensor:
    """A quantized training GEMM ``a @ value(b)`` on a backend: the one entry point (ARCHITECTURE.md).

    Every backend (:mod:`host.backends`: CPU/CUDA via :func:`int_gemm`, the RTL simulation, a board)
    returns the same integers for the same inputs.

    Parameters
    ----------
    a : (M, K) integer tensor
        A operand codes (INT4/UINT4/INT8 codes, or any integers; the RTL and board split wide ones).
    b : (K, N) integer tensor
        B operand codes in ``b_format``.
    b_format : {"int", "log", "shift"}, default "int"
        ``"int"``: value = code. ``"log"``: LOG4 (``hw.numerics.LogFormat``), value
        ``sign(c) * 2**(|c| - 1)``, 0 for ``c = 0``. ``"shift"``: ShiftQuant, value ``code << b_shift``
        (``host.quant.shift_operands``).
    b_shift : integer tensor broadcastable to ``b``, optional
        Per-element shift, required for (and only for) ``"shift"``.
    backend : Backend or str, optional
        Where to run (:func:`host.backends.get_backend`); default :func:`host.backends.current_backend`.
    out_dtype : torch.int32 or torch.int64, optional
        Default: int32 (the hardware accumulator) when the worst case ``K * max|a| * max|value(b)|`` fits,
        else int64.
    tag : str
        A label stored by :func:`record_gemms` (the layers use ``"<layer>.F|B|U"``).
    float_out : bool, default False
        Allow a float32 result holding the exact integers when the backend computes them as one exact
        float32 GEMM (``TorchBackend``): for callers that convert the result to float32 anyway
        (:func:`host.nn.operand.matmul`); the conversion would give the same tensor. The record keeps the
        integers.

    Returns
    -------
    (M, N) integer tensor, exactly ``a.long() @ value(b).long()`` (float32 holding them, see ``float_out``).

    Raises
    ------
    TypeError, ValueError
        Non-integer operands, wrong shapes, unknown format (the message lists the valid ones).
    host.backends.BackendError
        The backend failed (device lost, link down).
    """
    from host.backends import current_backend, get_backend   # lazy: host.backends imports int_gemm

    _check_operands("qgemm", a, b)
    if b_format not in _QGEMM_FORMATS:
        raise ValueError(f"qgemm: unknown b_format {b_format!r}; valid: {list(_QGEMM_FORMATS)}")
    if (b_format == "shift") != (b_shift is not None):
        raise ValueError("qgemm: b_shift is required for b_format='shift' and only for it")
    # a LOG/shift operand's code range and largest shift, each measured once here and handed to
    # TorchBackend's b_values, which needs the same ones (None: not measured, or nothing to measure)
    b_range = shift_max = None
    if b_shift is not None:
        if not isinstance(b_shift, torch.Tensor) or b_shift.dtype not in _INT_DTYPES:
            raise TypeError("qgemm: b_shift must be an integer tensor")
        from host.backends.torch_backend import stored_values
        b_shift = b_shift.expand(b.shape)
        if b_shift.numel():
            shift_min, shift_max = _int_range(stored_values(b_shift))
            if shift_min < 0:
                raise ValueError("qgemm: b_shift must be >= 0")
    if out_dtype is None:
        # the worst case from the dtypes first (no pass over the data), measured only if that is too big
        k = a.shape[1]
        if b_format == "int":
            b_bound = _dtype_abs_max(b)
        else:
            b_range = _int_range(b) if b.numel() else None
            b_bound = _b_abs_bound(b, b_format, b_shift, b_range, shift_max)   # measured already
        bound = k * _dtype_abs_max(a) * b_bound
        if bound > 2 ** 31 - 1:
            a_max = _abs_max(a) if a.numel() else 0
            bound = k * a_max * (_b_abs_bound(b, b_format, b_shift) if b_format == "int" else b_bound)
        out_dtype = torch.int32 if bound <= 2 ** 31 - 1 else torch.int64
    elif out_dtype not in (torch.int32, torch.int64):
        raise ValueError(f"qgemm: out_dtype must be torch.int32 or torch.int64, got {out_dtype}")

    from host.backends.torch_backend import TorchBackend

    be = current_backend() if backend is None else get_backend(backend)
    if float_out and isinstance(be, TorchBackend):
        out = be.gemm(a, b, b_format=b_format, b_shift=b_shift, out_dtype=out_dtype, float32_ok=True,
                      b_stats=(b_range, shift_max))
    else:
        out = be.gemm(a, b, b_format=b_format, b_shift=b_shift, out_dtype=out_dtype)
    if tuple(out.shape) != (a.shape[0], b.shape[1]) or out.dtype not in (out_dtype, torch.float32) \
            or out.dtype == torch.float32 and not float_out:
        raise RuntimeError(f"qgemm: backend {be.describe()} returned {tuple(out.shape)} {out.dtype}, "
                           f"expected {(a.shape[0], b.shape[1])} {out_dtype}")
    stack = getattr(_recorders, "stack", None)
    if stack:
        rec = GemmRecord(tag, a.detach(), b.detach(), b_format, None if b_shift is None else b_shift.detach(),
                         out.detach().to(out_dtype), be.describe())
        for log in stack:
            log.append(rec)
    return out


# ---------------------------------------------------------------------------------------------------
# convolution F and U GEMMs: the same integers, without materialising im2col where that is exact
# ---------------------------------------------------------------------------------------------------

def _exact_conv_backend(be) -> bool:
    """A float32 CPU convolution of integer-valued tensors is exact under the 2**24 bound only if it is
    IEEE float32 (no reduced-precision shortcut) and never leaves the integers (oneDNN's direct
    convolution or PyTorch's im2col + GEMM: any summation order of integer products is exact then).
    CUDA is excluded: cuDNN may pick Winograd/FFT algorithms, whose transforms are not integer."""
    from host.backends import TorchBackend
    if not isinstance(be, TorchBackend) or be.device.type != "cpu":
        return False
    if torch.get_float32_matmul_precision() != "highest":
        return False
    prec = getattr(getattr(getattr(torch.backends, "mkldnn", None), "conv", None), "fp32_precision", "none")
    return prec in ("none", "ieee")


def _record(tag, a, b, b_format, b_shift, out, be) -> None:
    stack = getattr(_recorders, "stack", None)
    if stack:
        rec = GemmRecord(tag, a.detach(), b.detach(), b_format,
                         None if b_shift is None else b_shift.detach(), out.detach(), be.describe())
        for log in stack:
            log.append(rec)


def _geom_out(h, w, geom):
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = geom
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def qconv2d(x: torch.Tensor, w: torch.Tensor, geom, *, backend=None, tag: str = "",
            float_out: bool = False) -> torch.Tensor:
    """The F GEMM of a convolution: exactly ``qgemm(im2col(x), w.reshape(M, -1).t())``.

    Parameters
    ----------
    x : (N, C, H, W) integer tensor
        Activation codes (zero padding = code 0).
    w : (M, C, kh, kw) integer tensor
        Weight codes.
    geom : ``(kernel_size, dilation, padding, stride)`` pairs.
    backend, tag, float_out :
        As for :func:`qgemm`.

    Returns
    -------
    (N * H_out * W_out, M) integer tensor (rows ``(n, h, w)``), equal to the im2col GEMM (float32 holding
    the integers if ``float_out`` and the float32 convolution ran).

    On ``TorchBackend("cpu")``, when the worst case ``C*kh*kw * max|x| * max|w| <= 2**24``, it is one
    float32 convolution (exact, see :func:`_exact_conv_backend`); otherwise, and on every other
    backend, the im2col GEMM through :func:`qgemm`. :func:`record_gemms` sees the same record either way
    (the im2col operands, built only while recording).
    """
    from host.backends import current_backend, get_backend
    from host.nn.functional import im2col

    be = current_backend() if backend is None else get_backend(backend)
    m = w.shape[0]
    k = w[0].numel()
    if _exact_conv_backend(be):
        bound = k * _dtype_abs_max(x) * _dtype_abs_max(w)
        if bound > nx.FLOAT32_EXACT_LIMIT:
            bound = k * _abs_max(x) * _abs_max(w)
        if bound <= nx.FLOAT32_EXACT_LIMIT:
            ks, dil, pad, st = geom
            # channels-last input: oneDNN then writes the (N, H, W, M) layout the GEMM result has, so the
            # reshape below is a view, not a copy (and the convolution is faster); the integers are exact
            # either way
            y = torch.nn.functional.conv2d(x.to(torch.float32, memory_format=torch.channels_last),
                                           w.to(torch.float32), stride=st, padding=pad, dilation=dil)
            out = y.permute(0, 2, 3, 1).reshape(-1, m)
            if getattr(_recorders, "stack", None):
                _record(tag, im2col(x, *geom), w.reshape(m, -1).t(), "int", None, out.to(torch.int32), be)
            return out if float_out else out.to(torch.int32)
    return qgemm(im2col(x, *geom), w.reshape(m, -1).t(), backend=be, tag=tag, float_out=float_out)


_WGRAD_I8_MAX_ROW = 131071   # the kernel's int32 partial sums hold this many products of int8 values
_WGRAD_I8_MAX_M = 64         # output channels of the kernel's per-term accumulators


def _conv_weight_i8(x: torch.Tensor, g: torch.Tensor, w_shape, geom, ho: int, wo: int):
    """``im2col(x)^T g`` of int8 ``x`` ``(N, C, H, W)`` and int8 ``g`` ``(N*H_out*W_out, M)`` with the
    integer kernel of :mod:`host.quant.native` (exact, int64), in the weight gradient's ``(M, C, kh, kw)``
    shape like the convolution it replaces; ``None`` where it does not apply (other dtypes or devices,
    kernels unavailable). About 3x faster than a float64 convolution on the benchmark CNN's INT8 edge layer,
    which also needs no float copies of the operands."""
    from host.quant import native
    if x.dtype != torch.int8 or g.dtype != torch.int8 or x.device.type != "cpu" or g.device.type != "cpu" \
            or wo > _WGRAD_I8_MAX_ROW or w_shape[0] > _WGRAD_I8_MAX_M:
        return None
    lib = native.kernels()
    if lib is None:
        return None
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = geom
    n, c, h, w = x.shape
    m = w_shape[0]
    xc, gc = x.contiguous(), g.contiguous()
    out = torch.empty((c * kh * kw, m), dtype=torch.int64)
    scratch = torch.empty((c * kh * kw, m), dtype=torch.int32)
    lib.tetrad_conv_wgrad_i8(xc.data_ptr(), gc.data_ptr(), n, c, h, w, m, kh, kw, dh, dw, ph, pw, sh, sw,
                             ho, wo, scratch.data_ptr(), out.data_ptr())
    return out.t().reshape(w_shape)


def _shift_values_f32(g: torch.Tensor, b_shift: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """``(b_values(g, "shift", b_shift).to(float32), max|values|)`` in one native pass for int8 CPU codes
    ``g`` ``(R, M)`` with one int8 shift per column (``b_shift`` broadcast from ``(1, M)``, ShiftQuant's
    per-channel operand) -- the same integers, as float32 (exact: at most ``128 << 15``); ``None`` where
    that does not apply (then the torch passes run)."""
    from host.quant import native
    if g.dtype != torch.int8 or g.dim() != 2 or g.device.type != "cpu" or b_shift.dtype != torch.int8 \
            or b_shift.device.type != "cpu":
        return None
    shift = b_shift.expand(g.shape)
    if shift.stride(0) != 0:
        return None
    lib = native.kernels()
    if lib is None:
        return None
    gc, sc = g.contiguous(), shift[:1].contiguous()
    out = torch.empty(gc.shape, dtype=torch.float32)
    vmax = lib.tetrad_sq_shift_values_f32(gc.data_ptr(), gc.shape[0], gc.shape[1], sc.data_ptr(), out.data_ptr())
    return None if vmax < 0 else (out, vmax)


_WGRAD_U8_MAX = 255           # |value| bound of the int16 kernel's operands (UINT8 codes)
_WGRAD_U8_MAX_ROW = (2 ** 31 - 1) // (255 * 255)   # its int32 partial sums hold this many products


def _conv_weight_u8(x: torch.Tensor, g: torch.Tensor, w_shape, geom, ho: int, wo: int, x_max: int,
                    g_max: int):
    """``im2col(x)^T g`` of int16 ``x`` ``(N, C, H, W)`` and int16 ``g`` ``(N*H_out*W_out, M)`` with every
    value in ``[-255, 255]`` (``x_max``, ``g_max``: their measured ``max|.|``) -- StatQuant's UINT8 codes
    on both sides of the U GEMM -- with the integer kernel of :mod:`host.quant.native` (exact, int64), in
    the weight gradient's ``(M, C, kh, kw)`` shape like the convolution it replaces; ``None`` where it does
    not apply (other dtypes, devices or magnitudes, kernels unavailable). 3-12x faster than the float64
    convolution on the benchmark CNN's layers, which also needs float64 copies of both operands."""
    from host.quant import native
    if x.dtype != torch.int16 or g.dtype != torch.int16 or x.device.type != "cpu" or g.device.type != "cpu" \
            or x_max > _WGRAD_U8_MAX or g_max > _WGRAD_U8_MAX or wo > _WGRAD_U8_MAX_ROW:
        return None
    lib = native.kernels()
    if lib is None:
        return None
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = geom
    n, c, h, w = x.shape
    m = w_shape[0]
    xc, gc = x.contiguous(), g.contiguous()
    out = torch.empty((c * kh * kw, m), dtype=torch.int64)
    acc = torch.empty((c * kh * kw, m), dtype=torch.int32)
    scratch = torch.empty(lib.tetrad_stat_wgrad_scratch(c, h, w, m, ph, pw, ho, wo), dtype=torch.uint8)
    lib.tetrad_stat_conv_wgrad_i16(xc.data_ptr(), gc.data_ptr(), n, c, h, w, m, kh, kw, dh, dw, ph, pw, sh,
                                   sw, ho, wo, acc.data_ptr(), out.data_ptr(),
                                   scratch.data_ptr() if scratch.numel() else None)
    return out.t().reshape(w_shape)


def qconv2d_weight(x: torch.Tensor, g: torch.Tensor, w_shape, geom, *, b_format: str = "int",
                   b_shift: torch.Tensor | None = None, backend=None, tag: str = "",
                   float_out: bool = False) -> torch.Tensor:
    """The U GEMM of a convolution: exactly ``qgemm(im2col(x).t(), g, b_format=..., b_shift=...)``.

    Parameters
    ----------
    x : (N, C, H, W) integer tensor
        Activation codes.
    g : (N * H_out * W_out, M) integer tensor
        Output-gradient codes in ``G_mat`` layout (rows ``(n, h, w)``), in ``b_format``.
    w_shape : ``(M, C, kh, kw)``.
    geom, b_format, b_shift, backend, tag, float_out :
        As for :func:`qconv2d` / :func:`qgemm` (a float32 result only from the float32 convolution).

    Returns
    -------
    (C*kh*kw, M) integer tensor. On ``TorchBackend("cpu")``, when the worst case
    ``N*H_out*W_out * max|x| * max|value(g)| <= 2**24``, one float32 weight-gradient convolution (exact);
    up to ``2**53`` one float64 convolution (exact) -- or, for int8 ``x`` and int8 values of ``g``, the
    integer kernel :func:`_conv_weight_i8` (the same integers, faster); otherwise the im2col GEMM through
    :func:`qgemm`.
    """
    from host.backends import current_backend, get_backend
    from host.backends.torch_backend import b_values
    from host.nn.functional import im2col

    be = current_backend() if backend is None else get_backend(backend)
    if b_format not in _QGEMM_FORMATS:
        raise ValueError(f"qconv2d_weight: unknown b_format {b_format!r}; valid: {list(_QGEMM_FORMATS)}")
    if _exact_conv_backend(be):
        n, _, h, wd = x.shape
        ho, wo = _geom_out(h, wd, geom)
        m = w_shape[0]
        kred = n * ho * wo
        x_max = g_max = None       # max|x|, max|gv|, measured at most once
        # a ShiftQuant operand for a float32 result: its float32 values and their maximum from one native
        # pass (the bound below is then the one measured here, and the convolution gets the same floats)
        fast = _shift_values_f32(g, b_shift) if b_format == "shift" and b_shift is not None and float_out \
            and not getattr(_recorders, "stack", None) else None
        if fast is not None:
            g_max = fast[1]
            bound = kred * _dtype_abs_max(x) * g_max
            if bound > nx.FLOAT32_EXACT_LIMIT:
                x_max = _abs_max(x)
                bound = kred * x_max * g_max
            if bound > nx.FLOAT32_EXACT_LIMIT:
                fast = x_max = g_max = None    # not the float32 convolution: the general path below
        if fast is None:
            gv = b_values(g, b_format, None if b_shift is None else b_shift.expand(g.shape))
            bound = kred * _dtype_abs_max(x) * _dtype_abs_max(gv)
            if bound > nx.FLOAT32_EXACT_LIMIT:
                x_max, g_max = _abs_max(x), _abs_max(gv)
                bound = kred * x_max * g_max
        # float32 while every partial sum is exact; else float64 (exact to 2**53; ATen's CPU float64
        # convolution is im2col + GEMM, any order of integer sums is exact), e.g. an INT8 edge layer's
        # long reduction over batch x positions -- cheaper than the im2col GEMM in K-chunks
        dt = torch.float32 if bound <= nx.FLOAT32_EXACT_LIMIT else torch.float64
        if bound <= _FLOAT64_EXACT_LIMIT:
            ks, dil, pad, st = geom
            # int8 x int8 past the float32 bound (an INT8 edge layer): the integer kernel, else float64
            dw = _conv_weight_i8(x, gv, w_shape, geom, ho, wo) if dt == torch.float64 else None
            if dw is None and dt == torch.float64:   # UINT8 x UINT8 codes (StatQuant's U GEMM)
                dw = _conv_weight_u8(x, gv, w_shape, geom, ho, wo, x_max, g_max)
            if dw is None:
                xf = x.to(dt, memory_format=torch.channels_last)   # like gf: faster, the same integers
                gf = (gv.to(dt) if fast is None else fast[0]).reshape(n, ho, wo, m).permute(0, 3, 1, 2)
                dw = torch.ops.aten.convolution_backward(
                    gf, xf, xf.new_zeros(w_shape), None, list(st), list(pad), list(dil), False, [0, 0], 1,
                    [False, True, False])[1]
            # contiguous (K, M), the layout of the GEMM's result: downstream float ops (the rescale, the
            # layers' reshape to the weight's shape, reductions in straight-through estimators) then
            # see the same strides and round identically
            recording = bool(getattr(_recorders, "stack", None))
            keep_float = float_out and dt == torch.float32
            out = dw.reshape(m, -1).t().contiguous() if keep_float else None
            if keep_float and not recording:
                return out      # the float32 result as it is: no integer dtype to choose, no bound to measure
            # the accumulator width qgemm would choose (its bound for a shift operand is code << max shift)
            acc_bound = bound if b_format != "shift" else \
                kred * (_abs_max(x) if x_max is None else x_max) * _b_abs_bound(g, b_format, b_shift.expand(g.shape))
            out_dtype = torch.int32 if acc_bound <= 2 ** 31 - 1 else torch.int64
            if keep_float:
                ints = out.to(out_dtype)
            else:
                out = ints = dw.reshape(m, -1).t().to(out_dtype).contiguous()
            if recording:
                _record(tag, im2col(x, *geom).t(), g, b_format, None if b_shift is None else
                        b_shift.expand(g.shape), ints, be)
            return out
    return qgemm(im2col(x, *geom).t(), g, b_format=b_format, b_shift=b_shift, backend=be, tag=tag,
                 float_out=float_out)
