"""LBT gradient quantizer and its learned clipping interval (Kim et al., ECCV 2024; ALGORITHMS.md §1).

The method ("Toward INT4 Fixed-Point Training via Exploring Quantization Error for Gradients", the
upper bound ULG on the quantization error of large gradients) quantizes the output gradient ``G`` of
every layer, once per iteration, on a symmetric grid whose clip ``c = gamma * max|G|`` follows a slow
feedback rule: ``gamma`` grows when more than ``p* = rho / (2**b - 1)`` of the gradient would be
clipped and shrinks otherwise. The paper body was not retrieved; the quantizer and the rule below are
those of the official code (``cvlab-yonsei/LBT@84ab71ad``, ``models/modules.py`` ``grad_quant`` and
``train.py`` ``update_interval``), taken as the method per ALGORITHMS.md §1 [PROPOSED].

Public API
----------
:func:`lbt`                 the quantizer ``Q_G`` for one ``gamma`` (returns :class:`LBTQuantized`)
:func:`clipped_fraction`    ``r = #{|G| > gamma * max|G|} / numel`` of the unquantized gradient
:class:`LBTInterval`        the per-layer state ``gamma`` with its update rule, first-batch
                            calibration and checkpointing
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from hw import numerics as nx
from host.quant import native
from host.quant.core import (AffineQuantized, check_bits, check_input, check_input_range, codes_dtype,
                             draw_seed, round_to_dtype, sr_codes)

__all__ = ["LBTQuantized", "lbt", "clipped_fraction", "clip_level", "LBTInterval",
           "ZERO_CLIP", "CLIP_FLOOR_ULPS"]

ZERO_CLIP = 1e-8
"""Clip used when ``gamma * max|G|`` is zero (or too small to scale by, see :func:`clip_level`): the
reference code's ``±1e-8`` (``grad_quant.backward``: ``if min_value == 0: min_value -= 1e-8``)."""

CLIP_FLOOR_ULPS = 2 ** 16
"""A clip below ``CLIP_FLOOR_ULPS * finfo(dtype).tiny`` (7.7e-34 in float32, 1.5e-303 in float64) is
treated as zero. The floor keeps ``q_max / c`` finite and ``c / q_max`` a normal number for every
``bits <= 16`` (``q_max <= 2**15``), so no scale overflows or loses precision."""

_NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def _round_to(value: float, dtype: torch.dtype) -> float:
    """``value`` (a Python float) rounded to nearest-even in ``dtype``, returned as a Python float."""
    return float(_NP_DTYPE[dtype](value))


def clip_level(gamma: float, g_max: float, dtype: torch.dtype = torch.float32) -> tuple[float, bool]:
    """The clip ``c`` that :func:`lbt` uses, and whether the tensor is treated as all-zero.

    ``c = fl(gamma * g_max)``: the product evaluated in float64 and rounded once to ``dtype`` (the
    compute dtype of :func:`host.quant.core.check_input`: float32, or float64 for float64 input).
    If that is below the floor ``CLIP_FLOOR_ULPS * finfo(dtype).tiny`` -- an all-zero gradient, or one
    so small that its scales would overflow -- the reference code's ``c = 1e-8`` (:data:`ZERO_CLIP`)
    is used instead and ``flushed`` is True: every element then quantizes to code 0 and nothing
    counts as clipped (``|G| <= g_max < floor / gamma`` is far below one step of ``1e-8 / q_max``).

    Parameters
    ----------
    gamma : float
        Clip ratio, in ``(0, 1]``.
    g_max : float
        ``max |G|`` of the tensor (a value of ``dtype``).
    dtype : torch.dtype
        ``torch.float32`` (default) or ``torch.float64``.

    Returns
    -------
    (c, flushed) : (float, bool)
        ``c`` is a value of ``dtype`` (held as a Python float).
    """
    c = _round_to(gamma * g_max, dtype)
    if c < CLIP_FLOOR_ULPS * torch.finfo(dtype).tiny:
        return _round_to(ZERO_CLIP, dtype), True
    return c, False


