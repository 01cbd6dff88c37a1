"""The Accelerator's link (framer + decoder + engine + quantizers) on Amaranth's simulator, byte level
(``uart=False``): every opcode, every error code, retries of side-effecting frames, resynchronization."""

import random
import struct

import pytest
import torch

from host.backends.board import _encode_b, _pack_a, quant_request, quant_result
from host.gemm import int_gemm
from hw import wire
from hw.top import Accelerator
from sim.link_script import run_script

W = wire


@pytest.fixture(scope="module")
def small():
    """A 2x2 device with tiny buffers; the quantizer units (slow to elaborate) only where needed."""
    def make(quant_units=False):
        return Accelerator(2, 2, k_max=16, a_depth=32, b_depth=32, c_depth=32, uart=False, max_payload=128,
                           frame_timeout=300, quant_units=quant_units)
    return make


def _frame(op, seq, payload=b""):
    return W.encode_frame(op, seq, payload)


def _write(seq, target, stored, fmt="int4", offset=0, count=None, trans=0):
    rows, cols = stored.shape
    flat = stored.reshape(-1)
    count = flat.numel() - offset if count is None else count
    part = flat[offset:offset + count]
    body = _pack_a(part) if target == W.Target.A else bytes(_encode_b(part, fmt).tolist())
    return _frame(W.Op.WRITE, seq, W.WRITE_HDR.pack(target, trans, rows, cols, offset, count) + body)


def _c(frame, m, n):
    assert frame.status == W.Status.OK, frame.payload
    return torch.tensor(struct.unpack(f"<{m * n}i", frame.payload[1:])).reshape(m, n)


def test_hello_counters_and_unknown_opcode(small):
    dut = small(quant_units=True)
    fr, _, _ = run_script(dut, [_frame(W.Op.HELLO, 1), _frame(0x7F, 2), _frame(W.Op.COUNTERS, 3)])
    assert [(f.op, f.seq) for f in fr] == [(0x81, 1), (0xFF, 2), (0x85, 3)]
    h = W.unpack_hello(fr[0].payload)
    assert (h["rows"], h["cols"], h["k_max"], h["a_depth"], h["max_payload"], h["version"]) == (2, 2, 16, 32, 128, 1)
    assert h["formats"] == 7 and h["quant_units"] == 3 and h["quant_max"] == (128 - 10) // 2
    assert fr[1].status == W.Status.UNKNOWN_OP
    cnt = W.unpack_counters(fr[2].payload)
    assert cnt["frames_ok"] == 3 and cnt["frames_bad"] == 0 and cnt["busy"] > 0


def test_gemm_with_transposes_chunks_and_duplicate_retries(small):
    """A in two WRITE chunks (the second one retried: not applied twice), B transposed, GEMM with
    accumulate retried (C must not be doubled), READ of C and C^T."""
    dut = small()
    g = torch.Generator().manual_seed(5)
    m, k, n = 3, 7, 5
    a = torch.randint(-8, 8, (m, k), generator=g)
    b = torch.randint(-8, 8, (k, n), generator=g)
    bt = b.t().contiguous()                                  # stored n x k, trans_b
    ref = int_gemm(a, b).to(torch.int64)
    w1 = _write(2, W.Target.A, a, offset=0, count=10)
    w2 = _write(3, W.Target.A, a, offset=10, count=11)
    gemm = _frame(W.Op.GEMM, 6, W.GEMM_REQ.pack(m, k, n, 0b010))
    acc = _frame(W.Op.GEMM, 7, W.GEMM_REQ.pack(m, k, n, 0b110))
    script = [w1, w2, w2, _write(4, W.Target.B, bt, trans=1), gemm, gemm,
              _frame(W.Op.READ, 8, W.READ_REQ.pack(m, n, 0, 0, m * n)), acc, acc,
              _frame(W.Op.READ, 9, W.READ_REQ.pack(m, n, 1, 0, m * n)), _frame(W.Op.COUNTERS, 10),
              _frame(W.Op.READ, 11, W.READ_REQ.pack(m, n, 0, 4, 5)), _frame(W.Op.HELLO, 12)]
    fr, _, _ = run_script(dut, script)
    # (the HELLO right after the windowed READ's answer must not find the decoder still draining C)
    assert [f.seq for f in fr] == [2, 3, 3, 4, 6, 6, 8, 7, 7, 9, 10, 11, 12]
    assert all(f.status == W.Status.OK for f in fr)
    assert fr[4].payload == fr[5].payload                   # the retry got the stored answer (cycles)
    assert torch.equal(_c(fr[6], m, n), ref)
    assert torch.equal(_c(fr[9], n, m), (2 * ref).t())      # accumulated once, read transposed
    assert W.unpack_counters(fr[10].payload)["duplicates"] == 3
    window = torch.tensor(struct.unpack("<5i", fr[11].payload[1:]))
    assert torch.equal(window, (2 * ref).reshape(-1)[4:9])  # a window of the row-major C stream


