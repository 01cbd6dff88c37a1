"""BoardBackend against the simulated board (the Accelerator RTL on Verilator behind a TCP port):
F/B/U GEMMs in every B format equal host.gemm.int_gemm bit for bit, QUANT equals the golden model,
faults injected by a real TCP proxy are recovered (or raised), bad requests get error frames."""

import socket
import time

import pytest
import serial
import torch

from board_fixtures import FaultyProxy, board_port, icebreaker_port  # noqa: F401  (fixtures)
from host import quant
from host.backends import BackendError, BoardBackend
from host.backends.torch_backend import b_values
from host.gemm import int_gemm, qgemm
from hw import wire


def _url(port):
    return f"socket://127.0.0.1:{port}"


def _b_operand(fmt, k, n, g):
    if fmt == "int":
        return torch.randint(-8, 8, (k, n), generator=g), None
    if fmt == "log":
        return torch.randint(-7, 8, (k, n), generator=g), None
    return torch.randint(-7, 8, (k, n), generator=g), torch.randint(0, 4, (k, 1), generator=g).expand(k, n)


@pytest.fixture(scope="module")
def backend(board_port):  # noqa: F811
    be = BoardBackend(_url(board_port), timeout_s=10)
    yield be
    be.close()


def test_hello(backend):
    info = backend.connect()
    assert (info["rows"], info["cols"], info["version"]) == (4, 4, wire.VERSION)
    assert set(info["formats_list"]) == {"int4", "log4", "shift"}
    assert info["k_max"] == 256 and info["max_payload"] == 4096 and info["quant_units"] == 3


@pytest.mark.parametrize("fmt", ["int", "log", "shift"])
def test_training_gemms_equal_int_gemm(backend, fmt):
    """F = X W^T, B: dX = G W, U: dW = G^T X -- the transposed operands are sent as stored and the
    engine reads them transposed (trans_a / trans_b)."""
    g = torch.Generator().manual_seed({"int": 1, "log": 2, "shift": 3}[fmt])
    batch, d_in, d_out = 13, 37, 11
    x = torch.randint(-8, 8, (batch, d_in), generator=g)
    w_codes, w_shift = _b_operand(fmt, d_out, d_in, g)
    gr = torch.randint(-8, 8, (batch, d_out), generator=g)
    cases = {
        "F": (x, w_codes.t(), None if w_shift is None else w_shift.t()),     # b is a transposed view
        "B": (gr, w_codes, w_shift),
        "U": (gr.t(), *_b_operand(fmt, batch, d_in, g)),                     # a is a transposed view
    }
    for name, (a, b, s) in cases.items():
        got = backend.gemm(a, b, b_format=fmt, b_shift=s, out_dtype=torch.int64)
        ref = int_gemm(a.contiguous(), b_values(b.contiguous(), fmt, None if s is None else s.contiguous()))
        assert torch.equal(got, ref.to(torch.int64)), (fmt, name)


def test_worst_case_and_wide_operands_through_qgemm(backend):
    """-8 * -8 accumulated over K > K_max (split on the host), UINT4 activations (two digit planes)."""
    k = 300
    a = torch.full((5, k), -8)
    b = torch.full((k, 6), -8)
    assert torch.equal(qgemm(a, b, backend=backend, out_dtype=torch.int64), torch.full((5, 6), 64 * k))
    g = torch.Generator().manual_seed(4)
    a = torch.randint(0, 16, (9, 40), generator=g)
    b = torch.randint(-8, 8, (40, 7), generator=g)
    assert torch.equal(qgemm(a, b, backend=backend, out_dtype=torch.int64), int_gemm(a, b).to(torch.int64))


@pytest.mark.parametrize("name", ["shiftquant", "luq"])
def test_quant_roundtrip_equals_golden(backend, name):
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(24, 40, generator=g) * 500).round() / 128
    got = backend.quantize(name, x, seed=99)
    if name == "shiftquant":
        ref = quant.shiftquant(x, 4, axis="row", e_max=3, scale="float", seed=99)
        assert torch.equal(got.exponents, ref.exponents.to(got.exponents.dtype))
        assert torch.equal(got.scale, ref.scale)
    else:
        ref = quant.luq(x, max_exp=6, alpha_mode="pow2", seed=99)
        assert torch.equal(got.alpha, ref.alpha)
    assert torch.equal(got.codes.to(torch.int64), ref.codes.to(torch.int64))
    assert torch.equal(got.dequantize(), ref.dequantize())


def _raw(port, frames, n_answers, timeout=20.0):
    """Send raw bytes, collect ``n_answers`` frames."""
    s = serial.serial_for_url(_url(port), timeout=0.05)
    try:
        s.write(b"".join(frames))
        dec = wire.FrameDecoder()
        got = []
        t0 = time.monotonic()
        while len(got) < n_answers and time.monotonic() - t0 < timeout:
            got += dec.feed(s.read(4096))
        return got
    finally:
        s.close()