@dataclass(frozen=True, eq=False)
class LBTQuantized(AffineQuantized):
    """Result of :func:`lbt`: an :class:`~host.quant.core.AffineQuantized` (``value = codes * step``,
    ``offset = None``, ``grid = int_grid(bits)``) plus the data the interval update needs.

    Attributes
    ----------
    gamma : float
        The clip ratio used.
    g_max : float
        ``max |G|`` of the unquantized input.
    clip : float
        The clip ``c`` (:func:`clip_level`): ``|G| >= c`` quantizes to code ``±q_max`` exactly.
    inv_step : float
        The reciprocal scale ``r`` the codes were computed with, ``v = fl(G * r)`` (see :func:`lbt`).
    clipped_count : int
        Number of elements with ``|G| > clip`` (unquantized gradient).
    clipped_fraction : float
        ``clipped_count / numel``: the ``r_t`` of the interval update (ALGORITHMS.md §1(a)).
    flushed : bool
        True when the clip fell below the floor and the tensor was treated as all-zero
        (:func:`clip_level`); :class:`LBTInterval` does not update ``gamma`` from such a gradient.
    """

    gamma: float = 1.0
    g_max: float = 0.0
    clip: float = 0.0
    inv_step: float = 0.0
    clipped_count: int = 0
    clipped_fraction: float = 0.0
    flushed: bool = False


# ---------------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------------

def _check_gamma(gamma, name: str) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise ValueError(f"{name}: gamma must be a real number in (0, 1], got {gamma!r}")
    g = float(gamma)
    if not (math.isfinite(g) and 0.0 < g <= 1.0):
        raise ValueError(f"{name}: gamma must be in (0, 1], got {gamma!r}")
    return g


def _check_rand_bits(rand_bits, name: str) -> int:
    if isinstance(rand_bits, bool) or rand_bits not in nx.RAND_BITS_ALLOWED:
        raise ValueError(f"{name}: rand_bits must be one of {nx.RAND_BITS_ALLOWED}, got {rand_bits!r}")
    return rand_bits


def _abs_max(x: torch.Tensor) -> float:
    mn, mx = torch.aminmax(x)
    return max(-float(mn), float(mx))


def _count_above(x: torch.Tensor, c: float, g_max: float) -> int:
    """``#{|x| > c}``; zero without a pass when ``c >= max|x|`` (always the case for gamma = 1). A float32
    contiguous CPU ``x`` takes one counting pass of :mod:`host.quant.native` (``tetrad_count_abs_above_f32``,
    with ``c`` rounded to float32 as torch converts the scalar of ``x.abs() > c``): the same integer."""
    if c >= g_max:
        return 0
    lib = native.kernels() if x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous() else None
    if lib is not None:
        return int(lib.tetrad_count_abs_above_f32(x.data_ptr(), x.numel(), round_to_dtype(c, torch.float32)))
    return int(torch.count_nonzero(x.abs() > c))


def _sr_scaled(x: torch.Tensor, inv: float, grid: nx.IntGrid, seed: int, rand_bits: int) -> torch.Tensor:
    """The codes ``sr_codes(clamp(fl(x * inv), -q_max, q_max))`` of :func:`lbt`. A float32 contiguous CPU
    ``x`` takes one pass of :mod:`host.quant.native` (``tetrad_sr_scaled_codes_f32`` with one multiplier:
    the same float32 product, draws and SR); it skips the clamp, which changes no code: ``sr_codes``
    clamps to ``[-q_max, q_max]`` after the rounding, and ``floor(v + u)`` with ``0 < u < 1`` lies beyond
    ``±q_max`` exactly when ``v`` does, where the clamped ``floor(±q_max + u)`` is ``±q_max``."""
    qm = grid.qmax
    lib = native.kernels() if x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous() \
        and grid.qmin == -qm and qm <= 32767 else None
    if lib is None:
        v = torch.mul(x, torch.tensor(float(inv), dtype=x.dtype, device=x.device))
        v.clamp_(-qm, qm)
        # v in [-q_max, q_max] and 0 < u < 1 keep floor(v + u) on the grid (tests assert it): the clamp to
        # the grid in sr_codes changes nothing.
        return sr_codes(v, seed, rand_bits, grid.qmin, grid.qmax)
    codes = torch.empty(x.shape, dtype=codes_dtype(-qm, qm))       # sr_codes' dtype: int8 or int16
    mult = torch.tensor([float(inv)], dtype=torch.float32)
    lib.tetrad_sr_scaled_codes_f32(x.data_ptr(), 1, x.numel(), mult.data_ptr(), 2, seed, rand_bits, -qm, qm,
                                   codes.element_size(), codes.data_ptr())
    return codes


# ---------------------------------------------------------------------------------------------------
# The quantizer
# ---------------------------------------------------------------------------------------------------