@pytest.mark.parametrize("fmt", ["log4", "shift"])
def test_b_formats_and_out_of_format_operand(small, fmt):
    dut = small()
    g = torch.Generator().manual_seed(6)
    m, k, n = 2, 9, 3
    a = torch.randint(-8, 8, (m, k), generator=g)
    if fmt == "log4":
        b = torch.sign(torch.randint(-1, 2, (k, n), generator=g)) * (1 << torch.randint(0, 7, (k, n), generator=g))
    else:
        b = torch.randint(-7, 8, (k, n), generator=g) << torch.randint(0, 4, (k, n), generator=g)
    bad = bytes([0x78])              # m = -8 with s = 7: outside every format
    script = [_write(1, W.Target.A, a), _write(2, W.Target.B, b, fmt), _frame(W.Op.GEMM, 3, W.GEMM_REQ.pack(m, k, n, 0)),
              _frame(W.Op.READ, 4, W.READ_REQ.pack(m, n, 0, 0, m * n)),
              _frame(W.Op.WRITE, 5, W.WRITE_HDR.pack(1, 0, 1, 1, 0, 1) + bad)]
    fr, _, _ = run_script(dut, script)
    assert torch.equal(_c(fr[3], m, n), int_gemm(a, b).to(torch.int64))
    assert fr[4].status == W.Status.OUT_OF_RANGE


def test_error_frames(small):
    """Bad CRC, length above the buffer, length inconsistent with the fields, out-of-range GEMM/READ/
    WRITE, GEMM during an incomplete load, an out-of-order chunk -- each answered with its code and
    the sequence number; the device keeps working."""
    dut = small()
    good = _frame(W.Op.HELLO, 9)
    bad_crc = bytearray(_frame(W.Op.COUNTERS, 1))
    bad_crc[-1] ^= 0x01
    hdr = bytes((W.Op.WRITE, 2)) + struct.pack("<H", 1000)
    too_long = bytes(W.SYNC) + hdr + bytes((W.crc8(hdr),))
    a = torch.ones(4, 4, dtype=torch.int64)
    script = [bytes(bad_crc), too_long, _frame(W.Op.GEMM, 3, b"\x01\x00"),
              _frame(W.Op.GEMM, 4, W.GEMM_REQ.pack(2, 17, 2, 0)),          # k > k_max
              _frame(W.Op.READ, 5, W.READ_REQ.pack(2, 3, 0, 4, 3)),             # beyond C
              _write(6, W.Target.A, torch.ones(40, 40, dtype=torch.int64), count=8),   # A too big: padded
              _write(7, W.Target.A, a, count=6),                             # partial load ...
              _frame(W.Op.GEMM, 8, W.GEMM_REQ.pack(4, 4, 4, 0)),            # ... so GEMM is refused
              _write(10, W.Target.A, a, offset=8, count=8),                  # offset 8 != 6
              _frame(W.Op.QUANT, 11, W.QUANT_HDR.pack(5, 0, 1, 1, 0) + b"\0\0"),
              good]
    fr, _, _ = run_script(dut, script)
    got = [(f.seq, f.status) for f in fr]
    S = W.Status
    assert got == [(1, S.BAD_CRC), (2, S.BAD_LENGTH), (3, S.BAD_LENGTH), (4, S.OUT_OF_RANGE),
                   (5, S.OUT_OF_RANGE), (6, S.OUT_OF_RANGE), (7, S.OK), (8, S.BAD_STATE), (10, S.BAD_STATE),
                   (11, S.UNSUPPORTED), (9, S.OK)]


