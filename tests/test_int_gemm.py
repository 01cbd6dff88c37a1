"""host.gemm.int_gemm: exact against an int64 reference for every shape, stride, range and plan."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from hw import numerics as nx
from host.gemm import gemm_plan, int_gemm


def ref(a, b):
    return a.long() @ b.long()


@settings(max_examples=60, deadline=None)
@given(m=st.integers(0, 40), k=st.integers(0, 300), n=st.integers(0, 40),
       lo=st.sampled_from([-8, -7, -128, -(2 ** 7), -(2 ** 12), 0]),
       dtype=st.sampled_from([torch.int8, torch.int16, torch.int32, torch.int64]),
       seed=st.integers(0, 2 ** 31))
def test_random_operands_equal_int64_reference(m, k, n, lo, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    hi = max(-lo, 1)
    info = torch.iinfo(dtype)
    lo, hi = max(lo, info.min), min(hi, info.max)
    a = torch.randint(lo, hi + 1, (m, k), generator=g).to(dtype)
    b = torch.randint(lo, hi + 1, (k, n), generator=g).to(dtype)
    c = int_gemm(a, b, out_dtype=torch.int64)
    assert c.dtype == torch.int64 and c.shape == (m, n)
    assert torch.equal(c, ref(a, b))


def test_log4_and_shift_operand_values():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(-7, 8, (33, 517), generator=g, dtype=torch.int8)
    log_b = (torch.randint(0, 2, (517, 19), generator=g) * 2 - 1) * 2 ** torch.randint(0, 8, (517, 19), generator=g)
    log_b[torch.rand(517, 19, generator=g) < 0.2] = 0
    assert torch.equal(int_gemm(a, log_b.to(torch.int16)).long(), ref(a, log_b))
    shift_b = torch.randint(-7, 8, (517, 19), generator=g) << torch.randint(0, 4, (517, 1), generator=g)
    assert torch.equal(int_gemm(a, shift_b.to(torch.int16)).long(), ref(a, shift_b))


@pytest.mark.parametrize("k_offset", [0, 1])
def test_all_minus_eight_at_and_past_the_float32_bound(k_offset):
    """K * 64 == 2**24 is the last single-pass K for INT4 x INT4; one more must still be exact."""
    k = nx.FLOAT32_EXACT_LIMIT // 64 + k_offset
    a = torch.full((2, k), -8, dtype=torch.int8)
    b = torch.full((k, 3), -8, dtype=torch.int8)
    dtype, k_chunk = gemm_plan(k, 8, 8)
    assert dtype == torch.float32
    assert (k_chunk >= k) == (k_offset == 0)        # at the bound: one pass; past it: split K
    c = int_gemm(a, b)
    assert torch.equal(c.long(), torch.full((2, 3), 64 * k, dtype=torch.int64))


def test_naive_float32_would_be_wrong_past_the_bound():
    """Sanity check of the premise: past 2**24 a plain float32 GEMM loses integers, int_gemm does not."""
    k = nx.FLOAT32_EXACT_LIMIT // 49 + 1000
    a = torch.full((1, k), 7, dtype=torch.int8)
    b = torch.full((k, 1), 7, dtype=torch.int8)
    b[::2] = -7
    b[1] = 7
    a[0, :: 3] = -7
    exact = ref(a, b)
    assert torch.equal(int_gemm(a, b).long(), exact)
    big = torch.full((1, k), 7, dtype=torch.int8), torch.full((k, 1), 7, dtype=torch.int8)
    assert torch.equal(int_gemm(*big).long(), ref(*big))
    naive = (big[0].float() @ big[1].float()).long()
    assert not torch.equal(naive, ref(*big))


def test_alternating_signs_worst_case():
    k = 4096
    a = torch.tensor([8, -8] * (k // 2), dtype=torch.int16).reshape(1, k).repeat(5, 1)
    b = torch.tensor([7, -7] * (k // 2), dtype=torch.int16).reshape(k, 1).repeat(1, 4)
    a[1] = -8
    assert torch.equal(int_gemm(a, b).long(), ref(a, b))


def test_k_one_empty_and_zero_shapes():
    a = torch.tensor([[3], [-8]], dtype=torch.int8)
    b = torch.tensor([[7, -7, 0]], dtype=torch.int8)
    assert torch.equal(int_gemm(a, b).long(), ref(a, b))
    assert int_gemm(torch.zeros(0, 5, dtype=torch.int8), torch.ones(5, 3, dtype=torch.int8)).shape == (0, 3)
    assert int_gemm(torch.ones(4, 5, dtype=torch.int8), torch.ones(5, 0, dtype=torch.int8)).shape == (4, 0)
    z = int_gemm(torch.ones(4, 0, dtype=torch.int8), torch.ones(0, 2, dtype=torch.int8))
    assert z.shape == (4, 2) and not z.any()
    assert not int_gemm(torch.zeros(3, 9, dtype=torch.int8), torch.zeros(9, 2, dtype=torch.int8)).any()


def test_non_contiguous_and_transposed_views():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-8, 8, (64, 96), generator=g, dtype=torch.int8)
    w = torch.randint(-8, 8, (48, 96), generator=g, dtype=torch.int8)
    assert torch.equal(int_gemm(x, w.t()).long(), ref(x, w.t()))          # F = X W^T
    gr = torch.randint(-8, 8, (64, 48), generator=g, dtype=torch.int8)
    assert torch.equal(int_gemm(gr.t(), x).long(), ref(gr.t(), x))        # U = G^T X
    assert torch.equal(int_gemm(x[::2, 1::3], w.t()[1::3, ::5]).long(), ref(x[::2, 1::3], w.t()[1::3, ::5]))


@pytest.mark.parametrize("k", [1041, 50176, 50177])
def test_long_reduction_small_output_batched_chunks_are_exact(k):
    """INT8 x INT8 weight gradient over a long K (batch x positions): the batched K-chunk path, worst case
    (-127 * -127 everywhere, so every chunk sum sits at the float32 bound) and random operands."""
    a = torch.full((9, k), -127, dtype=torch.int8)
    b = torch.full((k, 8), -127, dtype=torch.int8)
    assert torch.equal(int_gemm(a, b, out_dtype=torch.int64), torch.full((9, 8), 127 * 127 * k))
    g = torch.Generator().manual_seed(k)
    x = torch.randint(-127, 128, (k, 9), generator=g, dtype=torch.int8)
    gr = torch.randint(-127, 128, (k, 8), generator=g, dtype=torch.int8)
    assert torch.equal(int_gemm(x.t(), gr, out_dtype=torch.int64), ref(x.t(), gr))   # transposed A view


def test_wide_operands_use_an_exact_float64_plan():
    g = torch.Generator().manual_seed(4)
    a = torch.randint(-(2 ** 12), 2 ** 12, (16, 3000), generator=g, dtype=torch.int32)
    b = torch.randint(-(2 ** 12), 2 ** 12, (3000, 8), generator=g, dtype=torch.int32)
    assert gemm_plan(3000, 2 ** 12, 2 ** 12)[0] == torch.float64
    assert torch.equal(int_gemm(a, b, out_dtype=torch.int64), ref(a, b))


def test_reduced_precision_matmul_settings_are_not_trusted():
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert gemm_plan(256, 8, 8)[0] == torch.float64
        a = torch.randint(-8, 8, (20, 256), dtype=torch.int8)
        b = torch.randint(-8, 8, (256, 20), dtype=torch.int8)
        assert torch.equal(int_gemm(a, b).long(), ref(a, b))
    finally:
        torch.set_float32_matmul_precision(old)


@pytest.mark.parametrize("a,b,err", [
    (torch.ones(2, 3), torch.ones(3, 2, dtype=torch.int8), TypeError),
    (torch.ones(2, 3, dtype=torch.int8), [[1]], TypeError),
    (torch.ones(2, 3, 4, dtype=torch.int8), torch.ones(4, 2, dtype=torch.int8), ValueError),
    (torch.ones(2, 3, dtype=torch.int8), torch.ones(4, 2, dtype=torch.int8), ValueError),
])
def test_bad_input_is_a_clear_error(a, b, err):
    with pytest.raises(err, match="int_gemm"):
        int_gemm(a, b)


def test_int32_output_refuses_possible_overflow():
    a = torch.full((1, 70_000), 127, dtype=torch.int16)
    b = torch.full((70_000, 1), 255, dtype=torch.int16)
    with pytest.raises(OverflowError, match="int64"):
        int_gemm(a, b)
    assert int(int_gemm(a, b, out_dtype=torch.int64)) == 127 * 255 * 70_000
    with pytest.raises(ValueError, match="out_dtype"):
        int_gemm(a, b, out_dtype=torch.float32)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 30), n=st.integers(1, 12), m=st.integers(1, 12), per=st.sampled_from(["col", "row"]),
       seed=st.integers(0, 2 ** 16))
def test_qgemm_broadcast_shift_is_the_expanded_shift(k, n, m, per, seed):
    """A per-channel shift (ShiftQuant's operand, broadcast) gives qgemm's, b_values' and qconv2d_weight's
    results of the shift written out per element; its checks read each stored shift once
    (stored_values) and still reject a negative shift."""
    from host.backends.torch_backend import b_values, stored_values
    from host.gemm import qconv2d_weight, qgemm
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
    b = torch.randint(-7, 8, (k, m), generator=gen, dtype=torch.int8)
    shape = (1, m) if per == "col" else (k, 1)
    s = torch.randint(0, 6, shape, generator=gen, dtype=torch.int8)
    full = s.expand(b.shape).contiguous()
    sv = stored_values(s.expand(b.shape))
    assert tuple(sv.shape) == shape and torch.equal(sv, s)
    assert torch.equal(b_values(b, "shift", s.expand(b.shape)), b_values(b, "shift", full))
    assert torch.equal(b_values(b.t().contiguous().t(), "shift", s.expand(b.shape)), b_values(b, "shift", full))
    for float_out in (False, True):
        got = qgemm(a, b, b_format="shift", b_shift=s, float_out=float_out)
        want = qgemm(a, b, b_format="shift", b_shift=full, float_out=float_out)
        assert got.dtype == want.dtype and torch.equal(got, want)
    x = torch.randint(0, 16, (1, 2, 3, 3), generator=gen, dtype=torch.int8)
    g = torch.randint(-7, 8, (9, m), generator=gen, dtype=torch.int8)
    gs = torch.randint(0, 4, (1, m) if per == "col" else (9, 1), generator=gen, dtype=torch.int8)
    geom = ((3, 3), (1, 1), (1, 1), (1, 1))
    for float_out in (False, True):
        got = qconv2d_weight(x, g, (m, 2, 3, 3), geom, b_format="shift", b_shift=gs, float_out=float_out)
        want = qconv2d_weight(x, g, (m, 2, 3, 3), geom, b_format="shift", b_shift=gs.expand(g.shape).contiguous(),
                              float_out=float_out)
        assert got.dtype == want.dtype and torch.equal(got, want)
    neg = s.clone()
    neg.view(-1)[0] = -1
    with pytest.raises(ValueError, match="b_shift must be >= 0"):
        qgemm(a, b, b_format="shift", b_shift=neg)
