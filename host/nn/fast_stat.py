"""CPU fast paths of StatQuant's (``psq4``, ``bhq5``) training GEMMs: the same floats as the generic path.

StatQuant's operands carry zero-points (its INT8 forward is asymmetric) and per-row/per-column scales
(PSQ), which the per-tensor kernels of :mod:`host.nn.functional` do not take; the generic path is then
:func:`host.nn.operand.matmul` (an exact integer GEMM plus four float passes of rescale and zero-point
terms over the whole result) and :func:`host.nn.functional.col2im`. Each function here computes the same
integers (exactly, as :func:`host.gemm.qgemm` does) and the same float operations on them in the same
order, fused into one pass of :mod:`host.quant.native`, or returns ``None`` where it does not apply (the
generic path then runs).
"""

from __future__ import annotations

import torch

from hw import numerics as nx
from host.gemm import _exact_conv_backend, _recorders, qconv2d
from host.nn.operand import Operand

__all__ = ["conv_forward_affine", "conv_dgrad_affine", "conv_dgrad_transformed", "batch_sum", "window_sums"]

_CODES = (torch.int8, torch.int16)


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


def conv_forward_affine(qx: Operand, qw: Operand, geom) -> torch.Tensor | None:
    """A convolution's F GEMM with per-tensor zero-points on both sides (StatQuant's INT8 forward):
    ``matmul(qx, qw_mat.t(), product=qconv2d(...), conv_sums=_ConvSumsF(...))`` of
    :class:`host.nn.functional.QuantConv2dFunction`, ``(N*H_out*W_out, M)`` float32, with the rescale and
    the three zero-point terms in one native pass, or ``None`` where it does not apply (then that path
    runs).

    ``qx`` ``(N, C, H, W)`` and ``qw`` ``(M, C, kh, kw)`` hold int8/int16 codes with 0-d float32 scale and
    offset. Why it is the same float result: the GEMM integers come from the same :func:`host.gemm.qconv2d`
    call as there (exact); each position's activation code sum over its receptive field and the one-image
    mask product and count -- what ``_ConvSumsF`` gets from convolutions with a ones kernel or of a ones
    image -- are summed by the kernel in integers (exact; ``C*kh*kw*max|x|`` and ``C*kh*kw*max|w|`` at most
    2**24, so they convert to float32 exactly); the scalar factors are the same float32 products; and
    ``tetrad_stat_conv_fwd_affine`` performs ``matmul``'s multiply and three adds on every element in its
    order. Only where ``_ConvSumsF`` would be used (an exact float32 CPU convolution backend) and while no
    GEMM is recorded."""
    from host.backends import current_backend
    from host.gemm import _abs_max, _dtype_abs_max
    from host.quant import native

    x, w = qx.ints, qw.ints
    if not (_per_tensor_affine(qx) and _per_tensor_affine(qw)) or x.dim() != 4 or w.dim() != 4 \
            or x.dtype not in _CODES or w.dtype not in _CODES or x.shape[1] != w.shape[1] \
            or getattr(_recorders, "stack", None) or not _exact_conv_backend(current_backend()):
        return None
    lib = native.kernels()
    if lib is None:
        return None
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = geom
    n, c, h, wd = x.shape
    m = w.shape[0]
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    k = c * kh * kw
    if n * ho * wo == 0 or m == 0 or k * _dtype_abs_max(x) > nx.FLOAT32_EXACT_LIMIT \
            and k * _abs_max(x) > nx.FLOAT32_EXACT_LIMIT:
        return None
    w_max = _dtype_abs_max(w) if k * _dtype_abs_max(w) <= nx.FLOAT32_EXACT_LIMIT else _abs_max(w)
    if k * w_max > nx.FLOAT32_EXACT_LIMIT:
        return None
    out = qconv2d(x, w, geom, float_out=True).to(torch.float32)      # matmul: out = acc.to(float32)
    if not out.is_contiguous():     # (qconv2d's results are): the kernel writes in place, row-major
        return None
    sa, oa, sb, ob = qx.scale, qx.offset, qw.scale, qw.offset
    xl = x.permute(0, 2, 3, 1).contiguous()                           # channels last: a view if x is
    wc = w.contiguous()
    scratch = torch.empty((h + 2 * ph) * (wd + 2 * pw) + ho * wo * (m + 2) + m * kh * kw, dtype=torch.int32)
    lib.tetrad_stat_conv_fwd_affine(out.data_ptr(), xl.data_ptr(), xl.element_size(), n, c, h, wd, m, kh, kw,
                                    dh, dw, ph, pw, sh, sw, ho, wo, wc.data_ptr(), wc.element_size(),
                                    float(sa * sb), float(sa * ob), float(oa * sb), float(oa * ob),
                                    scratch.data_ptr())
    return out