def test_truncated_frame_times_out_then_next_frame_works(small):
    dut = small()
    full = _frame(W.Op.GEMM, 4, W.GEMM_REQ.pack(1, 1, 1, 0))
    fr, _, _ = run_script(dut, [full[:9], ("wait", 400), _frame(W.Op.HELLO, 5)], expect=[0, 0, 1])
    assert [(f.seq, f.status) for f in fr] == [(4, W.Status.TIMEOUT), (5, W.Status.OK)]


def test_garbage_then_hello(small):
    """Random bytes (with sync bytes sprinkled in) never hang the receiver: after at most one timeout,
    the next valid HELLO is answered."""
    dut = small()
    rng = random.Random(7)
    junk = bytearray(rng.randbytes(3000))
    for i in rng.sample(range(len(junk) - 1), 60):
        junk[i:i + 2] = bytes(W.SYNC)
    fr, _, _ = run_script(dut, [bytes(junk), ("wait", 400), _frame(W.Op.HELLO, 42)], expect=[0, 0, 1],
                          max_cycles=50_000)
    assert fr[-1].seq == 42 and fr[-1].op == 0x81 and fr[-1].status == W.Status.OK


@pytest.mark.parametrize("name", ["shiftquant", "luq"])
def test_quant_equals_golden(small, name):
    from host import quant
    dut = small(quant_units=True)
    info = dict(quant_units=3, quant_max=dut.quant_max, shift_scale=1)
    g = torch.Generator().manual_seed(8)
    x = (torch.randn(5, 8, generator=g) * 300).round() / 64
    payload, ctx = quant_request(name, x, info, seed=1234)
    fr, _, _ = run_script(dut, [_frame(W.Op.QUANT, 1, payload)])
    assert fr[0].status == W.Status.OK
    got = quant_result(fr[0].payload[1:], ctx)
    if name == "shiftquant":
        ref = quant.shiftquant(x, 4, axis="row", e_max=3, scale="float", seed=1234)
        assert torch.equal(got.exponents, ref.exponents.to(got.exponents.dtype))
        assert torch.equal(got.scale, ref.scale)
    else:
        ref = quant.luq(x, max_exp=6, alpha_mode="pow2", seed=1234)
        assert torch.equal(got.alpha, ref.alpha)
    assert torch.equal(got.codes.to(torch.int64), ref.codes.to(torch.int64))
    assert torch.equal(got.dequantize(), ref.dequantize())


def test_frame_during_execution_is_answered_busy(small):
    """A frame that arrives while the previous one executes is not applied but answered BUSY (the host
    driver then keeps waiting for the first answer)."""
    dut = small()
    both = _frame(W.Op.GEMM, 1, W.GEMM_REQ.pack(2, 16, 2, 0)) + _frame(W.Op.HELLO, 2)
    fr, _, _ = run_script(dut, [both], expect=[2])
    assert [(f.seq, f.status) for f in fr] == [(1, W.Status.OK), (2, W.Status.BUSY)]


