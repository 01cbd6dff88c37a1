"""Pieces shared by the quantizer units: argument checks and small combinational datapaths.

Everything here builds plain combinational logic inside a caller's ``Module``; the units register the
results where their pipelines need it.
"""

from __future__ import annotations

import operator

from amaranth.hdl import Cat, Const, Mux, Signal, signed

from hw import numerics as nx

__all__ = [
    "check_int", "check_choice", "check_lanes", "check_rand_bits", "LANES_ALLOWED",
    "abs_unsigned", "max_tree", "bit_length", "requantize",
]

LANES_ALLOWED = (1, 2, 4, 8, 16)


def check_int(who: str, name: str, value, lo: int, hi: int) -> int:
    """``value`` must be an int in ``[lo, hi]``; the error names the unit, the value and the range."""
    if isinstance(value, bool):
        raise ValueError(f"{who}: {name} must be an int in {lo}..{hi}, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{who}: {name} must be an int in {lo}..{hi}, got {value!r}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{who}: {name} must be an int in {lo}..{hi}, got {v}")
    return v


def check_choice(who: str, name: str, value, allowed):
    if value not in allowed:
        raise ValueError(f"{who}: {name} must be one of {list(allowed)}, got {value!r}")
    return value


def check_lanes(who: str, lanes) -> int:
    if isinstance(lanes, bool) or lanes not in LANES_ALLOWED:
        raise ValueError(f"{who}: lanes must be one of {LANES_ALLOWED}, got {lanes!r}")
    return lanes


def check_rand_bits(who: str, rand_bits) -> int:
    if isinstance(rand_bits, bool) or rand_bits not in nx.RAND_BITS_ALLOWED:
        raise ValueError(f"{who}: rand_bits must be one of {nx.RAND_BITS_ALLOWED}, got {rand_bits!r}")
    return rand_bits


def abs_unsigned(x):
    """``|x|`` of a signed value as an unsigned value of the same width (``|-2**(W-1)|`` fits)."""
    w = len(x)
    return Mux(x[-1], -x, x).as_unsigned()[:w]


def max_tree(values):
    """Unsigned maximum of a list of values (a balanced comparator tree)."""
    values = list(values)
    while len(values) > 1:
        nxt = []
        for a, b in zip(values[0::2], values[1::2]):
            nxt.append(Mux(a > b, a, b))
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
    return values[0]


def bit_length(m, x, name="bitlen"):
    """``bitlen(x)`` of an unsigned value (0 for 0): a priority encoder, combinational.

    Returns a Signal of ``range(len(x) + 1)``.
    """
    out = Signal(range(len(x) + 1), name=name)
    # Later assignments win: scan from the LSB so the highest set bit decides.
    m.d.comb += out.eq(0)
    for i in range(len(x)):
        with m.If(x[i]):
            m.d.comb += out.eq(i + 1)
    return out