def test_bad_input_gets_error_frames(board_port):  # noqa: F811
    hdr = bytes((wire.Op.WRITE, 2)) + (5000).to_bytes(2, "little")
    oversized = bytes(wire.SYNC) + hdr + bytes((wire.crc8(hdr),))
    got = []
    for f in (wire.encode_frame(0x42, 1), oversized,
              wire.encode_frame(wire.Op.GEMM, 3, wire.GEMM_REQ.pack(4, 257, 4, 0)),      # k > K_max
              wire.encode_frame(wire.Op.READ, 4, wire.READ_REQ.pack(200, 200, 0, 0, 20000)),  # > one frame
              wire.encode_frame(wire.Op.HELLO, 5)):
        got += _raw(board_port, [f], 1)
    S = wire.Status
    assert [(f.seq, f.status) for f in got] == [(1, S.UNKNOWN_OP), (2, S.BAD_LENGTH), (3, S.OUT_OF_RANGE),
                                                (4, S.OUT_OF_RANGE), (5, S.OK)]


def test_backend_raises_clear_errors(board_port):  # noqa: F811
    be = BoardBackend(_url(board_port), timeout_s=10)
    try:
        with pytest.raises(ValueError, match="elements exceed"):
            be.quantize("luq", torch.ones(5000))
    finally:
        be.close()
    # a dead URL: a clear BackendError, quickly
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="could not open the link"):
        BoardBackend(_url(dead)).gemm(torch.ones(2, 2), torch.ones(2, 2), b_format="int", b_shift=None,
                                      out_dtype=torch.int32)
    assert time.monotonic() - t0 < 5
    # a port that accepts but never answers: bounded retries, then a BackendError naming the cause
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(1)
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="HELLO failed after 2 attempts"):
            BoardBackend(_url(mute.getsockname()[1]), timeout_s=0.3, retries=2).connect()
        assert time.monotonic() - t0 < 5


def _fault_run(board_port, n_gemms, rate, seed):  # noqa: F811
    """Random small GEMMs through a proxy that damages ``rate`` of the bytes in both directions: every
    result that comes back is exact; a failure can only be a BackendError (and the next GEMM goes on).
    Frames are kept short (``max_frame``) so that most of them get through a 1 % byte error rate."""
    g = torch.Generator().manual_seed(seed)
    ok = failed = frames = 0
    with FaultyProxy(board_port, rate=rate, seed=seed) as proxy:
        be = BoardBackend(_url(proxy.port), timeout_s=0.4, retries=12, max_frame=48)
        for i in range(n_gemms):
            m, k, n = (int(v) for v in torch.randint(1, 12, (3,), generator=g))
            a = torch.randint(-8, 8, (m, k), generator=g)
            b = torch.randint(-8, 8, (k, n), generator=g)
            try:
                c = be.gemm(a, b, b_format="int", b_shift=None, out_dtype=torch.int64)
            except BackendError:
                failed += 1
                continue
            assert torch.equal(c, int_gemm(a, b).to(torch.int64)), f"wrong result in GEMM {i}"
            ok += 1
        frames = be.link_stats.get("requests", 0)
        retries = be.link_stats.get("retries", 0)
        be.close()
    return ok, failed, frames, retries, dict(proxy.counts)


def test_faulty_link_small(board_port):  # noqa: F811
    ok, failed, frames, retries, counts = _fault_run(board_port, 8, 0.01, seed=11)
    print(f"faulty link: {ok} ok, {failed} failed, {frames} frames, {retries} retries, {counts}")
    assert ok + failed == 8 and ok >= 6
    assert retries > 0 and sum(counts[k] for k in ("corrupt", "drop", "dup", "delay")) > 0


@pytest.mark.slow
def test_faulty_link_1000_frames(board_port):  # noqa: F811
    ok, failed, frames, retries, counts = _fault_run(board_port, 260, 0.01, seed=12)
    print(f"faulty link: {ok} ok, {failed} failed, {frames} frames, {retries} retries, {counts}")
    assert frames >= 1000
    assert ok + failed == 260 and ok >= 250, (ok, failed, counts)


