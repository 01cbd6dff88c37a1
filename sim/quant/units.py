"""Per-unit glue between tensors and the gateware's streams: building jobs from (fixed-point) tensors
and turning the collected beats back into the ``host.quant`` result types.

Fixed-point input convention (all units): a tensor value is ``x * 2**E_x`` with ``x`` a signed
``in_width``-bit integer and one tensor exponent ``E_x`` (:func:`to_fixed` finds them for a float
tensor, exactly, or raises).
"""

from __future__ import annotations

import math

import torch

from host.quant.fixed import EXP_RANGE, to_fixed
from hw import numerics as nx
from sim.quant.packing import pack_lanes, pack_struct, unpack_struct
from sim.quant.protocol import Job, JobResult

__all__ = ["to_fixed", "ShiftQuantCodec", "EXP_RANGE"]

"""Tensor exponents the helper accepts: every value and every intermediate of the float32 golden models
then stays a normal float32 (the codes are scale invariant anyway; this keeps the returned scales exact)."""


def _check_shape_lanes(who, rows, cols, lanes, max_rows=None, max_cols=None):
    if rows < 1 or cols < 1:
        raise ValueError(f"{who}: empty rows are not supported (shape {rows}x{cols})")
    if rows > 65535 or cols > 65535:
        raise ValueError(f"{who}: rows and cols must be 1..65535, got {rows}x{cols}")
    if cols % lanes:
        raise ValueError(f"{who}: the row length {cols} must be a multiple of lanes={lanes}")
    if max_rows is not None and rows > max_rows:
        raise ValueError(f"{who}: {rows} rows exceed the unit's max_channels={max_rows}")
    if max_cols is not None and cols > max_cols:
        raise ValueError(f"{who}: {cols} columns exceed the unit's max_channels={max_cols}")


class ShiftQuantCodec:
    """Jobs and results for :class:`hw.quant.ShiftQuantizer`."""

    name = "shiftquant"

    def __init__(self, dut):
        self.dut = dut

    def job(self, xi: torch.Tensor, *, seed: int, rounding: str, valid_prob=1.0, ready_prob=1.0,
            bubble_seed=0) -> Job:
        d = self.dut
        who = "run_quantizer('shiftquant')"
        rows, cols = xi.shape[0], xi[0].numel()
        _check_shape_lanes(who, rows, cols, d.lanes,
                           d.max_channels if d.axis == "row" else None,
                           d.max_channels if d.axis == "col" else None)
        flat = xi.reshape(-1).tolist()
        L, w = d.lanes, d.in_width
        beats = [pack_lanes(flat[j:j + L], w) for j in range(0, len(flat), L)]
        cfg = pack_struct(d.cfg_layout, {"rows": rows, "cols": cols, "seed": seed,
                                         "rdn": int(rounding == "rdn")})
        return Job(cfg=cfg, inputs=beats + beats, outputs={"info": 1, "o": len(beats)},
                   valid_prob=valid_prob, ready_prob=ready_prob, seed=bubble_seed,
                   max_cycles=20 * len(beats) + 10_000)

    def decode(self, res: JobResult, shape, exp: int, *, seed, rounding):
        from host.quant.core import ShiftQuantized, codes_dtype
        d = self.dut
        info = unpack_struct(d.info_layout, res.outputs["info"][0])
        codes, exps, lasts = [], [], []
        for v in res.outputs["o"]:
            o = unpack_struct(d.out_layout, v)
            codes.extend(o["codes"])
            exps.extend(o["exps"])
            lasts.append(o["last"])
        if lasts[-1] != 1 or any(lasts[:-1]):
            raise AssertionError("ShiftQuantizer: 'last' flag is not on exactly the final beat")
        rows = shape[0]
        cols = math.prod(shape[1:])
        qmax = d.qmax
        c = torch.tensor(codes, dtype=codes_dtype(-qmax, qmax)).reshape(rows, cols)
        e = torch.tensor(exps, dtype=torch.int8).reshape(rows, cols)
        # every element carries its channel's exponent: they must agree along the channel
        ch = e[:, :1] if d.axis == "row" else e[:1, :]
        if not torch.equal(e, ch.expand(rows, cols)):
            raise AssertionError("ShiftQuantizer: elements of one channel reported different exponents")
        r = info["max_abs"]
        if r == 0:
            scale = torch.ones((), dtype=torch.float32)
        elif d.scale == "pow2":
            scale = torch.tensor(math.ldexp(1.0, info["scale_exp"] + exp), dtype=torch.float32)
        else:
            scale = torch.tensor(math.ldexp(float(r), exp), dtype=torch.float32) / qmax
        if d.axis == "row":
            e_shape = (shape[0],) + (1,) * (len(shape) - 1)
        else:
            e_shape = (1,) + tuple(shape[1:])
        sr = rounding == "sr"
        return ShiftQuantized(
            codes=c.reshape(shape), method="shiftquant", seed=seed if sr else None,
            rand_bits=d.rand_bits if sr else None, scale=scale, exponents=ch.reshape(e_shape),
            axis=0 if d.axis == "row" else 1, fmt=nx.ShiftFormat(nx.int_grid(d.bits), d.e_max))