def lbt(g: torch.Tensor, bits: int = 4, *, gamma: float = 1.0, seed: int | None = None,
        generator: torch.Generator | None = None, rand_bits: int = nx.DEFAULT_RAND_BITS) -> LBTQuantized:
    r"""LBT gradient quantizer ``Q_G`` (ALGORITHMS.md §1(a)): per-tensor symmetric SR with a clip
    ``c = gamma * max|G|``.

    With ``q_max = 2**(bits-1) - 1``::

        g_max = max |G|
        c     = gamma * g_max                  (clip_level(): 1e-8 for an all-zero G)
        Delta = c / q_max                      (the step; = 2c / (2**bits - 2) in the reference)
        q     = SR( clamp(G / Delta, -q_max, q_max) )      in [-q_max, q_max]
        Q_G(G) = q * Delta

    so ``Q_G(G)`` lies on ``Delta * {-q_max .. q_max}`` (15 levels at 4 bits, zero included), is unbiased
    SR inside ``[-c, c]`` and saturates to exactly code ``±q_max`` (value ``±c``) outside.

    Equivalence with the reference code [DERIVED]. The reference computes
    ``t = round(clamp((G + c)/Delta + u, 0, n)) , Q = t*Delta - c`` with ``n = 2**bits - 2 = 2 q_max``
    and ``u ~ U(-1/2, 1/2)``. Write ``v = G/Delta`` so ``(G + c)/Delta = v + q_max``.
    (i) ``|v| <= q_max``: ``v + q_max + u`` lies in ``(-1/2, n + 1/2)``; the clamp only moves values in
    ``(-1/2, 0)`` or ``(n, n + 1/2)``, which round to 0 and n with or without it, so
    ``t = round(v + q_max + u)``. ``round(y + u) = floor(y + u + 1/2)`` except on exact ties, which
    have probability zero, and ``u + 1/2 ~ U(0, 1)``: ``t = SR(v + q_max) = SR(v) + q_max`` (SR commutes
    with integer shifts), hence ``t - q_max = SR(v)``.
    (ii) ``v > q_max``: ``v + q_max + u > n - 1/2`` rounds (after the clamp) to ``n``, i.e. code
    ``q_max = SR(clamp(v))``; ``v < -q_max`` gives ``-q_max`` symmetrically.
    So ``t - q_max = SR(clamp(v, -q_max, q_max))`` almost surely, and ``t*Delta - c = (t - q_max)*Delta``.

    Bit-exact definition (what backends must reproduce). All scalars are evaluated in float64 and
    rounded once to the compute dtype ``D`` (float32, or float64 for float64 input):

    * ``c = clip_level(gamma, g_max)``; ``Delta = fl_D(c / q_max)`` is the returned ``step``.
    * The codes use a reciprocal scale ``inv_step = fl_D(q_max / c)``, nudged up by one ulp at a time
      until ``fl_D(c * inv_step) >= q_max``, so every ``|G| >= c`` lands on ``±q_max`` exactly
      (saturation, and ``gamma = 1`` mapping ``g_max`` to the top code, hold at every bit width).
      It differs from ``1/Delta`` by at most 2 ulp, a relative bias below 2**-22 of a step.
    * ``v = clamp(fl_D(G * inv_step), -q_max, q_max)`` and ``q = SR(v) = floor(v + u)`` exactly, as
      ``hw.numerics.stochastic_round`` defines it (``host.quant.core.stochastic_round``), with ``u``
      the uniform of draw ``i`` (row-major element ``i``) of stream ``seed`` with ``rand_bits`` bits
      (``hw.numerics.rng_draw``/``draw_to_uniform``).

    ``dequantize()`` returns ``codes * step`` rounded once in ``D``: in exact arithmetic a saturated
    element is ``q_max * Delta = c``; in floating point it is ``fl(q_max * step)``, equal to ``c`` or
    one ulp from it (``c / q_max`` is not always a float whose ``q_max``-fold rounds back to ``c``).
    The integer codes are exact; downstream GEMMs work on codes and ``step``.

    Parameters
    ----------
    g : torch.Tensor
        Gradient to quantize (any shape, float16/bfloat16/float32 computed in float32, float64 in
        float64). NaN/Inf raise ``ValueError``.
    bits : int
        Bit width ``b`` in ``2..16`` (default 4: codes ``-7..7``).
    gamma : float
        Clip ratio in ``(0, 1]`` (default 1.0 = plain max scaling, the paper's "Baseline (gamma=1.0)").
        Use :class:`LBTInterval` for the learned value.
    seed, generator :
        The random stream: ``seed`` (an int in ``[0, 2**32)``) or 32 bits drawn from ``generator`` (or
        torch's default generator); the result records the seed.
    rand_bits : int
        Bits per random draw, one of ``(4, 8, 16)`` (default 16). [PROPOSED] ALGORITHMS.md §5.1.

    Returns
    -------
    LBTQuantized
        ``codes`` (int8 for ``bits <= 8``), ``step`` (0-dim tensor), ``offset = None``,
        ``grid = int_grid(bits)``, plus ``gamma``, ``g_max``, ``clip``, ``inv_step``,
        ``clipped_count``, ``clipped_fraction`` (of the unquantized ``g``) and ``flushed``.

    Raises
    ------
    TypeError
        ``g`` is not a floating-point tensor.
    ValueError
        Empty input, NaN/Inf, bad ``bits``/``gamma``/``rand_bits``/``seed``.
    """
    name = "lbt"
    bits = check_bits(bits, name, 2, 16)
    gamma = _check_gamma(gamma, name)
    rand_bits = _check_rand_bits(rand_bits, name)
    x, lo, hi = check_input_range(g, name)   # its NaN/Inf test's min and max: max|G| without a second pass
    x = x.detach()
    dt = x.dtype
    grid = nx.int_grid(bits)
    qm = grid.qmax

    g_max = max(-lo, hi)
    c, flushed = clip_level(gamma, g_max, dt)
    count = 0 if flushed else _count_above(x, c, g_max)

    npd = _NP_DTYPE[dt]
    inv = npd(qm / c)
    while npd(c) * inv < qm:              # saturation must be exact: fl(c * inv) >= q_max
        inv = np.nextafter(inv, npd(np.inf))
    step = _round_to(c / qm, dt)

    try:
        seed = draw_seed(x, seed, generator, rand_bits)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None

    codes = _sr_scaled(x, float(inv), grid, seed, rand_bits)

    n = x.numel()
    return LBTQuantized(
        codes=codes, method=name, seed=seed, rand_bits=rand_bits,
        step=torch.tensor(step, dtype=dt, device=x.device), offset=None, grid=grid,
        gamma=gamma, g_max=g_max, clip=c, inv_step=float(inv),
        clipped_count=count, clipped_fraction=count / n, flushed=flushed)


