"""GEMM operands: integer codes plus the scale data that turns an integer product back into floats.

A quantized tensor from ``host.quant`` is, for the GEMMs, ``value = ints * scale + offset`` where ``ints``
are integer codes (or LOG4 codes / ShiftQuant ``(code, shift)`` pairs whose PE values are integers) and
``scale``/``offset`` are constant along the GEMM's reduction index -- so they factor out of the sum:

    C_ij = sum_k (a_ik sa_i + oa_i m_ik)(b_kj sb_j + ob_j)
         = sa_i sb_j (A B)_ij + sa_i ob_j (sum_k a_ik) + oa_i sb_j (M B)_ij + oa_i ob_j (sum_k m_ik)

with ``M`` the optional 0/1 ``offset_mask`` of A (zero padding of a convolution: a padded position is a
real zero, not the offset). ``A B`` and ``M B`` are :func:`host.gemm.qgemm` calls -- exact integers on any
backend; the rest is one float rescale per output element (ALGORITHMS.md §5.1: zero-points need a
column-sum correction). ShiftQuant puts its per-channel power-of-two scale *into* the integers as a shift
along the reduction index (§3(a) "Shift GEMM"), so its ``scale`` is the shared ``s_0 * 2**-E_max``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from host.backends.torch_backend import b_values
from host.gemm import qgemm

__all__ = ["Operand", "matmul", "summed_log_values"]

_FORMATS = ("int", "log", "shift", "float")


@dataclass(frozen=True, eq=False)
class Operand:
    """One GEMM operand.

    Attributes
    ----------
    ints : torch.Tensor
        Integer codes ``(R, C)`` (or any shape before it is laid out as a matrix); with ``sample_mean`` a
        leading sample dimension ``(S, R, C)`` (LUQ SMP). For ``fmt="float"`` the float tensor itself.
    fmt : {"int", "log", "shift", "float"}
        How codes map to PE values (:data:`host.backends.B_FORMATS`), or ``"float"`` (no quantization).
    shift : torch.Tensor or None
        Per-element shift of a ``"shift"`` operand (broadcastable to ``ints``).
    scale : torch.Tensor or None
        0-d, or ``(R, 1)`` / ``(1, C)`` -- constant along one matrix axis; ``None`` means 1.
    offset : torch.Tensor or None
        Same shapes as ``scale``; ``None`` means 0.
    offset_mask : torch.Tensor or None
        0/1 integer tensor shaped like ``ints``: where the offset applies (``None``: everywhere).
    sample_mean : bool
        ``ints`` holds samples along dim 0 and the value is their mean.
    """

    ints: torch.Tensor
    fmt: str = "int"
    shift: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    offset_mask: torch.Tensor | None = None
    sample_mean: bool = False

    def __post_init__(self):
        if self.fmt not in _FORMATS:
            raise ValueError(f"Operand: fmt must be one of {list(_FORMATS)}, got {self.fmt!r}")
        if (self.fmt == "shift") != (self.shift is not None):
            raise ValueError("Operand: shift is required for fmt='shift' and only for it")

    @property
    def shape(self) -> torch.Size:
        return self.ints.shape[1:] if self.sample_mean else self.ints.shape

    def samples(self) -> list[torch.Tensor]:
        return list(self.ints.unbind(0)) if self.sample_mean else [self.ints]

    def t(self) -> "Operand":
        """The transposed (2-D) operand; scale/offset shapes ``(R, 1)`` and ``(1, C)`` swap."""
        def tr(x):
            return None if x is None else (x if x.dim() == 0 else x.transpose(-2, -1))
        # the constructor directly (dataclasses.replace's field introspection costs more than the transposes)
        return Operand(self.ints.transpose(-2, -1), self.fmt, tr(self.shift), tr(self.scale), tr(self.offset),
                       tr(self.offset_mask), self.sample_mean)

    def map_layout(self, fn) -> "Operand":
        """Apply a layout function (reshape/permute/unfold) to the per-element tensors; ``scale`` and
        ``offset`` must be 0-d (per-tensor), which every forward quantizer here is."""
        for name in ("scale", "offset"):
            v = getattr(self, name)
            if v is not None and v.dim() != 0:
                raise ValueError(f"Operand.map_layout: {name} must be per-tensor, got shape {tuple(v.shape)}")
        return Operand(fn(self.ints), self.fmt, None if self.shift is None else fn(self.shift), self.scale,
                       self.offset, None if self.offset_mask is None else fn(self.offset_mask), self.sample_mean)

    def values(self) -> torch.Tensor:
        """Integer PE values (int64), samples summed for ``sample_mean`` (divide by S for the mean)."""
        out = None
        for s in self.samples():
            shift = None if self.shift is None else self.shift.expand(s.shape)
            v = b_values(s, self.fmt, shift).to(torch.int64)
            out = v if out is None else out + v
        return out

    def dequantize(self) -> torch.Tensor:
        """The float tensor this operand stands for (tests and reports; the GEMMs never use it)."""
        if self.fmt == "float":
            return self.ints
        v = self.values().to(torch.float64)
        if self.sample_mean:
            v = v / self.ints.shape[0]
        if self.scale is not None:
            v = v * self.scale.double()
        if self.offset is not None:
            off = self.offset.double()
            v = v + (off if self.offset_mask is None else off * self.offset_mask.double())
        return v.float()

    def tensors(self) -> tuple:
        """The tensors, for ``ctx.save_for_backward`` (see :meth:`from_tensors`)."""
        return (self.ints, self.shift, self.scale, self.offset, self.offset_mask)

    def meta(self) -> tuple:
        return (self.fmt, self.sample_mean)

    @classmethod
    def from_tensors(cls, meta, tensors) -> "Operand":
        fmt, sample_mean = meta
        ints, shift, scale, offset, mask = tensors
        return cls(ints, fmt, shift, scale, offset, mask, sample_mean)


def _f32(t: torch.Tensor) -> torch.Tensor:
    """``t.to(torch.float32)`` (which returns ``t`` itself when it is float32 already), without the call."""
    return t if t.dtype == torch.float32 else t.to(torch.float32)


def summed_log_values(codes: torch.Tensor) -> torch.Tensor | None:
    """``sum_j b_values(codes[j], "log")`` for LOG codes ``(S, R, C)`` (LUQ's SMP samples), as int16
    ``(R, C)``: one pass of :mod:`host.quant.native` (``tetrad_smp_log_sum_i16``), on the codes' storage
    order (a transposed view stays a view). ``None`` where the kernels are unavailable or do not apply (not
    int8 on the CPU, more than 255 samples); codes outside ``[-8, 8]`` raise as :func:`b_values` does."""
    from host.quant import native
    if codes.dim() != 3 or codes.dtype != torch.int8 or codes.device.type != "cpu" or not 1 <= codes.shape[0] <= 255:
        return None
    lib = native.kernels()
    if lib is None:
        return None
    tr = not codes.is_contiguous() and codes.transpose(1, 2).is_contiguous()
    base = codes.transpose(1, 2) if tr else codes.contiguous()
    out = torch.empty(base.shape[1:], dtype=torch.int16)
    if lib.tetrad_smp_log_sum_i16(base.data_ptr(), out.numel(), base.shape[0], out.data_ptr()):
        lo, hi = (int(v) for v in torch.aminmax(codes))
        raise ValueError(f"LOG codes must lie in [-8, 8], got [{lo}, {hi}]")
    return out.t() if tr else out


def _summed_samples(b: Operand, backend) -> torch.Tensor | None:
    """The summed values of ``b``'s SMP samples (:func:`summed_log_values`) where one GEMM on them may
    replace the per-sample GEMMs, else ``None``. Exact by linearity: every path of :func:`qgemm` returns
    the exact integers, so ``A @ sum_j v_j`` is the int64 sum of the ``A @ v_j`` the loop forms. Only on
    ``TorchBackend`` and while no GEMM is recorded: hardware runs (and the records show) one LOG GEMM per
    sample."""
    from host.backends import current_backend, get_backend
    from host.backends.torch_backend import TorchBackend
    from host.gemm import _recorders

    if not b.sample_mean or b.fmt != "log" or b.shift is not None or getattr(_recorders, "stack", None):
        return None
    be = current_backend() if backend is None else get_backend(backend)
    return summed_log_values(b.ints) if isinstance(be, TorchBackend) else None


def _check_axis(x, name, ok_shape):
    if x is not None and x.dim() != 0 and tuple(x.shape) != ok_shape:
        raise ValueError(f"matmul: {name} of shape {tuple(x.shape)} is not constant along the reduction "
                         f"index (need () or {ok_shape})")


def matmul(a: Operand, b: Operand, *, backend=None, tag: str = "", product=None, a_shape=None,
           conv_sums=None) -> torch.Tensor:
    """The float result of ``value(a) @ value(b)`` computed as exact integer GEMMs plus a rescale.

    Parameters
    ----------
    a : Operand
        ``(M, K)``, ``fmt="int"`` (the array's A side); if either operand is ``"float"`` the product is a
        plain float GEMM of the dequantized values.
    b : Operand
        ``(K, N)`` in any format; may carry SMP samples.
    backend : optional
        Passed to :func:`host.gemm.qgemm`.
    tag : str
        GEMM label for :func:`host.gemm.record_gemms` (samples get ``"#s"`` appended, the masked-offset
        correction ``".mask"``).
    product : callable, optional
        ``product(b_ints, b_shift, tag, b_format) -> integers`` (or float32 holding them exactly, as
        :func:`host.gemm.qgemm`'s ``float_out``): computes ``A @ value(B)`` for one B sample (``b_format``:
        ``b.fmt``, or ``"int"`` for the summed values of SMP samples, see below) in place
        of ``qgemm(a.ints, ...)`` -- a convolution's F/U GEMM without im2col (:func:`host.gemm.qconv2d`),
        where ``a.ints`` is not the ``(M, K)`` matrix. ``a_shape`` then gives ``(M, K)``.
    conv_sums : optional
        With ``product`` and a zero-point on either side: the other integer terms of the expansion
        without the ``(M, K)`` matrices -- ``row()`` (``sum_k a_ik``, ``(M, 1)``), ``mask_product(b_ints,
        b_shift, tag)`` (``M B`` for one B sample, ``M`` the 0/1 mask of the convolution's zero padding,
        which always applies to an A offset) and ``mask_count()`` (``sum_k m_ik``), as exact integers
        (any dtype, float32 included).

    Returns
    -------
    (M, N) float32 tensor.
    """
    if a.fmt == "float" or b.fmt == "float":
        # A float GEMM: no quantization (fp32), or a phase where only one side is quantized (LUQ FNT keeps
        # the weights low-precision, §4 "FNT"): the quantized side enters as its dequantized values.
        return a.dequantize() @ b.dequantize()
    if a.fmt != "int" or a.sample_mean:
        raise ValueError(f"matmul: the A operand must be plain integer codes, got fmt={a.fmt!r}")
    if product is not None and (a_shape is None or conv_sums is None and a.offset is not None):
        raise ValueError("matmul: a custom product needs a_shape, and conv_sums for an A operand with offset")
    m, k = a.ints.shape if product is None else a_shape
    n = b.shape[1]
    _check_axis(a.scale, "a.scale", (m, 1))
    _check_axis(a.offset, "a.offset", (m, 1))
    _check_axis(b.scale, "b.scale", (1, n))
    _check_axis(b.offset, "b.offset", (1, n))

    parts = b.samples()
    gemm_fmt, gemm_parts = b.fmt, parts
    total = _summed_samples(b, backend) if len(parts) > 1 else None
    if total is not None:
        gemm_fmt, gemm_parts = "int", [total]
    acc = None
    for s, bs in enumerate(gemm_parts):
        shift = None if b.shift is None else b.shift.expand(bs.shape)
        t = tag if len(parts) == 1 else f"{tag}#{s}"
        # float_out: the integers may come back as float32 (exact), which the conversion below would
        # produce anyway; SMP samples are summed as int64 either way
        p = qgemm(a.ints, bs, b_format=gemm_fmt, b_shift=shift, backend=backend, tag=t, float_out=True) \
            if product is None else product(bs, shift, t, gemm_fmt)
        acc = p if acc is None else acc.to(torch.int64) + p.to(torch.int64)
    out = acc.to(torch.float32)
    if b.sample_mean:
        out.div_(len(parts))
    sa = 1.0 if a.scale is None else _f32(a.scale)
    sb = 1.0 if b.scale is None else _f32(b.scale)
    if a.scale is not None or b.scale is not None:
        out.mul_(sa * sb)

    # the correction terms are added in place (``out`` is this call's own float32 tensor, every term float32:
    # the same additions as ``out = out + term``, without an (M, N) allocation each)
    if b.offset is not None:                       # sa_i ob_j sum_k a_ik
        if product is not None and conv_sums is None:
            raise ValueError("matmul: a custom product needs conv_sums for a B offset")
        row = (a.ints.sum(dim=1, keepdim=True, dtype=torch.int64) if product is None else
               conv_sums.row()).to(torch.float32)
        out.add_((sa * _f32(b.offset)) * row)
    if a.offset is not None:
        oa = _f32(a.offset)
        if a.offset_mask is None and product is None:   # oa_i sb_j sum_k b_kj + K oa_i ob_j
            col = b.values().sum(dim=0, keepdim=True).to(torch.float32)
            if b.sample_mean:
                col = col / len(parts)
            out.add_((oa * sb) * col)
            if b.offset is not None:
                out.add_(oa * _f32(b.offset) * k)
        else:                                      # oa_i sb_j (M B)_ij + oa_i ob_j sum_k m_ik
            mb = None
            for s, bs in enumerate(parts):
                shift = None if b.shift is None else b.shift.expand(bs.shape)
                t = f"{tag}.mask" if len(parts) == 1 else f"{tag}.mask#{s}"
                p = qgemm(a.offset_mask, bs, b_format=b.fmt, b_shift=shift, backend=backend, tag=t) \
                    if product is None else conv_sums.mask_product(bs, shift, t)
                mb = p if mb is None else mb.to(torch.int64) + p.to(torch.int64)
            mbf = mb.to(torch.float32)
            if b.sample_mean:
                mbf = mbf / len(parts)
            out.add_((oa * sb) * mbf)
            if b.offset is not None:
                cnt = (a.offset_mask.sum(dim=1, keepdim=True, dtype=torch.int64) if product is None else
                       conv_sums.mask_count()).to(torch.float32)
                out.add_(oa * _f32(b.offset) * cnt)
    return out
