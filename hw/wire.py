"""The board link's wire format: frame layout, opcodes, status codes and a pure-Python reference codec.

Pure Python (no Amaranth, no torch): the gateware (:mod:`hw.link`) and the host driver
(:mod:`host.backends.board`) both import it, so the two ends agree on every constant by construction.

Frame (both directions; multi-byte fields little-endian)::

    offset  size  field
    0       1     SYNC0 = 0xA5
    1       1     SYNC1 = 0x5A
    2       1     opcode          (a response sets RESPONSE = 0x80 on the request's opcode)
    3       1     sequence number (a response echoes the request's)
    4       2     payload length  (requests: <= the device's max_payload, HELLO reports it)
    6       1     header check    CRC-8 (poly 0x07, init 0) of bytes 2..5
    7       len   payload         (a response's payload starts with a status byte, :class:`Status`)
    7+len   4     CRC-32          IEEE (``zlib.crc32``) of bytes 2 .. 6+len (header fields, check, payload)

The header check lets the receiver reject a corrupted length at once (and go back to hunting for
``SYNC0 SYNC1``) instead of waiting for a payload that never comes; the CRC-32 is verified before a
request has any effect. See docs/BOARD_LINK.md for the semantics of every opcode.
"""

from __future__ import annotations

import enum
import struct
import zlib

__all__ = [
    "VERSION", "SYNC", "HEADER_BYTES", "TRAILER_BYTES", "RESPONSE", "MAX_LEN", "Op", "Status",
    "Target", "QuantUnit", "FORMAT_BITS", "crc8", "crc32", "encode_frame", "Frame", "FrameDecoder",
    "decode", "HELLO_FIELDS", "COUNTER_FIELDS", "pack_hello", "unpack_hello", "unpack_counters",
    "WRITE_HDR", "GEMM_REQ", "READ_REQ", "READ_MAX", "QUANT_HDR", "SHIFT_INFO", "LUQ_INFO", "StatusError",
]

VERSION = 1
SYNC = (0xA5, 0x5A)
HEADER_BYTES = 7          # sync x2, op, seq, len x2, hcrc
TRAILER_BYTES = 4         # CRC-32
RESPONSE = 0x80
MAX_LEN = 0xFFFF


class Op(enum.IntEnum):
    """Request opcodes (a response carries ``op | RESPONSE``)."""
    HELLO = 0x01      #: -> build configuration (:data:`HELLO_FIELDS`)
    WRITE = 0x02      #: a chunk of the A or B matrix (:data:`WRITE_HDR` + elements)
    GEMM = 0x03       #: run ``C (+)= op(A) @ op(B)`` on the loaded buffers (:data:`GEMM_REQ`) -> cycles
    READ = 0x04       #: stream C (or C^T) back as int32 (:data:`READ_REQ`)
    COUNTERS = 0x05   #: -> cycle and frame counters (:data:`COUNTER_FIELDS`)
    QUANT = 0x06      #: run a quantizer unit on the payload tensor (:data:`QUANT_HDR` + int16 elements)


class Status(enum.IntEnum):
    """First payload byte of every response."""
    OK = 0
    BAD_CRC = 1        #: the request's CRC-32 did not match (header was intact: seq is echoed)
    BAD_LENGTH = 2     #: length above max_payload, or inconsistent with the opcode's fields
    UNKNOWN_OP = 3     #: opcode not implemented
    BUSY = 4           #: a frame arrived while the previous one was still executing; not applied
    OUT_OF_RANGE = 5   #: dimensions/offsets/values outside what the built device holds
    BAD_STATE = 6      #: e.g. GEMM/READ while a matrix load is incomplete, WRITE chunk out of order
    TIMEOUT = 7        #: the frame stopped arriving mid-way (bytes dropped); not applied
    UNSUPPORTED = 8    #: a quantizer unit or option not built into this device


class Target(enum.IntEnum):
    """WRITE targets."""
    A = 0
    B = 1


class QuantUnit(enum.IntEnum):
    """QUANT units."""
    SHIFTQUANT = 0
    LUQ = 1


#: HELLO's ``formats`` bit mask
FORMAT_BITS = {"int4": 1, "log4": 2, "shift": 4}

# ---- payload layouts (struct formats, little-endian) -----------------------------------------------
#: HELLO response (after the status byte)
HELLO_FIELDS = (
    ("version", "B"), ("rows", "B"), ("cols", "B"), ("formats", "B"), ("k_max", "H"),
    ("a_depth", "I"), ("b_depth", "I"), ("c_depth", "I"), ("max_payload", "H"), ("acc_width", "B"),
    ("dim_bits", "B"), ("clk_hz", "I"), ("quant_units", "B"), ("shift_scale", "B"),
    ("quant_max", "H"), ("baud", "I"),
)
#: COUNTERS response (after the status byte); all wrap modulo 2**32
COUNTER_FIELDS = (
    ("cycles", "I"), ("busy", "I"), ("stalled", "I"), ("frames_ok", "I"), ("frames_bad", "I"),
    ("duplicates", "I"), ("last_gemm_cycles", "I"),
)
#: WRITE request header: target, trans, rows, cols (the matrix as stored), offset, count
WRITE_HDR = struct.Struct("<BBHHIH")
#: GEMM request: m, k, n, flags (bit0 trans_a, bit1 trans_b, bit2 accumulate)
GEMM_REQ = struct.Struct("<HHHB")
#: READ request: m, n, flags (bit0 trans_c), offset, count: elements offset .. offset+count-1 of the
#: row-major C (or C^T) stream, so a large C comes back in frames short enough for a noisy link
READ_REQ = struct.Struct("<HHBIH")
#: most C elements one READ answer holds
READ_MAX = (MAX_LEN - 1) // 4
#: QUANT request header: unit, rdn, rows, cols, seed; then rows*cols int16
QUANT_HDR = struct.Struct("<BBHHI")
#: QUANT shiftquant info (after the status byte): max_abs, scale_exp, recip (24 bit), recip_exp,
#: max_bits; then one byte per element: code (low nibble, two's complement) | exponent << 4
SHIFT_INFO = struct.Struct("<HbHBbB")
#: QUANT luq info: max_abs, alpha_exp; then one int8 code per element
LUQ_INFO = struct.Struct("<Hb")

