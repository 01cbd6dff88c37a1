"""``run_quantizer``: run a gateware quantizer unit in simulation and return what ``host.quant`` returns."""

from __future__ import annotations

import torch

from hw import numerics as nx
from sim.quant.protocol import JobResult, run_amaranth
from sim.quant.runner import SIMULATORS, run_cocotb
from sim.quant.units import L1NormCodec, LogQuantCodec, ShiftQuantCodec, to_fixed

__all__ = ["run_quantizer", "QUANTIZERS", "make_unit"]

QUANTIZERS = ("shiftquant", "luq", "l1norm")


def _capacity(need: int, lanes: int, default: int = 1024) -> int:
    """Unit capacity for ``need`` entries: ``default`` when it suffices (one cached build for most
    tensors), else the next power of two (a multiple of ``lanes``)."""
    cap = default
    while cap < need:
        cap *= 2
    return max(cap, lanes)


def make_unit(name: str, **params):
    """Construct a unit by quantizer name (``hw.quant`` classes; parameters as their constructors)."""
    from hw.quant import L1Norm, LogQuantizer, ShiftQuantizer
    cls = {"shiftquant": ShiftQuantizer, "luq": LogQuantizer, "l1norm": L1Norm}.get(name)
    if cls is None:
        raise ValueError(f"run_quantizer: name must be one of {list(QUANTIZERS)}, got {name!r}")
    return cls(**params)


def _run(dut, make_job, simulator: str) -> JobResult:
    try:
        job = make_job()
    except Exception:
        dut._MustUse__silence = True        # a rejected job: the unit is never simulated, on purpose
        raise
    if simulator == "amaranth":
        return run_amaranth(dut, job)
    return run_cocotb(dut, job, simulator)


