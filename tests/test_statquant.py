"""StatQuant gradient quantizers (host/quant/statquant.py) against ALGORITHMS.md §2, properties §2(f)1–6."""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings, strategies as st

from hw import numerics as nx
from host.quant import statquant as sq
from host.quant.core import stochastic_round
from host.quant.statquant import bhq, block_householder, householder_matrix, psq, ptq, ptq_params

F64 = torch.float64
QUANTIZERS = {
    "ptq": ptq,
    "psq": psq,
    "psq_col": lambda x, bits, **kw: psq(x, bits, axis="col", **kw),
    "bhq": bhq,
}
NAMES = {"ptq": "ptq", "psq": "psq", "psq_col": "psq", "bhq": "bhq"}
fast = settings(max_examples=30, deadline=None)


def heavy_rows(n, d, *, seed=0, sigma=2.0, dtype=F64):
    """Rows with heavy-tailed magnitudes, ``scale_i = exp(N(0, sigma²))`` (the §2(f)2 setting)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(sigma * torch.randn(n, 1, generator=g, dtype=F64))
    return (torch.randn(n, d, generator=g, dtype=F64) * scale).to(dtype)


# --------------------------------------------------------------------------- analytic SR variance

def _sr_var(y, res):
    """Per-element SR variance ``(v − ⌊v⌋)(⌈v⌉ − v)·step²`` of the affine stage of ``res`` on ``y``."""
    v = (y - res.offset) / res.step
    f = v - torch.floor(v)
    return f * (1 - f) * res.step ** 2


def analytic_var(name, g, res):
    """``Var[Q(G)]`` per element. For BHQ, ``Var = (T⁻¹)^∘2 · Var(Ŷ)`` (the Ŷ entries are independent)."""
    if name != "bhq" or res.transform is None:
        return _sr_var(g, res)
    t = res.transform
    g2 = g.reshape(g.shape[0], -1)
    var_y = _sr_var(t.apply(g2).reshape(g.shape), res).reshape(g2.shape)
    return (t.dense_inverse() ** 2 @ var_y).reshape(g.shape)


def zscores(name, g, samples, bits=4):
    """z-score of the sample mean of ``samples`` dequantizations against G, per element."""
    f = QUANTIZERS[name]
    total = torch.zeros_like(g)
    for s in range(samples):
        total += f(g, bits, seed=s).dequantize()
    var = analytic_var(name, g, f(g, bits, seed=0))
    # Elements on the grid have zero variance and must be reproduced to rounding error.
    var = var.clamp_min((1e-9 * g.abs().max()) ** 2)
    return (total / samples - g) / torch.sqrt(var / samples)


# ------------------------------------------------------------------------ §2(f)1: unbiasedness

@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_unbiased_zscore(name):
    g = heavy_rows(8, 6, seed=1)
    g[0, 0] = 0.0
    z = zscores(name, g, samples=1200)
    k = z.numel()
    # Per element |z| and the aggregate chi-square: sum z² ~ χ²(k), mean k, sd sqrt(2k).
    assert float(z.abs().max()) < 5.5, z
    assert float((z ** 2).sum()) < k + 5 * math.sqrt(2 * k)


def test_zscore_detects_a_biased_quantizer():
    """The z-test above must reject a quantizer that is biased by a fraction of a step."""
    g = heavy_rows(8, 6, seed=1)

    def rdn_psq(x, bits, seed):      # round to nearest: deterministic, biased
        r = psq(x, bits, seed=seed)
        v = (x - r.offset) / r.step
        return torch.round(v) * r.step + r.offset

    total = sum(rdn_psq(g, 4, s) for s in range(200)) / 200
    res = psq(g, 4, seed=0)
    z = (total - g) / torch.sqrt(_sr_var(g, res).clamp_min(1e-30) / 200)
    assert float(z.abs().max()) > 10


def test_bhq_is_unbiased_only_through_the_inverse_transform():
    """Dropping T⁻¹ (returning Ŷ) is grossly biased: the test sees the transform."""
    g = heavy_rows(8, 6, seed=1)
    r = bhq(g, 4, seed=0)
    assert r.transform is not None
    assert not torch.allclose(r.dequantize_transformed(), g, atol=1e-3 * float(g.abs().max()))


# -------------------------------------------------------------------- §2(f)2: variance ordering

def expected_sq_error(name, g, bits):
    res = QUANTIZERS[name](g, bits, seed=0)
    return float(analytic_var(name, g, res).sum())


@pytest.mark.parametrize("bits", [4, 5, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_variance_ordering_heavy_tailed_rows(bits, seed):
    g = heavy_rows(48, 64, seed=seed)
    e_ptq, e_psq, e_bhq = (expected_sq_error(n, g, bits) for n in ("ptq", "psq", "bhq"))
    assert e_ptq > 2 * e_psq > 4 * e_bhq, (e_ptq, e_psq, e_bhq)


def test_measured_squared_error_matches_analytic_and_ordering():
    """Monte-Carlo summed squared error (§2(f)2's measurement) agrees with the analytic variance."""
    g = heavy_rows(48, 64, seed=3)
    mc = {}
    for name in ("ptq", "psq", "bhq"):
        f = QUANTIZERS[name]
        mc[name] = sum(float(((f(g, 4, seed=s).dequantize() - g) ** 2).sum()) for s in range(24)) / 24
        assert mc[name] == pytest.approx(expected_sq_error(name, g, 4), rel=0.15)
    assert mc["ptq"] > mc["psq"] > mc["bhq"]


# ------------------------------------------------------------------ §2(f)3: structure of T

def reference_transform(g2):
    """Steps 1–6 of §2(a) written out with loops like the reference C++ (steps 3–4 in exact rationals,
    as the golden model specifies); returns ``k``, the groups and the dense T."""
    n_rows = g2.shape[0]
    lam = [float(r.max()) - float(r.min()) + 1e-8 for r in g2]
    order = sorted(range(n_rows), key=lambda i: -lam[i])          # stable: ties by row index
    ls = [Fraction(lam[i]) for i in order]
    k = 1
    while not (k * ls[n_rows - k - 1] / sum(ls[:n_rows - k]) > 1):
        k += 1
    big = n_rows - k
    total = sum(ls[:big])
    cuts, acc = [], Fraction(0)
    for i in range(big):
        acc += k * ls[i]
        cuts.append(math.floor(acc / total + Fraction(1, 2)))
    assert cuts[-1] == k
    T = [[0.0] * n_rows for _ in range(n_rows)]
    groups, prev = [], 0
    for i in range(big):
        rows = [order[i]] + [order[big + j] for j in range(prev, cuts[i])]
        n = len(rows)
        H = householder_matrix(n)
        h = float(H.abs().max())
        H = H.tolist()
        w1 = lam[order[i]] / math.sqrt(n)
        w2 = lam[order[big + prev]] * h
        s1, s2 = w1 ** (-1 / 3), (w2 / (n - 1)) ** (-1 / 3)
        kappa = math.sqrt(s1 ** -2 + s2 ** -2)
        s = [kappa * s1] + [kappa * s2] * (n - 1)
        for a, ra in enumerate(rows):
            for b, rb in enumerate(rows):
                T[ra][rb] = H[a][b] * s[b]
        groups.append(rows)
        prev = cuts[i]
    return k, groups, torch.tensor(T, dtype=F64)


shapes_2d = st.tuples(st.integers(3, 32), st.integers(1, 8))


@fast
@given(shape=shapes_2d, seed=st.integers(0, 2 ** 16), sigma=st.sampled_from([0.0, 0.5, 2.0, 4.0]))
def test_transform_matches_reference_and_is_invertible(shape, seed, sigma):
    g = heavy_rows(*shape, seed=seed, sigma=sigma)
    t = block_householder(g)
    assert t is not None
    k, groups, T_ref = reference_transform(g)
    assert t.k == k and t.num_groups == shape[0] - k
    assert [t.members(i) for i in range(t.num_groups)] == groups
    T = t.dense()
    torch.testing.assert_close(T, T_ref, rtol=1e-12, atol=1e-12)
    eye = torch.eye(shape[0], dtype=F64)
    torch.testing.assert_close(T @ t.dense_inverse(), eye, rtol=0, atol=1e-10)
    # The O(N·D) path equals the dense matmul, and inverse() undoes apply().
    torch.testing.assert_close(t.apply(g), T @ g, rtol=1e-10, atol=1e-12 * float(g.abs().max() + 1))
    torch.testing.assert_close(t.inverse(t.apply(g)), g, rtol=1e-9, atol=1e-12 * float(g.abs().max() + 1))


@fast
@given(shape=shapes_2d, seed=st.integers(0, 2 ** 16), sigma=st.sampled_from([0.0, 1.0, 3.0]))
def test_group_structure(shape, seed, sigma):
    n_rows = shape[0]
    g = heavy_rows(*shape, seed=seed, sigma=sigma)
    t = block_householder(g)
    L = t.num_groups
    # Every row appears exactly once; sizes sum to N; each block has one large and >= 1 small row.
    assert sorted(t.grouped_order.tolist()) == list(range(n_rows))
    assert int(t.sizes.sum()) == n_rows and bool((t.sizes >= 2).all())
    assert int(t.cuts[-1]) == t.k == n_rows - L
    members = [t.members(i) for i in range(L)]
    leaders = set(t.leader.tolist())
    for i, rows in enumerate(members):
        assert rows[0] == int(t.leader[i]) and not leaders & set(rows[1:])
        assert all(int(t.group[r]) == i for r in rows)
    # Large rows are the L widest; the widest small rows go to the widest large rows.
    lam = t.ranges
    assert float(lam[t.leader].min()) >= float(lam[t.order[L:]].max())
    small_ranges = [lam[rows[1:]].tolist() for rows in members]
    for a, b in zip(small_ranges, small_ranges[1:]):
        assert min(a) >= max(b)
    # Step 3: k is the smallest k with k·λ_(L−1)/Σ_{i<L} λ_(i) > 1.
    ls = [Fraction(v) for v in lam[t.order].tolist()]
    ratio = [kk * ls[n_rows - kk - 1] / sum(ls[:n_rows - kk]) for kk in range(1, t.k + 1)]
    assert ratio[-1] > 1 and all(r <= 1 for r in ratio[:-1])
    # s1⁻² + s2⁻² = 1 in every group; the diagonal of diag(s) uses s1 for the large row, s2 otherwise.
    torch.testing.assert_close(t.s1 ** -2 + t.s2 ** -2, torch.ones(L, dtype=F64), rtol=1e-12, atol=0)
    torch.testing.assert_close(t.scale[t.leader], t.s1)
    for i, rows in enumerate(members):
        assert torch.all(t.scale[rows[1:]] == t.s2[i])


@pytest.mark.parametrize("n", range(2, 13))
def test_householder_block(n):
    H = householder_matrix(n)
    eye = torch.eye(n, dtype=F64)
    torch.testing.assert_close(H, H.T, rtol=0, atol=0)
    torch.testing.assert_close(H @ H.T, eye, rtol=0, atol=1e-14)
    torch.testing.assert_close(H[:, 0], torch.full((n,), 1 / math.sqrt(n), dtype=F64), rtol=0, atol=1e-15)
    # h_n of the vectorized construction = max|H_n| of the dense matrix.
    v1, v2 = sq.householder_vector(n)
    h = sq._householder_max_abs(torch.tensor([n]), torch.tensor([v1], dtype=F64),
                                torch.tensor([v2], dtype=F64))
    assert float(h) == pytest.approx(float(H.abs().max()), abs=1e-15)


def test_householder_n5_value_and_bad_n():
    assert float(householder_matrix(5)[0, 0]) == pytest.approx(0.4472, abs=1e-4)   # [MEASURED] in §2(f)3
    for bad in (0, 1, 2.0, True):
        with pytest.raises(ValueError, match="bhq"):
            householder_matrix(bad)


def test_transform_on_equal_rows_pairs_rows():
    """Equal ranges: k·λ/(L·λ) > 1 first holds at k = ⌊N/2⌋ + 1, so groups are pairs and a triple."""
    g = torch.randn(9, 4, dtype=F64)
    g = g - g.amin(1, keepdim=True)
    g = g / g.amax(1, keepdim=True)           # every row has range exactly 1
    t = block_householder(g)
    assert t.k == 5 and sorted(t.sizes.tolist()) == [2, 2, 2, 3]


def test_large_transform_fast_path_matches_dense_float32():
    g = heavy_rows(300, 24, seed=5, dtype=torch.float32)
    t = block_householder(g)
    T = t.dense()
    ref = (T @ g.double()).float()
    torch.testing.assert_close(t.apply(g), ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    torch.testing.assert_close(t.inverse(t.apply(g)), g, rtol=1e-4, atol=1e-5 * float(g.abs().max()))


# ---------------------------------------------------------------------------- §2(f)4: PTQ zero

@fast
@given(bits=st.integers(2, 16), seed=st.integers(0, 2 ** 16), shift=st.floats(-0.9, 0.9),
       scale=st.floats(1e-6, 1e6), dtype=st.sampled_from([torch.float32, F64]))
def test_ptq_zero_is_exact_and_nothing_clips(bits, seed, shift, scale, dtype):
    g = (heavy_rows(6, 7, seed=seed, sigma=0.5) + shift) * scale
    g[1, 2] = 0.0
    g = g.to(dtype)
    p = ptq_params(g, bits)
    B = 2 ** bits - 1
    if p.aligned:
        assert p.z == math.floor(-p.m * p.s) and 1 <= p.z <= B
        assert p.s_prime <= p.s and p.M_prime >= p.M * (1 - 1e-12)
        assert p.s_prime == pytest.approx(B / (p.M_prime - p.m), rel=1e-12)
        assert -p.m * p.s_prime == pytest.approx(p.z, rel=1e-12)
    # No clipping: (max(G) − m)·s' ≤ B.
    assert (float(g.max()) - p.m) * p.s_prime <= B * (1 + 1e-12)
    r = ptq(g, bits, seed=seed)
    out = r.dequantize()
    assert out.dtype == dtype
    if p.aligned:
        assert int(r.codes[1, 2]) == p.z
        assert float(out[1, 2]) == 0.0                      # exactly zero, not ~1e-9
        assert float(r.offset) == -float(p.z * r.step)
    assert float((out - g).abs().max()) <= float(r.step) * (1 + 1e-5)


def test_ptq_zero_code_on_standard_normal():
    g = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    g[0, 0] = 0.0
    r = ptq(g, 4, seed=0)
    p = ptq_params(g, 4)
    assert p.aligned and 0 < p.z < 15 and int(r.codes[0, 0]) == p.z
    assert float(r.dequantize()[0, 0]) == 0.0


@pytest.mark.parametrize("bits", [12, 14, 16])
def test_ptq_every_zero_gets_code_z_at_high_bits_float32(bits):
    """Zero must map to z exactly, not to z ± a few ulp (at 16 bits one float32 ulp of z·(1/z) times z
    exceeds the 2^-17 resolution of the draws, so x = 0 would sometimes round to z − 1)."""
    for i, lo in enumerate(torch.linspace(-0.95, -0.05, 13).tolist()):
        g = torch.rand(64, 64, generator=torch.Generator().manual_seed(i)) * (1 - lo) + lo
        g[::2] = 0.0
        p = ptq_params(g, bits)
        r = ptq(g, bits, seed=i)
        assert p.aligned and torch.all(r.codes[::2] == p.z)
        assert torch.all(r.dequantize()[::2] == 0.0)


@pytest.mark.parametrize("g", [
    torch.tensor([[0.5, 1.0], [2.0, 3.0]], dtype=F64),            # all positive: m = 0
    torch.tensor([[-1e-7, 1.0], [2.0, 3.0]], dtype=F64),          # z = floor(−m·s) = 0 with m < 0
    torch.tensor([[-3.0, -1.0], [-2.0, -0.5]], dtype=F64),        # all negative: z = B
])
def test_ptq_edge_cases_of_z(g):
    p = ptq_params(g, 4)
    r = ptq(g, 4, seed=3)
    assert torch.isfinite(r.step) and torch.isfinite(r.offset)
    if g.min() >= 0:
        assert p.m == 0.0 and not p.aligned and p.s_prime == p.s and p.M_prime == p.M
    elif p.z == 0:
        assert not p.aligned and p.s_prime == p.s                 # [PROPOSED] fallback s' = s
    else:
        assert p.z == 15
    z = zscores("ptq", g, samples=500)
    assert float(z.abs().max()) < 5.5


# --------------------------------------------------------------------------- §2(f)5: code grids

tensor_shapes = st.one_of(
    st.tuples(st.integers(1, 30)),
    st.tuples(st.integers(1, 12), st.integers(1, 12)),
    st.tuples(st.integers(1, 5), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
)


@fast
@given(shape=tensor_shapes, bits=st.integers(2, 16), seed=st.integers(0, 2 ** 32 - 1),
       log_scale=st.floats(-20, 20), name=st.sampled_from(list(QUANTIZERS)),
       dtype=st.sampled_from([torch.float32, F64]))
def test_codes_on_grid_and_error_within_a_step(shape, bits, seed, log_scale, name, dtype):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(seed % 1000), dtype=F64)
         * 10.0 ** log_scale).to(dtype)
    r = QUANTIZERS[name](x, bits, seed=seed)
    B = 2 ** bits - 1
    assert r.codes.shape == x.shape and not r.codes.dtype.is_floating_point
    assert int(r.codes.min()) >= 0 and int(r.codes.max()) <= B
    assert r.grid == nx.IntGrid(bits, signed=False)
    assert r.seed == seed and r.rand_bits == 16 and r.method == name
    assert torch.isfinite(r.step).all() and torch.isfinite(r.offset).all()
    # Scale data broadcasts against the codes with one entry per tensor / row / column.
    n_scales = {"ptq": 1, "psq": shape[0] if len(shape) > 1 else 1,
                "psq_col": math.prod(shape[1:]) if len(shape) > 1 else shape[0],
                "bhq": shape[0] if len(shape) > 1 else 1}[name]
    assert r.step.numel() == n_scales and torch.broadcast_shapes(r.step.shape, x.shape) == x.shape
    out = r.dequantize()
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
    # SR picks one of the two neighbouring grid points: |Ŷ − Y| < step (Y = T·x for BHQ).
    y = x
    if name == "bhq" and r.transform is not None:
        y = r.transform.apply(x.reshape(x.shape[0], -1)).reshape(x.shape)
        out_y = r.dequantize_transformed()
    else:
        out_y = out
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert bool(((out_y - y).abs() <= r.step * (1 + tol) + tol * y.abs()).all())


# ----------------------------------------------------------------- random stream and rounding

@pytest.mark.parametrize("rand_bits", nx.RAND_BITS_ALLOWED)
@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_element_i_uses_draw_i_of_the_contract_stream(name, rand_bits):
    """Codes equal SR with the scalar contract (hw.numerics) draw i for element i, row-major."""
    x = heavy_rows(5, 6, seed=2).reshape(5, 2, 3)
    seed = 12345
    r = QUANTIZERS[name](x, 5, seed=seed, rand_bits=rand_bits)
    y = x
    if name == "bhq":
        y = r.transform.apply(x.reshape(5, -1)).reshape(x.shape)
    v = ((y - r.offset) / r.step).flatten().tolist()
    draws = nx.rng_draws(seed, len(v), rand_bits)
    want = [min(max(nx.stochastic_round(vi, nx.draw_to_uniform(d, rand_bits)), 0), 31)
            for vi, d in zip(v, draws)]
    assert r.codes.flatten().tolist() == want
    assert r.rand_bits == rand_bits


# ---------------------------------------------------------------------- §2(f)6: bifurcation

@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_bifurcation_two_seeds_two_independent_samples(name):
    g = heavy_rows(16, 32, seed=4)
    f = QUANTIZERS[name]
    a, b, a2 = f(g, 4, seed=1), f(g, 4, seed=2), f(g, 4, seed=1)
    assert torch.equal(a.codes, a2.codes)                     # same seed: bit-identical
    assert not torch.equal(a.codes, b.codes)                  # B and U copies: different samples
    # ... and independent ones: their rounding errors are uncorrelated.
    ea, eb = (a.dequantize() - g).flatten(), (b.dequantize() - g).flatten()
    rho = float(torch.corrcoef(torch.stack([ea, eb]))[0, 1])
    assert abs(rho) < 4 / math.sqrt(ea.numel())


@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_generator_and_default_stream_reproducibility(name):
    g = heavy_rows(6, 10, seed=4)
    f = QUANTIZERS[name]
    r1 = f(g, 4, generator=torch.Generator().manual_seed(7))
    r2 = f(g, 4, generator=torch.Generator().manual_seed(7))
    assert r1.seed == r2.seed and torch.equal(r1.codes, r2.codes)
    assert torch.equal(f(g, 4, seed=r1.seed).codes, r1.codes)      # the recorded seed replays it
    gen = torch.Generator().manual_seed(7)
    c1, c2 = f(g, 4, generator=gen), f(g, 4, generator=gen)
    assert c1.seed != c2.seed and not torch.equal(c1.codes, c2.codes)
    torch.manual_seed(11)
    d1 = f(g, 4)
    torch.manual_seed(11)
    d2 = f(g, 4)
    assert d1.seed == d2.seed and torch.equal(d1.codes, d2.codes)


# ---------------------------------------------------------------- layout, fallback, dtypes

def test_rows_are_dim0_and_the_rest_is_flattened():
    g = heavy_rows(6, 24, seed=6).reshape(6, 2, 3, 4)
    flat = g.reshape(6, 24)
    for name in ("psq", "psq_col", "bhq"):
        r4, r2 = QUANTIZERS[name](g, 4, seed=9), QUANTIZERS[name](flat, 4, seed=9)
        assert torch.equal(r4.codes.reshape(6, 24), r2.codes)
        torch.testing.assert_close(r4.dequantize().reshape(6, 24), r2.dequantize(), rtol=0, atol=0)
    assert psq(g, 4, seed=1).step.shape == (6, 1, 1, 1)
    assert psq(g, 4, axis="col", seed=1).step.shape == (1, 2, 3, 4)
    assert bhq(g, 4, seed=1).step.shape == (6, 1, 1, 1)
    assert ptq(g, 4, seed=1).step.shape == ()


def test_one_dim_tensor_is_one_row():
    x = heavy_rows(1, 17, seed=7).reshape(17)
    r = psq(x, 4, seed=3)
    assert r.step.shape == (1,)
    assert torch.equal(r.codes, psq(x.reshape(1, 17), 4, seed=3).codes.reshape(17))
    b = bhq(x, 4, seed=3)
    assert b.transform is None and torch.equal(b.codes, r.codes)
    c = psq(x, 4, axis="col", seed=3)                       # every element is its own column
    assert c.step.shape == (17,) and torch.equal(c.dequantize(), x)


@pytest.mark.parametrize("n", [1, 2])
def test_bhq_falls_back_to_psq_below_three_rows(n):
    g = heavy_rows(n, 9, seed=8)
    b, p = bhq(g, 4, seed=5), psq(g, 4, seed=5)
    assert b.transform is None and block_householder(g) is None
    assert torch.equal(b.codes, p.codes) and torch.equal(b.dequantize(), p.dequantize())


@pytest.mark.parametrize("name", list(QUANTIZERS))
@pytest.mark.parametrize("shape", [(7,), (4, 5), (3, 2, 2, 2)])
def test_all_zero_tensor_dequantizes_to_zero(name, shape):
    r = QUANTIZERS[name](torch.zeros(shape), 4, seed=1)
    assert torch.isfinite(r.step).all() and torch.isfinite(r.offset).all()
    assert torch.equal(r.dequantize(), torch.zeros(shape))


@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_constant_rows_are_exact_in_float32(name):
    """[PROPOSED] constant rows: in float32 the 1e-8 margins vanish at |c| ≳ 0.1 (the spec's s = B/0)."""
    g = torch.tensor([[0.7] * 5, [-3.0] * 5, [1e-3] * 5, [250.0] * 5])
    if name == "psq_col":
        g = g.T.contiguous()                                # constant columns
    r = QUANTIZERS[name](g, 4, seed=2)
    out = r.dequantize()
    if name in ("psq", "psq_col"):
        assert torch.equal(out, g) and torch.equal(r.codes, torch.zeros_like(r.codes))
    elif name == "bhq":
        assert torch.equal(r.codes, torch.zeros_like(r.codes))       # T·G has constant rows too
        # Only float32 rounding of T⁻¹·T remains; it mixes rows, so it is relative to the largest row.
        torch.testing.assert_close(out, g, rtol=0, atol=1e-6 * float(g.abs().max()))
    else:
        assert bool(((out - g).abs() <= r.step * (1 + 1e-6)).all())


def test_half_precision_inputs_compute_in_float32():
    g = heavy_rows(5, 8, seed=9, dtype=torch.float32)
    for dt in (torch.float16, torch.bfloat16):
        x = g.to(dt)
        for name, f in QUANTIZERS.items():
            r = f(x, 4, seed=3)
            assert torch.equal(r.codes, f(x.float(), 4, seed=3).codes)
            assert r.dequantize().dtype == torch.float32


def test_input_requiring_grad_is_detached():
    g = heavy_rows(5, 8, seed=9).requires_grad_()
    for f in QUANTIZERS.values():
        assert not f(g, 4, seed=1).dequantize().requires_grad


# --------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("name", list(QUANTIZERS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_rejected_naming_the_quantizer(name, bad):
    g = torch.randn(4, 4)
    g[2, 1] = bad
    with pytest.raises(ValueError, match=NAMES[name]):
        QUANTIZERS[name](g, 4, seed=0)


@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_bad_arguments_rejected(name):
    f, q = QUANTIZERS[name], NAMES[name]
    g = torch.randn(4, 4)
    for bits in (1, 17, 4.0, True, None):
        with pytest.raises(ValueError, match=f"{q}: bits"):
            f(g, bits, seed=0)
    with pytest.raises(ValueError, match=f"{q}: rand_bits"):
        f(g, 4, seed=0, rand_bits=12)
    with pytest.raises(TypeError, match=q):
        f(torch.ones(4, 4, dtype=torch.int32), 4, seed=0)
    with pytest.raises(TypeError, match=q):
        f([[1.0, 2.0]], 4, seed=0)
    with pytest.raises(ValueError, match=q):
        f(torch.tensor(1.0), 4, seed=0)                  # 0-dim: there is no row
    with pytest.raises(ValueError, match=q):
        f(torch.zeros(0, 3), 4, seed=0)
    with pytest.raises(ValueError, match="seed"):
        f(g, 4, seed=2 ** 32)
    with pytest.raises(ValueError, match="not both"):
        f(g, 4, seed=1, generator=torch.Generator())


def test_bad_axis_and_overflowing_ranges():
    with pytest.raises(ValueError, match="psq: axis"):
        psq(torch.randn(3, 3), 4, axis="rows")
    huge = torch.tensor([[3e38, -3e38, 0.0], [1.0, 2.0, 3.0]])
    for name in ("ptq", "psq", "bhq"):
        with pytest.raises(ValueError, match=f"{name}: the dynamic range"):
            QUANTIZERS[name](huge, 4, seed=0)
    with pytest.raises(ValueError, match="bhq: the dynamic range max - min of T·x"):
        bhq(huge[:1].repeat(3, 1), 4, seed=0)               # N >= 3: T·x itself overflows
    # ... while one huge row among small ones is spread over its group (the point of BHQ) and fits.
    assert torch.isfinite(bhq(torch.cat([huge, torch.ones(2, 3)]), 4, seed=0).dequantize()).all()
    r = psq(huge.double(), 4, seed=0)                     # fine in float64
    assert torch.isfinite(r.dequantize()).all()
    with pytest.raises(ValueError, match="bhq: the transform acts on"):
        block_householder(torch.randn(4, 3)).apply(torch.randn(3, 3))
