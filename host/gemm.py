"""Exact integer GEMM: the reference every backend (CPU/GPU fallback, RTL simulation, board) must equal.

``int_gemm(a, b)`` multiplies integer-valued operands -- INT4/INT8 codes, LOG4 values ``±2**k``,
shift-scaled values ``m * 2**s`` -- and returns the exact integer result. It runs on the BLAS float path
because a float32 GEMM of integers is exact while every partial sum is an integer of magnitude
``<= 2**24`` (``hw.numerics.FLOAT32_EXACT_LIMIT``): that holds when ``K * max|a| * max|b| <= 2**24``,
whatever order the BLAS accumulates in. Beyond that the reduction is split into K-chunks that each
satisfy the bound (summed in int64), or computed in float64 (exact to ``2**53``).
"""

from __future__ import annotations

import torch

from hw import numerics as nx

__all__ = ["int_gemm", "gemm_plan"]

_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
_FLOAT64_EXACT_LIMIT = 2 ** 53
_MAX_FLOAT32_CHUNKS = 2   # beyond this many float32 passes, one float64 pass is cheaper


def _abs_max(t: torch.Tensor) -> int:
    lo, hi = torch.aminmax(t)
    return max(abs(int(lo)), abs(int(hi)))


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


def _dtype_abs_max(t: torch.Tensor) -> int:
    info = torch.iinfo(t.dtype)
    return max(abs(info.min), info.max)


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
    conversions; otherwise up to two float32 K-chunks, else float64. The operands are scanned
    (``aminmax``) only when their dtype's range alone does not already prove the bound.
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"int_gemm: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _INT_DTYPES:
            raise TypeError(f"int_gemm: {name} must have an integer dtype, got {t.dtype} "
                            f"(quantize first; int_gemm multiplies codes, not floats)")
        if t.dim() != 2:
            raise ValueError(f"int_gemm: {name} must be 2-D, got shape {tuple(t.shape)}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"int_gemm: inner dimensions differ: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"int_gemm: a is on {a.device} but b is on {b.device}")
    if out_dtype not in (torch.int64, torch.int32):
        raise ValueError(f"int_gemm: out_dtype must be torch.int64 or torch.int32, got {out_dtype}")

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
    if k_chunk >= k:
        return torch.mm(a.to(dtype), b.to(dtype)).to(out_dtype)
    out = torch.zeros((m, n), dtype=torch.int64, device=a.device)
    for k0 in range(0, k, k_chunk):
        part = torch.mm(a[:, k0:k0 + k_chunk].to(dtype), b[k0:k0 + k_chunk].to(dtype))
        out += part.to(torch.int64)
    return out.to(out_dtype)
