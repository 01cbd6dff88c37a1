"""Render the waveform picture of docs/HARDWARE.md from a VCD of a real simulation.

    python -m sim.waveform                 # writes sim_build/waveform/gemm.vcd and docs/img/gemm_waveform.png

The simulation is a 2 x 2 GemmEngine running ``C = A @ B`` with ``A`` 3 x 3 and ``B`` 3 x 2 (two tiles
of rows, one of columns) in Amaranth's simulator; the picture shows the GEMM command from acceptance to
completion: the operand beats entering the array (``a.valid``, ``a.last``, the A column and the B row
of each beat), one cell's one-cycle result pulse, the result rows leaving the array (``c.valid``,
``c``) and their writes into the C buffer.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_VCD = ROOT / "sim_build" / "waveform" / "gemm.vcd"
OUT_PNG = ROOT / "docs" / "img" / "gemm_waveform.png"

# (label, VCD name suffix, kind) with kind "bit", "int" (signed) or "vec" (signed lanes of a width)
SIGNALS = [
    ("busy", "top.busy", "bit"),
    ("array a.valid", "top.array.a__valid", "bit"),
    ("array a.ready", "top.array.a__ready", "bit"),
    ("a.last", "top.array.a__payload.last", "bit"),
    ("A column (a.data)", "top.array.a__payload.data", ("vec", 4)),
    ("B row (b: m<<s)", "top.array.b__payload", ("ops", None)),
    ("cell (1,1) out", "top.array.pe_1_1.out", "int"),
    ("array c.valid", "top.array.c__valid", "bit"),
    ("C row (c)", "top.array.c__payload", ("vec", "acc")),
    ("C buffer write", "top.w_valid", "bit"),
]


def simulate():
    import torch

    from sim.amaranth_sim import run_program
    from sim.program import EngineConfig, Step, encode_b

    cfg = EngineConfig(rows=2, cols=2, k_max=16, a_depth=64, b_depth=64, c_depth=16)
    a = torch.tensor([[1, -2, 3], [4, 5, -6], [-7, 7, 2]])
    b = torch.tensor([[1, 2], [-4, 8], [16, -1]])           # log4 values: 2**k, signed
    steps = [Step("LOAD_A", m=3, k=3, a=a.flatten().tolist()),
             Step("LOAD_B", k=3, n=2, b=encode_b(b.flatten().tolist(), "log4")),
             Step("GEMM", m=3, k=3, n=2),
             Step("READ_C", m=3, n=2, read=6)]
    OUT_VCD.parent.mkdir(parents=True, exist_ok=True)
    results = run_program(cfg, steps, vcd=str(OUT_VCD))
    c = torch.tensor(results[-1].data).reshape(3, 2)
    assert torch.equal(c, a @ b), (c, a @ b)
    return cfg, a, b, c, results[2].cycles


def read_vcd(path: Path):
    """{full name: (width, [(time, int value)])} of every variable (x/z read as 0)."""
    from vcd.reader import TokenKind, tokenize

    ids, scope, changes, widths = {}, [], {}, {}
    t = 0
    with open(path, "rb") as f:
        for tok in tokenize(f):
            k = tok.kind
            if k is TokenKind.SCOPE:
                scope.append(tok.scope.ident)
            elif k is TokenKind.UPSCOPE:
                scope.pop()
            elif k is TokenKind.VAR:
                name = ".".join(scope + [tok.var.reference])
                ids.setdefault(tok.var.id_code, []).append(name)
                widths[name] = tok.var.size
                changes.setdefault(name, [])
            elif k is TokenKind.CHANGE_TIME:
                t = tok.time_change
            elif k in (TokenKind.CHANGE_SCALAR, TokenKind.CHANGE_VECTOR):
                d = tok.data
                raw = d.value
                if isinstance(raw, str):
                    raw = int(raw.replace("x", "0").replace("z", "0"), 2) if raw else 0
                for name in ids.get(d.id_code, []):
                    changes[name].append((t, int(raw)))
    return {n: (widths[n], changes[n]) for n in changes}


def _find(sigs, suffix):
    hits = [n for n in sigs if n.endswith(suffix)]
    if not hits:
        raise KeyError(f"no VCD signal ends with {suffix!r}; e.g. {sorted(sigs)[:20]}")
    return min(hits, key=len)


def _value_at(series, t):
    v = 0
    for tt, val in series:
        if tt > t:
            break
        v = val
    return v


def _signed(v, w):
    return v - (1 << w) if w and v >> (w - 1) & 1 else v


def render(cfg):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hw.gemm import formats as fm

    sigs = read_vcd(OUT_VCD)
    clk = sigs[_find(sigs, "clk")][1]
    period = 2 * (clk[2][0] - clk[1][0])          # in the VCD's time unit
    busy_name = _find(sigs, "top.busy")
    # The GEMM command: the second-to-last busy interval (LOAD_A, LOAD_B, GEMM, READ_C).
    edges = sigs[busy_name][1]
    rises = [t for (t, v), (_, pv) in zip(edges[1:], edges[:-1]) if v == 1 and pv == 0]
    falls = [t for (t, v), (_, pv) in zip(edges[1:], edges[:-1]) if v == 0 and pv == 1]
    start, stop = rises[2] - period, falls[2] + 2 * period
    times = list(range(start, stop, period))
    # sample each cycle just before the rising edge (what the registers see)
    sample = [t + period - 1 for t in times]

    acc = fm.required_acc_width(cfg.k_max, cfg.formats)
    layout = fm.operand_layout(cfg.formats)
    mw, sw = layout["m"].shape.width, layout["s"].shape.width

    fig, ax = plt.subplots(figsize=(13, 0.55 * (len(SIGNALS) + 1)))
    y = 0
    labels = []
    for label, suffix, kind in SIGNALS:
        name = _find(sigs, suffix)
        width, series = sigs[name]
        vals = [_value_at(series, t) for t in sample]
        base = -y * 1.2
        if kind == "bit":
            xs, ys = [], []
            for i, v in enumerate(vals):
                xs += [i, i + 1]
                ys += [base + 0.8 * v] * 2
            ax.plot(xs, ys, color="tab:blue", lw=1.5)
        else:
            for i, v in enumerate(vals):
                if kind == "int":
                    text = str(_signed(v, width))
                elif kind[0] == "vec":
                    lw = 4 if kind[1] == 4 else acc
                    lanes = width // lw
                    text = ",".join(str(_signed(v >> (j * lw) & ((1 << lw) - 1), lw)) for j in range(lanes))
                else:
                    ow = mw + sw
                    lanes = width // ow
                    parts = []
                    for j in range(lanes):
                        op = v >> (j * ow) & ((1 << ow) - 1)
                        mm, ss = _signed(op & ((1 << mw) - 1), mw), op >> mw
                        parts.append(str(mm << ss))
                    text = ",".join(parts)
                ax.add_patch(plt.Rectangle((i + 0.05, base), 0.9, 0.8, fill=False, lw=0.6, color="0.5"))
                ax.text(i + 0.5, base + 0.4, text, ha="center", va="center", fontsize=6.5)
        labels.append((base + 0.4, label))
        y += 1
    ax.set_yticks([p for p, _ in labels])
    ax.set_yticklabels([l for _, l in labels], fontsize=8)
    ax.set_xticks(range(0, len(times) + 1, 2))
    ax.set_xticklabels([str(i) for i in range(0, len(times) + 1, 2)], fontsize=7)
    ax.set_xlabel("clock cycle from the GEMM command (values sampled at each rising edge)", fontsize=8)
    ax.set_xlim(0, len(times))
    ax.grid(axis="x", color="0.9", lw=0.5)
    ax.set_title("GemmEngine 2x2, C = A(3x3) @ B(3x2), B in LOG4: Amaranth simulation VCD", fontsize=9)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    OUT_PNG.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(OUT_PNG, dpi=130)
    return OUT_PNG


def main() -> int:
    cfg, a, b, c, cycles = simulate()
    png = render(cfg)
    print(f"C = {c.tolist()} (exact), GEMM {cycles} cycles; wrote {OUT_VCD.relative_to(ROOT)} "
          f"and {png.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
