"""SimBackend: the training GEMMs on the RTL systolic array, simulated (``sim.run_gemm``, issue 4).

The simulated array takes an A operand on the INT4 grid ``[-8, 7]`` and a B operand whose *values* are in
one of its formats (``hw/gemm/formats.py``): ``int4`` (``[-8, 7]``), ``log4`` (``0, ±2**k``, ``k <= 6``) or
``shift`` (``m * 2**s``, ``|m| <= 7``, ``s <= 3``). Training operands that are wider -- UINT4 activations
``[0, 15]``, the INT8 edge layers, LOG4_REF's ``2**7``, ShiftQuant with ``e_max > 3`` -- are split here into
several array-sized GEMMs whose integer results are recombined exactly on the host (what the board driver
does too, ARCHITECTURE.md: "the driver splits any GEMM ..."):

* an integer operand ``x`` is written in signed base-16 digits ``x = sum_d 16**d x_d`` with
  ``x_d in [-8, 7]``, and ``A @ B = sum_{d,e} 16**(d+e) A_d @ B_e``;
* a LOG4_REF value ``±2**7`` is ``±2**6 ± 2**6`` (two ``log4`` planes);
* a shift operand with ``s > 3`` is grouped by ``s // 4``: ``m << s = (m << (s - 4g)) << 4g``.

By linearity every split is exact, so the result equals :func:`host.gemm.int_gemm` bit for bit.
"""

from __future__ import annotations

import time

import torch

from host.backends import Backend, BackendError

__all__ = ["SimBackend", "int4_digits", "SIMULATORS"]

SIMULATORS = ("icarus", "verilator", "amaranth")
_A_MIN, _A_MAX = -8, 7          # hw.gemm.formats.A_GRID (INT4)
_LOG_MAX_EXP = 6                # hw.numerics.LOG4
_SHIFT_M_MAX, _SHIFT_S_MAX = 7, 3   # hw.numerics.ShiftFormat(INT4_SYM, e_max=3)


def int4_digits(x: torch.Tensor) -> list[torch.Tensor]:
    """Signed base-16 digits of an integer tensor: ``x == sum_d 16**d * digits[d]``, each digit in
    ``[-8, 7]`` (int8). One digit for INT4 input, two for UINT4 ``[0, 15]``, up to three for INT8."""
    rest = x.to(torch.int64)
    digits = []
    while True:
        lo = torch.remainder(rest + 8, 16) - 8
        digits.append(lo.to(torch.int8))
        rest = (rest - lo) // 16
        if not bool(rest.any()):
            return digits


