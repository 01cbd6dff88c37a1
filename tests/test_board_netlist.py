"""The ULX3S bitstream flow recodes the command decoder's FSM one-hot (hw.build.ONE_HOT_DECODER), a
yosys transformation that Amaranth's own Verilog never goes through. This simulates that netlist
(``sim.board --decoder-fsm one-hot``: yosys proc/flatten/fsm/opt output, on a real simulator) behind
the TCP port and checks it end to end as the RTL is checked: HELLO, F/B/U GEMMs in every B format
equal to host.gemm.int_gemm, QUANT equal to the golden models, error frames, and recovery from
garbage."""

import random
import re
import time

import pytest
import serial
import torch

from host import quant
from host.backends import BoardBackend
from host.backends.torch_backend import b_values
from host.gemm import int_gemm
from hw import wire
from sim.board import BoardConfig, start_board

CONFIG = BoardConfig(rows=2, cols=2, k_max=64, a_depth=64, b_depth=64, c_depth=64, max_payload=1024,
                     frame_timeout=2000, decoder_fsm="one-hot")


@pytest.fixture(scope="module")
def port():
    with start_board(CONFIG, simulator="verilator") as p:
        yield p


@pytest.fixture(scope="module")
def backend(port):
    be = BoardBackend(f"socket://127.0.0.1:{port}", timeout_s=20)
    yield be
    be.close()


def test_the_simulated_netlist_has_the_decoder_fsm_one_hot(port):
    from sim.runner import SIM_BUILD, gateware_digest
    log = (SIM_BUILD / f"{CONFIG.key}-{gateware_digest()}" / "top.yosys.log").read_text()
    recoded = re.findall(r"Recoding FSM `\S*dec_state\S*' from module `\S+' using `(\S+)' encoding", log)
    assert recoded == ["one-hot"]


def test_hello(backend):
    info = backend.connect()
    assert (info["rows"], info["cols"], info["k_max"], info["quant_units"]) == (2, 2, 64, 3)


@pytest.mark.parametrize("fmt", ["int", "log", "shift"])
def test_training_gemms_equal_int_gemm(backend, fmt):
    g = torch.Generator().manual_seed(len(fmt))
    batch, d_in, d_out = 5, 7, 3

    def operand(k, n):
        if fmt == "int":
            return torch.randint(-8, 8, (k, n), generator=g), None
        codes = torch.randint(-7, 8, (k, n), generator=g)
        if fmt == "log":
            return codes, None
        return codes, torch.randint(0, 4, (k, 1), generator=g).expand(k, n)

    x = torch.randint(-8, 8, (batch, d_in), generator=g)
    w, ws = operand(d_out, d_in)
    gr = torch.randint(-8, 8, (batch, d_out), generator=g)
    cases = {"F": (x, w.t(), None if ws is None else ws.t()), "B": (gr, w, ws), "U": (gr.t(), *operand(batch, d_in))}
    for name, (a, b, s) in cases.items():
        got = backend.gemm(a, b, b_format=fmt, b_shift=s, out_dtype=torch.int64)
        ref = int_gemm(a.contiguous(), b_values(b.contiguous(), fmt, None if s is None else s.contiguous()))
        assert torch.equal(got, ref.to(torch.int64)), (fmt, name)


def test_quant_equals_golden(backend):
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(6, 10, generator=g) * 500).round() / 128
    got = backend.quantize("shiftquant", x, seed=99)
    ref = quant.shiftquant(x, 4, axis="row", e_max=3, scale="float", seed=99)
    assert torch.equal(got.codes.to(torch.int64), ref.codes.to(torch.int64))
    assert torch.equal(got.dequantize(), ref.dequantize())
    got = backend.quantize("luq", x, seed=98)
    ref = quant.luq(x, max_exp=6, alpha_mode="pow2", seed=98)
    assert torch.equal(got.codes.to(torch.int64), ref.codes.to(torch.int64))
    assert torch.equal(got.dequantize(), ref.dequantize())


def test_error_frames_garbage_and_recovery(port):
    """Every answer path of the decoder's FSM that a host sees on errors, then garbage, then HELLO."""
    frame = bytearray(wire.encode_frame(wire.Op.HELLO, 2))
    frame[-1] ^= 0x5A                                           # a bad CRC-32 (the header is intact)
    sent = [wire.encode_frame(0x42, 1), bytes(frame),
            wire.encode_frame(wire.Op.GEMM, 3, wire.GEMM_REQ.pack(2, 65, 2, 0)),     # k > K_max
            wire.encode_frame(wire.Op.HELLO, 4)]
    rng = random.Random(9)
    junk = bytes(rng.randbytes(3000))
    s = serial.serial_for_url(f"socket://127.0.0.1:{port}", timeout=0.05)
    try:
        got = []
        dec = wire.FrameDecoder()
        for f in sent:
            s.write(f)
            t0 = time.monotonic()
            n = len(got)
            while len(got) == n and time.monotonic() - t0 < 30:
                got += dec.feed(s.read(4096))
        S = wire.Status
        assert [(f.seq, f.status) for f in got] == [(1, S.UNKNOWN_OP), (2, S.BAD_CRC), (3, S.OUT_OF_RANGE),
                                                    (4, S.OK)]
        s.write(junk)
        time.sleep(1.0)                   # the receiver's frame timeout passes
        s.reset_input_buffer()
        s.read(65536)
        s.write(wire.encode_frame(wire.Op.HELLO, 77))
        dec = wire.FrameDecoder()
        answer = None
        t0 = time.monotonic()
        while answer is None and time.monotonic() - t0 < 30:
            answer = next((f for f in dec.feed(s.read(4096)) if f.seq == 77), None)
        assert answer is not None and answer.status == S.OK
    finally:
        s.close()
