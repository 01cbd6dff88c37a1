"""StatQuant gradient quantizers (Chen et al., NeurIPS 2020): PTQ, PSQ and BHQ.

Golden models of ALGORITHMS.md §2. All three have the form ``Q(G) = T⁻¹·D(SR(E(T·G)))``: an invertible
row transform ``T`` (identity for PTQ and PSQ, block Householder for BHQ), an affine map ``E`` onto the
unsigned grid ``[0, B]`` with ``B = 2**bits - 1`` (per tensor, per row or per column), stochastic rounding,
and the inverse affine map ``D``. SR is unbiased and ``T`` is linear, so ``E[Q(G)] = G`` (§2(a)).

Layout. ``x`` has at least one dimension. Rows are dim 0 and every other dim is flattened, so a PyTorch
gradient ``(N, C, H, W)`` is read as ``N × (C·H·W)`` (§0). A 1-D tensor of length ``D`` is *one row*
(``1 × D``), the way ``F.linear`` treats an unbatched input. Codes always have ``x``'s shape, and the
per-row (per-column) ``step``/``offset`` have shape ``(N, 1, …, 1)`` (``(1, C, H, W)``), so they broadcast
against the codes.

Random stream. Element ``i`` (row-major) of the tensor that is rounded (``x`` for PTQ/PSQ, ``Y = T·x`` for
BHQ) uses draw ``i`` of the contract stream for the result's ``seed`` (``hw.numerics``), so two calls with
different seeds -- the B- and U-path copies of the "gradient bifurcation", §2(b) -- are independent samples,
and one seed reproduces the codes bit for bit.

Arithmetic. The per-element pass runs in the compute dtype (float32, or float64 for float64 input). The
per-tensor / per-row scale data and the whole BHQ transform construction (N-length vectors) are computed in
float64 and rounded once to the compute dtype [PROPOSED: the reference computes them in float32; float64
makes the golden model's scales independent of summation order and overflow-free].
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch

from hw import numerics as nx
from host.quant import native
from host.quant.core import AffineQuantized, check_bits, check_choice, check_input, codes_dtype, draw_seed, \
    sr_codes

__all__ = [
    "MARGIN", "DEFAULT_BITS", "PTQParams", "ptq_params", "ptq", "psq", "bhq",
    "householder_matrix", "householder_vector", "block_householder", "BlockHouseholder",
    "TransformedQuantized",
]

MARGIN = 1e-8
"""The reference code's range margin: ``min − 1e-8`` and ``max + 1e-8`` (§2(a))."""

DEFAULT_BITS = 8
"""``--bbits`` / ``--bwbits`` default of the reference code (§2(c))."""

Axis = Literal["row", "col"]


# ---------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------

def _prepare(x, bits, rand_bits, name: str, finite: bool = True) -> tuple[torch.Tensor, int]:
    """Validate and return ``(x in the compute dtype, detached; B)``. ``finite=False`` leaves out the
    NaN/Inf test (see :func:`host.quant.core.check_input`)."""
    b = check_bits(bits, name)
    check_choice(rand_bits, nx.RAND_BITS_ALLOWED, name, "rand_bits")
    xc = check_input(x, name, min_dim=1, finite=finite).detach()
    return xc, 2 ** b - 1


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``N × D``: dim 0 is the row, the rest is flattened; 1-D is a single row."""
    return x.reshape(1, -1) if x.dim() == 1 else x.reshape(x.shape[0], -1)


def _scale_shape(x: torch.Tensor, axis: Axis) -> tuple[int, ...]:
    """Shape of per-row / per-column scale data that broadcasts against ``x``'s shape."""
    if x.dim() == 1:
        return (1,) if axis == "row" else tuple(x.shape)
    if axis == "row":
        return (x.shape[0],) + (1,) * (x.dim() - 1)
    return (1,) + tuple(x.shape[1:])


def _check_range(rng: torch.Tensor, dtype: torch.dtype, name: str, what: str = "x") -> None:
    # A range beyond the compute dtype would overflow in ``x − m`` and give Inf/NaN codes (for BHQ, an
    # Inf/NaN range means T·x itself overflowed).
    if not bool((rng <= torch.finfo(dtype).max).all()):
        raise ValueError(f"{name}: the dynamic range max - min of {what} exceeds the {dtype} range "
                         f"(max {torch.finfo(dtype).max:.3g}); pass a float64 tensor")


def _native_lib(y2: torch.Tensor):
    """The kernel library where ``y2`` suits the fused passes (a contiguous float32 CPU matrix), else
    ``None``."""
    if y2.dtype != torch.float32 or y2.device.type != "cpu" or y2.dim() != 2 or not y2.is_contiguous():
        return None
    return native.kernels()