class LogQuantCodec:
    """Jobs and results for :class:`hw.quant.LogQuantizer`."""

    name = "luq"

    def __init__(self, dut):
        self.dut = dut

    def job(self, xi: torch.Tensor, *, seed: int, valid_prob=1.0, ready_prob=1.0, bubble_seed=0) -> Job:
        d = self.dut
        who = "run_quantizer('luq')"
        n = xi.numel()
        if n == 0:
            raise ValueError(f"{who}: cannot quantize an empty tensor")
        if n % d.lanes:
            raise ValueError(f"{who}: the element count {n} must be a multiple of lanes={d.lanes}")
        flat = xi.reshape(-1).tolist()
        L, w = d.lanes, d.in_width
        beats = [pack_lanes(flat[j:j + L], w) for j in range(0, n, L)]
        if len(beats) >= 2 ** 32:
            raise ValueError(f"{who}: {len(beats)} beats exceed the unit's 32-bit beat counter")
        cfg = pack_struct(d.cfg_layout, {"beats": len(beats), "seed": seed})
        return Job(cfg=cfg, inputs=beats + beats, outputs={"info": 1, "o": len(beats)},
                   valid_prob=valid_prob, ready_prob=ready_prob, seed=bubble_seed,
                   max_cycles=20 * len(beats) + 10_000)

    def decode(self, res: JobResult, shape, exp: int, *, seed):
        from host.quant.core import LogQuantized
        d = self.dut
        info = unpack_struct(d.info_layout, res.outputs["info"][0])
        codes, lasts = [], []
        for v in res.outputs["o"]:
            o = unpack_struct(d.out_layout, v)
            codes.extend(o["codes"])
            lasts.append(o["last"])
        if lasts[-1] != 1 or any(lasts[:-1]):
            raise AssertionError("LogQuantizer: 'last' flag is not on exactly the final beat")
        if info["max_abs"] == 0:
            alpha = 1.0                     # the golden model's choice for an all-zero tensor
        else:
            alpha = math.ldexp(1.0, info["alpha_exp"] + exp)
        return LogQuantized(codes=torch.tensor(codes, dtype=torch.int8).reshape(shape), method="luq",
                            seed=seed, rand_bits=d.rand_bits,
                            alpha=torch.tensor(alpha, dtype=torch.float32), fmt=d.fmt)


def _round_half_even(v) -> int:
    from fractions import Fraction
    return round(Fraction(v))