def clipped_fraction(g: torch.Tensor, gamma: float = 1.0) -> float:
    """Fraction of elements of the **unquantized** gradient with ``|G| > c``, ``c = gamma * max|G|``.

    This is the ``r_t`` of the interval update (ALGORITHMS.md §1(a), reference
    ``(output_grad.abs() > grad_max * clip_ratio).float().mean()``), with ``c`` from :func:`clip_level`
    so it equals ``lbt(g, gamma=gamma).clipped_fraction``. It is 0.0 for an all-zero (flushed) tensor.

    Parameters
    ----------
    g : torch.Tensor
        The gradient (float; NaN/Inf raise ``ValueError``).
    gamma : float
        Clip ratio in ``(0, 1]`` (default 1.0, for which the result is always 0.0).

    Returns
    -------
    float
        ``#{|G| > c} / numel`` in ``[0, 1)``.
    """
    name = "clipped_fraction"
    gamma = _check_gamma(gamma, name)
    x = check_input(g, name).detach()
    g_max = _abs_max(x)
    c, flushed = clip_level(gamma, g_max, x.dtype)
    return 0.0 if flushed else _count_above(x, c, g_max) / x.numel()


# ---------------------------------------------------------------------------------------------------
# The learned interval
# ---------------------------------------------------------------------------------------------------

class _TopCounter:
    """``#{a > t}`` for a non-negative flat tensor ``a`` and many thresholds ``t``, exactly.

    Holds the ``k`` largest values sorted ascending; a count is exact when ``t >= `` the smallest held
    value (everything not held is ``<=`` it), otherwise ``k`` grows eightfold and the top values are
    taken again. ``t < 0`` counts every element. Calibration visits thresholds from ``g_max`` down to
    where about ``p*`` of the tensor is clipped, so ``k`` stays a small fraction of ``numel``.
    """

    def __init__(self, a: torch.Tensor, k: int = 4096):
        self.a, self.n = a, a.numel()
        self._take(min(k, self.n))

    def _take(self, k: int) -> None:
        self.k = k
        self.top = torch.topk(self.a, k, sorted=True).values.flip(0).cpu().numpy()   # ascending

    def count_above(self, t) -> int:
        if t < 0:
            return self.n
        while t < self.top[0] and self.k < self.n:
            self._take(min(self.n, self.k * 8))
        return self.k - int(np.searchsorted(self.top, t, side="right"))


