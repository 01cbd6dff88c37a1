"""host.gemm.qgemm and the backends: every backend returns the int64 reference's integers."""

import sys
import types

import pytest
import torch

from host.backends import (BackendError, BoardBackend, SimBackend, TorchBackend, current_backend, get_backend,
                           use_backend)
from host.backends.sim_backend import int4_digits
from host.backends.torch_backend import b_values
from host.gemm import qgemm, record_gemms

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def _operands(seed, m=9, k=37, n=5):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-8, 8, (m, k), generator=g, dtype=torch.int8)
    ints = torch.randint(-8, 8, (k, n), generator=g, dtype=torch.int8)
    logs = torch.randint(-7, 8, (k, n), generator=g, dtype=torch.int8)
    mant = torch.randint(-7, 8, (k, n), generator=g, dtype=torch.int8)
    shift = torch.randint(0, 4, (k, 1), generator=g, dtype=torch.int8).expand(k, n)
    return a, ints, logs, mant, shift


def _ref(a, b, fmt="int", shift=None):
    return a.long() @ b_values(b, fmt, shift).long()


def test_b_values_formats():
    c = torch.tensor([[0, 1, -1, 7, -7, 8]], dtype=torch.int8)
    assert b_values(c, "log", None).tolist() == [[0, 1, -1, 64, -64, 128]]
    s = torch.tensor([[0, 1, 2, 3, 0, 1]], dtype=torch.int8)
    assert b_values(c, "shift", s).tolist() == [[0, 2, -4, 56, -7, 16]]


@pytest.mark.parametrize("fmt", ["int", "log", "shift"])
def test_qgemm_cpu_equals_reference(fmt):
    a, ints, logs, mant, shift = _operands(0)
    b, sh = {"int": (ints, None), "log": (logs, None), "shift": (mant, shift)}[fmt]
    c = qgemm(a, b, b_format=fmt, b_shift=sh)
    assert c.dtype == torch.int32
    assert torch.equal(c.long(), _ref(a, b, fmt, sh))


def test_qgemm_picks_int64_when_int32_could_overflow():
    a = torch.full((2, 200000), 127, dtype=torch.int16)
    b = torch.full((200000, 2), 127, dtype=torch.int16)
    c = qgemm(a, b)
    assert c.dtype == torch.int64 and int(c[0, 0]) == 200000 * 127 * 127


def test_qgemm_rejects_bad_input():
    a, ints, *_ = _operands(1)
    with pytest.raises(TypeError, match="integer"):
        qgemm(a.float(), ints)
    with pytest.raises(ValueError, match="inner dimensions"):
        qgemm(a, ints[:-1])
    with pytest.raises(ValueError, match="valid: \\['int', 'log', 'shift'\\]"):
        qgemm(a, ints, b_format="fp4")
    with pytest.raises(ValueError, match="b_shift"):
        qgemm(a, ints, b_format="shift")


def test_record_gemms_and_use_backend():
    a, ints, *_ = _operands(2)
    with record_gemms() as log, use_backend("cpu") as be:
        assert current_backend() is be
        qgemm(a, ints, tag="t")
    assert len(log) == 1 and log[0].tag == "t" and log[0].backend == "torch:cpu"


def test_get_backend_names():
    assert isinstance(get_backend("cpu"), TorchBackend)
    assert isinstance(get_backend("sim:verilator"), SimBackend)
    assert isinstance(get_backend("board:socket://127.0.0.1:1"), BoardBackend)
    with pytest.raises(ValueError, match=r"valid names: \['cpu', 'cuda', 'sim', 'board'\]"):
        get_backend("tpu")
    with pytest.raises(ValueError, match="simulator"):
        SimBackend("modelsim")


def test_board_backend_interface_raises_backend_error():
    a, ints, *_ = _operands(3)
    with pytest.raises(BackendError, match="could not open the link"):
        qgemm(a, ints, backend="board:socket://127.0.0.1:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_backend_equals_cpu():
    a, ints, logs, mant, shift = _operands(4, 64, 3000, 48)
    for b, fmt, sh in ((ints, "int", None), (logs, "log", None), (mant, "shift", shift)):
        c = qgemm(a.cuda(), b.cuda(), b_format=fmt, b_shift=None if sh is None else sh.cuda(), backend="cuda")
        assert torch.equal(c.cpu(), qgemm(a, b, b_format=fmt, b_shift=sh))


def test_int4_digits():
    x = torch.arange(-300, 300)
    d = int4_digits(x)
    assert all(int(t.min()) >= -8 and int(t.max()) <= 7 for t in d)
    assert torch.equal(sum(t.long() * 16 ** i for i, t in enumerate(d)), x)


class _FakeArray:
    """Stands in for sim.run_gemm to test the splitting: checks every operand is inside the array's
    formats, then multiplies exactly."""

    def __init__(self):
        self.calls = []

    def __call__(self, a, b, *, b_format, rows, cols, simulator, **build):
        assert a.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)
        assert int(a.min()) >= -8 and int(a.max()) <= 7
        if b_format == "int4":
            assert int(b.min()) >= -8 and int(b.max()) <= 7
        elif b_format == "log4":
            mag = b.abs()
            assert bool(((mag == 0) | ((mag & (mag - 1)) == 0)).all()) and int(mag.max()) <= 64
        else:
            assert b_format == "shift"
            assert int(b.abs().max()) <= 7 * 8
        self.calls.append(b_format)
        return a.long() @ b.long(), 10