def _native_extrema(y2: torch.Tensor, axis: Axis) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(y2.amin(dim, keepdim=True), y2.amax(dim, keepdim=True))`` over each row (``axis="row"``) or
    column in one pass of :mod:`host.quant.native` -- the same floats (see ``tetrad_stat_extrema_f32``) --
    or ``None`` where it does not apply: no kernels, a layout it does not take, a NaN/Inf element (the
    callers' torch path raises for it), or a slice of zeros of both signs (whose sign torch's order picks)."""
    lib = _native_lib(y2)
    if lib is None:
        return None
    shape = (y2.shape[0], 1) if axis == "row" else (1, y2.shape[1])
    mn, mx = torch.empty(shape, dtype=torch.float32), torch.empty(shape, dtype=torch.float32)
    rc = lib.tetrad_stat_extrema_f32(y2.data_ptr(), y2.shape[0], y2.shape[1], 0 if axis == "row" else 1,
                                     mn.data_ptr(), mx.data_ptr())
    return (mn, mx) if rc == 0 else None


def _affine_sr(y2: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor, seed: int, rand_bits: int, axis: Axis,
               B: int) -> torch.Tensor:
    """``sr_codes((y2 - lo).mul_(scale), seed, rand_bits, 0, B)`` with ``lo``/``scale`` of shape ``(N, 1)``
    or ``(1, D)`` in ``y2``'s dtype: one pass of :mod:`host.quant.native` for a contiguous float32 CPU
    ``y2`` (the same two float32 operations per element, then the same SR), else these torch passes."""
    lib = _native_lib(y2)
    dt = codes_dtype(0, B)
    if lib is None or dt not in (torch.int8, torch.int16):
        return sr_codes((y2 - lo).mul_(scale), seed, rand_bits, 0, B)
    codes = torch.empty(y2.shape, dtype=dt)
    lo, scale = lo.contiguous(), scale.contiguous()
    lib.tetrad_stat_affine_sr_codes_f32(y2.data_ptr(), y2.shape[0], y2.shape[1], lo.data_ptr(), scale.data_ptr(),
                                        0 if axis == "row" else 1, seed, rand_bits, 0, B,
                                        1 if dt == torch.int8 else 2, codes.data_ptr())
    return codes


def _minmax_sr(y2: torch.Tensor, B: int, seed: int, rand_bits: int, axis: Axis, name: str, what: str = "x",
               extrema: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Per-row (``axis="row"``) or per-column min/max SR of a 2-D tensor, exactly as PSQ (§2(a)).

    SR with draws ``0 ..`` of stream ``seed`` (row-major over ``y2``). Returns ``(q, step, offset)``: the
    integer codes ``q`` in ``[0, B]`` (``host.quant.core.codes_dtype``) and the
    dequantization data with shape ``(N, 1)`` or ``(1, D)`` in ``y2``'s dtype. ``extrema``: the slices'
    ``(min, max)`` if the caller has them (:func:`_native_extrema`).
    """
    dim = 1 if axis == "row" else 0
    if extrema is None:
        extrema = _native_extrema(y2, axis)
    if extrema is None:
        # Separate amin/amax: torch.aminmax(dim=...) is 3-6x slower on CPU (torch 2.13).
        extrema = y2.amin(dim=dim, keepdim=True), y2.amax(dim=dim, keepdim=True)
    params = _native_params(y2, extrema, B)
    if params is None:
        params = _params(y2, extrema, B, name, what)
    lo, scale, step = params
    # SR lands in [0, B] whenever v = (y2 - lo)·scale does; the clamp only absorbs float rounding of v at
    # the range ends (v = B + ulp), and clamping before or after SR gives the same codes.
    q = _affine_sr(y2, lo, scale, seed, rand_bits, axis, B)
    return q, step, lo


def _params(y2: torch.Tensor, extrema, B: int, name: str, what: str):
    """``(lo, scale, step)`` of :func:`_minmax_sr` from the slices' ``(min, max)``: computed in float64 and
    rounded once to ``y2``'s dtype."""
    mn, mx = extrema[0].double(), extrema[1].double()
    # [PROPOSED] A constant slice (max == min) is coded exactly: m = its value, all codes 0. The spec's
    # literal m = c − 1e-8, M = c + 1e-8 gives v = B/2 (codes (B±1)/2, value c ± 1e-8/B) in exact
    # arithmetic, but in float32 the margins vanish for |c| ≳ 0.1, so M == m and s = B/0 gives NaN.
    const = mx == mn
    lo = torch.where(const, mn, mn - MARGIN)
    rng = (mx + MARGIN) - lo
    _check_range(rng, y2.dtype, name, what)
    scale = torch.where(const, torch.zeros_like(rng), B / rng)
    step = torch.where(const, torch.full_like(rng, 2 * MARGIN / B), rng / B)
    dt = y2.dtype
    return lo.to(dt), scale.to(dt), step.to(dt)