def requantize(m, v, shift, *, qmax: int, rdn, draw, rand_bits: int, shift_min: int, shift_max: int,
               name: str = "rq"):
    """``clamp(ROUND(v * 2**-shift), -qmax, qmax)`` with ``ROUND`` = SR or RDN (ties to even).

    SR is the contract's ``floor(x + u)`` with ``u = (r' + 1/2) / 2**b`` and ``r' = draw XOR 2**(b-1)``
    (``hw.numerics.draw_to_uniform``). As ``1 - u`` lies on the ``2**-(b+1)`` grid, ``floor(x + u)`` only
    needs ``x`` truncated to ``b + 1`` fraction bits: with ``Z = floor(x * 2**(b+1))``,
    ``SR = (Z + 2 r' + 1) >> (b + 1)``. RDN needs the round bit and a sticky bit of everything below.

    Parameters
    ----------
    v : signed Value
        The integer mantissa.
    shift : Value or int
        Signed right shift, known to lie in ``[shift_min, shift_max]``. For ``shift <= 0`` the result is
        the integer ``v << -shift``; callers guarantee it then fits ``qmax`` (it is only truncated to a
        few bits above ``qmax``).
    rdn : Value or int
        1 selects round-to-nearest-even, 0 stochastic rounding.
    draw : Value
        The unsigned ``rand_bits``-bit draw for this element.

    Returns
    -------
    Signal
        ``signed(bitlen(qmax) + 1)`` code in ``[-qmax, qmax]``.
    """
    b = rand_bits
    qbits = qmax.bit_length() + 1
    q = Signal(signed(qbits), name=name)
    wv = len(v)
    v = v.as_signed()
    const_shift = isinstance(shift, int)

    # Right-shift path (shift >= 1). Sign-extend v so the fraction of a negative v is exact for any shift.
    rmax = max(shift_max, 1)
    wx = max(wv, rmax) + 1
    vx = Signal(signed(wx), name=f"{name}_vx")
    m.d.comb += vx.eq(v)
    if const_shift:
        s = max(shift, 0)
    else:
        s = Signal(range(rmax + 1), name=f"{name}_s")
        m.d.comb += s.eq(Mux(shift > 0, shift.as_unsigned(), 0)[:len(s)])
    z = Signal(signed(wx + b + 1), name=f"{name}_z")        # floor(v * 2**(b+1-s))
    m.d.comb += z.eq((vx << (b + 1)) >> s)
    ip = Signal(signed(wx), name=f"{name}_i")              # floor(v * 2**-s)
    m.d.comb += ip.eq(z >> (b + 1))
    ft = z.as_unsigned()[:b + 1]                           # top b+1 fraction bits
    # r' = draw with its top bit inverted; 2 r' + 1 = Cat(1, r').
    r_odd = Cat(Const(1, 1), draw[:b - 1], ~draw[b - 1])
    up_sr = (ft + r_odd)[b + 1]
    # RDN: round bit ft[b]; sticky = ft[:b] or any bit of v below the b+1 kept fraction bits.
    if const_shift:
        lo_bits = max(s - b - 1, 0)
        sticky_lo = (vx.as_unsigned()[:lo_bits] != 0) if lo_bits else Const(0, 1)
    else:
        lo = Signal(range(rmax + 1), name=f"{name}_lo")
        m.d.comb += lo.eq(Mux(s > b + 1, s - (b + 1), 0))
        mask = Signal(wx, name=f"{name}_mask")
        m.d.comb += mask.eq(~(Const(-1, signed(wx + 1)) << lo)[:wx])
        sticky_lo = (vx.as_unsigned() & mask) != 0
    sticky = (ft[:b] != 0) | sticky_lo if b > 0 else sticky_lo
    up_rdn = ft[b] & (sticky | ip[0])
    up = Mux(rdn, up_rdn, up_sr)
    q_right = Signal(signed(wx + 1), name=f"{name}_qr")
    m.d.comb += q_right.eq(ip + up)

    def clamp(val):
        return Mux(val > qmax, qmax, Mux(val < -qmax, -qmax, val))

    if const_shift:
        if shift <= 0:
            m.d.comb += q.eq(clamp(v << -shift))
        else:
            m.d.comb += q.eq(clamp(q_right))
        return q
    if shift_min <= 0:
        # Left-shift path: an exact integer that the caller guarantees is within +-qmax, so only the low
        # qbits + 1 bits of the shifted value are needed (modular arithmetic keeps them exact).
        lmax = -shift_min
        sl = Signal(range(lmax + 1), name=f"{name}_sl")
        m.d.comb += sl.eq(Mux(shift < 0, (-shift).as_unsigned(), 0)[:len(sl)])
        q_left = Signal(signed(qbits + 1), name=f"{name}_ql")
        m.d.comb += q_left.eq(v << sl)
        m.d.comb += q.eq(Mux(shift > 0, clamp(q_right), clamp(q_left)))
    else:
        m.d.comb += q.eq(clamp(q_right))
    return q
