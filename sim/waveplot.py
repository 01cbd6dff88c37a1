"""Draw a WaveDrom document as a PNG with matplotlib, so waveforms show in any Markdown viewer.

Understands the subset of WaveDrom that :mod:`sim.quant.waves` writes from its recordings of the
real gateware: one character per clock cycle, ``p`` (clock), ``0``/``1`` (a bit), ``=`` (a new
value, labelled by the next entry of ``data``), ``.`` (unchanged) and ``x`` (don't care).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

__all__ = ["plot_wavedrom"]

_KNOWN = set("p01=.x")


def plot_wavedrom(doc: dict, path: str | Path, *, dpi: int = 130) -> Path:
    """Render ``doc`` (``{"signal": [...], "head": {"text": ...}}``) to ``path``; returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    signals = doc["signal"]
    if not signals:
        raise ValueError("the WaveDrom document has no signals")
    n = max(len(s["wave"]) for s in signals)
    cycle_in = min(0.55, 16.0 / n)                     # inches per cycle: wide waves get narrower cycles
    chars_per_cycle = max(3, int(cycle_in / 0.055))
    fig, ax = plt.subplots(figsize=(cycle_in * n + 2.0, 0.5 * (len(signals) + 1)))
    ticks = []
    for row, sig in enumerate(signals):
        base, wave = -1.2 * row, sig["wave"]
        unknown = set(wave) - _KNOWN
        if unknown:
            raise ValueError(f"unsupported WaveDrom characters {sorted(unknown)} in {wave!r}")
        labels = iter(sig.get("data", []))
        level, seg_start, seg_label = None, None, None

        def close_segment(end):
            if seg_start is None:
                return
            ax.add_patch(plt.Polygon([(seg_start + 0.08, base), (seg_start, base + 0.4),
                                      (seg_start + 0.08, base + 0.8), (end - 0.08, base + 0.8),
                                      (end, base + 0.4), (end - 0.08, base)],
                                     closed=True, fill=True, facecolor="#eef4fb", edgecolor="0.35", lw=0.7))
            text = textwrap.fill(seg_label, width=max(chars_per_cycle * (end - seg_start), 4),
                                 break_long_words=False)
            ax.text((seg_start + end) / 2, base + 0.4, text, ha="center", va="center",
                    fontsize=6.5 if "\n" not in text else 5.5, linespacing=1.0)

        for i, c in enumerate(wave):
            if c == ".":
                c = level
            if c == "p":
                ax.plot([i, i, i + 0.5, i + 0.5, i + 1], [base, base + 0.8, base + 0.8, base, base],
                        color="0.3", lw=1.0)
                level = "p"
                continue
            if c in ("0", "1"):
                if level in ("0", "1") and level != c:
                    ax.plot([i, i], [base, base + 0.8], color="tab:blue", lw=1.4)
                y = base + (0.8 if c == "1" else 0.0)
                ax.plot([i, i + 1], [y, y], color="tab:blue", lw=1.4)
                level = c
            elif c == "x":
                if level == "d":
                    close_segment(i)
                    seg_start = None
                ax.add_patch(plt.Rectangle((i, base), 1, 0.8, hatch="////", fill=False, lw=0, color="0.75"))
                level = "x"
            elif c == "=":
                if level == "d":
                    close_segment(i)
                seg_start, seg_label, level = i, str(next(labels, "")), "d"
        if level == "d":
            close_segment(len(wave))
        ticks.append((base + 0.4, sig["name"]))
    ax.set_yticks([p for p, _ in ticks])
    ax.set_yticklabels([t for _, t in ticks], fontsize=8)
    ax.set_xticks(range(0, n + 1, 2))
    ax.set_xticklabels([str(i) for i in range(0, n + 1, 2)], fontsize=7)
    ax.set_xlabel("clock cycle (values sampled at each rising edge)", fontsize=8)
    ax.set_xlim(-0.1, n + 0.1)
    ax.grid(axis="x", color="0.9", lw=0.5)
    ax.set_title(doc.get("head", {}).get("text", ""), fontsize=9)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