def _native_params(y2: torch.Tensor, extrema, B: int):
    """:func:`_params` for float32 in one call of :mod:`host.quant.native` (the same float64 operations,
    ``B / rng`` as torch computes it, ``rng.reciprocal() * B``, and the same rounding to float32), or
    ``None``: no kernels, not float32, or a range beyond float32 (whose error :func:`_params` raises)."""
    mn, mx = extrema
    lib = _native_lib(y2)
    if lib is None or mn.dtype != torch.float32 or mx.dtype != torch.float32:
        return None
    mn, mx = mn.contiguous(), mx.contiguous()
    lo, scale, step = (torch.empty(mn.shape, dtype=torch.float32) for _ in range(3))
    rc = lib.tetrad_stat_minmax_params_f32(mn.data_ptr(), mx.data_ptr(), mn.numel(), MARGIN, B, 2 * MARGIN / B,
                                           lo.data_ptr(), scale.data_ptr(), step.data_ptr())
    return None if rc else (lo, scale, step)


def _grid(bits: int) -> nx.IntGrid:
    return nx.IntGrid(bits, signed=False)


# ---------------------------------------------------------------------------------------------------
# PTQ
# ---------------------------------------------------------------------------------------------------

class PTQParams(NamedTuple):
    """The PTQ scalars of ALGORITHMS.md §2(a), in float64 (see :func:`ptq_params`)."""

    m: float            #: min(min(G) − 1e-8, 0)
    M: float            #: max(max(G) + 1e-8, 0)
    s: float            #: B / (M − m)
    z: int              #: floor(−m·s): the integer code that represents 0
    M_prime: float      #: (z − B)·m/z  (= m + B/s' ; M when z = 0)
    s_prime: float      #: B/(M' − m) = −z/m  (s when z = 0)
    aligned: bool       #: z > 0: real zero is exactly code z


def ptq_params(x: torch.Tensor, bits: int = DEFAULT_BITS) -> PTQParams:
    """The scalars of the per-tensor zero-aligned quantizer (PTQ, ALGORITHMS.md §2(a)).

    ::

        m  = min(min(G) − 1e-8, 0)        M  = max(max(G) + 1e-8, 0)
        s  = B/(M − m)                    z  = floor(−m·s)
        M' = (z − B)·m/z                  s' = B/(M' − m) = −z/m

    computed in float64 from the extrema of ``x`` (``B = 2**bits − 1``). Because ``z ≤ −m·s``, ``s' ≤ s``
    and ``(max(G) − m)·s' ≤ B``: nothing is clipped.

    Parameters
    ----------
    x : torch.Tensor
        Float tensor with at least one dimension, no NaN/Inf.
    bits : int, default 8
        Code width, 2..16.

    Returns
    -------
    PTQParams
        ``(m, M, s, z, M_prime, s_prime, aligned)``. ``aligned`` is ``z > 0``.

    Notes
    -----
    [PROPOSED] ``z = 0`` (no, or almost no, negative values; the reference divides by zero and gives NaN)
    falls back to ``s' = s``, ``M' = M``: the plain asymmetric min/max grid, on which zero is exactly code 0
    when ``m = 0`` and is not on the grid otherwise. Alternatives (not implemented): clip the tiny negative
    part to ``m = 0`` (biased), or widen to ``z = 1`` (a much coarser step).
    """
    xc, B = _prepare(x, bits, nx.DEFAULT_RAND_BITS, "ptq")
    return _ptq_params(xc, B)


def _ptq_params(xc: torch.Tensor, B: int) -> PTQParams:
    mn, mx = torch.aminmax(xc)
    m = min(float(mn) - MARGIN, 0.0)
    M = max(float(mx) + MARGIN, 0.0)
    _check_range(torch.tensor(M - m), xc.dtype, "ptq")
    s = B / (M - m)
    z = math.floor(-m * s)
    if z > 0:
        return PTQParams(m, M, s, z, (z - B) * m / z, z / -m, True)
    return PTQParams(m, M, s, 0, M, s, False)