@pytest.mark.parametrize("case", ["uint4_a", "int8_both", "log_ref", "shift_emax5", "k_chunks"])
def test_sim_backend_splits_wide_operands_exactly(monkeypatch, case):
    fake = _FakeArray()
    monkeypatch.setitem(sys.modules, "sim", types.SimpleNamespace(run_gemm=fake))
    g = torch.Generator().manual_seed(5)
    k = 23
    a = torch.randint(0, 16, (6, k), generator=g, dtype=torch.int8)
    b, fmt, sh = torch.randint(-8, 8, (k, 4), generator=g, dtype=torch.int8), "int", None
    if case == "int8_both":
        a = torch.randint(-128, 128, (6, k), generator=g).to(torch.int16)
        b = torch.randint(-127, 128, (k, 4), generator=g).to(torch.int16)
    elif case == "log_ref":
        b, fmt = torch.randint(-8, 9, (k, 4), generator=g, dtype=torch.int8), "log"
    elif case == "shift_emax5":
        b, fmt = torch.randint(-7, 8, (k, 4), generator=g, dtype=torch.int8), "shift"
        sh = torch.randint(0, 6, (k, 1), generator=g, dtype=torch.int8).expand(k, 4)
    be = SimBackend(max_k=5 if case == "k_chunks" else None)
    c = qgemm(a, b, b_format=fmt, b_shift=sh, backend=be)
    assert torch.equal(c.long(), _ref(a, b, fmt, sh))
    assert be.calls == len(fake.calls) == (5 if case == "k_chunks" else 1)


@pytest.mark.parametrize("fmt", ["int", "log", "shift"])
def test_sim_backend_rtl_equals_cpu(fmt):
    a, ints, logs, mant, shift = _operands(7, 5, 9, 3)
    b, sh = {"int": (ints, None), "log": (logs, None), "shift": (mant, shift)}[fmt]
    c = qgemm(a, b, b_format=fmt, b_shift=sh, backend=SimBackend("icarus"))
    assert torch.equal(c, qgemm(a, b, b_format=fmt, b_shift=sh, backend="cpu"))


@pytest.mark.parametrize("geom", [((3, 3), (1, 1), (1, 1), (1, 1)), ((2, 3), (2, 1), (1, 0), (2, 1))])
@pytest.mark.parametrize("case", ["int4", "uint4_worst", "int8_wide"])
def test_qconv2d_equals_the_im2col_gemm(geom, case):
    """host.gemm.qconv2d / qconv2d_weight (exact float32 convolutions where the 2**24 bound allows) return
    the im2col GEMM's integers, record the im2col operands, and fall back to the GEMM past the bound."""
    from host.gemm import qconv2d, qconv2d_weight
    from host.nn.functional import im2col
    g = torch.Generator().manual_seed(7)
    n, c, h, w, m = 3, 4, 9, 8, 5
    if case == "uint4_worst":
        x = torch.full((n, c, h, w), 15, dtype=torch.int8)
        wt = torch.full((m, c) + geom[0], -7, dtype=torch.int8)
    elif case == "int8_wide":            # K * 127 * 127 past 2**24 for U: the GEMM path, same integers
        x = torch.randint(-127, 128, (n, c, h, w), generator=g, dtype=torch.int8)
        wt = torch.randint(-127, 128, (m, c) + geom[0], generator=g, dtype=torch.int8)
    else:
        x = torch.randint(-8, 8, (n, c, h, w), generator=g, dtype=torch.int8)
        wt = torch.randint(-7, 8, (m, c) + geom[0], generator=g, dtype=torch.int8)
    cols = im2col(x, *geom)
    with use_backend("cpu"), record_gemms() as log:
        f = qconv2d(x, wt, geom, tag="F")
        assert torch.equal(f.long(), _ref(cols, wt.reshape(m, -1).t())) and f.dtype == torch.int32
        rows = f.shape[0]
        grads = {"int": (torch.randint(-127, 128, (rows, m), generator=g, dtype=torch.int8), None),
                 "log": (torch.randint(-7, 8, (rows, m), generator=g, dtype=torch.int8), None),
                 "shift": (torch.randint(-7, 8, (rows, m), generator=g, dtype=torch.int8),
                           torch.randint(0, 4, (1, m), generator=g, dtype=torch.int8))}
        for fmt, (gc, sh) in grads.items():
            u = qconv2d_weight(x, gc, tuple(wt.shape), geom, b_format=fmt, b_shift=sh, tag=f"U.{fmt}")
            ref = _ref(cols.t(), gc, fmt, None if sh is None else sh.expand(gc.shape))
            assert torch.equal(u.long(), ref) and u.is_contiguous()
    assert [r.tag for r in log] == ["F", "U.int", "U.log", "U.shift"]
    assert torch.equal(log[0].a, cols) and torch.equal(log[1].a, cols.t())
    for r in log:
        assert torch.equal(r.out.long(), r.a.long() @ b_values(r.b, r.b_format, r.b_shift).long())
    with use_backend("sim"):                  # not a CPU TorchBackend: always the im2col GEMM (no sim run here)
        from host.gemm import _exact_conv_backend
        assert not _exact_conv_backend(current_backend())
    assert _exact_conv_backend(TorchBackend("cpu"))
    prec = torch.get_float32_matmul_precision()
    try:                                      # a reduced-precision float32 setting is never trusted
        torch.set_float32_matmul_precision("high")
        assert not _exact_conv_backend(TorchBackend("cpu"))
    finally:
        torch.set_float32_matmul_precision(prec)