class L1NormCodec:
    """Jobs and results for :class:`hw.quant.L1Norm` (the arguments of ``l1_norm_int``)."""

    name = "l1norm"

    def __init__(self, dut):
        self.dut = dut

    def job(self, codes: torch.Tensor, *, dim, seed: int, rounding: str = "rdn", scale=None,
            eps: float = 1e-5, kappa: float | None = None, gamma=None, beta=None,
            valid_prob=1.0, ready_prob=1.0, bubble_seed=0):
        from fractions import Fraction
        from host.quant.l1norm import KAPPA, _norm_dims
        d = self.dut
        who = "run_quantizer('l1norm')"
        if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
            raise TypeError(f"{who}: expected an integer code tensor")
        if codes.numel() == 0 or codes.dim() == 0:
            raise ValueError(f"{who}: empty rows are not supported (shape {tuple(codes.shape)})")
        kappa = KAPPA if kappa is None else kappa
        dims = _norm_dims(dim, codes.dim(), who)
        shape = tuple(codes.shape)
        rest = tuple(i for i in range(codes.dim()) if i not in dims)
        perm = rest + dims
        n = math.prod(shape[i] for i in dims)
        rows = codes.numel() // n
        if rounding not in ("rdn", "sr"):
            raise ValueError(f"{who}: rounding must be one of ['rdn', 'sr'], got {rounding!r}")
        if rounding == "sr" and perm != tuple(range(codes.dim())):
            raise ValueError(f"{who}: stochastic rounding needs the normalized dims to be the trailing dims "
                             f"(the unit draws random numbers in stream order = row-major order); got dim={dim}")
        if n % d.lanes:
            raise ValueError(f"{who}: the set size n = {n} must be a multiple of lanes={d.lanes}")
        if n > d.max_n:
            raise ValueError(f"{who}: the set size n = {n} exceeds the unit's max_n={d.max_n}")
        if rows >= 2 ** 32:
            raise ValueError(f"{who}: {rows} rows exceed the unit's 32-bit row counter")
        q = codes.to(torch.int64).permute(perm).reshape(rows, n)
        lim = 1 << (d.in_width - 1)
        if int(q.min()) < -lim or int(q.max()) > lim - 1:
            raise ValueError(f"{who}: codes {int(q.min())}..{int(q.max())} do not fit in_width={d.in_width} "
                             f"(allowed -{lim}..{lim - 1})")
        s_x = 1.0 if scale is None else float(scale)
        if not (math.isfinite(kappa) and kappa > 0) or not (math.isfinite(eps) and eps >= 0) \
                or not (math.isfinite(s_x) and s_x > 0):
            raise ValueError(f"{who}: need kappa > 0, eps >= 0, scale > 0 (finite)")
        k_int = _round_half_even(Fraction(kappa) * (1 << d.f_k))
        if not d.k_min <= k_int <= d.k_max:
            raise ValueError(f"{who}: K = round(kappa * 2**{d.f_k}) = {k_int} is outside the unit's range "
                             f"{d.k_min}..{d.k_max} (kappa_min/kappa_max at construction)")
        e_int = _round_half_even(Fraction(eps) / Fraction(s_x) * n * n * (1 << d.f_k))
        if e_int >= 1 << d.eps_width:
            raise ValueError(f"{who}: E = round(eps/scale * n**2 * 2**{d.f_k}) = {e_int} needs more than the "
                             f"unit's {d.eps_width} bits")
        writes = []
        if gamma is not None or beta is not None:
            if not d.affine:
                raise ValueError(f"{who}: gamma/beta given but the unit was built with affine=False")
        if d.affine:
            def per_pos(p, frac, name, width):
                if p is None:
                    return None
                v = torch.round(torch.as_tensor(p).detach().to(torch.float64) * 2.0 ** frac)
                if not bool(torch.isfinite(v).all()):
                    raise ValueError(f"{who}: {name} has NaN/Inf values")
                v = torch.broadcast_to(v.to(torch.int64), shape).permute(perm).reshape(rows, n)
                if not bool((v == v[:1]).all()):
                    raise ValueError(f"{who}: {name} must be the same for every set (one value per position "
                                     f"in the set, as LayerNorm's); per-set affine is not supported")
                lim_ = 1 << (width - 1)
                if int(v.min()) < -lim_ or int(v.max()) > lim_ - 1:
                    raise ValueError(f"{who}: {name} quantized to {int(v.min())}..{int(v.max())} does not fit "
                                     f"the unit's {width}-bit field")
                return v[0].tolist()
            g = per_pos(gamma, d.f_g, "gamma", d.gamma_bits) or [1 << d.f_g] * n
            bq = per_pos(beta, d.f_y + d.f_a, "beta", d.beta_bits) or [0] * n
            L = d.lanes
            for j in range(n // L):
                writes.append({"aff_we": 1, "aff_addr": j,
                               "aff_data": pack_struct(d.aff_layout, {"gamma": g[j * L:(j + 1) * L],
                                                                       "beta": bq[j * L:(j + 1) * L]})})
            writes.append({"aff_we": 0})
        flat = q.reshape(-1).tolist()
        L, w = d.lanes, d.in_width
        beats = [pack_lanes(flat[j:j + L], w) for j in range(0, len(flat), L)]
        cfg = pack_struct(d.cfg_layout, {"n": n, "rows": rows, "kappa": k_int, "eps": e_int, "seed": seed,
                                         "rdn": int(rounding == "rdn")})
        self._ctx = dict(shape=shape, perm=perm, rows=rows, n=n, dims=dims, rounding=rounding, seed=seed)
        return Job(cfg=cfg, inputs=beats, outputs={"stats": rows, "o": len(beats)}, writes=writes,
                   valid_prob=valid_prob, ready_prob=ready_prob, seed=bubble_seed,
                   max_cycles=10 * len(beats) + rows * (4 * d.b_r + 100) + 10_000)

    def decode(self, res: JobResult, ctx: dict | None = None):
        from host.quant.core import codes_dtype
        from host.quant.l1norm import L1NormIntResult
        d = self.dut
        ctx = ctx or self._ctx
        shape, perm, rows, n, dims = ctx["shape"], ctx["perm"], ctx["rows"], ctx["n"], ctx["dims"]
        codes, lasts = [], []
        for v in res.outputs["o"]:
            o = unpack_struct(d.out_layout, v)
            codes.extend(o["codes"])
            lasts.append(o["last"])
        per_row = n // d.lanes
        if any(lasts[j] != (j % per_row == per_row - 1) for j in range(len(lasts))):
            raise AssertionError("L1Norm: 'last' flags are not on the final beat of each row")
        st = [unpack_struct(d.stats_layout, v) for v in res.outputs["stats"]]
        qmax = d.qmax
        out = torch.tensor(codes, dtype=codes_dtype(-qmax, qmax))
        inv = [0] * len(perm)
        for i, p in enumerate(perm):
            inv[p] = i
        out = out.reshape([shape[p] for p in perm]).permute(inv).contiguous()
        rest = [shape[p] for p in perm[:len(perm) - len(dims)]]
        keep_shape = tuple(1 if i in dims else shape[i] for i in range(len(shape)))

        def stat(key):
            v = torch.tensor([s[key] for s in st], dtype=torch.int64)
            return v.reshape(rest + [1] * len(dims)).permute(inv).reshape(keep_shape)

        sr = ctx["rounding"] == "sr"
        return L1NormIntResult(
            codes=out, method="l1_norm_int", seed=ctx["seed"] if sr else None,
            rand_bits=d.rand_bits if sr else None,
            step=torch.tensor(2.0 ** -d.f_y, dtype=torch.float32), offset=None, grid=nx.int_grid(d.out_bits),
            n=n, sum=stat("sum"), abs_dev=stat("abs_dev"), recip=stat("recip"), recip_shift=stat("recip_shift"))