def test_narrow_dimensions_are_out_of_range_not_truncated():
    """dim_bits=7 without quantizer units (the iCEBreaker's device): a dimension of 128 or more in
    WRITE/GEMM/READ is OUT_OF_RANGE -- never its low 7 bits, which here would name a valid size --
    QUANT is UNSUPPORTED, and the GEMM loaded before is untouched."""
    dut = Accelerator(2, 2, k_max=64, a_depth=64, b_depth=64, c_depth=32, uart=False, max_payload=128,
                      frame_timeout=300, quant_units=False, dim_bits=7, formats=("int4",))
    g = torch.Generator().manual_seed(9)
    m, k, n = 3, 5, 4
    a = torch.randint(-8, 8, (m, k), generator=g)
    b = torch.randint(-8, 8, (k, n), generator=g)
    read = _frame(W.Op.READ, 5, W.READ_REQ.pack(m, n, 0, 0, m * n))
    script = [_frame(W.Op.HELLO, 1), _write(2, W.Target.A, a), _write(3, W.Target.B, b),
              _frame(W.Op.GEMM, 4, W.GEMM_REQ.pack(m, k, n, 0)), read,
              _frame(W.Op.WRITE, 6, W.WRITE_HDR.pack(0, 0, 128 + m, k, 0, 2) + b"\0"),   # 131 -> 3
              _frame(W.Op.GEMM, 7, W.GEMM_REQ.pack(m, 128 + k, n, 0)),                 # k 133 -> 5
              _frame(W.Op.READ, 8, W.READ_REQ.pack(m, 256 + n, 0, 0, 1)),              # n 260 -> 4
              _frame(W.Op.QUANT, 9, W.QUANT_HDR.pack(1, 0, 1, 1, 0) + b"\0\0"), read]
    fr, _, _ = run_script(dut, script)
    S = W.Status
    assert [(f.seq, f.status) for f in fr] == [(1, S.OK), (2, S.OK), (3, S.OK), (4, S.OK), (5, S.OK),
                                                (6, S.OUT_OF_RANGE), (7, S.OUT_OF_RANGE),
                                                (8, S.OUT_OF_RANGE), (9, S.UNSUPPORTED), (5, S.OK)]
    h = W.unpack_hello(fr[0].payload)
    assert (h["dim_bits"], h["quant_units"], h["quant_max"], h["formats"], h["k_max"]) == (7, 0, 0, 1, 64)
    ref = int_gemm(a, b).to(torch.int64)
    assert torch.equal(_c(fr[4], m, n), ref) and torch.equal(_c(fr[9], m, n), ref)


def test_accelerator_parameters_are_validated():
    with pytest.raises(ValueError, match="rows must be 1..64, got 0"):
        Accelerator(0, 4)
    with pytest.raises(ValueError, match="too fast"):
        Accelerator(2, 2, clk_freq_hz=12_000_000, baud=4_000_000)
    with pytest.raises(ValueError, match="max_payload must be 64..65535"):
        Accelerator(2, 2, max_payload=16)
    with pytest.raises(ValueError, match="shift_scale"):
        Accelerator(2, 2, shift_scale="log")
    with pytest.raises(ValueError, match="unknown B format"):
        Accelerator(2, 2, formats=("int8",))
    with pytest.raises(ValueError, match="dim_bits must be 4..20"):
        Accelerator(2, 2, dim_bits=3)
    with pytest.raises(ValueError, match="k_max must be 1..127"):
        Accelerator(2, 2, k_max=256, dim_bits=7)


def test_hello_over_the_uart_pins():
    """uart=True: a HELLO sent as serial bits at the configured baud is answered on uart_tx."""
    from amaranth.sim import Simulator
    clk, baud = 1_000_000, 250_000                     # 4 cycles per bit
    dut = Accelerator(2, 2, k_max=16, a_depth=32, b_depth=32, c_depth=32, uart=True, clk_freq_hz=clk,
                      baud=baud, quant_units=False, max_payload=64)
    req = _frame(W.Op.HELLO, 3)
    bits = []
    for byte in req:
        bits += [0] + [(byte >> j) & 1 for j in range(8)] + [1]
    line = [1] * 10 + [b for b in bits for _ in range(4)] + [1] * 4000
    out = []

    async def tb(ctx):
        for level in line:
            ctx.set(dut.uart_rx, level)
            _, _, tx = await ctx.tick().sample(dut.uart_tx)
            out.append(tx)
    sim = Simulator(dut)
    sim.add_clock(1 / clk)
    sim.add_testbench(tb)
    sim.run()
    # decode the TX line: sample each bit in its middle
    got = bytearray()
    i = 0
    while i < len(out):
        if out[i] == 0:
            byte = sum(out[i + 2 + 4 * (j + 1)] << j for j in range(8))
            assert out[i + 2 + 4 * 9] == 1                 # stop bit
            got.append(byte)
            i += 40
        else:
            i += 1
    fr = W.decode(bytes(got))
    assert len(fr) == 1 and fr[0].seq == 3 and fr[0].status == W.Status.OK
    assert W.unpack_hello(fr[0].payload)["baud"] == baud
