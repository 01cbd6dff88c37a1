"""TorchBackend: the exact integer GEMM on a PyTorch device (CPU or CUDA) via :func:`host.gemm.int_gemm`."""

from __future__ import annotations

import torch

from host.backends import Backend, BackendError
from host.quant import native

__all__ = ["TorchBackend", "b_values", "stored_values"]


_LOG_TABLE: dict = {}


def stored_values(t: torch.Tensor) -> torch.Tensor:
    """``t`` with every broadcast dimension (stride 0, e.g. of ``expand``) narrowed to length 1: a view of
    the same set of values, each stored element once -- a min/max over it is the min/max of ``t``, without
    a reduction over the repeats (torch reduces an expanded view element by element)."""
    for d in range(t.dim()):
        if t.stride(d) == 0 and t.shape[d] > 1:
            t = t.narrow(d, 0, 1)
    return t


def b_values(b: torch.Tensor, b_format: str, b_shift: torch.Tensor | None, *,
             code_range: tuple[int, int] | None = None, shift_max: int | None = None) -> torch.Tensor:
    """The integer values a B operand stands for (the PE's ``m << s``, ARCHITECTURE.md).

    ``"int"``: the codes; ``"log"``: ``sign(c) * 2**(|c| - 1)`` (0 for ``c = 0``, ``hw.numerics.LogFormat``);
    ``"shift"``: ``code << shift`` (``host.quant.shift_operands``). Returned in the narrowest of
    int16/int32 that holds them (LOG4_REF reaches 2**7, shift up to 7 << 15).

    ``code_range`` (``(min, max)`` of ``b``) and ``shift_max`` (the largest of ``b_shift``, ``>= 0``): where
    given, the caller's measurements of these very tensors (:func:`host.gemm.qgemm` makes them), used
    instead of reducing ``b`` / ``b_shift`` again.
    """
    if b_format == "int":
        return b
    if b_format == "log":
        # one gather from a 17-entry table (codes -8..8: LOG4 and LOG4_REF) instead of shifts and selects;
        # int8 values while |code| <= 7 (|value| <= 64), so int_gemm's dtype bound often spares a scan
        tr = b.dim() == 2 and not b.is_contiguous() and b.t().is_contiguous()
        if code_range is not None:
            lo, hi = code_range
        else:
            lo, hi = (int(v) for v in torch.aminmax(b.t() if tr else b)) if b.numel() else (0, 0)
        if lo < -8 or hi > 8:
            raise ValueError(f"LOG codes must lie in [-8, 8], got [{lo}, {hi}]")
        narrow = max(-lo, hi) <= 7
        key = (b.device, narrow)
        table = _LOG_TABLE.get(key)
        if table is None:
            vals = [-(1 << (abs(c) - 1)) if c < 0 else (0 if c == 0 else 1 << (c - 1)) for c in range(-8, 9)]
            # int8 table for |code| <= 7 (entries for +-8 wrap, never indexed then)
            table = _LOG_TABLE[key] = torch.tensor(vals, dtype=torch.int16, device=b.device).to(
                torch.int8 if narrow else torch.int16)
        # a transposed view is scanned and looked up in storage order (no strided gather), transposed back
        base = b.t() if tr else b.contiguous()
        lib = native.kernels() if narrow and base.dtype == torch.int8 and base.device.type == "cpu" else None
        if lib is not None:
            # the same lookup in one pass of host.quant.native (index_select gathers element by element)
            v = torch.empty(base.shape, dtype=torch.int8)
            lib.tetrad_log_values_i8(base.data_ptr(), base.numel(), v.data_ptr())
            return v.t() if tr else v
        idx = base.reshape(-1).to(torch.int32).add_(8)      # int32 index: half the traffic of int64
        v = table.index_select(0, idx).view(base.shape)
        return v.t() if tr else v
    if b_format == "shift":
        if b.numel() and b.dtype == torch.int8 and b_shift.dtype == torch.int8:
            tr = b.dim() == 2 and not b.is_contiguous() and b.t().is_contiguous()
            lo, hi = (int(v) for v in torch.aminmax(b.t() if tr else b)) if code_range is None else code_range
            s_max = int(stored_values(b_shift).max()) if shift_max is None else shift_max
            if max(-lo, hi) << s_max <= 127:
                # |m << s| <= 127 (ShiftQuant 4-bit with e_max <= 3: at most 7 << 3 = 56): int8 values keep
                # int_gemm on its narrow-dtype bound and halve the conversion traffic
                return torch.bitwise_left_shift(b, b_shift)
        return b.to(torch.int32) << b_shift.to(torch.int32)
    raise ValueError(f"unknown b_format {b_format!r}; valid: ['int', 'log', 'shift']")


class TorchBackend(Backend):
    """Exact integer GEMMs on a torch device.

    The operands are multiplied as integer-valued float tensors on the BLAS path, which
    :func:`host.gemm.int_gemm` proves exact (float32 while ``K * max|a| * max|b| <= 2**24``, else K-chunks
    or float64); on CUDA it refuses TF32 shortcuts the same way. So ``TorchBackend("cpu")`` and
    ``TorchBackend("cuda")`` return the same integers as the RTL.

    Parameters
    ----------
    device : str or torch.device, default "cpu"
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """

    def __init__(self, device="cpu"):
        dev = torch.device(device)
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"TorchBackend: device must be 'cpu' or 'cuda[:N]', got {device!r}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("TorchBackend: CUDA was requested but torch.cuda.is_available() is False "
                             "(no GPU, or a CPU-only torch build); use backend 'cpu'")
        self._device = dev
        self.name = str(dev)

    @property
    def device(self) -> torch.device:
        return self._device

    def gemm(self, a, b, *, b_format, b_shift, out_dtype, float32_ok: bool = False, b_stats=None):
        """``float32_ok``: return float32 holding the exact integers when one float32 GEMM computes them
        (see :func:`host.gemm.qgemm`'s ``float_out``); only :func:`host.gemm.qgemm` passes it, on the
        operands it has checked (2-D integer tensors on one device, matching inner dimensions -- which
        ``b_values`` keeps -- and ``b_shift`` expanded to ``b``'s shape), so they are not checked again.
        ``b_stats``: ``(code_range, shift_max)`` of ``b`` and ``b_shift`` as qgemm measured them (either
        may be ``None``), for :func:`b_values`."""
        from host.gemm import _int_gemm, int_gemm   # lazy: no import cycle
        dev = self._device
        code_range, shift_max = (None, None) if b_stats is None else b_stats
        bv = b_values(b.to(dev), b_format, None if b_shift is None else b_shift.to(dev),
                      code_range=code_range, shift_max=shift_max)
        try:
            if float32_ok:
                return _int_gemm(a.to(dev), bv, out_dtype, float32_ok=True)
            return int_gemm(a.to(dev), bv, out_dtype=out_dtype)
        except RuntimeError as e:        # e.g. a CUDA error (device lost); OverflowError is not one
            raise BackendError(f"{self.name}: GEMM failed: {e}") from e

    def describe(self) -> str:
        return f"torch:{self._device}"
