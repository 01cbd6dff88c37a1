"""``run_gemm``: one exact integer GEMM on the simulated GemmEngine (Icarus, Verilator or Amaranth sim)."""

from __future__ import annotations

import torch

from hw import numerics as nx
from hw.gemm import formats as fm

from .program import B_ENCODERS, EngineConfig, Step, check_a, encode_b

__all__ = ["run_gemm", "gemm_program", "SIMULATORS", "DEFAULT_K_MAX"]

SIMULATORS = ("icarus", "verilator", "amaranth")
DEFAULT_K_MAX = 1024

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _as_int_matrix(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if t.dtype not in _INT_DTYPES:
        raise TypeError(f"run_gemm: {name} must be an integer tensor (operand values, not floats), "
                        f"got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"run_gemm: {name} must be 2-D, got shape {tuple(t.shape)}")
    return t.detach().to("cpu", torch.int64)


def gemm_program(a: torch.Tensor, b: torch.Tensor, config: EngineConfig, *, b_format: str = "int4",
                 trans_a: bool = False, trans_b: bool = False, c: torch.Tensor | None = None):
    """The engine program for ``op(a) @ op(b) (+ c)`` and how to assemble its result.

    ``a`` is the stored A matrix (``M x K``, or ``K x M`` with ``trans_a``), ``b`` the stored B values
    (``K x N``, or ``N x K`` with ``trans_b``); both are sent in their own row-major order and the
    engine reads them transposed as needed. A reduction longer than ``config.k_max`` is split into
    chunks accumulated in the engine's C buffer; chunks are grouped so that no group can exceed the
    accumulator (``hw.numerics.max_exact_k``), and groups are summed here in int64.

    Returns ``(steps, reads, (m, n))``: ``reads`` lists the indices of the READ_C steps whose
    results add up to the GEMM. Raises ValueError for anything the built engine cannot do exactly:
    operand values outside their formats, matrices larger than the buffers, dimensions wider than
    the command fields.
    """
    if b_format not in B_ENCODERS:
        raise ValueError(f"run_gemm: unknown b_format {b_format!r}; allowed: {sorted(B_ENCODERS)}")
    if b_format not in config.formats:
        raise ValueError(f"run_gemm: b_format {b_format!r} is not built into this engine "
                         f"(formats {config.formats})")
    m, k = (a.shape[1], a.shape[0]) if trans_a else (a.shape[0], a.shape[1])
    kb, n = (b.shape[1], b.shape[0]) if trans_b else (b.shape[0], b.shape[1])
    if k != kb:
        raise ValueError(f"run_gemm: inner dimensions differ: op(a) is {m}x{k}, op(b) is {kb}x{n}")
    if min(m, k, n) < 1:
        raise ValueError(f"run_gemm: empty GEMM {m}x{k}x{n}")
    dim_max = 2 ** config.dim_bits - 1
    for name, v in (("M", m), ("N", n)):
        if v > dim_max:
            raise ValueError(f"run_gemm: {name}={v} exceeds the engine's {config.dim_bits}-bit "
                             f"dimension fields (max {dim_max})")

    a_vals = check_a(a.flatten().tolist())
    a = torch.tensor(a_vals, dtype=torch.int64).reshape(a.shape)
    b_pairs = encode_b(b.flatten().tolist(), b_format)

    # Reduction chunks (each <= k_max) and groups of chunks that fit the accumulator.
    b_max, s_max = nx.operand_bounds(fm.B_FORMATS[b_format])
    width = config.acc_width
    c_max = 0 if c is None else int(c.abs().max())
    group_k = nx.max_exact_k(width, fm.A_GRID.max_abs, b_max, s_max)
    if c is not None:
        if tuple(c.shape) != (m, n):
            raise ValueError(f"run_gemm: c must be {m}x{n}, got {tuple(c.shape)}")
        room = (2 ** (width - 1) - 1 - c_max) // (fm.A_GRID.max_abs * b_max << s_max)
        if room < 1:
            raise ValueError(
                f"run_gemm: c (max |c| = {c_max}) leaves no room for a {b_format} product in the "
                f"engine's {width}-bit accumulators (|c| must stay below "
                f"{2 ** (width - 1) - (fm.A_GRID.max_abs * b_max << s_max)})")
        group_k = min(group_k, room)
    chunk = min(config.k_max, group_k)

    # Capacity: every chunk is a full LOAD_A / LOAD_B / GEMM; C must hold the result.
    kc = min(chunk, k)
    checks = (("A", config.a_words(m, kc), config.a_depth, f"op(a) {m}x{kc}"),
              ("B", config.b_words(kc, n), config.b_depth, f"op(b) {kc}x{n}"),
              ("C", config.c_words(m, n), config.c_depth, f"C {m}x{n}"))
    for buf, need, have, what in checks:
        if need > have:
            raise ValueError(
                f"run_gemm: GEMM too large for the built {buf} buffer: {what} needs {need} words "
                f"per bank, the {config.rows}x{config.cols} engine has {buf.lower()}_depth={have}")

    steps: list[Step] = []
    reads: list[int] = []
    if c is not None:
        steps.append(Step("LOAD_C", m=m, n=n, c=[int(v) for v in c.flatten().tolist()]))
    k0 = 0
    in_group = 0
    while k0 < k:
        k1 = min(k0 + chunk, k)
        kk = k1 - k0
        if trans_a:
            a_part = a[k0:k1, :]
        else:
            a_part = a[:, k0:k1]
        if trans_b:
            b_rows = [b_pairs[r * b.shape[1] + k0:r * b.shape[1] + k1] for r in range(n)]
            b_part = [p for row in b_rows for p in row]
        else:
            b_part = b_pairs[k0 * n:k1 * n]
        accumulate = int(in_group > 0 or (c is not None and not reads))
        steps.append(Step("LOAD_A", m=m, k=kk, trans_a=int(trans_a), a=a_part.flatten().tolist()))
        steps.append(Step("LOAD_B", k=kk, n=n, trans_b=int(trans_b), b=b_part))
        steps.append(Step("GEMM", m=m, k=kk, n=n, trans_a=int(trans_a), trans_b=int(trans_b),
                          accumulate=accumulate))
        in_group += kk
        k0 = k1
        if k0 >= k or in_group + min(chunk, k - k0) > group_k:
            steps.append(Step("READ_C", m=m, n=n, read=m * n))
            reads.append(len(steps) - 1)
            in_group = 0
    return steps, reads, (m, n)


def run_gemm(a, b, *, b_format: str = "int4", rows: int = 4, cols: int = 4,
             simulator: str = "icarus", trans_a: bool = False, trans_b: bool = False, c=None,
             k_max: int = DEFAULT_K_MAX, a_depth: int = 4096, b_depth: int = 4096, c_depth: int = 1024,
             config: EngineConfig | None = None, stats: dict | None = None):
    """``op(a) @ op(b)`` (``+ c``), computed by the GemmEngine RTL in a simulator; exact.

    Parameters
    ----------
    a, b : 2-D integer tensors
        Operand *values*: ``a`` on INT4 ``[-8, 7]``; ``b`` in ``b_format``: ``"int4"`` (``[-8, 7]``),
        ``"log4"`` (0 or ``+-2**k``, ``k <= 6``) or ``"shift"`` (``m * 2**s``, ``|m| <= 7``,
        ``s <= 3``). With ``trans_a`` / ``trans_b`` they are the stored ``K x M`` / ``N x K`` matrices
        and the engine reads them transposed (no transpose on the host).
    b_format : str
        The B format.
    rows, cols : int
        Array size of the simulated engine.
    simulator : {"icarus", "verilator", "amaranth"}
    c : 2-D integer tensor or None
        Initial result to accumulate onto (loaded into the engine's C buffer).
    k_max, a_depth, b_depth, c_depth : int
        Engine build parameters (each distinct set is one cached build).
    config : EngineConfig or None
        The whole build configuration (overrides the individual parameters).
    stats : dict or None
        Receives simulator statistics (simulated ``cycles``, ``wall_s``).

    Returns
    -------
    (torch.Tensor, int)
        ``C`` (int64, ``M x N``), equal to ``host.gemm.int_gemm(op(a), op(b)) (+ c)``, and the engine's
        cycle count summed over its GEMM commands (a reduction longer than ``k_max`` is several).

    Raises
    ------
    ValueError
        Unknown format or simulator, bad values, mismatched shapes, or a GEMM larger than the built
        buffers (the request is refused before anything runs: never a wrong result).
    RuntimeError
        The engine reported an error or the simulation failed.
    """
    if simulator not in SIMULATORS:
        raise ValueError(f"run_gemm: unknown simulator {simulator!r}; allowed: {list(SIMULATORS)}")
    if config is None:
        config = EngineConfig(rows=rows, cols=cols, k_max=k_max, a_depth=a_depth, b_depth=b_depth,
                              c_depth=c_depth)
    a = _as_int_matrix("a", a)
    b = _as_int_matrix("b", b)
    if c is not None:
        c = _as_int_matrix("c", c)
    steps, reads, (m, n) = gemm_program(a, b, config, b_format=b_format, trans_a=trans_a,
                                        trans_b=trans_b, c=c)
    if simulator == "amaranth":
        from .amaranth_sim import run_program
        results = run_program(config, steps, stats=stats)
    else:
        from .cocotb_sim import run_program
        results = run_program(config, steps, simulator, stats=stats)
    for i, (s, r) in enumerate(zip(steps, results)):
        if r.error:
            raise RuntimeError(f"run_gemm: the engine rejected step {i} ({s.op}); this is a driver bug")
    out = torch.zeros((m, n), dtype=torch.int64)
    for i in reads:
        out += torch.tensor(results[i].data, dtype=torch.int64).reshape(m, n)
    cycles = sum(r.cycles for s, r in zip(steps, results) if s.op == "GEMM")
    return out, cycles