def ptq(x: torch.Tensor, bits: int = DEFAULT_BITS, *, seed: int | None = None,
        generator: torch.Generator | None = None, rand_bits: int = nx.DEFAULT_RAND_BITS) -> AffineQuantized:
    """Per-tensor, zero-aligned quantizer with stochastic rounding (PTQ, ``ScalarPreconditioner``, §2(a)).

    With the scalars of :func:`ptq_params` and ``u_i`` draw ``i`` of the stream (row-major)::

        v_i = x_i·s' + z                  (= (x_i − m)·s'  since −m·s' = z)
        c_i = clamp(floor(v_i + u_i), 0, B)
        Q(x)_i = c_i·step + offset,  step = 1/s' (= −m/z),  offset = −z·step  (= m)

    Parameters
    ----------
    x : torch.Tensor
        Float tensor with at least one dimension (float16/bfloat16/float32 computed in float32, float64 in
        float64), no NaN/Inf.
    bits : int, default 8
        Code width ``b`` in 2..16; codes are on the unsigned grid ``[0, 2**b − 1]``.
    seed : int, optional
        Stream seed in ``[0, 2**32)``. If omitted, 32 bits are drawn from ``generator`` (or torch's
        default generator) and recorded in the result.
    generator : torch.Generator, optional
        Source of the seed when ``seed`` is not given (not both).
    rand_bits : {16, 8, 4}, default 16
        Bits per random draw (``hw.numerics.RAND_BITS_ALLOWED``).

    Returns
    -------
    AffineQuantized
        ``codes`` (x's shape, narrowest int dtype), scalar ``step`` and ``offset``, ``method="ptq"``, the
        ``seed`` and ``rand_bits`` used, ``grid = IntGrid(bits, signed=False)``.

    Notes
    -----
    [PROPOSED] ``v = x·s' + z`` rather than the reference's ``(x − m)·s'``, and ``offset = −(z·step)``
    rather than ``m``: equal in exact arithmetic, but this way ``x = 0`` gives exactly ``v = z`` and code
    ``z`` dequantizes to exactly 0.0 in floating point (the point of zero alignment, §2(a)).
    [PROPOSED] ``z = 0`` falls back to ``s' = s``: ``v = (x − m)·s``, ``step = 1/s``, ``offset = m`` (see
    :func:`ptq_params`).

    Raises
    ------
    TypeError, ValueError
        Non-tensor / non-float input; empty, 0-dim or NaN/Inf input; bits or rand_bits out of range; a
        range that overflows the compute dtype. Messages name ``ptq``.
    """
    xc, B = _prepare(x, bits, rand_bits, "ptq")
    p = _ptq_params(xc, B)
    dt = xc.dtype
    if p.aligned:
        step = torch.tensor(1.0 / p.s_prime, dtype=dt, device=xc.device)
        # offset is the negation of exactly the product dequantize() forms for code z, so it cancels to 0.
        offset = -(torch.tensor(float(p.z), dtype=dt, device=xc.device) * step)
        v = (xc * torch.tensor(p.s_prime, dtype=dt, device=xc.device)).add_(p.z)
    else:
        step = torch.tensor(1.0 / p.s, dtype=dt, device=xc.device)
        offset = torch.tensor(p.m, dtype=dt, device=xc.device)
        v = (xc - offset).mul_(torch.tensor(p.s, dtype=dt, device=xc.device))
    seed = draw_seed(xc, seed, generator, rand_bits)
    return AffineQuantized(codes=sr_codes(v, seed, rand_bits, 0, B), method="ptq", seed=seed, rand_bits=rand_bits,
                           step=step, offset=offset, grid=_grid(bits))


# ---------------------------------------------------------------------------------------------------
# PSQ
# ---------------------------------------------------------------------------------------------------

def psq(x: torch.Tensor, bits: int = DEFAULT_BITS, *, axis: Axis = "row", seed: int | None = None,
        generator: torch.Generator | None = None, rand_bits: int = nx.DEFAULT_RAND_BITS) -> AffineQuantized:
    """Per-sample (per-row) or per-column min/max quantizer with SR (PSQ, ``DiagonalPreconditioner``, §2(a)).

    ``x`` is read as ``G ∈ R^{N×D}`` (dim 0 = rows, the rest flattened). For ``axis="row"``, row ``i``::

        m_i = min_j G_ij − 1e-8      M_i = max_j G_ij + 1e-8      s_i = B/(M_i − m_i)
        c_ij = clamp(floor((G_ij − m_i)·s_i + u_ij), 0, B)
        Q(G)_ij = c_ij·step_i + m_i,  step_i = (M_i − m_i)/B

    ``axis="col"`` is the same with the min/max over rows for each column ``j`` (``left=False``; the
    update-path quantizer of §2(b)). The grid is asymmetric with a float zero point; zero is not aligned.

    Parameters
    ----------
    x : torch.Tensor
        Float tensor with at least one dimension, no NaN/Inf. A 1-D tensor is one row.
    bits : int, default 8
        Code width in 2..16; every row (column) has its own grid ``[0, 2**b − 1]``.
    axis : {"row", "col"}, default "row"
        ``"row"``: per sample (B path, ``left=True``); ``"col"``: per flattened ``(c, h, w)`` position
        across the batch (U path, ``left=False``).
    seed, generator, rand_bits
        As in :func:`ptq`.

    Returns
    -------
    AffineQuantized
        ``method="psq"`` (``"psq_col"`` for ``axis="col"``); ``step``/``offset`` of shape ``(N, 1, …)``
        (rows) or ``(1, *x.shape[1:])`` (columns).

    Notes
    -----
    [PROPOSED] A constant row (``max == min = c``) gets ``m_i = c``, ``s_i = 0``, ``step_i = 2e-8/B``: all
    codes 0, dequantized exactly to ``c`` (zero variance, unbiased). The spec's literal margins give
    ``v = B/2`` and values ``c ± 1e-8/B`` in exact arithmetic, but ``s_i = B/0`` (NaN codes) in float32
    once ``|c| ≳ 0.1`` absorbs the margins. In particular an all-zero tensor dequantizes to all zeros.
    [PROPOSED] ``m_i``, ``s_i`` and ``step_i`` are computed in float64 from the row extrema and rounded
    once to the compute dtype.
    """
    check_choice(axis, ("row", "col"), "psq", "axis")
    xc, B = _prepare(x, bits, rand_bits, "psq", finite=False)
    x2 = _rows(xc)
    # The slices' extrema in one native pass that also finds a NaN/Inf; without it (or on one) the
    # NaN/Inf test of check_input, at the same point as before (before the seed is drawn).
    extrema = _native_extrema(x2, axis)
    if extrema is None:
        check_input(x, "psq", min_dim=1)
    seed = draw_seed(x2, seed, generator, rand_bits)
    q, step, offset = _minmax_sr(x2, B, seed, rand_bits, axis, "psq", extrema=extrema)
    shape = _scale_shape(xc, axis)
    return AffineQuantized(codes=q.reshape(xc.shape),
                           method="psq" if axis == "row" else "psq_col", seed=seed, rand_bits=rand_bits,
                           step=step.reshape(shape), offset=offset.reshape(shape), grid=_grid(bits))


