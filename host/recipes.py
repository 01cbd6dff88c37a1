"""Training recipes: one named, frozen, printable configuration per seed method (ALGORITHMS.md §1-§4).

A :class:`Recipe` says which golden-model quantizer (``host.quant``) feeds which operand of which training
GEMM (ALGORITHMS.md §0: F ``Y = Q_A(X) Q_W(W)ᵀ``, B ``dX = Q_G^B(G) Q_W(W)``, U ``dW = Q_G^U(G)ᵀ Q_A(X)``),
with every [PROPOSED] choice as a field. Recipes are looked up by name and any field can be overridden::

    r = get_recipe("lbt4")                       # as registered
    r = get_recipe("lbt4", grad_bits=5)          # bit widths (or any field) overridden -> a new recipe
    print(r.describe())                          # every field, for reports

=================  ===============================================================================
``fp32``           no quantization (the baseline; the same modules run float GEMMs)
``int8``           INT8 baseline: symmetric per-tensor W/A (RDN), per-tensor symmetric SR gradient
``shiftquant4``    Guo et al. §3: W4A4 zero-point-free RDN (INT4 weights, UINT4 activations after a ReLU),
                   ShiftQuant G (SR) twice (exponents on each GEMM's reduction index), L1 BatchNorm/LayerNorm
``luq4``           Chmiel et al. §4: SAWB INT4 W/A, LUQ FP4 [1,3,0] G, one sample for B and U
``luq4-smp2``      ``luq4`` + SMP with 2 samples
``luq4-fnt``       ``luq4-smp2`` + high-precision fine-tuning (FNT) for the last epoch(s), §4 Eq. 17
``psq4``           Chen et al. §2: INT8 forward, PSQ 4-bit G on B, per-column 8-bit G on U (bifurcated)
``bhq5``           Chen et al. §2: INT8 forward, BHQ 5-bit G on B, per-column 8-bit G on U (bifurcated)
``lbt4``/``lbt5``  Kim et al. §1: DSQ learned-clip W/A, LBT G with the adaptive interval gamma
``naive-log4``     LUQ's naive *biased* baseline: ``luq4`` with FP4 [1,3,0] round-to-nearest G (no SR, no
                   stochastic underflow), LUQ §3 / Eq. 13
``naive4``         a naive *biased* 4-bit gradient baseline: SAWB forward, INT4 round-to-nearest G
=================  ===============================================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["Recipe", "RECIPES", "get_recipe", "recipe_names", "FORWARD_QUANTIZERS", "GRAD_QUANTIZERS",
           "EDGE_MODES", "NORM_MODES"]

FORWARD_QUANTIZERS = ("none", "int_sym", "int_unsigned", "sawb", "dsq", "int8_asym")
"""Forward (W/A) quantizers: ``none``; ``int_sym`` = :func:`host.quant.int_symmetric` (per tensor, RDN);
``int_unsigned`` (activations only) = :func:`host.quant.int_unsigned` (zero-point-free max scaling onto
``[0, 2**b - 1]``) for a tensor with no negative element, :func:`host.quant.int_symmetric` otherwise;
``sawb`` = :func:`host.quant.sawb`; ``dsq`` = :func:`host.quant.dsq_weight`/``dsq_activation`` with learned
clips; ``int8_asym`` = :func:`host.quant.int8_per_tensor` (StatQuant's INT8 forward)."""

GRAD_QUANTIZERS = ("none", "int_sr", "int_rdn", "shiftquant", "luq", "psq", "bhq", "ptq", "lbt")
"""Gradient quantizers: ``int_sr`` = per-tensor symmetric SR (:func:`host.quant.shiftquant` with
``e_max=0``, bit-identical to per-tensor symmetric quantization, §3(f)4); ``int_rdn`` =
:func:`host.quant.int_symmetric` on G (biased, RDN); the others are the methods' quantizers."""

EDGE_MODES = ("int8", "fp32", "same")
NORM_MODES = ("keep", "l1")


@dataclass(frozen=True)
class Recipe:
    """A named training configuration. Frozen: derive variants with :meth:`replace` / :func:`get_recipe`.

    Attributes
    ----------
    name, description, source :
        Identity, one line, and the ALGORITHMS.md section it implements.
    weight_quant, act_quant : str
        Forward quantizers (:data:`FORWARD_QUANTIZERS`).
    fwd_bits : int
        Bits of the forward quantizers (``int8_asym`` is always 8).
    grad_quant : str
        Gradient quantizer (:data:`GRAD_QUANTIZERS`) of the B path (and of U unless ``grad_quant_u``).
    grad_bits : int
        Gradient bits of the B path (StatQuant ``--bbits``).
    grad_quant_u, grad_bits_u :
        U-path quantizer and bits when they differ (StatQuant ``--bwbits``, per-column quantizer);
        ``None`` = as the B path.
    bifurcate : bool
        Quantize G twice, independently, for B and U (StatQuant's "gradient bifurcation", §2(b); ShiftQuant
        needs it because the exponents must fall on each GEMM's reduction index, §3(b)). ``False``: one
        sample serves both (LUQ §4(b), LBT §1(b)).
    shift_e_max, shift_scale : ShiftQuant ``e_max`` and ``scale`` (§3(a), [PROPOSED] 3 / "float").
    luq_max_exp, luq_alpha_mode : LUQ ``max_exp`` (6 = strict FP4, hardware; 7 = reference) and ``alpha_mode``.
    luq_rounding : {"sr", "rdn"}
        LUQ's rounding: "sr" (the method) or "rdn" (the biased naive baseline, :func:`host.quant.luq`).
    luq_underflow : {"stochastic", "flush", "nearest"}
        Below ``alpha``: "stochastic" (Eq. 10, the method; the only choice with "sr"), or, with "rdn",
        "flush" (``|x| < alpha -> 0``) or "nearest" (to 0 or ``alpha``).
    smp_samples : int
        LUQ SMP samples (1 = plain LUQ).
    sawb_coeffs, sawb_weight_grid, sawb_signed_act_grid : SAWB options (§4(a)); ``int4`` signed activations
        ([PROPOSED] 4-bit alternative to the reference's 5-bit ``ref24``).
    lbt_adaptive, lbt_gamma, lbt_eta, lbt_rho : LBT interval (§1(a)); ``lbt_adaptive=False`` is the fixed
        ``gamma`` baseline.
    lbt_calibrate : bool
        First-iteration calibration of gamma with the optimizer step skipped (§1(a) "Initialization").
    qparam_lr : float
        Adam learning rate of the DSQ learned clips (LBT reference ``q_optimizer``, 1e-5).
    norm : {"keep", "l1"}
        ``l1`` replaces BatchNorm2d/LayerNorm by :class:`host.nn.L1BatchNorm2d`/:class:`host.nn.L1LayerNorm`.
    edge : {"int8", "fp32", "same"}
        Precision of the first and last layers: the ``int8`` recipe's quantizers ([PROPOSED], §1(b)),
        float, or this recipe's own.
    fnt_epochs : int
        LUQ FNT: the last ``fnt_epochs`` epochs run with only the weights quantized (§4 "FNT").
    fnt_lr_base : float or None
        FNT peak learning rate ``LR_base`` (not retrieved; ``None`` = the optimizer's initial lr, [PROPOSED]).
    fnt_schedule : {"prose", "printed"}
        Eq. 17 as the prose reads (default, [PROPOSED]) or as printed.
    rand_bits : int
        Random bits per stochastic-rounding draw (``hw.numerics.RAND_BITS_ALLOWED``).
    """

    name: str
    description: str = ""
    source: str = ""
    weight_quant: str = "none"
    act_quant: str = "none"
    fwd_bits: int = 4
    grad_quant: str = "none"
    grad_bits: int = 4
    grad_quant_u: str | None = None
    grad_bits_u: int | None = None
    bifurcate: bool = False
    shift_e_max: int = 3
    shift_scale: str = "float"
    luq_max_exp: int = 6
    luq_alpha_mode: str = "float"
    luq_rounding: str = "sr"
    luq_underflow: str = "stochastic"
    smp_samples: int = 1
    sawb_coeffs: str = "ref"
    sawb_weight_grid: str = "sym15"
    sawb_signed_act_grid: str = "int4"
    lbt_adaptive: bool = True
    lbt_gamma: float = 1.0
    lbt_eta: float = 1e-3
    lbt_rho: float = 1e-3
    lbt_calibrate: bool = True
    qparam_lr: float = 1e-5
    norm: str = "keep"
    edge: str = "int8"
    fnt_epochs: int = 0
    fnt_lr_base: float | None = None
    fnt_schedule: str = "prose"
    rand_bits: int = 16
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self):
        def choice(fname, allowed):
            v = getattr(self, fname)
            if v not in allowed:
                raise ValueError(f"recipe {self.name!r}: {fname} must be one of {list(allowed)}, got {v!r}")
        choice("weight_quant", FORWARD_QUANTIZERS)
        choice("act_quant", FORWARD_QUANTIZERS)
        choice("grad_quant", GRAD_QUANTIZERS)
        if self.grad_quant_u is not None:
            choice("grad_quant_u", GRAD_QUANTIZERS)
        choice("edge", EDGE_MODES)
        choice("norm", NORM_MODES)
        choice("fnt_schedule", ("prose", "printed"))
        choice("luq_max_exp", (6, 7))
        choice("luq_rounding", ("sr", "rdn"))
        choice("luq_underflow", ("stochastic", "flush", "nearest") if self.luq_rounding == "rdn" else ("stochastic",))
        choice("rand_bits", (4, 8, 16))
        for fname in ("fwd_bits", "grad_bits"):
            v = getattr(self, fname)
            if not isinstance(v, int) or not 2 <= v <= 16:
                raise ValueError(f"recipe {self.name!r}: {fname} must be an int in 2..16, got {v!r}")
        if self.grad_bits_u is not None and (not isinstance(self.grad_bits_u, int) or not 2 <= self.grad_bits_u <= 16):
            raise ValueError(f"recipe {self.name!r}: grad_bits_u must be an int in 2..16, got {self.grad_bits_u!r}")
        if not isinstance(self.smp_samples, int) or self.smp_samples < 1:
            raise ValueError(f"recipe {self.name!r}: smp_samples must be an int >= 1, got {self.smp_samples!r}")
        if self.smp_samples > 1 and self.grad_quant != "luq":
            raise ValueError(f"recipe {self.name!r}: smp_samples > 1 needs grad_quant='luq'")
        if self.smp_samples > 1 and self.luq_rounding != "sr":
            raise ValueError(f"recipe {self.name!r}: smp_samples > 1 needs luq_rounding='sr' "
                             f"(deterministic samples are identical)")
        if not isinstance(self.fnt_epochs, int) or self.fnt_epochs < 0:
            raise ValueError(f"recipe {self.name!r}: fnt_epochs must be an int >= 0, got {self.fnt_epochs!r}")
        if self.grad_quant == "bhq" and self.grad_quant_u in (None, "bhq"):
            raise ValueError(f"recipe {self.name!r}: BHQ is a B-path quantizer only (§2(b)); set grad_quant_u")

    # -- derived views ------------------------------------------------------------------------

    @property
    def quantized(self) -> bool:
        """Whether any GEMM operand is quantized."""
        return not (self.weight_quant == self.act_quant == self.grad_quant == "none")

    @property
    def u_quant(self) -> str:
        return self.grad_quant_u or self.grad_quant

    @property
    def u_bits(self) -> int:
        return self.grad_bits_u or self.grad_bits

    def replace(self, **changes) -> "Recipe":
        """A copy with fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def edge_recipe(self) -> "Recipe":
        """The recipe of the first and last layers (see :attr:`edge`)."""
        if self.edge == "same" or not self.quantized:
            return self
        return get_recipe(self.edge)

    def fnt_recipe(self) -> "Recipe":
        """The FNT phase: weights keep their forward quantizer, everything else is float (§4 "FNT";
        the paper's FP16 is FP32 here, [PROPOSED] on CPU)."""
        return self.replace(name=f"{self.name}[fnt]", act_quant="none", grad_quant="none",
                            grad_quant_u=None, grad_bits_u=None, bifurcate=False, smp_samples=1,
                            fnt_epochs=0)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["notes"] = list(self.notes)
        return d

    def describe(self) -> str:
        """Every field, one per line: printed in every report so a run can be reproduced."""
        lines = [f"recipe {self.name}: {self.description}", f"  source: {self.source}"]
        for f in dataclasses.fields(self):
            if f.name in ("name", "description", "source", "notes"):
                continue
            lines.append(f"  {f.name} = {getattr(self, f.name)!r}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _r(**kw) -> Recipe:
    return Recipe(**kw)


_LUQ = dict(weight_quant="sawb", act_quant="sawb", fwd_bits=4, grad_quant="luq", grad_bits=4,
            source="ALGORITHMS.md §4 (Chmiel et al., ICLR 2023)")
_STATQ = dict(weight_quant="int8_asym", act_quant="int8_asym", fwd_bits=8, grad_quant_u="psq",
              grad_bits_u=8, bifurcate=True, edge="same",
              source="ALGORITHMS.md §2 (Chen et al., NeurIPS 2020)")
_LBT = dict(weight_quant="dsq", act_quant="dsq", grad_quant="lbt",
            source="ALGORITHMS.md §1 (Kim et al., ECCV 2024)")

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    _r(name="fp32", description="FP32 baseline, no quantization", source="-", edge="same"),
    _r(name="int8", description="INT8 baseline: symmetric per-tensor W/A (RDN), per-tensor symmetric SR G",
       source="ALGORITHMS.md §0/§5 (this project's baseline)", weight_quant="int_sym", act_quant="int_sym",
       fwd_bits=8, grad_quant="int_sr", grad_bits=8, edge="same"),
    _r(name="shiftquant4", description="W4A4G4: zero-point-free INT4 W / UINT4 A (RDN), ShiftQuant G (SR), "
       "L1 norms", source="ALGORITHMS.md §3 (Guo et al. 2024; every choice [PROPOSED])", weight_quant="int_sym",
       act_quant="int_unsigned", fwd_bits=4, grad_quant="shiftquant", grad_bits=4, bifurcate=True, norm="l1",
       notes=("G is ShiftQuant-ed twice: per-output-channel exponents for B (reduction over C_out), "
              "per-row exponents for U (reduction over batch x positions), §3(b) [PROPOSED]",
              "activations: §3(b)'s 'symmetric' read as zero-point-free max scaling; a non-negative "
              "(post-ReLU) activation uses the unsigned grid [0, 15] instead of wasting the sign bit "
              "[PROPOSED]; act_quant='int_sym' is the literal symmetric [-7, 7] alternative",)),
    _r(name="luq4", description="SAWB INT4 W/A, LUQ FP4 [1,3,0] gradients (one sample for B and U)", **_LUQ),
    _r(name="luq4-smp2", description="luq4 + SMP (2 LUQ samples averaged)", smp_samples=2, **_LUQ),
    _r(name="luq4-fnt", description="luq4-smp2 + high-precision fine-tuning for the last epoch",
       smp_samples=2, fnt_epochs=1, **_LUQ),
    _r(name="psq4", description="INT8 forward, PSQ 4-bit G on B, per-column 8-bit G on U (bifurcated)",
       grad_quant="psq", grad_bits=4, **_STATQ),
    _r(name="bhq5", description="INT8 forward, BHQ 5-bit G on B, per-column 8-bit G on U (bifurcated)",
       grad_quant="bhq", grad_bits=5, **_STATQ),
    _r(name="lbt4", description="DSQ learned-clip W4A4, LBT G4 with the adaptive interval", fwd_bits=4,
       grad_bits=4, **_LBT),
    _r(name="lbt5", description="DSQ learned-clip W5A5, LBT G5 with the adaptive interval", fwd_bits=5,
       grad_bits=5, **_LBT),
    _r(name="naive-log4", description="LUQ's naive biased baseline: SAWB INT4 W/A, FP4 [1,3,0] G, round-to-"
       "nearest, underflow flushed to zero", weight_quant="sawb", act_quant="sawb", fwd_bits=4, grad_quant="luq",
       grad_bits=4, luq_rounding="rdn", luq_underflow="flush",
       source="ALGORITHMS.md §4(a) (LUQ §3-4: RDN and deterministic underflow are biased)",
       notes=("luq4 with neither of LUQ's unbiasing steps: in range, the nearest FP4 level in linear value "
              "(ties away from zero, Eq. 13's midpoint); below alpha, the threshold T_alpha without "
              "stochastic underflow (|x| < alpha -> 0): host.quant.luq(rounding='rdn', underflow='flush'), "
              "[PROPOSED] reading of the paper's naive baseline",
              "luq_underflow='nearest' (to 0 or alpha) keeps the in-range bias only",)),
    _r(name="naive4", description="naive biased 4-bit gradients: SAWB INT4 W/A, INT4 round-to-nearest G",
       source="ALGORITHMS.md §4(a) (LUQ §3: RDN on gradients is biased)", weight_quant="sawb",
       act_quant="sawb", fwd_bits=4, grad_quant="int_rdn", grad_bits=4,
       notes=("a uniform-grid variant of the naive baseline: per-tensor INT4 RDN (int_symmetric); "
              "the LUQ paper's own naive baseline (FP4 log grid, RDN) is naive-log4",)),
)}


def recipe_names() -> list[str]:
    return list(RECIPES)


def get_recipe(name, **overrides) -> Recipe:
    """The registered recipe ``name`` (a :class:`Recipe` is returned as is), with ``overrides`` applied.

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid names) or an invalid override.
    """
    if isinstance(name, Recipe):
        r = name
    elif name in RECIPES:
        r = RECIPES[name]
    else:
        raise ValueError(f"unknown recipe {name!r}; valid names: {recipe_names()}")
    if overrides:
        bad = [k for k in overrides if k not in {f.name for f in dataclasses.fields(Recipe)}]
        if bad:
            raise ValueError(f"unknown recipe field(s) {bad}; valid: {[f.name for f in dataclasses.fields(Recipe)]}")
        r = r.replace(**overrides)
    return r