_CONFIG_FIELDS = ("bits", "eta", "rho", "gamma_min", "gamma_max", "gamma0", "calib_momentum",
                  "calib_max_iters")
_STATE_FIELDS = ("gamma", "calibrated", "num_updates", "calib_iterations")


@dataclass
class LBTInterval:
    r"""The learned clip ratio ``gamma`` of one layer's LBT gradient quantizer (ALGORITHMS.md §1(a)).

    Update rule (reference ``train.py`` ``update_interval``, after every optimizer step)::

        r_t      = #{|G_t| > gamma_t * max|G_t|} / numel     (unquantized gradient, see clipped_fraction)
        p*       = rho / (2**bits - 1)                       (target clipped fraction)
        gamma_t+1 = clamp(gamma_t + eta * sign(r_t - p*), gamma_min, gamma_max),   sign(0) = 0

    ``gamma`` moves by exactly ``±eta`` (or 0) per step before the clamp. As in the reference
    (``if grad_max != 0``), a gradient that :func:`lbt` treats as all-zero (``flushed``) leaves
    ``gamma`` unchanged: it carries no information about the clip.

    **One-step lag.** The ``gamma`` used to quantize iteration ``t+1``'s gradient is the one updated
    from iteration ``t``'s gradient; ``r_t`` is measured with the ``gamma_t`` that quantized ``G_t``.
    A training step therefore reads::

        q = interval.quantize(G_t, seed=s_t)     # uses gamma_t; one sample for dX and dW (§1(b))
        ... dX = Q(G_t) W,  dW = Q(G_t)^T X ...
        interval.update_from(q)                  # gamma_{t+1} from r_t of q (no second pass over G_t)

    **First-batch calibration** (reference: the first iteration, with the optimizer step skipped):
    starting from ``gamma = gamma0`` and ``m = 0``, repeat::

        m     <- calib_momentum * m + (1 - calib_momentum) * r(gamma)
        gamma <- gamma + eta * sign(m - p*)

    until ``sign(m - p*) > 0`` (the step of that last iteration, ``+eta``, is applied, as in the
    reference's do-while loop), then clamp to ``[gamma_min, gamma_max]``. ``gamma`` is *not* clamped
    inside the loop: with an EMA this slow it overshoots downwards, and for ``gamma <= 0`` every element
    counts as clipped (``r = 1``), which bounds the loop at about
    ``gamma0/eta + ln(1/(1-p*)) / (1 - calib_momentum) + 2`` iterations (about 1000 at the defaults). ``calib_max_iters`` (default 10000) caps it; hitting the cap issues a
    ``RuntimeWarning`` and keeps the clamped ``gamma`` reached. An all-zero gradient (the reference
    would loop forever) is skipped with a ``RuntimeWarning``, leaving ``calibrated`` False.

    All constants are configuration, defaults from the reference code (ALGORITHMS.md §1(c));
    [PROPOSED] per §1: the paper's ULG bound and "optimal condition" were not retrieved, so the code's
    rule is taken as the method.

    Parameters
    ----------
    bits : int
        Gradient bit width ``b`` in ``2..16`` (default 4); sets ``p* = rho / (2**b - 1)``.
    eta : float
        Step of ``gamma`` per update and per calibration iteration (default 1e-3; the reference's
        ``1 - momentum`` with momentum 0.999).
    rho : float
        Target constant (default 1e-3); ``p*`` must be below 1.
    gamma_min, gamma_max : float
        Clamp bounds (default ``[1e-3, 1]``), with ``0 < gamma_min <= gamma_max <= 1``.
    gamma0 : float
        Initial ``gamma`` and the start of calibration (default 1.0).
    calib_momentum : float
        EMA factor of the calibration loop (default 0.999).
    calib_max_iters : int
        Iteration cap of the calibration loop (default 10000).

    Attributes
    ----------
    gamma : float
        Current clip ratio (state).
    calibrated : bool
        Whether :meth:`calibrate` has run to completion on a non-zero gradient (state).
    num_updates : int
        Number of updates applied by :meth:`update`/:meth:`update_from`/:meth:`apply_fraction`
        (state; skipped all-zero gradients are not counted).
    calib_iterations : int
        Iterations the last :meth:`calibrate` ran (state, for logging).
    target : float
        ``p* = rho / (2**bits - 1)`` (read-only).

    Notes
    -----
    ``gamma`` is a Python float (float64); the reference keeps it in a float32 buffer. The clip
    used for quantizing is rounded to the compute dtype by :func:`clip_level` either way.
    """

    bits: int = 4
    eta: float = 1e-3
    rho: float = 1e-3
    gamma_min: float = 1e-3
    gamma_max: float = 1.0
    gamma0: float = 1.0
    calib_momentum: float = 0.999
    calib_max_iters: int = 10_000
    gamma: float = field(init=False)
    calibrated: bool = field(init=False, default=False)
    num_updates: int = field(init=False, default=0)
    calib_iterations: int = field(init=False, default=0)

    def __post_init__(self):
        name = "LBTInterval"
        check_bits(self.bits, name, 2, 16)
        for f in ("eta", "rho", "gamma_min", "gamma_max", "gamma0", "calib_momentum"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
                raise ValueError(f"{name}: {f} must be a finite real number, got {v!r}")
            setattr(self, f, float(v))
        if not self.eta > 0:
            raise ValueError(f"{name}: eta must be > 0, got {self.eta!r}")
        if not 0 < self.gamma_min <= self.gamma_max <= 1:
            raise ValueError(f"{name}: need 0 < gamma_min <= gamma_max <= 1, got "
                             f"[{self.gamma_min!r}, {self.gamma_max!r}]")
        if not self.gamma_min <= self.gamma0 <= self.gamma_max:
            raise ValueError(f"{name}: gamma0 must be in [gamma_min, gamma_max] = "
                             f"[{self.gamma_min}, {self.gamma_max}], got {self.gamma0!r}")
        if not self.rho > 0 or not self.target < 1:
            raise ValueError(f"{name}: rho must be > 0 with p* = rho/(2**bits - 1) < 1, got rho={self.rho!r} "
                             f"(p* = {self.target!r})")
        if not 0 < self.calib_momentum < 1:
            raise ValueError(f"{name}: calib_momentum must be in (0, 1), got {self.calib_momentum!r}")
        cap = self.calib_max_iters
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ValueError(f"{name}: calib_max_iters must be an int >= 1, got {cap!r}")
        self.gamma = self.gamma0

    @property
    def target(self) -> float:
        """``p* = rho / (2**bits - 1)``: 6.67e-5 at 4 bits with the default ``rho``."""
        return self.rho / (2 ** self.bits - 1)

    # -- quantize and update ------------------------------------------------------------------

    def quantize(self, grad: torch.Tensor, *, seed: int | None = None,
                 generator: torch.Generator | None = None,
                 rand_bits: int = nx.DEFAULT_RAND_BITS) -> LBTQuantized:
        """``lbt(grad, self.bits, gamma=self.gamma, ...)``: quantize with the current ``gamma``.

        Does not change the state; pass the result to :meth:`update_from` afterwards.
        """
        return lbt(grad, self.bits, gamma=self.gamma, seed=seed, generator=generator, rand_bits=rand_bits)

    def apply_fraction(self, r: float) -> float:
        """Apply one update from a measured clipped fraction ``r`` and return the step taken before
        the clamp (``-eta``, ``0.0`` or ``+eta``)."""
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0.0 <= float(r) <= 1.0:
            raise ValueError(f"LBTInterval.apply_fraction: r must be a fraction in [0, 1], got {r!r}")
        p = self.target
        delta = self.eta if r > p else (-self.eta if r < p else 0.0)   # sign(0) = 0
        self.gamma = min(max(self.gamma + delta, self.gamma_min), self.gamma_max)
        self.num_updates += 1
        return delta

    def update(self, grad: torch.Tensor) -> float:
        """Measure ``r_t`` on the unquantized gradient ``grad`` with the current ``gamma`` and update.

        Returns ``r_t`` (0.0, with no update, for a gradient treated as all-zero).
        """
        name = "LBTInterval.update"
        x = check_input(grad, name).detach()
        g_max = _abs_max(x)
        c, flushed = clip_level(self.gamma, g_max, x.dtype)
        if flushed:
            return 0.0
        r = _count_above(x, c, g_max) / x.numel()
        self.apply_fraction(r)
        return r

    def update_from(self, result: LBTQuantized) -> float:
        """Update from the clipped fraction an :func:`lbt` result already measured (no extra pass).

        ``result`` must have been produced with the current ``gamma`` and ``bits`` (e.g. by
        :meth:`quantize`), otherwise ``ValueError``. Returns ``r_t``.
        """
        if not isinstance(result, LBTQuantized):
            raise TypeError(f"LBTInterval.update_from: expected an LBTQuantized, got {type(result).__name__}")
        if result.gamma != self.gamma or result.grid.bits != self.bits:
            raise ValueError(f"LBTInterval.update_from: result was quantized with gamma={result.gamma}, "
                             f"bits={result.grid.bits}; the interval holds gamma={self.gamma}, "
                             f"bits={self.bits}")
        if result.flushed:
            return 0.0
        self.apply_fraction(result.clipped_fraction)
        return result.clipped_fraction

    # -- calibration ------------------------------------------------------------------------

    def calibrate(self, grad: torch.Tensor) -> float:
        """First-batch calibration of ``gamma`` on the unquantized gradient (see the class docstring).

        ``r(gamma)`` is counted against ``fl(gamma * g_max)`` exactly as :func:`clipped_fraction` does
        (without the zero floor, so ``gamma <= 0`` inside the loop clips every element as in the
        reference). Each count is a binary search in the largest ``|G|`` values (:class:`_TopCounter`),
        so the loop costs a partial sort of the tail it visits, not a pass per iteration.

        Returns
        -------
        float
            The new ``gamma`` (also stored).
        """
        name = "LBTInterval.calibrate"
        x = check_input(grad, name).detach()
        a = x.abs().flatten()
        g_max = float(a.max())
        if g_max == 0.0:
            warnings.warn(f"{name}: all-zero gradient, calibration skipped (gamma stays {self.gamma})",
                          RuntimeWarning, stacklevel=2)
            return self.gamma
        counter = _TopCounter(a)
        npd = _NP_DTYPE[x.dtype]
        n, p = a.numel(), self.target
        mom, w = self.calib_momentum, 1.0 - self.calib_momentum
        gamma, m, it = self.gamma0, 0.0, 0
        for it in range(1, self.calib_max_iters + 1):
            clipped = counter.count_above(npd(gamma * g_max))
            m = mom * m + w * (clipped / n)
            s = (m > p) - (m < p)
            gamma += self.eta * s
            if s > 0:
                break
        else:
            warnings.warn(f"{name}: calibration did not converge in calib_max_iters={self.calib_max_iters} "
                          f"iterations (gamma={gamma:.6g}, m={m:.3g}, p*={p:.3g}); keeping the clamped gamma",
                          RuntimeWarning, stacklevel=2)
        self.gamma = min(max(gamma, self.gamma_min), self.gamma_max)
        self.calibrated = True
        self.calib_iterations = it
        return self.gamma

    # -- checkpointing ----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Plain-Python state (``torch.save``-able): ``gamma``, ``calibrated``, ``num_updates``,
        ``calib_iterations`` and the configuration under ``"config"`` (checked on load)."""
        state = {f: getattr(self, f) for f in _STATE_FIELDS}
        state["config"] = {f: getattr(self, f) for f in _CONFIG_FIELDS}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore the state saved by :meth:`state_dict`.

        Raises ``ValueError`` when keys are missing, the saved configuration differs from this
        object's (e.g. a 4-bit ``gamma`` loaded into an 8-bit layer), or ``gamma`` is out of bounds.
        """
        name = "LBTInterval.load_state_dict"
        missing = [k for k in (*_STATE_FIELDS, "config") if k not in state]
        if missing:
            raise ValueError(f"{name}: state is missing {missing}")
        mine = {f: getattr(self, f) for f in _CONFIG_FIELDS}
        if dict(state["config"]) != mine:
            raise ValueError(f"{name}: saved config {state['config']} differs from this interval's {mine}")
        gamma = float(state["gamma"])
        if not self.gamma_min <= gamma <= self.gamma_max:
            raise ValueError(f"{name}: gamma {gamma} outside [{self.gamma_min}, {self.gamma_max}]")
        self.gamma = gamma
        self.calibrated = bool(state["calibrated"])
        self.num_updates = int(state["num_updates"])
        self.calib_iterations = int(state["calib_iterations"])