# ---------------------------------------------------------------------------------------------------
# BHQ: the block Householder transform
# ---------------------------------------------------------------------------------------------------

def householder_vector(n: int) -> tuple[float, float]:
    """``(v_1, v_2)``: the entries of the unit vector ``v = (1_n/√n − e_1)/‖1_n/√n − e_1‖`` of ``H_n``.

    ``v`` has ``v_1`` in position 0 and ``v_2`` in every other position (ALGORITHMS.md §2(a) step 5).
    With ``a = 1/√n``: ``v_1 = (a − 1)/r``, ``v_2 = a/r``, ``r = sqrt((a − 1)² + (n − 1)·a²)``.
    Python floats (float64).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"bhq: a Householder block needs n >= 2 rows, got {n!r}")
    a = 1.0 / math.sqrt(n)
    r = math.sqrt((a - 1.0) ** 2 + (n - 1) * a * a)
    return (a - 1.0) / r, a / r


def householder_matrix(n: int, *, dtype: torch.dtype = torch.float64,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """The dense ``n × n`` reflection ``H_n = I − 2vvᵀ`` with ``H_n e_1 = 1_n/√n`` (§2(a) step 5).

    ``H_n`` is symmetric and orthogonal (``H_n = H_nᵀ = H_n⁻¹``). Used by :meth:`BlockHouseholder.dense`
    (the reference's dense path) and by tests; :func:`bhq` never forms it.
    """
    v1, v2 = householder_vector(n)
    v = torch.full((n,), v2, dtype=torch.float64)
    v[0] = v1
    return (torch.eye(n, dtype=torch.float64) - 2.0 * torch.outer(v, v)).to(dtype=dtype, device=device)


def _householder_max_abs(n: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """``h_n = max|H_n|`` from the four distinct entries of ``I − 2vvᵀ`` (the last only exists for n ≥ 3)."""
    h = torch.maximum(torch.maximum((1 - 2 * v1 * v1).abs(), (2 * v1 * v2).abs()), (1 - 2 * v2 * v2).abs())
    return torch.where(n >= 3, torch.maximum(h, 2 * v2 * v2), h)


@dataclass(frozen=True, eq=False)
class BlockHouseholder:
    """The BHQ transform ``T = Pᵀ·blockdiag(H_{n_0},…,H_{n_{L−1}})·P·diag(s)`` of ALGORITHMS.md §2(a).

    All vectors are float64 (index vectors int64) on the input's device; rows are original row indices.

    Attributes
    ----------
    ranges : (N,) float64
        ``λ_i = max_j G_ij − min_j G_ij + 1e-8`` (step 1).
    order : (N,) int64
        ``π``: rows sorted by ``λ`` descending, ties by ascending row index (step 2).
    k : int
        Number of small rows ("num_zeros", step 3); ``L = N − k`` groups ("num_nonzeros").
    cuts : (L,) int64
        ``c_i``, the rounded cumulative sums of step 4 (``cuts[-1] == k``).
    group : (N,) int64
        Group of each row.
    leader : (L,) int64
        The large row of each group.
    sizes : (L,) int64
        ``n_i = 1 + c_i − c_{i−1} ≥ 2``.
    grouped_order : (N,) int64
        ``P`` as an index vector: position ``p`` of the grouped order holds row ``grouped_order[p]``;
        each group is its large row followed by its small rows in sorted order.
    h : (L,) float64
        ``h_n = max|H_n|``.
    s1, s2 : (L,) float64
        Scales of the large row and of the small rows of each group (``s1⁻² + s2⁻² = 1``).
    scale : (N,) float64
        ``s``, the diagonal of ``diag(s)`` (``s1`` or ``s2`` of the row's group).
    v : (N,) float64
        Entry of the row's group Householder vector (``v_1`` for the large row, ``v_2`` otherwise).
    """

    ranges: torch.Tensor
    order: torch.Tensor
    k: int
    cuts: torch.Tensor
    group: torch.Tensor
    leader: torch.Tensor
    sizes: torch.Tensor
    grouped_order: torch.Tensor
    h: torch.Tensor
    s1: torch.Tensor
    s2: torch.Tensor
    scale: torch.Tensor
    v: torch.Tensor

    @property
    def n_rows(self) -> int:
        return self.ranges.numel()

    @property
    def num_groups(self) -> int:
        return self.leader.numel()

    def members(self, g: int) -> list[int]:
        """Rows of group ``g`` in grouped order: the large row first, then the small rows."""
        start = int(self.sizes[:g].sum())
        return self.grouped_order[start:start + int(self.sizes[g])].tolist()

    def _reflect_(self, y2: torch.Tensor) -> torch.Tensor:
        """``Pᵀ·blockdiag(H)·P·y`` in place, as ``y_r − 2·v_r·Σ_{r'∈g(r)} v_{r'}·y_{r'}``: O(N·D), no N×N
        matrix. The group sums are accumulated in ascending row order (``index_add_``)."""
        v = self.v.to(y2.dtype).unsqueeze(1)
        dot = torch.zeros((self.num_groups, y2.shape[1]), dtype=y2.dtype, device=y2.device)
        dot.index_add_(0, self.group, y2 * v)
        return y2.addcmul_(dot.index_select(0, self.group), v, value=-2.0)

    def apply(self, x2: torch.Tensor) -> torch.Tensor:
        """``T·x`` for ``x`` of shape ``N × D``: scale each row by ``s`` (``diag(s)``), then reflect within
        each group."""
        self._check(x2)
        return self._reflect_(x2 * self.scale.to(x2.dtype).unsqueeze(1))

    def inverse(self, y2: torch.Tensor) -> torch.Tensor:
        """``T⁻¹·y = diag(s)⁻¹·Pᵀ·blockdiag(H)ᵀ·P·y`` (``H`` is symmetric). ``y`` is ``N × D``."""
        self._check(y2)
        return self.inverse_(y2.clone())

    def inverse_(self, y2: torch.Tensor) -> torch.Tensor:
        """:meth:`inverse` in place on ``y2`` (for a caller that owns it: no copy)."""
        self._check(y2)
        return self._reflect_(y2).div_(self.scale.to(y2.dtype).unsqueeze(1))

    def _check(self, y2: torch.Tensor) -> None:
        if y2.dim() != 2 or y2.shape[0] != self.n_rows:
            raise ValueError(f"bhq: the transform acts on {self.n_rows} x D tensors, "
                             f"got shape {tuple(y2.shape)}")

    def permutation(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The dense permutation ``P`` with ``(P·x)_p = x_{grouped_order[p]}``."""
        n = self.n_rows
        P = torch.zeros((n, n), dtype=dtype, device=self.scale.device)
        P[torch.arange(n, device=P.device), self.grouped_order] = 1
        return P

    def dense(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``T`` as a dense ``N × N`` matrix, built literally as ``Pᵀ·blockdiag(H)·P·diag(s)`` (step 6;
        the reference's dense path). For tests and small N."""
        P = self.permutation(torch.float64)
        H = torch.block_diag(*[householder_matrix(int(n)) for n in self.sizes.tolist()]).to(P.device)
        return (P.T @ H @ P @ torch.diag(self.scale)).to(dtype)

    def dense_inverse(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``T⁻¹ = diag(s)⁻¹·Pᵀ·blockdiag(H)ᵀ·P`` as a dense matrix (step 6). For tests and small N."""
        P = self.permutation(torch.float64)
        H = torch.block_diag(*[householder_matrix(int(n)) for n in self.sizes.tolist()]).to(P.device)
        return (torch.diag(1.0 / self.scale) @ P.T @ H.T @ P).to(dtype)


def block_householder(x: torch.Tensor) -> BlockHouseholder | None:
    """Build the BHQ transform of ``x`` (ALGORITHMS.md §2(a) steps 1–6, from ``quantizers.cpp``).

    ``x`` is read as ``G ∈ R^{N×D}`` (dim 0 = rows; 1-D is one row). In float64::

        1. λ_i = max_j G_ij − min_j G_ij + 1e-8
        2. π sorts λ descending: λ_(0) ≥ … ≥ λ_(N−1)           (stable: ties by row index)
        3. k = the smallest k ≥ 1 with k·λ_(N−k−1) / Σ_{i<N−k} λ_(i) > 1 ;  L = N − k
        4. c_i = round(k·Σ_{j≤i} λ_(j) / Σ_{j<L} λ_(j)), i < L ;  c_{−1} = 0 ;  c_{L−1} = k
           group i = large row π(i) + small rows π(L + c_{i−1}) … π(L + c_i − 1) ;  n_i = 1 + c_i − c_{i−1}
        5. H_n = I − 2vvᵀ (H e_1 = 1/√n), h_n = max|H_n| ;  λ1 = λ_(i), λ2 = λ_(L + c_{i−1})
           s1 = (λ1/√n)^(−1/3),  s2 = (λ2·h_n/(n − 1))^(−1/3),  κ = sqrt(s1⁻² + s2⁻²),  s1, s2 ← κ·s1, κ·s2
        6. T = Pᵀ·blockdiag(H_{n_0}, …)·P·diag(s)

    The bits do not enter ``T``.

    Parameters
    ----------
    x : torch.Tensor
        Float tensor with at least one dimension, no NaN/Inf.

    Returns
    -------
    BlockHouseholder or None
        ``None`` when BHQ falls back to PSQ [PROPOSED]: ``N < 3`` (the reference reads out of bounds for
        ``N ≤ 2``), or some group would have ``n = 1``. With the exact step 3–4 arithmetic below, ``N ≥ 3``
        always passes step 3 (``k = N − 1`` gives ratio ``N − 1 > 1``) and always gives ``n ≥ 2`` (every
        large row has ``k·λ_(i)/S_L > 1``, so consecutive ``c_i`` differ by at least 1), so the second
        condition is a guard only.

    Notes
    -----
    [PROPOSED] Steps 3–4 are decided in exact rational arithmetic on the float64 ``λ`` (see
    ``_exact_cuts``), so ties -- equal ranges, e.g. all-zero rows -- do not depend on summation order;
    ``round`` is round-half-up (``floor(t + 1/2)``, the C++ ``std::round`` on positive values);
    alternative: half-to-even. [PROPOSED] Step 3's strict ``> 1`` follows the C++ code (the dead Python
    copy uses ``>= 1``). [PROPOSED] Equal ranges keep their row order (stable sort); the reference's tie
    order is unspecified. The construction costs O(N log N) on N-vectors plus O(N) Python integer work.
    """
    xc = check_input(x, "bhq", min_dim=1).detach()
    x2 = _rows(xc)
    if x2.shape[0] < 3:
        return None
    return _build_transform(_row_ranges(x2))


def _row_ranges(x2: torch.Tensor) -> torch.Tensor:
    """Step 1: ``λ_i = max_j G_ij − min_j G_ij + 1e-8`` in float64."""
    return (x2.amax(dim=1).double() - x2.amin(dim=1).double()) + MARGIN


def _exact_cuts(lam_sorted: list[float]) -> tuple[int, list[int]] | None:
    """Steps 3–4 decided exactly: ``(k, [c_0, …, c_{L−1}])``, or ``None`` if no k ≥ 1 passes step 3.

    [PROPOSED] The float64 λ are dyadic rationals, so they are scaled to integers by their common
    power-of-two denominator and the comparisons ``k·λ_(L−1) > Σ_{i<L} λ_(i)`` and ``c_i =
    floor(k·C_i/S_L + 1/2)`` (``C_i`` the prefix sums) are evaluated in exact integer arithmetic. Float
    arithmetic (the reference) decides exact ties -- equal ranges, e.g. all-zero or one-column rows,
    where ``k·C_i/S_L`` is a half-integer -- by the rounding of its summation order.
    """
    ratios = [lam.as_integer_ratio() for lam in lam_sorted]
    den = max(d for _, d in ratios)
    ints = [num * (den // d) for num, d in ratios]
    prefix = list(itertools.accumulate(ints))
    n_rows = len(ints)
    for k in range(1, n_rows):
        L = n_rows - k
        if k * ints[L - 1] > prefix[L - 1]:
            total = prefix[L - 1]
            return k, [(2 * k * c + total) // (2 * total) for c in prefix[:L]]
    return None


def _build_transform(lam: torch.Tensor) -> BlockHouseholder | None:
    n_rows = lam.numel()
    dev = lam.device
    lam_s, order = torch.sort(lam, descending=True, stable=True)
    found = _exact_cuts(lam_s.tolist())
    if found is None:
        return None
    k, cut_list = found
    L = n_rows - k
    cuts = torch.tensor(cut_list, dtype=torch.int64, device=dev)
    prev = torch.cat([cuts.new_zeros(1), cuts[:-1]])
    sizes = 1 + cuts - prev
    if bool((sizes < 2).any()):
        return None

    # Group of every sorted position: large row i -> i; small position p -> the i with c_{i-1} <= p-L < c_i.
    small = torch.arange(k, device=dev)
    g_small = torch.searchsorted(cuts, small, right=True)
    g_sorted = torch.cat([torch.arange(L, device=dev), g_small])
    group = torch.empty_like(order)
    group[order] = g_sorted
    # Grouped order P: group g starts at Σ_{h<g} n_h = g + c_{g−1}; its large row first.
    start = torch.arange(L, device=dev) + prev
    pos_sorted = torch.cat([start, start[g_small] + 1 + (small - prev[g_small])])
    grouped_order = torch.empty_like(order)
    grouped_order[pos_sorted] = order

    n = sizes.to(torch.float64)
    a = 1.0 / torch.sqrt(n)
    r = torch.sqrt((a - 1.0) ** 2 + (n - 1.0) * a * a)
    v1, v2 = (a - 1.0) / r, a / r
    h = _householder_max_abs(sizes, v1, v2)
    lam1, lam2 = lam_s[:L], lam_s[L + prev]
    w1 = lam1 / torch.sqrt(n)
    w2 = lam2 * h
    s1 = w1 ** (-1.0 / 3.0)
    s2 = (w2 / (n - 1.0)) ** (-1.0 / 3.0)
    # Normalize so that s1⁻² + s2⁻² = 1 (step 5): only the ratio s1/s2 matters to the variance.
    kappa = torch.sqrt(s1 ** -2 + s2 ** -2)
    s1, s2 = kappa * s1, kappa * s2

    is_large = torch.zeros(n_rows, dtype=torch.bool, device=dev)
    is_large[order[:L]] = True
    scale = torch.where(is_large, s1[group], s2[group])
    v = torch.where(is_large, v1[group], v2[group])
    return BlockHouseholder(ranges=lam, order=order, k=k, cuts=cuts, group=group, leader=order[:L].clone(),
                            sizes=sizes, grouped_order=grouped_order, h=h, s1=s1, s2=s2, scale=scale, v=v)


# ---------------------------------------------------------------------------------------------------
# BHQ
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class TransformedQuantized(AffineQuantized):
    """Codes of ``Y = T·G`` on per-row affine grids; ``dequantize()`` is ``T⁻¹·(codes·step + offset)``.

    ``transform`` is the :class:`BlockHouseholder` ``T`` (``None``: identity, the PSQ fallback).
    """

    transform: BlockHouseholder | None = field(default=None)

    def dequantize_transformed(self) -> torch.Tensor:
        """``Ŷ = codes·step + offset``: the dequantized transformed tensor (x's shape), before ``T⁻¹``."""
        return AffineQuantized.dequantize(self)

    def dequantize(self) -> torch.Tensor:
        y = self.dequantize_transformed()
        if self.transform is None:
            return y
        return self.transform.inverse(_rows(y)).reshape(self.codes.shape)


def bhq(x: torch.Tensor, bits: int = DEFAULT_BITS, *, seed: int | None = None,
        generator: torch.Generator | None = None,
        rand_bits: int = nx.DEFAULT_RAND_BITS) -> TransformedQuantized:
    """Block Householder quantizer (BHQ, ``BlockwiseHouseholderPreconditioner``, §2(a) steps 1–7).

    With ``T`` from :func:`block_householder` (``x`` read as ``G ∈ R^{N×D}``)::

        Y = T·G
        m_r = min_j Y_rj − 1e-8,  M_r = max_j Y_rj + 1e-8,  s_r = B/(M_r − m_r)
        c_rj = clamp(floor((Y_rj − m_r)·s_r + u_rj), 0, B)          (u: draw r·D + j)
        Ŷ_rj = c_rj·step_r + m_r ;  Q(G) = T⁻¹·Ŷ

    ``T`` is applied in O(N·D) as ``x − 2v(vᵀx)`` per group (never as an N×N matmul); the transform
    construction sorts only the N row ranges.

    Parameters
    ----------
    x : torch.Tensor
        Float tensor with at least one dimension, no NaN/Inf. A 1-D tensor is one row.
    bits : int, default 8
        Code width in 2..16; each row of ``Y`` has its own grid ``[0, 2**b − 1]``.
    seed, generator, rand_bits
        As in :func:`ptq`.

    Returns
    -------
    TransformedQuantized
        ``codes`` (x's shape) of ``Y``, per-row ``step``/``offset`` of ``Y`` (shape ``(N, 1, …)``),
        ``transform`` (``None`` on fallback), ``method="bhq"``. ``dequantize()`` returns ``T⁻¹·Ŷ``.

    Notes
    -----
    [PROPOSED] Falls back to PSQ (``transform=None``; codes identical to ``psq(x, bits, seed=...)``) when
    ``N < 3`` or when any group would have ``n = 1``. The per-row quantization of ``Y`` is PSQ's, including
    its [PROPOSED] exact coding of constant rows. See :func:`block_householder` for the transform's choices.
    """
    xc, B = _prepare(x, bits, rand_bits, "bhq")
    x2 = _rows(xc)
    t = None
    if x2.shape[0] >= 3:
        t = _build_transform(_row_ranges(x2))
    y2 = x2 if t is None else t.apply(x2)
    seed = draw_seed(y2, seed, generator, rand_bits)
    q, step, offset = _minmax_sr(y2, B, seed, rand_bits, "row", "bhq", "x" if t is None else "T·x")
    shape = _scale_shape(xc, "row")
    return TransformedQuantized(codes=q.reshape(xc.shape), method="bhq", seed=seed,
                                rand_bits=rand_bits, step=step.reshape(shape), offset=offset.reshape(shape),
                                grid=_grid(bits), transform=t)