def _fuzz(board_port, n_bytes, seed):  # noqa: F811
    """Random bytes (sync pairs sprinkled in) into the decoder, then HELLOs until one is answered: it
    must be the first HELLO sent after the receiver's timeout has had a chance to expire."""
    import random
    rng = random.Random(seed)
    junk = bytearray(rng.randbytes(n_bytes))
    for i in rng.sample(range(n_bytes - 1), n_bytes // 200):
        junk[i:i + 2] = bytes(wire.SYNC)
    s = serial.serial_for_url(_url(board_port), timeout=0.05)
    try:
        for off in range(0, n_bytes, 4096):
            s.write(bytes(junk[off:off + 4096]))
            s.read(65536)                   # drain the error answers to garbage that looked like frames
        time.sleep(1.0)                     # the receiver's frame timeout (20,000 cycles) passes
        s.reset_input_buffer()
        s.read(65536)
        s.write(wire.encode_frame(wire.Op.HELLO, 77))
        dec = wire.FrameDecoder()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 20:
            for f in dec.feed(s.read(4096)):
                if f.seq == 77:
                    return f
    finally:
        s.close()
    return None


def test_fuzz_then_hello_small(board_port):  # noqa: F811
    f = _fuzz(board_port, 20_000, seed=21)
    assert f is not None and f.op == wire.Op.HELLO | wire.RESPONSE and f.status == wire.Status.OK


@pytest.mark.slow
def test_fuzz_100k_then_hello(board_port):  # noqa: F811
    f = _fuzz(board_port, 100_000, seed=22)
    assert f is not None and f.op == wire.Op.HELLO | wire.RESPONSE and f.status == wire.Status.OK


# ---- the iCEBreaker's lean device: 2x2 INT4 only, no quantizer units, 7-bit dimensions, small buffers ----

@pytest.fixture(scope="module")
def lean(icebreaker_port):  # noqa: F811
    be = BoardBackend(_url(icebreaker_port), timeout_s=10)
    yield be
    be.close()


def test_lean_hello_reports_what_the_device_has(lean):
    from hw.build import make_accelerator
    from boards import get_board
    board = get_board("icebreaker")
    built = make_accelerator(board, board.rows, board.cols).hello
    info = lean.connect()
    assert {k: info[k] for k in built if k != "baud"} == {k: v for k, v in built.items() if k != "baud"}
    assert info["formats_list"] == ("int4",) and info["quant_units"] == 0 and info["quant_max"] == 0
    assert info["dim_bits"] == 7 and info["k_max"] == 64 and info["max_payload"] == 512


@pytest.mark.parametrize("fmt", ["int", "log", "shift"])
def test_lean_gemms_equal_int_gemm(lean, fmt):
    """Small training GEMMs, bit for bit; log4/shift B operands go as int4 digit planes (the device has
    only int4); K above k_max = 64 and M above the 32-word C buffer are split on the host."""
    g = torch.Generator().manual_seed({"int": 31, "log": 32, "shift": 33}[fmt])
    x = torch.randint(-8, 8, (5, 9), generator=g)
    w_codes, w_shift = _b_operand(fmt, 3, 9, g)
    got = lean.gemm(x, w_codes.t(), b_format=fmt, b_shift=None if w_shift is None else w_shift.t(),
                    out_dtype=torch.int64)
    ref = int_gemm(x, b_values(w_codes.t().contiguous(), fmt,
                               None if w_shift is None else w_shift.t().contiguous()))
    assert torch.equal(got, ref.to(torch.int64))
    if fmt == "int":
        a = torch.randint(-8, 8, (34, 70), generator=g)
        b = torch.randint(-8, 8, (70, 3), generator=g)
        assert torch.equal(lean.gemm(a, b, b_format="int", b_shift=None, out_dtype=torch.int64),
                           int_gemm(a, b).to(torch.int64))


def test_lean_quant_is_unsupported_and_the_host_falls_back(lean, icebreaker_port):  # noqa: F811
    g = torch.Generator().manual_seed(34)
    x = (torch.randn(6, 8, generator=g) * 500).round() / 128
    with pytest.raises(BackendError, match="without quantizer units"):
        lean.quantize("shiftquant", x, seed=7)
    got = lean.quantize("shiftquant", x, seed=7, fallback=True)
    ref = quant.shiftquant(x, 4, axis="row", e_max=3, scale="float", seed=7)
    assert torch.equal(got.codes, ref.codes) and torch.equal(got.dequantize(), ref.dequantize())
    got = lean.quantize("luq", x, seed=8, fallback=True)
    assert torch.equal(got.dequantize(), quant.luq(x, max_exp=6, alpha_mode="pow2", seed=8).dequantize())
    # on the wire: QUANT answers UNSUPPORTED, a dimension of 2**7 or more OUT_OF_RANGE, and the device
    # goes on answering
    S = wire.Status
    got = []
    for f in (wire.encode_frame(wire.Op.QUANT, 41, wire.QUANT_HDR.pack(0, 0, 1, 2, 0) + bytes(4)),
              wire.encode_frame(wire.Op.GEMM, 42, wire.GEMM_REQ.pack(2, 130, 2, 0)),
              wire.encode_frame(wire.Op.READ, 43, wire.READ_REQ.pack(129, 1, 0, 0, 1)),
              wire.encode_frame(wire.Op.HELLO, 44)):
        got += _raw(icebreaker_port, [f], 1)
    assert [(f.seq, f.status) for f in got] == [(41, S.UNSUPPORTED), (42, S.OUT_OF_RANGE),
                                                (43, S.OUT_OF_RANGE), (44, S.OK)]