def run_quantizer(name: str, x: torch.Tensor, *, seed: int | None = None, simulator: str = "amaranth",
                  generator: torch.Generator | None = None, lanes: int = 1, in_width: int | None = None,
                  valid_prob: float = 1.0, ready_prob: float = 1.0, bubble_seed: int = 0,
                  return_trace: bool = False, **config):
    """Quantize ``x`` with a gateware unit under a simulator; the result has ``host.quant``'s structure.

    ``run_quantizer(name, x, seed=s, **cfg)`` equals, bit for bit, the golden call with the same
    arguments (``x`` must be a fixed-point tensor: every value ``xi * 2**E`` with one tensor exponent ``E``
    and ``xi`` fitting ``in_width`` signed bits, see :func:`sim.quant.units.to_fixed`):

    * ``"shiftquant"`` -> ``host.quant.shiftquant(x, bits, axis=, e_max=, rounding=, scale=, seed=,
      rand_bits=)`` (:class:`~host.quant.core.ShiftQuantized`). Defaults as the golden model
      (``scale="float"``); float input is computed as float32.
    * ``"luq"`` -> ``host.quant.luq(x, max_exp=, alpha_mode="pow2", seed=, rand_bits=)``
      (:class:`~host.quant.core.LogQuantized`); only ``alpha_mode="pow2"`` and ``max_source="absmax"``
      exist in hardware.
    * ``"l1norm"`` -> ``host.quant.l1norm.l1_norm_int(x, dim=, ...)`` (``x`` integer codes;
      :class:`~host.quant.l1norm.L1NormIntResult`); gamma/beta must be per position in the set.

    Parameters
    ----------
    name : {"shiftquant", "luq", "l1norm"}
    x : torch.Tensor
    seed : int, optional
        Random stream seed (``0 <= seed < 2**32``); drawn from ``generator`` (or torch's default
        generator) when omitted, as the golden models do.
    simulator : {"amaranth", "icarus", "verilator"}
        Amaranth's Python simulator, or cocotb on Icarus Verilog / Verilator (built under ``sim_build/``).
    lanes : int
        Elements per clock of the unit (1, 2, 4, 8, 16).
    in_width : int, optional
        Input integer width of the unit (default 16 for shiftquant/luq, 8 for l1norm).
    valid_prob, ready_prob, bubble_seed :
        Stream stimulus: probability that the driver offers an input beat / accepts an output beat in a
        cycle (1.0: back to back).
    return_trace : bool
        Also return the :class:`~sim.quant.protocol.JobResult` (raw beats and their cycles).
    **config :
        The golden function's keyword arguments, plus unit sizing (``max_channels``, ``max_n`` and for
        l1norm the construction parameters of :class:`hw.quant.L1Norm`).
    """
    from host.quant.rng import resolve_seed
    who = f"run_quantizer({name!r})"
    if simulator not in SIMULATORS:
        raise ValueError(f"{who}: simulator must be one of {list(SIMULATORS)}, got {simulator!r}")
    if name not in QUANTIZERS:
        raise ValueError(f"run_quantizer: name must be one of {list(QUANTIZERS)}, got {name!r}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor, got {type(x).__name__}")

    if name == "shiftquant":
        bits = config.pop("bits", 4)
        axis = config.pop("axis", "row")
        e_max = config.pop("e_max", 3)
        rounding = config.pop("rounding", "sr")
        scale = config.pop("scale", "float")
        rand_bits = config.pop("rand_bits", nx.DEFAULT_RAND_BITS)
        max_channels = config.pop("max_channels", None)
        _no_more(who, config)
        if x.dim() < 2:
            raise ValueError(f"{who}: expected a tensor with >= 2 dimensions, got shape {tuple(x.shape)}")
        if x.is_floating_point() and x.dtype == torch.float64 and scale == "float":
            raise ValueError(f"{who}: scale='float' hardware rounds like float32; pass a float32 tensor")
        if rounding not in ("sr", "rdn"):
            raise ValueError(f"{who}: rounding must be one of ['sr', 'rdn'], got {rounding!r}")
        w = 16 if in_width is None else in_width
        chans = x.shape[0] if axis == "row" else x[0].numel()
        if max_channels is None:
            max_channels = _capacity(chans, lanes)
        dut = make_unit(name, in_width=w, bits=bits, e_max=e_max, axis=axis, scale=scale, lanes=lanes,
                        rand_bits=rand_bits, max_channels=max_channels)
        codec = ShiftQuantCodec(dut)
        try:
            xi, ex = to_fixed(x, w, who)
            s = resolve_seed(seed, generator) if rounding == "sr" else (seed or 0)
        except Exception:
            dut._MustUse__silence = True
            raise
        res = _run(dut, lambda: codec.job(xi, seed=s, rounding=rounding, valid_prob=valid_prob,
                                          ready_prob=ready_prob, bubble_seed=bubble_seed), simulator)
        out = codec.decode(res, tuple(x.shape), ex, seed=s, rounding=rounding)
    elif name == "luq":
        max_exp = config.pop("max_exp", 6)
        alpha_mode = config.pop("alpha_mode", "pow2")
        max_source = config.pop("max_source", "absmax")
        rand_bits = config.pop("rand_bits", nx.DEFAULT_RAND_BITS)
        draw_offset = config.pop("draw_offset", 0)
        _no_more(who, config)
        if alpha_mode != "pow2":
            raise ValueError(f"{who}: the LogQuantizer implements alpha_mode='pow2' only, got {alpha_mode!r}")
        if max_source != "absmax":
            raise ValueError(f"{who}: the LogQuantizer implements max_source='absmax' only, got {max_source!r}")
        if draw_offset != 0:
            raise ValueError(f"{who}: draw_offset must be 0 (the unit starts at draw 0), got {draw_offset!r}")
        w = 16 if in_width is None else in_width
        dut = make_unit(name, in_width=w, max_exp=max_exp, lanes=lanes, rand_bits=rand_bits)
        codec = LogQuantCodec(dut)
        try:
            xi, ex = to_fixed(x, w, who)
            s = resolve_seed(seed, generator)
        except Exception:
            dut._MustUse__silence = True
            raise
        res = _run(dut, lambda: codec.job(xi, seed=s, valid_prob=valid_prob, ready_prob=ready_prob,
                                          bubble_seed=bubble_seed), simulator)
        out = codec.decode(res, tuple(x.shape), ex, seed=s)
    else:
        if "dim" not in config:
            raise ValueError(f"{who}: dim is required (the normalization set, e.g. -1)")
        dim = config.pop("dim")
        golden_keys = ("scale", "rounding", "eps", "kappa", "gamma", "beta")
        job_kw = {k: config.pop(k) for k in golden_keys if k in config}
        rand_bits = config.pop("rand_bits", nx.DEFAULT_RAND_BITS)
        unit_keys = ("max_n", "out_bits", "out_frac_bits", "kappa_frac_bits", "recip_bits", "acc_frac_bits",
                     "affine", "gamma_frac_bits", "gamma_bits", "beta_bits", "kappa_min", "kappa_max")
        params = {k: config.pop(k) for k in unit_keys if k in config}
        _no_more(who, config)
        if x.is_floating_point():
            raise TypeError(f"{who}: expected integer codes (the input of l1_norm_int), got dtype {x.dtype}")
        if x.numel() == 0 or x.dim() == 0:
            raise ValueError(f"{who}: empty rows are not supported (shape {tuple(x.shape)})")
        from host.quant.l1norm import _norm_dims
        dims = _norm_dims(dim, x.dim(), who)
        n = 1
        for d in dims:
            n *= x.shape[d]
        params.setdefault("max_n", _capacity(n, lanes))
        params.setdefault("affine", job_kw.get("gamma") is not None or job_kw.get("beta") is not None)
        w = 8 if in_width is None else in_width
        dut = make_unit(name, in_width=w, lanes=lanes, rand_bits=rand_bits, **params)
        rounding = job_kw.get("rounding", "rdn")
        codec = L1NormCodec(dut)

        def make_job():
            s = resolve_seed(seed, generator) if rounding == "sr" else (seed or 0)
            return codec.job(x, dim=dim, seed=s, valid_prob=valid_prob, ready_prob=ready_prob,
                             bubble_seed=bubble_seed, **job_kw)
        res = _run(dut, make_job, simulator)
        out = codec.decode(res)
    return (out, res) if return_trace else out


def _no_more(who, config):
    if config:
        raise TypeError(f"{who}: unexpected keyword argument(s) {sorted(config)}")
