"""The bridge from a :class:`~host.recipes.Recipe` to the golden-model quantizers of ``host.quant``.

Nothing here rounds a number: every code comes from a ``host.quant`` function (the one source of truth);
this module only picks the function and its arguments per recipe and per GEMM operand, and lays the result
out as a GEMM :class:`~host.nn.operand.Operand`.

Gradient layout. The layers hand the output gradient over as the GEMM matrix ``G_mat`` (rows = samples for
a linear layer, tokens for a sequence, ``(n, h, w)`` positions for a convolution; columns = output
channels). Quantizers that are per tensor (LUQ, LBT, PTQ, per-tensor SR/RDN) or per row/column of that
matrix (ShiftQuant, the U-path per-column quantizer of StatQuant) see ``G_mat`` as is; the per-sample ones
(PSQ on the B path, BHQ) see the ``(N, positions * C_out)`` view of the same memory, so "row" is a sample as
in ALGORITHMS.md §0 (the elements of a row are ordered ``(h, w, c)`` rather than ``(c, h, w)``; only the
order of the random draws differs).

Where each quantizer's scales fall ([DERIVED], needed for an exact integer GEMM): a scale must be constant
along the GEMM's reduction index. B (``dX = G W``) reduces over output channels: per-sample/per-row scales
are fine; ShiftQuant puts its per-channel exponents *on* that index as shifts (``axis="col"``). U
(``dW = Gᵀ X``) reduces over rows: per-column scales are fine (StatQuant's ``left=False``); ShiftQuant uses
``axis="row"``. Hence ShiftQuant and PSQ need two quantizations of G (``Recipe.bifurcate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from host import quant as Q
from host.nn.operand import Operand
from host.quant.core import check_input_range
from host.quant.shiftquant import _native_channels
from host.recipes import FORWARD_QUANTIZERS, GRAD_QUANTIZERS, Recipe

__all__ = ["forward_operand", "GradOperands", "grad_operands", "PER_TENSOR_GRAD", "check_recipe_layout"]

PER_TENSOR_GRAD = ("none", "int_sr", "int_rdn", "luq", "lbt", "ptq")
"""Gradient quantizers with one scale for the tensor: one sample can feed both B and U."""


def check_recipe_layout(r: Recipe) -> None:
    """Refuse recipes whose gradient scales would vary along a GEMM's reduction index (see module doc)."""
    if not r.bifurcate:
        if r.grad_quant not in PER_TENSOR_GRAD or (r.grad_quant_u not in (None, r.grad_quant)):
            raise ValueError(f"recipe {r.name!r}: grad_quant={r.grad_quant!r} (U: {r.u_quant!r}) needs "
                             f"bifurcate=True: its scales depend on an axis that is the reduction index of "
                             f"one of the two gradient GEMMs; one-sample quantizers are {list(PER_TENSOR_GRAD)}")
    if r.u_quant == "bhq":
        raise ValueError(f"recipe {r.name!r}: BHQ is a B-path quantizer only (ALGORITHMS.md §2(b))")


# ---------------------------------------------------------------------------------------------------
# forward (W and A)
# ---------------------------------------------------------------------------------------------------

def forward_operand(x: torch.Tensor, quant: str, bits: int, kind: str, recipe: Recipe, *,
                    clip: torch.Tensor | None = None, signed: bool = False,
                    seen_negative: bool = False) -> tuple[torch.Tensor, Operand, bool]:
    """Quantize a weight (``kind="weight"``) or an activation (``kind="act"``) for the F GEMM.

    Returns
    -------
    (x_ste, operand, seen_negative)
        ``x_ste`` is what the layer's autograd function receives as the differentiable input: ``x`` itself
        for the identity straight-through estimators (INT/SAWB/INT8, §0), the DSQ STE output (masked
        gradient, learned-clip gradient, §1(a)) for ``dsq``. ``operand`` holds the codes (``x``'s shape,
        per-tensor scale). ``seen_negative`` is SAWB's sticky activation state after this call.
    """
    if quant == "none":
        return x, Operand(x, "float"), seen_negative
    xd = x.detach()
    if quant == "int_sym":
        q = Q.int_symmetric(xd, bits)
        return x, Operand(q.codes, scale=q.step), seen_negative
    if quant == "int_unsigned":
        if kind == "weight":
            raise ValueError("forward quantizer 'int_unsigned' is for activations; weights are signed")
        # stateless per-tensor choice: the unsigned grid only where it can hold the tensor (no zero-point)
        q = _int_unsigned_or_symmetric(xd, bits)
        return x, Operand(q.codes, scale=q.step), seen_negative
    if quant == "sawb":
        q = Q.sawb(xd, bits, kind="weight" if kind == "weight" else "activation", coeffs=recipe.sawb_coeffs,
                   weight_grid=recipe.sawb_weight_grid, seen_negative=seen_negative,
                   signed_act_grid=recipe.sawb_signed_act_grid)
        return x, Operand(q.codes, scale=q.step), q.seen_negative
    if quant == "int8_asym":
        # StatQuant's forward: zero-aligned min/max for weights, plain min/max for activations (§2(a)).
        q = Q.int8_per_tensor(xd, zero_aligned=(kind == "weight"))
        return x, Operand(q.codes, scale=q.step, offset=q.offset), seen_negative
    if quant == "dsq":
        # the STE output and the codes from one pass (bit for bit dsq_*_ste and dsq_*); x's gradient in x's
        # layout where x's producer takes either (the convolutions' rule, host.nn.functional)
        from host.nn.functional import _dx_channels_last
        x_ste, q = Q.dsq_ste_quantize(x, clip, bits, "weight" if kind == "weight" else "act", signed=signed,
                                      grad_like_input=kind != "weight" and _dx_channels_last(x))
        return x_ste, Operand(q.codes, scale=q.step), seen_negative
    raise ValueError(f"unknown forward quantizer {quant!r}; valid: {list(FORWARD_QUANTIZERS)}")


