"""CRC units, byte per cycle: CRC-32/IEEE (bit-exact with ``zlib.crc32``) and the header CRC-8.

The next-state function of a CRC over one byte is linear over GF(2): every bit of the new register is
the XOR of a fixed set of register and data bits. :func:`crc_step` derives those sets by running the
bitwise algorithm symbolically at elaboration time, so the gateware is a flat XOR network (at most
about 20 inputs per bit for CRC-32) with no loop in hardware.
"""


from functools import reduce

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["crc_step", "crc32_step", "crc8_step", "Crc32"]


def _symbolic(width: int, poly: int, reflected: bool):
    """For each register bit after one byte: (register bits, data bits) whose XOR gives it."""
    reg = [({i}, set()) for i in range(width)]            # bit i = XOR of reg bits / data bits
    for j in range(8):
        if reflected:
            # crc ^= byte (low bits); then 8x: crc = (crc >> 1) ^ (poly if crc & 1)
            if j == 0:
                reg = [(r, d ^ ({i} if i < 8 else set())) for i, (r, d) in enumerate(reg)]
            lsb = reg[0]
            new = []
            for i in range(width):
                r, d = reg[i + 1] if i + 1 < width else (set(), set())
                if (poly >> i) & 1:
                    r, d = r ^ lsb[0], d ^ lsb[1]
                new.append((set(r), set(d)))
            reg = new
        else:
            # crc ^= byte << (width - 8); then 8x: crc = (crc << 1) ^ (poly if msb)
            if j == 0:
                reg = [(r, d ^ ({i - (width - 8)} if i >= width - 8 else set())) for i, (r, d) in enumerate(reg)]
            msb = reg[width - 1]
            new = []
            for i in range(width):
                r, d = reg[i - 1] if i >= 1 else (set(), set())
                if (poly >> i) & 1:
                    r, d = r ^ msb[0], d ^ msb[1]
                new.append((set(r), set(d)))
            reg = new
    return reg


def crc_step(crc, byte, *, width: int, poly: int, reflected: bool):
    """The combinational next value of a ``width``-bit CRC register ``crc`` after data ``byte``."""
    terms = _symbolic(width, poly, reflected)
    bits = []
    for r, d in terms:
        vals = [crc[i] for i in sorted(r)] + [byte[i] for i in sorted(d)]
        bits.append(reduce(lambda a, b: a ^ b, vals) if vals else Const(0, 1))
    return Cat(*bits)


def crc32_step(crc, byte):
    """CRC-32/IEEE register update (reflected, polynomial 0xEDB88320; init and final XOR 0xFFFFFFFF)."""
    return crc_step(crc, byte, width=32, poly=0xEDB88320, reflected=True)


def crc8_step(crc, byte):
    """CRC-8 (polynomial 0x07, init 0, not reflected) register update: :func:`hw.wire.crc8`."""
    return crc_step(crc, byte, width=8, poly=0x07, reflected=False)


class Crc32(wiring.Component):
    """CRC-32/IEEE of a byte sequence, one byte per cycle; ``value`` equals ``zlib.crc32``.

    Members
    -------
    clear : In(1)
        Restart (register to ``0xFFFFFFFF``); takes priority over ``en``.
    en : In(1)
        Absorb ``data`` this cycle.
    data : In(8)
        The byte.
    value : Out(32)
        CRC of every byte absorbed since the last ``clear`` (valid the cycle after the last ``en``).

    Latency
    -------
    One cycle; throughput one byte per cycle.
    """

    clear: In(1)
    en: In(1)
    data: In(8)
    value: Out(32)

    def elaborate(self, platform):
        m = Module()
        reg = Signal(32, init=0xFFFFFFFF)
        with m.If(self.clear):
            m.d.sync += reg.eq(0xFFFFFFFF)
        with m.Elif(self.en):
            m.d.sync += reg.eq(crc32_step(reg, self.data))
        m.d.comb += self.value.eq(~reg)
        return m
