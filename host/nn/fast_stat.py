"""CPU fast paths of StatQuant's (``psq4``, ``bhq5``) training GEMMs: the same floats as the generic path.

StatQuant's operands carry zero-points (its INT8 forward is asymmetric) and per-row/per-column scales
(PSQ), which the per-tensor kernels of :mod:`host.nn.functional` do not take; the generic path is then
:func:`host.nn.operand.matmul` (an exact integer GEMM plus four float passes of rescale and zero-point
terms over the whole result) and :func:`host.nn.functional.col2im`. Each function here computes the same
integers with the same :func:`host.gemm.qgemm` call and the same float operations in the same order, fused
into one pass of :mod:`host.quant.native`, or returns ``None`` where it does not apply (the generic path
then runs).
"""

from __future__ import annotations

import torch

from host.gemm import _recorders, qgemm
from host.nn.operand import Operand

__all__ = ["conv_dgrad_affine"]


def _per_tensor_affine(q: Operand) -> bool:
    """Integer codes with a 0-d float32 scale and offset (a zero-point), one sample, no mask."""
    return q.fmt == "int" and not q.sample_mean and q.offset_mask is None and q.shift is None \
        and all(v is not None and v.dim() == 0 and v.dtype == torch.float32 for v in (q.scale, q.offset))


def _per_row_affine(q: Operand) -> bool:
    """2-D integer codes with float32 ``(R, 1)`` scale and offset (PSQ's per-sample grid), one sample."""
    rows = (q.ints.shape[0], 1) if q.ints.dim() == 2 else None
    return q.fmt == "int" and not q.sample_mean and q.offset_mask is None and q.shift is None and rows is not None \
        and all(v is not None and tuple(v.shape) == rows and v.dtype == torch.float32 for v in (q.scale, q.offset))


def _cpu_torch_backend() -> bool:
    from host.backends import current_backend
    from host.backends.torch_backend import TorchBackend
    be = current_backend()
    return isinstance(be, TorchBackend) and be.device.type == "cpu"


def conv_dgrad_affine(qw: Operand, gb: Operand, x_shape, geom, tag: str = "") -> torch.Tensor | None:
    """A convolution's input gradient ``col2im(matmul(qw.t(), gb.t()).t(), x_shape, geom)`` -- the B GEMM
    with its rescale, its zero-point terms and the fold -- in one native pass after the integer GEMM, or
    ``None`` where it does not apply (then that path runs).

    ``qw`` is the ``(M, C*kh*kw)`` weight operand (integer codes, 0-d float32 scale and zero-point: the INT8
    forward's zero-aligned weights), ``gb`` the ``(N*L, M)`` gradient operand (integer codes, ``(N*L, 1)``
    float32 scale and offset: PSQ's per-sample grid repeated over positions). Returns ``(N, C, H, W)``
    float32. Why it is the same float result: the integers come from the same :func:`host.gemm.qgemm` call
    as in ``matmul`` and are converted to float32 as there; the per-position factors ``fl(s_w * s_g)``,
    ``fl(s_w * o_g)``, ``fl(fl(o_w * s_g) * colsum)`` and ``fl(fl(o_w * o_g) * M)`` are the same torch
    expressions on the same tensors; the kernel (``tetrad_stat_dgrad_affine_f32``) then performs
    ``matmul``'s multiply and three adds on every element in its order, and adds the results onto a zero
    image in ATen's col2im order. Only on the CPU ``TorchBackend`` and while no GEMM is recorded (the
    records are made by ``matmul``'s path)."""
    from host.quant import native

    if not (_per_tensor_affine(qw) and _per_row_affine(gb)) or qw.ints.dim() != 2 \
            or gb.ints.shape[1] != qw.ints.shape[0] or qw.ints.device.type != "cpu" \
            or gb.ints.device.type != "cpu" or getattr(_recorders, "stack", None) or not _cpu_torch_backend():
        return None
    lib = native.kernels()
    if lib is None:
        return None
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = geom
    n, c, h, w = x_shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    m, kk = qw.ints.shape
    if gb.ints.shape[0] != n * ho * wo or kk != c * kh * kw or n * ho * wo == 0 or m == 0:
        return None
    a_ints, b_ints = qw.ints.t(), gb.ints.t()
    ints = qgemm(a_ints, b_ints, b_format="int", tag=tag, float_out=True)
    out = ints.to(torch.float32).contiguous()
    sa, oa = qw.scale, qw.offset
    sb, ob = gb.scale.t(), gb.offset.t()                              # (1, N*L), as matmul sees b = gb.t()
    scale = (sa * sb).contiguous()                                    # out.mul_(sa * sb)
    # sa * ob * row: row = sum_k a_ik; the integer sums are exact in any order, so those of the codes
    # as they are stored are the same integers as matmul's
    row = a_ints.sum(dim=1, dtype=torch.int64).to(torch.float32).contiguous()
    a_term = (sa * ob).contiguous()
    col = gb.ints.sum(dim=1, dtype=torch.int64).to(torch.float32).reshape(1, -1)   # sum_k b_kj
    u_term = ((oa * sb) * col).contiguous()
    v_term = (oa * ob * m).contiguous()
    img = torch.empty((n, c, h, w), dtype=torch.float32)
    lib.tetrad_stat_dgrad_affine_f32(out.data_ptr(), scale.data_ptr(), a_term.data_ptr(), u_term.data_ptr(),
                                     v_term.data_ptr(), row.data_ptr(), n, c, h, w, kh, kw, dh, dw, ph, pw,
                                     sh, sw, ho, wo, img.data_ptr())
    return img