def _int_unsigned_or_symmetric(xd: torch.Tensor, bits: int):
    """``Q.int_unsigned(xd, bits)`` if ``min(xd) >= 0``, else ``Q.int_symmetric(xd, bits)``, with one
    reduction of ``xd``: the input check's min and max, handed to ``int_unsigned`` (the same min as
    ``xd.min()``; the zero's sign is never looked at). Input the check refuses (NaN/Inf, not float, empty)
    takes the two-reduction form, so that each quantizer raises its own error as before."""
    try:
        _, lo, hi = check_input_range(xd, "int_unsigned", any_order=True)
    except (TypeError, ValueError):
        return Q.int_unsigned(xd, bits) if float(xd.min()) >= 0 else Q.int_symmetric(xd, bits)
    return Q.int_unsigned(xd, bits, x_range=(lo, hi)) if lo >= 0 else Q.int_symmetric(xd, bits)


# ---------------------------------------------------------------------------------------------------
# gradients (B and U)
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class GradOperands:
    """The quantized output gradient for the two backward GEMMs, both in ``G_mat`` layout ``(N', C_out)``.

    ``b_post`` (BHQ) maps the B GEMM's result ``(N', K)`` to ``dX`` (applies ``T⁻¹`` over samples).
    ``info`` carries what tests and plots want (seeds, LBT gamma, the host.quant results).
    """

    b: Operand
    u: Operand
    b_post: Callable[[torch.Tensor], torch.Tensor] | None
    info: dict


@dataclass(frozen=True, eq=False)
class InverseTransform:
    """BHQ's ``b_post``: the B GEMM's result ``(N', K)`` -> ``dX = T⁻¹ (Ŷ W)``, ``T`` (``transform``) acting
    on the ``n`` samples (in float64, the golden model's transform dtype). ``T`` acts on samples and the
    GEMM on channels, so they commute (§2(a) step 7). A class rather than a closure so that a fused B
    path (``host.nn.fast_stat.conv_dgrad_transformed``) can apply the same ``T``."""

    transform: object
    n: int

    def __call__(self, dx_mat: torch.Tensor) -> torch.Tensor:
        y = self.transform.inverse(dx_mat.reshape(self.n, -1).double())
        return y.to(dx_mat.dtype).reshape(dx_mat.shape)


def _per_sample(q, n_rows: int, rows_per_sample: int, g_shape) -> Operand:
    """A per-sample affine result on the ``(N, L*C)`` view, as a ``G_mat`` operand (scales repeated)."""
    step = q.step.reshape(-1, 1).repeat_interleave(rows_per_sample, dim=0)
    off = q.offset.reshape(-1, 1).repeat_interleave(rows_per_sample, dim=0)
    return Operand(q.codes.reshape(g_shape), scale=step, offset=off)


