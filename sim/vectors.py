"""Test vectors and reference models for the PE and the array, shared by every simulator.

Every generator mixes random operands with the worst cases of STYLE.md: ``-8 * -8`` (and, per
format, the largest product) accumulated ``k_max`` times, all-max, alternating signs and all
zeros. The models are plain Python integer arithmetic; the engine-level model is
:mod:`sim.model` (golden ``int_gemm``).
"""

from __future__ import annotations

import json
import random

from hw.gemm import formats as fm

__all__ = ["random_operand", "extreme_operands", "pe_vectors", "pe_expected", "array_tiles",
           "array_expected", "dump", "load"]


def random_operand(rng: random.Random, fmt: str) -> tuple[int, int]:
    """A random in-format ``(m, s)`` B operand."""
    m_min, m_max, s_max, _ = fm.format_bounds(fmt)
    return rng.randint(m_min, m_max), rng.randint(0, s_max)


def extreme_operands(fmt: str) -> dict[str, tuple[int, int]]:
    """The operands with the largest positive and negative value of a format."""
    m_min, m_max, s_max, _ = fm.format_bounds(fmt)
    return {"neg": (m_min, s_max), "pos": (m_max, s_max)}


def _worst_tiles(fmt: str, k: int):
    """(name, a_k, b_k) generators over k for the worst-case patterns of one dot product."""
    ext = extreme_operands(fmt)
    return [
        ("neg*neg", lambda i: -8, lambda i: ext["neg"]),                 # -8 * -8 (largest product)
        ("max*max", lambda i: 7, lambda i: ext["pos"]),                  # all-max
        ("neg*max", lambda i: -8, lambda i: ext["pos"]),                 # most negative sum
        ("alternating", lambda i: -8 if i % 2 else 7,
         lambda i: ext["neg"] if i % 2 else ext["pos"]),                 # alternating signs
        ("zeros", lambda i: 0, lambda i: (0, 0)),                         # all zeros
    ]


def pe_vectors(formats, k_max: int, *, seed: int = 0, random_tiles: int = 30) -> list[dict]:
    """Beats ``{"a", "m", "s", "last"}`` for one PE: every worst case at ``K = k_max`` for every
    format, tiles of ``K = 1`` back to back, and random tiles with bubbles (``a = 0`` beats)."""
    rng = random.Random(seed)
    beats = []

    def tile(k, a_of, b_of, bubbles=0.0):
        for i in range(k):
            while rng.random() < bubbles:
                beats.append({"a": 0, "m": rng.randint(-1, 1), "s": 0, "last": 0})
            m, s = b_of(i)
            beats.append({"a": a_of(i), "m": m, "s": s, "last": int(i == k - 1)})

    for f in fm.resolve_formats(formats):
        for _, a_of, b_of in _worst_tiles(f, k_max):
            tile(k_max, a_of, b_of)
    for _ in range(3):                                   # single-product tiles back to back
        f = rng.choice(fm.resolve_formats(formats))
        tile(1, lambda i: rng.randint(-8, 7), lambda i, f=f: random_operand(rng, f))
    for _ in range(random_tiles):
        f = rng.choice(fm.resolve_formats(formats))
        tile(rng.randint(1, k_max), lambda i: rng.randint(-8, 7),
             lambda i, f=f: random_operand(rng, f), bubbles=0.2)
    return beats


def pe_expected(beats: list[dict], latency: int, extra: int) -> list[int]:
    """The PE's ``out`` in every cycle: ``len(beats) + extra`` values (the beat of cycle ``t`` is
    applied in cycle ``t``; a tile's sum appears ``latency`` cycles after its last beat)."""
    out = [0] * (len(beats) + extra)
    acc = 0
    for t, b in enumerate(beats):
        acc += (b["a"] * b["m"]) << b["s"]
        if b["last"]:
            if t + latency < len(out):
                out[t + latency] = acc
            acc = 0
    return out


