"""Packing Python integers into the flat bit vectors of ``lib.data`` layouts and back."""

from __future__ import annotations

from amaranth.hdl import Shape
from amaranth.lib import data

__all__ = ["pack_lanes", "unpack_lanes", "pack_struct", "unpack_struct", "to_signed"]


def to_signed(v: int, width: int) -> int:
    v &= (1 << width) - 1
    return v - (1 << width) if v >> (width - 1) else v


def pack_lanes(values, width: int) -> int:
    out = 0
    mask = (1 << width) - 1
    for i, v in enumerate(values):
        out |= (int(v) & mask) << (i * width)
    return out


def unpack_lanes(v: int, width: int, n: int, signed: bool) -> list[int]:
    mask = (1 << width) - 1
    vals = [(v >> (i * width)) & mask for i in range(n)]
    return [to_signed(x, width) for x in vals] if signed else vals


def _shape(field_shape):
    return field_shape if isinstance(field_shape, data.Layout) else Shape.cast(field_shape)


def pack_struct(layout: data.StructLayout, values: dict) -> int:
    out = 0
    for name, f in layout:
        if name not in values:
            continue
        v = values[name]
        sh = f.shape
        if isinstance(sh, data.ArrayLayout):
            v = pack_lanes(v, Shape.cast(sh.elem_shape).width)
        out |= (int(v) & ((1 << f.width) - 1)) << f.offset
    return out


def unpack_struct(layout: data.StructLayout, v: int) -> dict:
    out = {}
    for name, f in layout:
        raw = (v >> f.offset) & ((1 << f.width) - 1)
        sh = f.shape
        if isinstance(sh, data.ArrayLayout):
            es = Shape.cast(sh.elem_shape)
            out[name] = unpack_lanes(raw, es.width, sh.length, es.signed)
        else:
            s = Shape.cast(sh)
            out[name] = to_signed(raw, s.width) if s.signed else raw
    return out
