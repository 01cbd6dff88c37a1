"""Transaction-level model of the GemmEngine: what each program step must produce.

The model keeps the three buffers as the *matrices* the host wrote (not the hardware layout) and
computes every GEMM with the golden reference :func:`host.gemm.int_gemm` (exact integer GEMM), so a
layout, transposition or tiling bug in the gateware shows up as a mismatch. It also predicts which
commands the engine must reject (the same capacity rules the driver applies).
"""

from __future__ import annotations

import torch

from .program import EngineConfig, Step, StepResult

__all__ = ["EngineModel", "reference_gemm", "check_results"]


def reference_gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The golden integer GEMM: ``host.gemm.int_gemm`` (int64 result)."""
    from host.gemm import int_gemm
    return int_gemm(a.to(torch.int64), b.to(torch.int64), out_dtype=torch.int64)


class EngineModel:
    """Predicts :class:`~sim.program.StepResult` ``error`` and ``data`` for a program."""

    def __init__(self, config: EngineConfig):
        self.cfg = config
        self.a = None          # stored A matrix (as written)
        self.b = None          # stored B values, as (m, s) pairs -> value m << s
        self.b_poison = False
        self.c = None          # C as an (m x n) int64 matrix, or None before any write
        self.width = config.acc_width

    def _wrap(self, t: torch.Tensor) -> torch.Tensor:
        """Two's-complement wrap to the accumulator width (what the hardware stores)."""
        mod = 1 << self.width
        return torch.remainder(t + (mod >> 1), mod) - (mod >> 1)

    def step(self, s: Step) -> StepResult:
        cfg = self.cfg
        if s.op == "LOAD_A":
            ok = s.m >= 1 and s.k >= 1 and cfg.a_words(s.m, s.k) <= cfg.a_depth
            if ok:
                shape = (s.k, s.m) if s.trans_a else (s.m, s.k)
                self.a = (torch.tensor(s.a, dtype=torch.int64).reshape(shape), bool(s.trans_a))
            return StepResult(error=int(not ok), cycles=0, data=[])
        if s.op == "LOAD_B":
            ok = s.k >= 1 and s.n >= 1 and cfg.b_words(s.k, s.n) <= cfg.b_depth
            in_format = all(self._b_ok(p) for p in s.b)
            self.b_poison = not in_format
            if ok:
                shape = (s.n, s.k) if s.trans_b else (s.k, s.n)
                vals = torch.tensor([m << sh for m, sh in s.b], dtype=torch.int64).reshape(shape)
                self.b = (vals, bool(s.trans_b))
            return StepResult(error=int(not (ok and in_format)), cycles=0, data=[])
        if s.op == "LOAD_C":
            ok = s.m >= 1 and s.n >= 1 and cfg.c_words(s.m, s.n) <= cfg.c_depth
            if ok:
                self.c = self._wrap(torch.tensor(s.c, dtype=torch.int64).reshape(s.m, s.n))
            return StepResult(error=int(not ok), cycles=0, data=[])
        if s.op == "GEMM":
            ok = (min(s.m, s.k, s.n) >= 1 and s.k <= cfg.k_max
                  and cfg.a_words(s.m, s.k) <= cfg.a_depth and cfg.b_words(s.k, s.n) <= cfg.b_depth
                  and cfg.c_words(s.m, s.n) <= cfg.c_depth and not self.b_poison)
            if ok:
                a_mat, _ = self.a
                b_mat, _ = self.b
                op_a = a_mat.T if s.trans_a else a_mat
                op_b = b_mat.T if s.trans_b else b_mat
                if tuple(op_a.shape) != (s.m, s.k) or tuple(op_b.shape) != (s.k, s.n):
                    raise ValueError(f"model: GEMM {s.m}x{s.k}x{s.n} does not match the loaded "
                                     f"operands {tuple(op_a.shape)} and {tuple(op_b.shape)}")
                prod = reference_gemm(op_a, op_b)
                if s.accumulate:
                    prod = prod + self.c[:s.m, :s.n]
                self.c = self._wrap(prod)
            return StepResult(error=int(not ok), cycles=0, data=[])
        if s.op == "READ_C":
            ok = s.m >= 1 and s.n >= 1 and cfg.c_words(s.m, s.n) <= cfg.c_depth
            if not ok:
                return StepResult(error=1, cycles=0, data=[])
            c = self.c[:s.m, :s.n]
            data = (c.T if s.trans_c else c).flatten().tolist()
            return StepResult(error=0, cycles=0, data=data)
        raise ValueError(f"model: unknown op {s.op!r}")

    def _b_ok(self, pair) -> bool:
        from hw.gemm import formats as fm
        m, s = pair
        for f in self.cfg.formats:
            m_min, m_max, s_max, _ = fm.format_bounds(f)
            if m_min <= m <= m_max and 0 <= s <= s_max:
                return True
        return False

    def run(self, steps: list[Step]) -> list[StepResult]:
        return [self.step(s) for s in steps]


def check_results(config: EngineConfig, steps: list[Step], results: list[StepResult]) -> list[str]:
    """Compare back-end results with the model; returns a list of mismatch descriptions (empty when
    everything matches). This is the checker used by the Amaranth, Icarus and Verilator runs alike."""
    expected = EngineModel(config).run(steps)
    problems = []
    if len(results) != len(steps):
        return [f"{len(results)} results for {len(steps)} steps"]
    for i, (s, e, r) in enumerate(zip(steps, expected, results)):
        if r.error != e.error:
            problems.append(f"step {i} {s.op}: error {r.error}, expected {e.error}")
        if list(r.data) != list(e.data):
            bad = [j for j, (x, y) in enumerate(zip(r.data, e.data)) if x != y]
            first = bad[0] if bad else min(len(r.data), len(e.data))
            problems.append(f"step {i} {s.op}: {len(bad)} of {len(e.data)} results differ "
                            f"(got {len(r.data)}); first at {first}: "
                            f"{r.data[first] if first < len(r.data) else None} != "
                            f"{e.data[first] if first < len(e.data) else None}")
    return problems
