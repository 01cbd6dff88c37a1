"""The quantized layers' autograd functions: every training GEMM is a :func:`host.gemm.qgemm` call.

ALGORITHMS.md §0, with ``X`` ``(N, K)``, ``W`` ``(M, K)`` and the output gradient ``G`` ``(N, M)``:

=====  ==============================  =====================================================
F      ``Y = Q_A(X) Q_W(W)ᵀ``           A = X codes, B = Wᵀ codes (INT)
B      ``dX = Q_G^B(G) Q_W(W)``         computed as ``dXᵀ = Q_W(W)ᵀ Q_G^B(G)ᵀ``: the gradient is the
                                       array's B operand, which is what LOG4/shift formats are built for
U      ``dW = Q_G^U(G)ᵀ Q_A(X)``        computed as ``dWᵀ = Q_A(X)ᵀ Q_G^U(G)``
=====  ==============================  =====================================================

The forward quantizers run in the module (so their straight-through estimators -- identity, or DSQ's
masked one -- wrap the inputs of these functions); the functions receive the quantized operands, save their
integer codes with ``ctx.save_for_backward`` (the U GEMM consumes the *quantized* ``X``, not the float one),
and quantize ``G`` in ``backward`` with the recipe's gradient quantizer(s). A convolution is the same three
GEMMs after im2col (:func:`im2col`); the B GEMM's columns are folded back with ``F.fold``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from host.gemm import qconv2d, qconv2d_weight
from host.nn.operand import Operand, matmul

__all__ = ["QuantLinearFunction", "QuantConv2dFunction", "unfold_operand", "im2col"]


def _save(ctx, *ops: Operand) -> None:
    ctx.op_meta = [op.meta() for op in ops]
    ctx.save_for_backward(*[t for op in ops for t in op.tensors()])


def _load(ctx) -> list[Operand]:
    t = ctx.saved_tensors
    return [Operand.from_tensors(m, t[5 * i:5 * i + 5]) for i, m in enumerate(ctx.op_meta)]


def _backward_gemms(ctx, g_mat: torch.Tensor, qx: Operand, qw: Operand, rows_per_sample: int,
                    need_dx: bool, need_dw: bool, u_gemm=None):
    """Quantize ``G`` and run the B and U GEMMs. Returns ``(dx_mat, dw_mat)`` (``None`` where not needed).

    ``u_gemm(gu) -> dW`` replaces the U GEMM ``matmul(qx.t(), gu).t()`` (a convolution without im2col)."""
    layer = ctx.layer
    gops = layer.quantize_grad(g_mat, ctx.recipe, ctx.step, rows_per_sample)
    dx = dw = None
    if need_dx:
        dx = matmul(qw.t(), gops.b.t(), tag=f"{layer.qname}.B").t()
        if gops.b_post is not None:
            dx = gops.b_post(dx)
    if need_dw:
        dw = matmul(qx.t(), gops.u, tag=f"{layer.qname}.U").t() if u_gemm is None else u_gemm(gops.u)
    return dx, dw


class QuantLinearFunction(torch.autograd.Function):
    """``Y = X Wᵀ`` as the three quantized GEMMs (F in forward, B and U in backward).

    ``forward(ctx, x, w, layer, qx, qw, recipe, step)``: ``x`` ``(N, K)`` and ``w`` ``(M, K)`` are the
    differentiable inputs (their values are not used: ``qx``/``qw`` are their quantized operands);
    ``layer`` is the :class:`~host.nn.layers.QuantLayer` that quantizes ``G``; ``step`` selects the
    random streams. Returns ``(N, M)``.
    """

    @staticmethod
    def forward(ctx, x, w, layer, qx, qw, recipe, step):
        y = matmul(qx, qw.t(), tag=f"{layer.qname}.F")
        ctx.layer, ctx.recipe, ctx.step = layer, recipe, step
        _save(ctx, qx, qw)
        return y

    @staticmethod
    def backward(ctx, g):
        qx, qw = _load(ctx)
        dx, dw = _backward_gemms(ctx, g, qx, qw, 1, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return dx, dw, None, None, None, None, None


def im2col(t: torch.Tensor, kernel_size, dilation, padding, stride) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N*H_out*W_out, C*kh*kw)`` patches (rows ordered ``(n, h, w)``, columns
    ``(c, i, j)`` as ``F.unfold``), for any dtype: ``kh * kw`` strided copies from the zero-padded tensor.
    (``F.unfold`` only takes floats and is slower on CPU.)"""
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = kernel_size, dilation, padding, stride
    n, c, h, w = t.shape
    tp = F.pad(t, (pw, pw, ph, ph)) if (ph or pw) else t
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    # One strided copy per kernel offset (i, j) into out[n, h, w, c, i, j]: 4-D copies are 2-3x faster on
    # CPU than one 6-D permute-and-reshape gather (the generic copy kernel cannot vectorize that).
    out = torch.empty((n, ho, wo, c, kh, kw), dtype=t.dtype, device=t.device)
    tl = tp.permute(0, 2, 3, 1)
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, :, i, j] = tl[:, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                                       j * dw:j * dw + sw * (wo - 1) + 1:sw, :]
    return out.view(n * ho * wo, c * kh * kw)