def conv_dgrad_affine(qw: Operand, gb: Operand, x_shape, geom, channels_last: bool = False) -> torch.Tensor | None:
    """A convolution's input gradient ``col2im(matmul(qw.t(), gb.t()).t(), x_shape, geom)`` -- the B GEMM
    with its rescale, its zero-point terms and the fold -- in one native pass, or ``None`` where it does
    not apply (then that path runs).

    ``qw`` is the ``(M, C*kh*kw)`` weight operand (int8/int16 codes, 0-d float32 scale and zero-point: the
    INT8 forward's zero-aligned weights), ``gb`` the ``(N*L, M)`` gradient operand (int8/int16 codes,
    ``(N*L, 1)`` float32 scale and offset: PSQ's per-sample grid repeated over positions). Returns
    ``(N, C, H, W)`` float32 (``channels_last``: in channels-last memory, as the kernel writes it; else
    contiguous). Why it is the same float result: while ``M * max|w| * max|g| <= 2**24`` every
    GEMM sum is an exact integer that converts to float32 exactly, which is what ``matmul`` gets from
    :func:`host.gemm.qgemm` (the kernel sums them in int32: ``tetrad_stat_conv_dgrad_affine``); the
    per-position factors ``fl(s_w * s_g)``, ``fl(s_w * o_g)``, ``fl(o_w * s_g)`` and
    ``fl(fl(o_w * o_g) * M)`` are the same torch expressions on the same tensors (the kernel multiplies
    the third by the position's code sum, as ``matmul`` does); the kernel performs
    ``matmul``'s multiply and three adds on every element in its order and adds the results onto a zero
    image in ATen's col2im order. Only on the CPU ``TorchBackend`` and while no GEMM is recorded (the
    records are made by ``matmul``'s path)."""
    n, c, h, wd = x_shape
    img = torch.empty((n, h, wd, c), dtype=torch.float32)
    if not _dgrad_native(qw, gb, x_shape, geom, img=img):
        return None
    img = img.permute(0, 3, 1, 2)
    return img if channels_last else img.contiguous()


def conv_dgrad_transformed(qw: Operand, gb: Operand, post, x_shape, geom,
                           channels_last: bool = False) -> torch.Tensor | None:
    """BHQ's input gradient ``col2im(post(matmul(qw.t(), gb.t()).t()), x_shape, geom)`` -- the B GEMM, the
    inverse transform ``post`` (:class:`host.nn.quantizers.InverseTransform`) and the fold -- or ``None``
    where it does not apply (then that path runs). Operands and result as :func:`conv_dgrad_affine`.

    Why it is the same float result: the GEMM's values are :func:`conv_dgrad_affine`'s (the same integers
    and operations), written widened to float64 (exact) straight into the ``(N, L*C*kh*kw)`` matrix that
    ``post`` builds with ``reshape(...).double()``; ``T⁻¹`` is applied by the same torch code
    (:meth:`host.quant.statquant.BlockHouseholder.inverse_`: ``inverse`` without its copy); the
    kernel ``tetrad_stat_fold_f64`` then rounds each value to float32 (``post``'s ``.to(float32)``) and
    adds it onto a zero image in ATen's col2im order (``F.fold``, which ``col2im`` uses for these rows)."""
    from host.nn.quantizers import InverseTransform
    from host.quant import native

    if not isinstance(post, InverseTransform):
        return None
    n, c, h, wd = x_shape
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = geom
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rows = torch.empty((n * ho * wo, c * kh * kw), dtype=torch.float64)
    if post.n != n or not _dgrad_native(qw, gb, x_shape, geom, rows=rows):
        return None
    post.transform.inverse_(rows.view(n, -1))
    img = torch.empty((n, h, wd, c), dtype=torch.float32)
    native.kernels().tetrad_stat_fold_f64(rows.data_ptr(), n, c, h, wd, kh, kw, dh, dw, ph, pw, sh, sw, ho, wo,
                                          img.data_ptr())
    img = img.permute(0, 3, 1, 2)
    return img if channels_last else img.contiguous()