def array_tiles(rows: int, cols: int, formats, k_max: int, *, seed: int = 0,
                random_tiles: int = 6, max_k: int | None = None) -> list[dict]:
    """Tiles ``{"k", "a": rows x k, "b": k x cols (m, s), "gap"}`` for the array: one worst-case tile
    per format at ``K = k_max`` (each row and column a different worst case), short tiles
    (``K < rows``, which must stall) and random tiles; ``gap`` is a probability of bubbles."""
    rng = random.Random(seed)
    max_k = max_k or k_max
    tiles = []
    for f in fm.resolve_formats(formats):
        pats = _worst_tiles(f, k_max)
        a = [[pats[i % len(pats)][1](k) for k in range(k_max)] for i in range(rows)]
        b = [[pats[j % len(pats)][2](k) for j in range(cols)] for k in range(k_max)]
        # Pair each row with the matching column pattern on the diagonal, so every worst case
        # (a_pattern . b_pattern) is some C[i, i] when rows and cols allow.
        tiles.append({"k": k_max, "a": a, "b": b, "gap": 0.0})
    for k in (1, 2, max(1, rows - 1)):
        f = rng.choice(fm.resolve_formats(formats))
        tiles.append({"k": k, "a": [[rng.randint(-8, 7) for _ in range(k)] for _ in range(rows)],
                      "b": [[random_operand(rng, f) for _ in range(cols)] for _ in range(k)],
                      "gap": 0.0})
    for _ in range(random_tiles):
        f = rng.choice(fm.resolve_formats(formats))
        k = rng.randint(1, max_k)
        tiles.append({"k": k, "a": [[rng.randint(-8, 7) for _ in range(k)] for _ in range(rows)],
                      "b": [[random_operand(rng, f) for _ in range(cols)] for _ in range(k)],
                      "gap": rng.choice([0.0, 0.3])})
    return tiles


def array_expected(tiles: list[dict]) -> list[list[int]]:
    """The result rows of every tile, in order (``rows`` rows of ``cols`` sums per tile)."""
    out = []
    for t in tiles:
        a, b, k = t["a"], t["b"], t["k"]
        for row in a:
            out.append([sum(row[x] * (b[x][j][0] << b[x][j][1]) for x in range(k))
                        for j in range(len(b[0]))])
    return out