_HELLO = struct.Struct("<" + "".join(f for _, f in HELLO_FIELDS))
_COUNTERS = struct.Struct("<" + "".join(f for _, f in COUNTER_FIELDS))


class StatusError(RuntimeError):
    """A response carried a non-OK status."""

    def __init__(self, status: int, what: str = ""):
        self.status = status
        try:
            name = Status(status).name
        except ValueError:
            name = f"status {status}"
        super().__init__(f"{what}: device answered {name}" if what else f"device answered {name}")


def crc8(data: bytes, crc: int = 0) -> int:
    """CRC-8, polynomial 0x07, init 0, no reflection, no final XOR (CRC-8/SMBUS)."""
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def crc32(data: bytes) -> int:
    """CRC-32/IEEE, identical to ``zlib.crc32``."""
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_frame(op: int, seq: int, payload: bytes = b"") -> bytes:
    """One frame (request or response) with its header check and CRC-32."""
    if not 0 <= op <= 0xFF or not 0 <= seq <= 0xFF:
        raise ValueError(f"op and seq must be bytes, got op={op}, seq={seq}")
    if len(payload) > MAX_LEN:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_LEN}")
    hdr = bytes((op, seq)) + struct.pack("<H", len(payload))
    body = hdr + bytes((crc8(hdr),)) + bytes(payload)
    return bytes(SYNC) + body + struct.pack("<I", crc32(body))


class Frame:
    """A decoded frame: ``op``, ``seq``, ``payload``, and ``status`` (payload[0], for responses)."""
    __slots__ = ("op", "seq", "payload")

    def __init__(self, op: int, seq: int, payload: bytes):
        self.op, self.seq, self.payload = op, seq, bytes(payload)

    @property
    def status(self) -> int | None:
        return self.payload[0] if self.payload else None

    def __repr__(self):
        return f"Frame(op=0x{self.op:02x}, seq={self.seq}, len={len(self.payload)})"


class FrameDecoder:
    """Incremental reference decoder: :meth:`feed` bytes, get complete frames whose header check and
    CRC-32 pass. Garbage is skipped by hunting for ``SYNC0 SYNC1`` from the byte after a failed
    candidate, so the next valid frame is always found (the gateware does the same without going back,
    see :mod:`hw.link.framer`). ``max_len`` bounds the accepted length; ``errors`` counts rejects."""

    def __init__(self, max_len: int = MAX_LEN):
        self.buf = bytearray()
        self.max_len = max_len
        self.errors = 0

    @property
    def pending(self) -> bool:
        """A frame has begun (sync seen) but is not complete."""
        return len(self.buf) >= 2 and self.buf[0] == SYNC[0] and self.buf[1] == SYNC[1]

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        out = []
        while True:
            i = self.buf.find(bytes(SYNC))
            if i < 0:
                # keep a trailing SYNC0 that may start a frame
                del self.buf[:max(0, len(self.buf) - 1)]
                return out
            del self.buf[:i]
            if len(self.buf) < HEADER_BYTES:
                return out
            hdr = bytes(self.buf[2:6])
            ln = struct.unpack("<H", hdr[2:])[0]
            if crc8(hdr) != self.buf[6] or ln > self.max_len:
                self.errors += 1
                del self.buf[:1]
                continue
            total = HEADER_BYTES + ln + TRAILER_BYTES
            if len(self.buf) < total:
                return out
            body = bytes(self.buf[2:HEADER_BYTES + ln])
            if struct.unpack("<I", self.buf[HEADER_BYTES + ln:total])[0] != crc32(body):
                self.errors += 1
                del self.buf[:1]
                continue
            out.append(Frame(self.buf[2], self.buf[3], body[5:]))
            del self.buf[:total]


def decode(data: bytes, max_len: int = MAX_LEN) -> list[Frame]:
    """Every valid frame in ``data`` (see :class:`FrameDecoder`)."""
    return FrameDecoder(max_len).feed(data)


def pack_hello(**fields) -> bytes:
    """HELLO response payload (status OK first) from :data:`HELLO_FIELDS` values."""
    return bytes((Status.OK,)) + _HELLO.pack(*(fields[n] for n, _ in HELLO_FIELDS))


def unpack_hello(payload: bytes) -> dict:
    """The fields of a HELLO response payload (including its status byte)."""
    if len(payload) != 1 + _HELLO.size:
        raise ValueError(f"HELLO response has {len(payload)} bytes, expected {1 + _HELLO.size}")
    return dict(zip((n for n, _ in HELLO_FIELDS), _HELLO.unpack(payload[1:])))


def unpack_counters(payload: bytes) -> dict:
    """The fields of a COUNTERS response payload (including its status byte)."""
    if len(payload) != 1 + _COUNTERS.size:
        raise ValueError(f"COUNTERS response has {len(payload)} bytes, expected {1 + _COUNTERS.size}")
    return dict(zip((n for n, _ in COUNTER_FIELDS), _COUNTERS.unpack(payload[1:])))


HELLO_BYTES = _HELLO.size
COUNTER_BYTES = _COUNTERS.size
