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
GEMMs after im2col (:func:`im2col`); the B GEMM's columns are folded back with :func:`col2im`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from host.backends.torch_backend import b_values
from host.gemm import _exact_conv_backend, _recorders, qconv2d, qconv2d_weight
from host.nn.fast_stat import batch_sum, conv_dgrad_affine, conv_dgrad_transformed, conv_forward_affine, window_sums
from host.nn.operand import Operand, matmul
from host.quant.core import round_to_dtype

__all__ = ["QuantLinearFunction", "QuantConv2dFunction", "unfold_operand", "im2col", "col2im", "conv_dgrad_native"]


def _save(ctx, *ops: Operand) -> None:
    ctx.op_meta = [op.meta() for op in ops]
    ctx.save_for_backward(*[t for op in ops for t in op.tensors()])


def _load(ctx) -> list[Operand]:
    t = ctx.saved_tensors
    return [Operand.from_tensors(m, t[5 * i:5 * i + 5]) for i, m in enumerate(ctx.op_meta)]


def _backward_gemms(ctx, g_mat: torch.Tensor, qx: Operand, qw: Operand, rows_per_sample: int,
                    need_dx: bool, need_dw: bool, u_gemm=None, b_gemm=None):
    """Quantize ``G`` and run the B and U GEMMs. Returns ``(dx_mat, dw_mat)`` (``None`` where not needed).

    ``u_gemm(gu) -> dW`` replaces the U GEMM ``matmul(qx.t(), gu).t()`` (a convolution without im2col).
    ``b_gemm(gb, b_post) -> dX or None`` may replace the B GEMM and the ``b_post`` (if any) that follows
    it; its result is returned as the first element of a tuple ``(dx,)`` (a convolution's folded gradient,
    not the GEMM matrix)."""
    layer = ctx.layer
    gops = layer.quantize_grad(g_mat, ctx.recipe, ctx.step, rows_per_sample)
    dx = dw = None
    if need_dx:
        if b_gemm is not None:
            dx = b_gemm(gops.b, gops.b_post)
            if dx is not None:
                dx = (dx,)
        if dx is None:
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


_COL2IM_MIN_NUMEL = 1 << 15   # below this F.fold's single call beats kh*kw strided adds (Python overhead)