class SimBackend(Backend):
    """GEMMs on the RTL simulation of the systolic array (``sim.run_gemm``).

    Parameters
    ----------
    simulator : {"icarus", "verilator", "amaranth"}, default "icarus"
    rows, cols : int, default 4
        The simulated array's size.
    max_k : int or None
        Longest reduction per ``run_gemm`` call; longer GEMMs are split into K-chunks summed on the host
        (default: ``k_tile``).
    k_tile : int, default 256
        Default K-chunk; with it the M and N tiles are sized to the buffers below.
    a_depth, b_depth, c_depth : int
        The engine's buffer depths (``sim.run_gemm``'s build parameters; defaults as there).

    Attributes
    ----------
    calls : int
        ``run_gemm`` calls made (after splitting).
    cycles : int
        Simulated cycles summed over all calls.
    """

    def __init__(self, simulator: str = "icarus", *, rows: int = 4, cols: int = 4, max_k: int | None = None,
                 k_tile: int = 256, a_depth: int = 4096, b_depth: int = 4096, c_depth: int = 1024):
        if simulator not in SIMULATORS:
            raise ValueError(f"SimBackend: unknown simulator {simulator!r}; valid: {list(SIMULATORS)}")
        for n, v in (("rows", rows), ("cols", cols)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"SimBackend: {n} must be a positive int, got {v!r}")
        if max_k is not None and (not isinstance(max_k, int) or max_k < 1):
            raise ValueError(f"SimBackend: max_k must be a positive int or None, got {max_k!r}")
        self.simulator, self.rows, self.cols, self.max_k = simulator, rows, cols, max_k
        self.k_tile, self.a_depth, self.b_depth, self.c_depth = k_tile, a_depth, b_depth, c_depth
        self.name = f"sim:{simulator}"
        self.calls = 0
        self.cycles = 0
        self.wall_s = 0.0

    @staticmethod
    def _run_gemm():
        from sim import run_gemm        # imported on first use: sim pulls in the simulators' set-up
        return run_gemm

    def describe(self) -> str:
        return f"sim:{self.simulator} {self.rows}x{self.cols}"

    # -- splitting ---------------------------------------------------------------------------

    @staticmethod
    def _b_planes(b, b_format, b_shift) -> list[tuple[int, str, torch.Tensor]]:
        """``[(weight_shift, fmt, values)]`` with ``value(B) == sum 2**weight_shift * values`` and every
        ``values`` tensor inside the array's ``fmt``."""
        if b_format == "int":
            return [(4 * d, "int4", v) for d, v in enumerate(int4_digits(b))]
        if b_format == "log":
            c = b.to(torch.int64)
            if int(c.abs().max()) > _LOG_MAX_EXP + 2:
                raise BackendError(f"SimBackend: LOG code {int(c.abs().max())} beyond LOG4_REF")
            main = torch.where(c.abs() > _LOG_MAX_EXP + 1, torch.sign(c) * (_LOG_MAX_EXP + 1), c)
            planes = [(0, "log4", _log_values(main))]
            extra = torch.where(c.abs() > _LOG_MAX_EXP + 1, main, torch.zeros_like(c))
            if bool(extra.any()):                       # ±2**7 = ±2**6 ± 2**6
                planes.append((0, "log4", _log_values(extra)))
            return planes
        if b_format == "shift":
            m, s = b.to(torch.int64), b_shift.to(torch.int64).expand(b.shape)
            if int(m.abs().max()) > _SHIFT_M_MAX:
                # a mantissa outside INT4_SYM: fall back to integer digit planes of the values
                return [(4 * d, "int4", v) for d, v in enumerate(int4_digits(m << s))]
            planes = []
            for g in range(int(s.max()) // (_SHIFT_S_MAX + 1) + 1):
                sel = (s // (_SHIFT_S_MAX + 1)) == g
                if bool((sel & (m != 0)).any()):
                    vals = torch.where(sel, m << (s - (_SHIFT_S_MAX + 1) * g), torch.zeros_like(m))
                    planes.append(((_SHIFT_S_MAX + 1) * g, "shift", vals))
            return planes or [(0, "shift", torch.zeros_like(m))]
        raise ValueError(f"unknown b_format {b_format!r}; valid: ['int', 'log', 'shift']")

    def _tiles(self, m: int, k: int, n: int) -> tuple[int, int, int]:
        """Tile sizes ``(m_t, k_t, n_t)`` that fit the engine's A/B/C buffers (``sim.run_gemm`` refuses
        larger requests; ``hw.gemm.buffer.buffer_words``: ``ceil(rows/lanes) * ceil(cols/lanes) *
        pow2ceil(lanes)`` words per bank)."""
        def p2(v):
            return 1 << (v - 1).bit_length()
        r, c = self.rows, self.cols
        k_t = min(k, self.max_k or self.k_tile)
        m_t = min(m, r * max(1, self.a_depth // (p2(r) * -(-k_t // r))))
        n_t = min(n, c * max(1, self.b_depth // (p2(c) * -(-k_t // c))))
        n_t = min(n_t, c * max(1, self.c_depth // m_t))
        return m_t, k_t, n_t

    def _run_tiled(self, run_gemm, a: torch.Tensor, b: torch.Tensor, fmt: str) -> torch.Tensor:
        m, k = a.shape
        n = b.shape[1]
        m_t, k_t, n_t = self._tiles(m, k, n)
        out = torch.zeros((m, n), dtype=torch.int64)
        for m0 in range(0, m, m_t):
            for n0 in range(0, n, n_t):
                for k0 in range(0, k, k_t):
                    c, cycles = run_gemm(a[m0:m0 + m_t, k0:k0 + k_t].contiguous(),
                                         b[k0:k0 + k_t, n0:n0 + n_t].contiguous(), b_format=fmt,
                                         rows=self.rows, cols=self.cols, simulator=self.simulator,
                                         a_depth=self.a_depth, b_depth=self.b_depth, c_depth=self.c_depth)
                    self.calls += 1
                    self.cycles += int(cycles)
                    out[m0:m0 + m_t, n0:n0 + n_t] += torch.as_tensor(c).to(torch.int64)
        return out

    def gemm(self, a, b, *, b_format, b_shift, out_dtype):
        run_gemm = self._run_gemm()
        a_cpu = a.detach().to("cpu")
        m, k = a_cpu.shape
        n = b.shape[1]
        a_planes = int4_digits(a_cpu)
        b_planes = self._b_planes(b.detach().to("cpu"), b_format, None if b_shift is None else b_shift.detach().to("cpu"))
        # One request per GEMM: the A digit planes are stacked along M and the B planes along N (they
        # share the other operand), so every cross term comes out of a single (tiled) engine run.
        fmt = b_planes[0][1]
        if any(p[1] != fmt for p in b_planes):
            raise AssertionError("B planes of one GEMM must share a format")
        a_st = torch.cat(a_planes, dim=0)
        b_st = torch.cat([p[2].to(torch.int64) for p in b_planes], dim=1)
        t0 = time.perf_counter()
        try:
            c_st = self._run_tiled(run_gemm, a_st, b_st, fmt)
        except BackendError:
            raise
        except (OSError, RuntimeError, ValueError) as e:
            raise BackendError(f"{self.describe()}: run_gemm failed on a {m}x{k}x{n} GEMM: {e}") from e
        finally:
            self.wall_s += time.perf_counter() - t0
        acc = torch.zeros((m, n), dtype=torch.int64)
        for i in range(len(a_planes)):
            for j, (wshift, _, _) in enumerate(b_planes):
                acc += c_st[i * m:(i + 1) * m, j * n:(j + 1) * n] << (4 * i + wshift)
        return acc.to(out_dtype).to(a.device)


def _log_values(c: torch.Tensor) -> torch.Tensor:
    mag = torch.where(c == 0, torch.zeros_like(c), torch.ones_like(c) << (c.abs() - 1).clamp(min=0))
    return torch.sign(c) * mag