def unfold_operand(q: Operand, kernel_size, dilation, padding, stride) -> Operand:
    """im2col of a per-tensor quantized ``(N, C, H, W)`` operand into ``(N*L, C*kh*kw)`` GEMM rows.

    Codes are unfolded as they are and zero-padded; where the quantizer has an offset (a zero-point: code 0
    is not the value 0) the padded positions are excluded from it by an ``offset_mask`` -- a conv pads with
    real zeros.
    """
    def unfold(t: torch.Tensor) -> torch.Tensor:
        return im2col(t, kernel_size, dilation, padding, stride)

    out = q.map_layout(unfold)
    if q.offset is not None:
        n, c, h, w = q.ints.shape
        ones = torch.ones((1, c, h, w), dtype=torch.int8, device=q.ints.device)
        mask = unfold(ones).repeat(n, 1)
        out = Operand(out.ints, out.fmt, out.shift, out.scale, out.offset, mask, out.sample_mean)
    return out


def _plain(q: Operand) -> bool:
    """Integer codes with per-tensor scale only (no zero-point, one sample)."""
    return (q.fmt == "int" and q.offset is None and q.offset_mask is None and not q.sample_mean
            and (q.scale is None or q.scale.dim() == 0))


class QuantConv2dFunction(torch.autograd.Function):
    """A 2-D convolution (``groups=1``) as the three quantized GEMMs after im2col.

    ``forward(ctx, x, w, layer, qx, qw, recipe, step, geom)`` with ``x`` ``(N, C, H, W)``, ``w``
    ``(M, C, kh, kw)``, ``qx``/``qw`` their per-tensor quantized operands in the same shapes, and
    ``geom = (kernel_size, dilation, padding, stride)``. Reduction lengths: F ``C*kh*kw``, B ``M``
    (then ``F.fold`` adds the overlapping columns), U ``N*H_out*W_out``.
    """

    @staticmethod
    def forward(ctx, x, w, layer, qx, qw, recipe, step, geom):
        ks, dil, pad, st = geom
        n, _, h, wd = x.shape
        m = w.shape[0]
        qw_mat = qw.map_layout(lambda t: t.reshape(m, -1))
        ho = (h + 2 * pad[0] - dil[0] * (ks[0] - 1) - 1) // st[0] + 1
        wo = (wd + 2 * pad[1] - dil[1] * (ks[1] - 1) - 1) // st[1] + 1
        # Without zero-points the F and U GEMMs can skip im2col: host.gemm.qconv2d/qconv2d_weight return
        # the same integers (an exact float32 convolution where valid, else the im2col GEMM).
        direct = _plain(qx) and _plain(qw)
        if direct:
            y = matmul(qx, qw_mat.t(), tag=f"{layer.qname}.F", a_shape=(n * ho * wo, qw_mat.shape[1]),
                       product=lambda bs, shift, t: qconv2d(qx.ints, qw.ints, geom, tag=t))
            saved = qx
        else:
            saved = unfold_operand(qx, ks, dil, pad, st)
            y = matmul(saved, qw_mat.t(), tag=f"{layer.qname}.F")          # (N*L, M)
        ctx.layer, ctx.recipe, ctx.step, ctx.geom, ctx.direct = layer, recipe, step, geom, direct
        ctx.shapes = (tuple(x.shape), tuple(w.shape), ho, wo)
        _save(ctx, saved, qw_mat)
        return y.reshape(n, ho, wo, m).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, g):
        qx, qw = _load(ctx)
        (n, c, h, wd), wshape, ho, wo = ctx.shapes
        ks, dil, pad, st = ctx.geom
        g_mat = g.permute(0, 2, 3, 1).reshape(n * ho * wo, wshape[0])
        u_gemm = None
        if ctx.direct:
            tag = f"{ctx.layer.qname}.U"

            def u_gemm(gu: Operand) -> torch.Tensor:
                if gu.fmt == "float" or gu.offset is not None:     # e.g. a zero-point gradient: im2col path
                    return matmul(unfold_operand(qx, ks, dil, pad, st).t(), gu, tag=tag).t()
                return matmul(qx, gu, tag=tag, a_shape=(wshape[1] * ks[0] * ks[1], n * ho * wo),
                              product=lambda bs, shift, t: qconv2d_weight(
                                  qx.ints, bs, wshape, ctx.geom, b_format=gu.fmt, b_shift=shift, tag=t)).t()
        dx_mat, dw_mat = _backward_gemms(ctx, g_mat, qx, qw, ho * wo, ctx.needs_input_grad[0],
                                         ctx.needs_input_grad[1], u_gemm)
        dx = dw = None
        if dx_mat is not None:
            cols = dx_mat.reshape(n, ho * wo, -1).transpose(1, 2)
            dx = F.fold(cols, (h, wd), ks, dilation=dil, padding=pad, stride=st)
        if dw_mat is not None:
            dw = dw_mat.reshape(wshape)
        return dx, dw, None, None, None, None, None, None