def _one(g: torch.Tensor, quant: str, bits: int, path: str, recipe: Recipe, seed: int,
         rows_per_sample: int, interval, g_range=None) -> tuple[Operand, Callable | None, dict]:
    """``g_range``: ``(min, max)`` of the already checked ``g`` (see :func:`host.quant.shiftquant`'s
    ``x_range``), or ``None``."""
    rb = recipe.rand_bits
    if quant == "none":
        return Operand(g, "float"), None, {}
    if quant == "int_sr":
        q = Q.shiftquant(g, bits, axis="row", e_max=0, rounding="sr", seed=seed, rand_bits=rb)
        return Operand(q.codes, scale=q.scale), None, {"q": q}
    if quant == "int_rdn":
        q = Q.int_symmetric(g, bits)
        return Operand(q.codes, scale=q.step), None, {"q": q}
    if quant == "shiftquant":
        # exponents on the reduction index: output channels for B, rows for U (§3(b), [PROPOSED])
        q = Q.shiftquant(g, bits, axis="col" if path == "B" else "row", e_max=recipe.shift_e_max,
                         rounding="sr", scale=recipe.shift_scale, seed=seed, rand_bits=rb, x_range=g_range)
        mant, shift = Q.shift_operands(q, broadcast=True)   # per channel: the GEMMs broadcast it
        scale = q.scale * 2.0 ** -recipe.shift_e_max      # readout factor s_0 * 2**-E_max (exact)
        return Operand(mant, "shift", shift=shift, scale=scale), None, {"q": q}
    if quant == "luq":
        if recipe.smp_samples > 1:
            q = Q.luq_smp(g, recipe.smp_samples, max_exp=recipe.luq_max_exp, alpha_mode=recipe.luq_alpha_mode,
                          seed=seed, rand_bits=rb)
            return Operand(q.codes, "log", scale=q.alpha, sample_mean=True), None, {"q": q}
        q = Q.luq(g, max_exp=recipe.luq_max_exp, alpha_mode=recipe.luq_alpha_mode, seed=seed, rand_bits=rb,
                  rounding=recipe.luq_rounding,
                  underflow=None if recipe.luq_underflow == "stochastic" else recipe.luq_underflow)
        return Operand(q.codes, "log", scale=q.alpha), None, {"q": q}
    if quant == "lbt":
        info = {}
        if recipe.lbt_adaptive:
            fresh = False
            if recipe.lbt_calibrate and not interval.calibrated:
                interval.calibrate(g)
                fresh = True
            q = interval.quantize(g, seed=seed, rand_bits=rb)
            # one-step lag (§1(a)): gamma_{t+1} comes from this iteration's clipped fraction; updating here,
            # right after G_t is quantized, is the same as after the optimizer step
            if not fresh:
                interval.update_from(q)
            info["gamma_next"] = interval.gamma
        else:
            q = Q.lbt(g, bits, gamma=recipe.lbt_gamma, seed=seed, rand_bits=rb)
        info.update(q=q, gamma=q.gamma)
        return Operand(q.codes, scale=q.step), None, info
    if quant == "ptq":
        q = Q.ptq(g, bits, seed=seed, rand_bits=rb)
        return Operand(q.codes, scale=q.step, offset=q.offset), None, {"q": q}
    if quant == "psq":
        if path == "U":      # per column (StatQuant left=False): per output channel, off the reduction
            q = Q.psq(g, bits, axis="col", seed=seed, rand_bits=rb)
            return Operand(q.codes, scale=q.step, offset=q.offset), None, {"q": q}
        n = g.shape[0] // rows_per_sample
        q = Q.psq(g.reshape(n, -1), bits, axis="row", seed=seed, rand_bits=rb)
        return _per_sample(q, n, rows_per_sample, g.shape), None, {"q": q}
    if quant == "bhq":
        n = g.shape[0] // rows_per_sample
        q = Q.bhq(g.reshape(n, -1), bits, seed=seed, rand_bits=rb)
        post = None if q.transform is None else InverseTransform(q.transform, n)
        return _per_sample(q, n, rows_per_sample, g.shape), post, {"q": q}
    raise ValueError(f"unknown gradient quantizer {quant!r}; valid: {list(GRAD_QUANTIZERS)}")


def grad_operands(g_mat: torch.Tensor, recipe: Recipe, *, seed_b: int, seed_u: int,
                  rows_per_sample: int = 1, interval=None) -> GradOperands:
    """Quantize the output gradient for the B and U GEMMs as the recipe says.

    Parameters
    ----------
    g_mat : (N', C_out) float tensor
        The unquantized output gradient in GEMM layout.
    recipe : Recipe
        The layer's effective recipe.
    seed_b, seed_u : int
        Random streams of the B-path and U-path samples (``seed_u`` is unused without bifurcation: one
        sample, ``seed_b``, feeds both GEMMs, §1(b)/§4(b)).
    rows_per_sample : int
        Rows of ``g_mat`` per sample (output positions of a conv; 1 for a linear layer).
    interval : host.quant.LBTInterval, optional
        The layer's learned interval (``lbt`` with ``lbt_adaptive``).
    """
    g = g_mat.detach().contiguous()
    if g.shape[0] % rows_per_sample:
        raise ValueError(f"grad_operands: {g.shape[0]} rows are not a multiple of rows_per_sample={rows_per_sample}")
    g_range = None
    if recipe.bifurcate and recipe.grad_quant == recipe.u_quant == "shiftquant" \
            and _native_channels(g, recipe.shift_e_max) is None:
        # one NaN/Inf test of g for both ShiftQuant samples (the same ValueError as shiftquant's own); where
        # ShiftQuant's native channel pass runs, that pass tests g (no reduction of its own) and this is left out
        _, lo, hi = check_input_range(g, "shiftquant", min_dim=2)
        g_range = (lo, hi)
    b, post, info_b = _one(g, recipe.grad_quant, recipe.grad_bits, "B", recipe, seed_b, rows_per_sample, interval,
                           g_range)
    if recipe.bifurcate:
        u, _, info_u = _one(g, recipe.u_quant, recipe.u_bits, "U", recipe, seed_u, rows_per_sample, interval,
                            g_range)
    else:
        if post is not None:
            raise ValueError("grad_operands: a transformed quantizer cannot feed the U GEMM")
        u, info_u = b, info_b
    info = {"seed_b": seed_b, "seed_u": seed_u if recipe.bifurcate else seed_b, "B": info_b, "U": info_u}
    return GradOperands(b=b, u=u, b_post=post, info=info)