def col2im(rows: torch.Tensor, x_shape, geom) -> torch.Tensor:
    """The adjoint of :func:`im2col`: ``(N*H_out*W_out, C*kh*kw)`` rows -> ``(N, C, H, W)``, overlapping
    patches summed; bit for bit ``F.fold(rows.reshape(N, L, -1).transpose(1, 2), ...)``.

    Why it is the same float result: ATen's CPU col2im zero-fills the image and adds the columns in
    ``(c, i, j)`` order, so every pixel is ``((0 + v_00) + v_01) + ...`` over its kernel offsets
    ``(i, j)`` in lexicographic order. Here one strided ``add_`` per offset, in that order, performs
    the same float additions on every pixel (contributions that fall on the padding are not added).
    On the B GEMM's result -- the transpose of a contiguous ``(C*kh*kw, N*L)`` matrix -- each add reads
    contiguous rows, 1.3-3x faster than ``F.fold`` on the layer sizes of the benchmark CNN.
    """
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = geom
    n, c, h, w = x_shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if rows.numel() < _COL2IM_MIN_NUMEL or rows.stride(0) != 1:
        # small, or row-major rows (BHQ's inverse transform): strided reads make the adds slower than fold
        return F.fold(rows.reshape(n, ho * wo, -1).transpose(1, 2), (h, w), (kh, kw), dilation=(dh, dw),
                      padding=(ph, pw), stride=(sh, sw))
    v = rows.reshape(n, ho, wo, c, kh, kw)
    out = rows.new_zeros((n, c, h, w))

    def span(k, d, p, s, size, outs):
        """Output positions o (a slice) whose input coordinate o*s - p + k*d lies in [0, size)."""
        lo = max(0, -(-(p - k * d) // s))
        hi = min(outs - 1, (size - 1 + p - k * d) // s)
        return lo, hi

    for i in range(kh):
        h0, h1 = span(i, dh, ph, sh, h, ho)
        if h1 < h0:
            continue
        for j in range(kw):
            w0, w1 = span(j, dw, pw, sw, w, wo)
            if w1 < w0:
                continue
            r0, c0 = h0 * sh - ph + i * dh, w0 * sw - pw + j * dw
            out[:, :, r0:r0 + sh * (h1 - h0) + 1:sh, c0:c0 + sw * (w1 - w0) + 1:sw] += \
                v[:, h0:h1 + 1, w0:w1 + 1, :, i, j].permute(0, 3, 1, 2)
    return out


_BGRAD_FORMATS = {"int": 0, "log": 1, "shift": 2}
_SMP_PAIR_FORMAT = 3


def _smp_pair_codes(gb: Operand) -> torch.Tensor | None:
    """Two SMP samples of LOG codes in ``[-7, 7]`` (``luq4-smp2``) as the native B kernel's pair format: one
    byte per element, ``(c0 + 7) * 15 + (c1 + 7)``, whose value is the sum of the two samples' values
    (``tetrad_smp_pack_log2``); ``None`` for anything else (or codes outside that range, which the GEMM
    path handles or rejects)."""
    from host.quant import native
    c = gb.ints
    if gb.fmt != "log" or gb.shift is not None or c.dim() != 3 or c.shape[0] != 2 or c.dtype != torch.int8 \
            or c.device.type != "cpu" or not c.is_contiguous():
        return None
    lib = native.kernels()
    if lib is None:
        return None
    out = torch.empty(c.shape[1:], dtype=torch.uint8)
    if lib.tetrad_smp_pack_log2(c.data_ptr(), out.numel(), out.data_ptr()):
        return None
    return out.view(torch.int8)


def _per_tensor_scale(q: Operand) -> bool:
    return q.offset is None and q.offset_mask is None and not q.sample_mean \
        and (q.scale is None or q.scale.dim() == 0)


def conv_dgrad_native(qw: Operand, gb: Operand, x_shape, geom, channels_last: bool = False) -> torch.Tensor | None:
    """The B GEMM of a convolution and its :func:`col2im` in one pass of :mod:`host.quant.native`
    (``tetrad_conv_bgrad``): exactly ``col2im(matmul(qw.t(), gb.t()).t(), x_shape, geom)``, or ``None``
    where it does not apply (then that path runs).

    ``qw`` is the ``(M, C*kh*kw)`` weight operand (int8 codes, per-tensor scale), ``gb`` the ``(N*L, M)``
    B gradient operand (int8 codes in ``"int"``, ``"log"`` or ``"shift"`` format, per-tensor scale, one
    sample, no zero-point; or two SMP samples of LOG codes in ``[-7, 7]``, see :func:`_smp_pair_codes`).
    ``channels_last``: the result in channels-last memory (the same values; stride 1 only, else ``None``).
    Why it is the same float result: ``matmul`` computes every integer of the GEMM exactly, converts it to
    float32 and multiplies it by ``fl(s_w * s_g)`` in float32; ``col2im`` (ATen's order) adds those floats
    onto a zero image kernel offset by kernel offset. The kernel computes each column's integers exactly
    (int16, or float32 below 2**24) and performs the same conversion, multiply and adds in the same order.
    Only on the CPU ``TorchBackend`` and while no GEMM is recorded (the records need the GEMM's operands)."""
    from host.backends import current_backend
    from host.backends.torch_backend import TorchBackend
    from host.quant import native

    fmt = _BGRAD_FORMATS.get(gb.fmt)
    w, g = qw.ints, gb.ints
    if gb.sample_mean:
        g = _smp_pair_codes(gb)
        fmt = None if g is None else _SMP_PAIR_FORMAT
        # one sample stands for the pair in the scale and layout checks below (the samples share them)
        gb = Operand(gb.ints[0], gb.fmt, gb.shift, gb.scale, gb.offset, gb.offset_mask)
    if fmt is None or qw.fmt != "int" or not (_per_tensor_scale(qw) and _per_tensor_scale(gb)):
        return None
    if w.dtype != torch.int8 or g.dtype != torch.int8 or w.dim() != 2 or g.dim() != 2 \
            or w.device.type != "cpu" or g.device.type != "cpu" or g.shape[1] != w.shape[0] \
            or (gb.shift is not None and gb.shift.dtype != torch.int8):
        return None
    if getattr(_recorders, "stack", None):
        return None
    be = current_backend()
    if not isinstance(be, TorchBackend) or be.device.type != "cpu":
        return None
    lib = native.kernels()
    if lib is None:
        return None
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = geom
    n, c, h, wd = x_shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    m = w.shape[0]
    if g.shape[0] != n * ho * wo or w.shape[1] != c * kh * kw or n * ho * wo == 0 or m == 0:
        return None
    # matmul's rescale factor, computed as there (float32 operands, one float32 product)
    sa = 1.0 if qw.scale is None else qw.scale.to(torch.float32)
    sb = 1.0 if gb.scale is None else gb.scale.to(torch.float32)
    s = float(sa * sb) if (qw.scale is not None or gb.scale is not None) else 1.0
    if fmt == _SMP_PAIR_FORMAT:
        # matmul divides the summed integers by 2 (exact), then multiplies by s: the same real product as
        # the integers times s / 2, so the same rounding -- where s / 2 is a float32 number (s not a
        # subnormal losing its last bit)
        if round_to_dtype(s * 0.5, torch.float32) != s * 0.5:
            return None
        s *= 0.5
    g = g.contiguous()
    w = w.contiguous()
    gs, gs_row = None, 0
    if gb.shift is not None:
        # one shift per column (ShiftQuant's per-channel exponents, broadcast over the rows) is passed as
        # its m values (row stride 0), not expanded to g's shape; any other shift element by element
        gs = gb.shift.expand(g.shape)
        if gs.stride(0) == 0:
            gs = gs[:1].contiguous()
        else:
            gs, gs_row = gs.contiguous(), m
    if channels_last and not (sh == 1 and sw == 1 and math.isfinite(s)):
        return None
    out = torch.empty((n, h, wd, c), dtype=torch.float32).permute(0, 3, 1, 2) if channels_last \
        else torch.empty((n, c, h, wd), dtype=torch.float32)
    scratch = torch.empty(lib.tetrad_conv_bgrad_scratch(c, h, wd, m, kh, kw, ph, pw, sh, sw, ho, wo),
                          dtype=torch.float32)
    rc = lib.tetrad_conv_bgrad(g.data_ptr(), None if gs is None else gs.data_ptr(), gs_row, fmt, w.data_ptr(),
                               n, c, h, wd, m, kh, kw, dh, dw, ph, pw, sh, sw, ho, wo, s,
                               scratch.data_ptr(), out.data_ptr(), 1 if channels_last else 0)
    return out if rc == 0 else None


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


def _per_tensor_int(q: Operand) -> bool:
    """Integer codes with per-tensor scale and offset (zero-point), one sample, not yet unfolded."""
    return (q.fmt == "int" and q.offset_mask is None and not q.sample_mean
            and all(v is None or v.dim() == 0 for v in (q.scale, q.offset)))


def _conv_sums_ok() -> bool:
    """Zero-point GEMMs as convolutions (:class:`_ConvSumsF`/:class:`_ConvSumsU`) only where the convolutions
    are exact (``host.gemm._exact_conv_backend``) and no GEMM is being recorded: the records (and every
    other backend's calls) stay those of the im2col path."""
    from host.backends import current_backend
    return _exact_conv_backend(current_backend()) and not getattr(_recorders, "stack", None)


def _ones(shape, like: torch.Tensor) -> torch.Tensor:
    return torch.ones(shape, dtype=torch.int8, device=like.device)


class _ConvSumsF:
    """The zero-point terms of a convolution's F GEMM ``im2col(x) @ W_mat^T`` without im2col (see
    :func:`host.nn.operand.matmul`'s ``conv_sums``). Each is an integer convolution, exact like the GEMM:
    the patch sums are ``x`` convolved with a ones kernel; the padding mask ``M`` is ``im2col`` of a ones
    image, the same for every sample, so ``M B`` and its row sums are one image's convolution repeated."""

    def __init__(self, x: torch.Tensor, w: torch.Tensor, geom):
        self.x, self.w, self.geom = x, w, geom
        n, c, h, wd = x.shape
        self.n, self.ones_img, self.ones_k = n, _ones((1, c, h, wd), x), _ones((1, c) + tuple(w.shape[2:]), x)

    def row(self):
        return qconv2d(self.x, self.ones_k, self.geom, float_out=True)

    def mask_product(self, bs, shift, tag):
        return qconv2d(self.ones_img, self.w, self.geom, float_out=True).repeat(self.n, 1)

    def mask_count(self):
        return qconv2d(self.ones_img, self.ones_k, self.geom, float_out=True).repeat(self.n, 1)


class _ConvSumsU:
    """The zero-point terms of a convolution's U GEMM ``im2col(x)^T @ G`` without im2col. By linearity they
    reduce over the batch first (exact int64 sums): the patch sums are ``im2col`` of ``sum_n x_n``, summed
    over positions; the padding mask is the same for every sample and channel, so ``M^T G`` is the one-
    channel mask ``V`` (positions x kernel offsets) times ``sum_n G_n``, repeated for each channel."""

    def __init__(self, x: torch.Tensor, w_shape, geom, fmt: str, rows: int):
        self.x, self.geom, self.fmt = x, geom, fmt
        n, c, h, wd = x.shape
        self.n, self.c, self.positions = n, c, rows // n
        self.v = im2col(torch.ones((1, 1, h, wd), dtype=torch.int64, device=x.device), *geom)   # (L, kh*kw)

    def row(self):
        return window_sums(self.x, self.geom)

    def mask_product(self, bs, shift, tag):
        gs = batch_sum(b_values(bs, self.fmt, shift).reshape(self.n, self.positions, -1))[0]
        return (self.v.t() @ gs).repeat(self.c, 1)

    def mask_count(self):
        return (self.v.sum(dim=0) * self.n).repeat(self.c).reshape(-1, 1)


# Where the input gradient of a convolution goes to an autograd node whose backward computes the same values
# whatever the memory layout of its incoming gradient (and returns them in its own input's layout), the
# convolution hands dX over in the layout of its input X: ATen's max-pool backward scatters each gradient
# onto its window's argmax in the same order for both layouts (same values, same result strides), but a
# gradient whose layout differs from the pooled input's costs it three full copies (channels-last X, as a
# quantized convolution's output and so the pooled tensor downstream, is the benchmark CNN's case).
# ReLU's backward (threshold_backward) is elementwise and its result takes the layout of ReLU's own
# result whatever the incoming gradient's, but against a gradient of the other layout it is a strided
# pass about 10x slower than a copy (host.nn.layers.Flatten hands a channels-last ReLU output its
# gradient channels-last by the same rule: the benchmark CNN's last convolution reaches the classifier
# through ReLU and Flatten). Any other consumer gets the NCHW gradient as before.
# tests/test_step_exact.py turns this off for the reference trajectory.
_DX_IN_X_LAYOUT = True
_LAYOUT_FREE_GRAD_FNS = frozenset({"MaxPool2DWithIndicesBackward0", "ReluBackward0"})


def _dx_channels_last(x: torch.Tensor) -> bool:
    """Whether the gradient of ``x`` is handed over channels-last (a convolution's dX, the input gradient of
    :class:`host.nn.layers.Flatten`; see ``_DX_IN_X_LAYOUT``)."""
    if not _DX_IN_X_LAYOUT or x.dim() != 4 or x.is_contiguous() \
            or not x.is_contiguous(memory_format=torch.channels_last):
        return False
    fn = x.grad_fn
    return fn is not None and type(fn).__name__ in _LAYOUT_FREE_GRAD_FNS


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
        # With per-tensor zero-points (StatQuant's INT8 forward) the same, plus the zero-point terms as
        # convolutions (_ConvSumsF) where those are exact: the im2col matrices are never built.
        direct = _plain(qx) and _plain(qw)
        sums = None if direct or not (_per_tensor_int(qx) and _per_tensor_int(qw) and _conv_sums_ok()) \
            else _ConvSumsF(qx.ints, qw.ints, geom)
        if direct or sums is not None:
            # zero-points on both sides (StatQuant's INT8 forward): host.nn.fast_stat
            y = None if sums is None else conv_forward_affine(qx, qw, geom)
            if y is None:
                y = matmul(qx, qw_mat.t(), tag=f"{layer.qname}.F", a_shape=(n * ho * wo, qw_mat.shape[1]),
                           product=lambda bs, shift, t, fmt: qconv2d(qx.ints, qw.ints, geom, tag=t, float_out=True),
                           conv_sums=sums)
            direct = True
            saved = qx
        else:
            saved = unfold_operand(qx, ks, dil, pad, st)
            y = matmul(saved, qw_mat.t(), tag=f"{layer.qname}.F")          # (N*L, M)
        ctx.layer, ctx.recipe, ctx.step, ctx.geom, ctx.direct = layer, recipe, step, geom, direct
        ctx.dx_cl = _dx_channels_last(x)
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
                sums = None
                if gu.offset is not None or qx.offset is not None:    # zero-points: their terms as convs
                    sums = _ConvSumsU(qx.ints, wshape, ctx.geom, gu.fmt, n * ho * wo) if _conv_sums_ok() \
                        and gu.fmt != "float" else None
                    if sums is None:                                   # else the im2col path
                        return matmul(unfold_operand(qx, ks, dil, pad, st).t(), gu, tag=tag).t()
                if gu.fmt == "float":
                    return matmul(unfold_operand(qx, ks, dil, pad, st).t(), gu, tag=tag).t()
                return matmul(qx, gu, tag=tag, a_shape=(wshape[1] * ks[0] * ks[1], n * ho * wo),
                              product=lambda bs, shift, t, fmt: qconv2d_weight(
                                  qx.ints, bs, wshape, ctx.geom, b_format=fmt, b_shift=shift, tag=t,
                                  float_out=True), conv_sums=sums).t()
        def b_gemm(gb: Operand, post):
            if post is not None:      # BHQ's inverse transform between the GEMM and col2im: host.nn.fast_stat
                return conv_dgrad_transformed(qw, gb, post, (n, c, h, wd), ctx.geom, ctx.dx_cl)
            out = conv_dgrad_native(qw, gb, (n, c, h, wd), ctx.geom, channels_last=True) if ctx.dx_cl else None
            if out is None:
                out = conv_dgrad_native(qw, gb, (n, c, h, wd), ctx.geom)
            # zero-points and per-sample scales (StatQuant's PSQ): host.nn.fast_stat
            return conv_dgrad_affine(qw, gb, (n, c, h, wd), ctx.geom, ctx.dx_cl) if out is None else out

        dx_mat, dw_mat = _backward_gemms(
            ctx, g_mat, qx, qw, ho * wo, ctx.needs_input_grad[0], ctx.needs_input_grad[1], u_gemm, b_gemm)
        dx = dw = None
        if isinstance(dx_mat, tuple):
            dx = dx_mat[0]
        elif dx_mat is not None:
            dx = col2im(dx_mat, (n, c, h, wd), ctx.geom)
        if dx is not None and ctx.dx_cl:
            dx = dx.contiguous(memory_format=torch.channels_last)   # no-op on the kernel's channels-last dx
        if dw_mat is not None:
            dw = dw_mat.reshape(wshape)
        return dx, dw, None, None, None, None, None, None
