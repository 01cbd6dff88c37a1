"""Operand formats of the GEMM datapath and the widths derived from them.

Every training GEMM is ``C = A @ B`` with ``A`` on an INT4 grid and ``B`` in one of the B formats
below. The processing element sees ``B`` as the unified operand ``(m, s)`` of ARCHITECTURE.md
(value ``m << s``), so one datapath serves them all; what differs per format is only the range of
``m`` and ``s``, and therefore the accumulator width that keeps a ``K_max``-long reduction exact.

=========  ==========================================  ===================  ==============
name       numerics object (``hw.numerics``)           ``m``                ``s``
=========  ==========================================  ===================  ==============
int4       ``INT4`` (``[-8, 7]``)                      the code             0
log4       ``LOG4`` (FP4 [1,3,0], ``max_exp=6``)       ``-1, 0, +1``        ``|code| - 1``
shift      ``ShiftFormat(INT4_SYM, e_max=3)``          the code             ``e_max - e``
=========  ==========================================  ===================  ==============

The widths use only :func:`hw.numerics.accumulator_width` and :func:`hw.numerics.operand_bounds`, so
the gateware and the host driver agree on them by construction.
"""

from __future__ import annotations

import operator

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from hw import numerics as nx

__all__ = [
    "A_GRID", "B_FORMATS", "DEFAULT_FORMATS", "resolve_formats", "format_bounds",
    "product_bound", "required_acc_width", "operand_layout", "check_int", "signed_bits",
]

#: The A operand grid: full two's-complement INT4, so the ``-8 * -8`` worst case is reachable.
A_GRID = nx.INT4

#: The B formats a PE can be built for, by name.
B_FORMATS = {
    "int4": nx.INT4,
    "log4": nx.LOG4,
    "shift": nx.ShiftFormat(),
}

#: Formats of a default build: every training GEMM (F, B and U) runs on one array.
DEFAULT_FORMATS = ("int4", "log4", "shift")


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in ``lo..hi`` (inclusive), or a ValueError naming the value and the range."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {value!r}") from None
    if value < lo or (hi is not None and value > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {rng}, got {value}")
    return value


def resolve_formats(formats) -> tuple[str, ...]:
    """Validate a collection of B format names; returns them as a sorted, de-duplicated tuple."""
    if isinstance(formats, str):
        formats = (formats,)
    try:
        names = tuple(formats)
    except TypeError:
        raise ValueError(f"formats must be a collection of names from {sorted(B_FORMATS)}, "
                         f"got {formats!r}") from None
    if not names:
        raise ValueError(f"formats must name at least one of {sorted(B_FORMATS)}, got none")
    for name in names:
        if name not in B_FORMATS:
            raise ValueError(f"unknown B format {name!r}; allowed: {sorted(B_FORMATS)}")
    return tuple(sorted(set(names)))


def format_bounds(name: str) -> tuple[int, int, int, int]:
    """``(m_min, m_max, s_max, b_max)`` of a B format: the mantissa range, the largest shift and the
    largest ``|m|`` (the ``b_max`` of :func:`hw.numerics.accumulator_width`)."""
    fmt = B_FORMATS[resolve_formats(name)[0]]
    b_max, s_max = nx.operand_bounds(fmt)
    if isinstance(fmt, nx.IntGrid):
        return fmt.qmin, fmt.qmax, 0, b_max
    if isinstance(fmt, nx.LogFormat):
        return -1, 1, s_max, b_max
    return fmt.grid.qmin, fmt.grid.qmax, s_max, b_max


def product_bound(formats) -> int:
    """The largest ``|a * (m << s)|`` over the given formats."""
    return max(A_GRID.max_abs * b_max << s_max
               for _, _, s_max, b_max in map(format_bounds, resolve_formats(formats)))


def required_acc_width(k_max: int, formats) -> int:
    """Signed accumulator bits that make any ``k_max``-long reduction exact in every format
    (the contract's ``ceil(log2(K_max * |a|max * |b|max * 2**s_max + 1)) + 1``, maximised over formats)."""
    k_max = check_int("k_max", k_max, 1)
    return max(nx.accumulator_width(k_max, A_GRID.max_abs, b_max, s_max)
               for _, _, s_max, b_max in map(format_bounds, resolve_formats(formats)))


def operand_layout(formats) -> data.StructLayout:
    """The ``(m, s)`` B operand layout wide enough for every format in ``formats``.

    ``m`` is signed and just wide enough for the union of the mantissa ranges (2 bits for LOG4 alone,
    4 bits once INT4 or shift is present); ``s`` is unsigned and just wide enough for the largest
    shift (0 bits for INT4 alone, which removes the shifter from the PE)."""
    bounds = [format_bounds(f) for f in resolve_formats(formats)]
    m_min = min(b[0] for b in bounds)
    m_max = max(b[1] for b in bounds)
    s_max = max(b[2] for b in bounds)
    return data.StructLayout({
        "m": signed(max(signed_bits(m_min), signed_bits(m_max))),
        "s": unsigned(s_max.bit_length()),
    })


def signed_bits(value: int) -> int:
    """Bits of the narrowest two's-complement type that holds ``value``."""
    return (value.bit_length() if value >= 0 else (~value).bit_length()) + 1