def _dgrad_native(qw: Operand, gb: Operand, x_shape, geom, img=None, rows=None) -> bool:
    """``tetrad_stat_conv_dgrad_affine`` of the operands into ``img`` (the fold, ``(N, H, W, C)``) or
    ``rows`` (the GEMM's values, float64 ``(N*L, C*kh*kw)``); ``False`` (nothing written) where it does not
    apply: other operands, devices or backends, a recorded GEMM, integers beyond 2**24, no kernels."""
    from host.gemm import _abs_max, _dtype_abs_max
    from host.quant import native

    w, g = qw.ints, gb.ints
    if not (_per_tensor_affine(qw) and _per_row_affine(gb)) or w.dim() != 2 or g.shape[1] != w.shape[0] \
            or w.dtype not in _CODES or g.dtype not in _CODES or w.device.type != "cpu" \
            or g.device.type != "cpu" or getattr(_recorders, "stack", None) or not _cpu_torch_backend():
        return False
    lib = native.kernels()
    if lib is None:
        return False
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = geom
    n, c, h, wd = x_shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    m, kk = w.shape
    if g.shape[0] != n * ho * wo or kk != c * kh * kw or n * ho * wo == 0 or m == 0:
        return False
    w_max = _abs_max(w)
    if m * w_max * _dtype_abs_max(g) > nx.FLOAT32_EXACT_LIMIT and m * w_max * _abs_max(g) > nx.FLOAT32_EXACT_LIMIT:
        return False
    sa, oa = qw.scale, qw.offset
    sb, ob = gb.scale.t(), gb.offset.t()                              # (1, N*L), as matmul sees b = gb.t()
    scale = (sa * sb).contiguous()                                    # out.mul_(sa * sb)
    # sa * ob * row and (oa * sb) * col with row = sum_k a_ik, col = sum_k b_kj: integer sums, exact in any
    # order, so those of the codes as they are stored (the kernel sums col itself) are matmul's integers
    row = w.sum(dim=0, dtype=torch.int64).to(torch.float32)
    if img is not None:
        row = row.reshape(c, kh, kw).permute(1, 2, 0).contiguous()  # the fold's column order (i, j, c)
    a_term = (sa * ob).contiguous()
    os_term = (oa * sb).contiguous()
    v_term = (oa * ob * m).contiguous()
    w16, g = w.to(torch.int16).contiguous(), g.contiguous()
    mp = (m + 1) // 2
    scratch = torch.empty(mp * (kk + 1) + (kk + 1) * ho * wo, dtype=torch.int32)
    lib.tetrad_stat_conv_dgrad_affine(w16.data_ptr(), g.data_ptr(), g.element_size(), scale.data_ptr(),
                                      a_term.data_ptr(), os_term.data_ptr(), v_term.data_ptr(), row.data_ptr(),
                                      n, c, h, wd, m, kh, kw, dh, dw, ph, pw, sh, sw, ho, wo, scratch.data_ptr(),
                                      None if img is None else img.data_ptr(),
                                      None if rows is None else rows.data_ptr())
    return True


def batch_sum(t: torch.Tensor) -> torch.Tensor:
    """``t.sum(dim=0, keepdim=True, dtype=torch.int64)``: the zero-point terms' sums over the batch
    (:class:`host.nn.functional._ConvSumsU`).

    A contiguous int8/int16 CPU ``t`` is summed by :mod:`host.quant.native` into a contiguous result, as
    ``torch.sum`` gives it: the same integers (exact in any order) without converting all of ``t`` to
    int64 first; anything else by ``torch.sum``."""
    from host.quant import native

    lib = native.kernels() if t.dtype in _CODES and t.device.type == "cpu" and t.dim() >= 1 \
        and t.shape[0] > 0 and t.is_contiguous() else None
    if lib is None:
        return t.sum(dim=0, keepdim=True, dtype=torch.int64)
    out = torch.empty((1,) + tuple(t.shape[1:]), dtype=torch.int64)
    lib.tetrad_stat_batch_sum(t.data_ptr(), t.element_size(), t.shape[0], out.numel(), out.data_ptr())
    return out


def window_sums(x: torch.Tensor, geom) -> torch.Tensor:
    """``im2col(x.sum(dim=0, keepdim=True, dtype=int64), *geom).sum(dim=0, dtype=int64).reshape(-1, 1)``:
    the activation codes' zero-point term of a convolution's U GEMM (:class:`host.nn.functional._ConvSumsU`),
    ``(C*kh*kw, 1)`` int64. int8/int16 CPU codes ``x`` ``(N, C, H, W)`` are summed by one call of
    :mod:`host.quant.native` (``tetrad_stat_window_sums``: exact integer sums, so the same integers); else
    these torch passes."""
    from host.nn.functional import im2col
    from host.quant import native

    lib = native.kernels() if x.dtype in _CODES and x.device.type == "cpu" and x.dim() == 4 else None
    if lib is None:
        xs = x.sum(dim=0, keepdim=True, dtype=torch.int64)
        return im2col(xs, *geom).sum(dim=0, dtype=torch.int64).reshape(-1, 1)
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = geom
    n, c, h, w = x.shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xl = x.permute(0, 2, 3, 1).contiguous()                           # channels last: a view if x is
    chan = torch.empty(c * h * w, dtype=torch.int64)
    out = torch.empty((c * kh * kw, 1), dtype=torch.int64)
    lib.tetrad_stat_window_sums(xl.data_ptr(), xl.element_size(), n, c, h, w, kh, kw, dh, dw, ph, pw, sh, sw,
                                max(ho, 0), max(wo, 0), chan.data_ptr(), out.data_ptr())
    return out