def dump(path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def load(path):
    with open(path) as f:
        return json.load(f)


def _worst_matrices(fmt: str, m: int, k: int, n: int, rng: random.Random):
    """A (m x k) and B (k x n) values whose rows / columns cycle through the worst-case patterns,
    so that ``C[i, j]`` for ``i % 5 == j % 5`` is a worst case (``-8 * -8`` accumulated ``k`` times,
    all-max, most negative, alternating signs, all zeros); other entries mix them."""
    pats = _worst_tiles(fmt, k)
    a = [[pats[i % len(pats)][1](x) for x in range(k)] for i in range(m)]
    b = []
    for x in range(k):
        row = []
        for j in range(n):
            mm, s = pats[j % len(pats)][2](x)
            row.append(mm << s)
        b.append(row)
    return a, b


def _random_b_value(rng: random.Random, fmt: str) -> int:
    m, s = random_operand(rng, fmt)
    return m << s


def invalid_operand(formats):
    """An ``(m, s)`` that fits the operand layout but lies outside every format (None if none
    exists, e.g. INT4 alone, where every 4-bit ``m`` with ``s = 0`` is valid)."""
    layout = fm.operand_layout(formats)
    m_bits, s_bits = layout["m"].shape.width, layout["s"].shape.width
    m_lo, m_hi = -(1 << (m_bits - 1)), (1 << (m_bits - 1)) - 1
    for m in (m_hi, m_lo):
        for s in range((1 << s_bits) - 1, -1, -1):
            if not any(fb[0] <= m <= fb[1] and s <= fb[2]
                       for fb in map(fm.format_bounds, fm.resolve_formats(formats))):
                return m, s
    return None


def engine_program(config, *, seed: int = 0, shapes=None, include_errors: bool = True):
    """A regression program for the engine: GEMMs smaller than, equal to and larger than the array
    (tiling in both directions), ``K`` from 1 to ``k_max``, every transpose combination, an
    accumulate chain and LOAD_C, worst-case operands at ``K = k_max`` in every B format, and (with
    ``include_errors``) commands the engine must reject without touching C. Returns the steps."""
    import torch

    from .program import Step, encode_b

    rng = random.Random(seed)
    R, C, kmax = config.rows, config.cols, config.k_max
    formats = list(config.formats)
    steps = []

    def gemm(a_vals, b_vals, fmt, ta, tb, tc, accumulate=0, load=True):
        A = torch.tensor(a_vals, dtype=torch.int64)
        B = torch.tensor(b_vals, dtype=torch.int64)
        m, k = A.shape
        n = B.shape[1]
        As = A.T.contiguous() if ta else A
        Bs = B.T.contiguous() if tb else B
        if load:
            steps.append(Step("LOAD_A", m=m, k=k, trans_a=ta, a=As.flatten().tolist()))
            steps.append(Step("LOAD_B", k=k, n=n, trans_b=tb, b=encode_b(Bs.flatten().tolist(), fmt)))
        steps.append(Step("GEMM", m=m, k=k, n=n, trans_a=ta, trans_b=tb, accumulate=accumulate))
        steps.append(Step("READ_C", m=m, n=n, trans_c=tc, read=m * n))

    # 1. Worst cases at K = k_max, one GEMM per format (larger than the array in both directions
    #    when the buffers allow).
    for fmt in formats:
        m, n = min(R + 1, 5 * R), min(C + 1, 5 * C)
        m, n = max(m, 5), max(n, 5)
        while config.a_words(m, kmax) > config.a_depth or config.b_words(kmax, n) > config.b_depth \
                or config.c_words(m, n) > config.c_depth:
            m, n = max(1, m - 1), max(1, n - 1)
        a, b = _worst_matrices(fmt, m, kmax, n, rng)
        gemm(a, b, fmt, 0, 0, 0)
    # 2. Shapes around the array size, K from 1 to k_max, every transpose combination.
    shapes = shapes or [
        (1, 1, 1), (R, 1, C), (R, kmax, C), (max(1, R - 1), 2, max(1, C - 1)),
        (R + 1, 3, C + 1), (2 * R + 1, min(kmax, 7), 2 * C + 1), (3 * R, min(kmax, R + 1), C),
        (R, min(kmax, 17), 3 * C + 2),
    ]
    for idx, (m, k, n) in enumerate(shapes):
        fmt = formats[idx % len(formats)]
        a = [[rng.randint(-8, 7) for _ in range(k)] for _ in range(m)]
        b = [[_random_b_value(rng, fmt) for _ in range(n)] for _ in range(k)]
        ta, tb, tc = (idx >> 0) & 1, (idx >> 1) & 1, (idx >> 2) & 1
        if config.a_words(m, k) <= config.a_depth and config.b_words(k, n) <= config.b_depth \
                and config.c_words(m, n) <= config.c_depth:
            gemm(a, b, fmt, ta, tb, tc)
    # 3. Accumulate: LOAD_C, then two GEMMs added onto it (the same operands, then new ones).
    m, k, n = R + 2, min(kmax, 9), C + 1
    fmt = formats[-1]
    c0 = [[rng.randint(-1000, 1000) for _ in range(n)] for _ in range(m)]
    steps.append(Step("LOAD_C", m=m, n=n, c=[v for row in c0 for v in row]))
    a = [[rng.randint(-8, 7) for _ in range(k)] for _ in range(m)]
    b = [[_random_b_value(rng, fmt) for _ in range(n)] for _ in range(k)]
    gemm(a, b, fmt, 1, 0, 0, accumulate=1)
    gemm(a, b, fmt, 1, 0, 1, accumulate=1, load=False)
    # 4. Commands the engine must reject; C must be unchanged afterwards.
    if include_errors:
        steps.append(Step("GEMM", m=m, k=kmax + 1, n=n))                      # K > k_max
        big = 1
        while config.c_words(big, n) <= config.c_depth:
            big *= 2
        steps.append(Step("GEMM", m=big, k=k, n=n))                            # C too large
        steps.append(Step("GEMM", m=0, k=k, n=n))                              # empty
        steps.append(Step("READ_C", m=m, n=n, read=m * n))                     # C unchanged
        steps.append(Step("READ_C", m=big, n=n, read=big * n))                 # rejected: no data
        # An out-of-format operand poisons B until the next clean LOAD_B.
        bad = invalid_operand(formats)
        if bad is not None:
            steps.append(Step("LOAD_B", k=1, n=1, b=[bad]))
            steps.append(Step("LOAD_A", m=1, k=1, a=[1]))
            steps.append(Step("GEMM", m=1, k=1, n=1))
            steps.append(Step("READ_C", m=m, n=n, read=m * n))                 # still unchanged
    return steps
