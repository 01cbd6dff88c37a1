"""Training plots: loss/accuracy curves per recipe, and a layer's gradient histogram with the quantizer's
grid overlaid. matplotlib with the non-interactive Agg backend (files only)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

__all__ = ["plot_curves", "plot_lm_curves", "plot_grad_hist", "grid_levels"]


def plot_curves(histories: dict[str, list[dict]], path, title: str = "") -> Path:
    """Train loss and validation accuracy per epoch, one line per recipe (``histories[name]`` is a
    trainer history: a list of per-epoch dicts with ``epoch``, ``train_loss``, ``val_acc``)."""
    path = Path(path)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = plt.get_cmap("tab20").colors
    for i, (name, hist) in enumerate(histories.items()):
        ep = [h["epoch"] for h in hist]
        style = {"marker": "o", "ms": 3, "label": name, "color": colors[(2 * i) % 20 + (i >= 10)],
                 "lw": 2.2 if name == "fp32" else 1.3, "ls": "--" if name == "fp32" else "-"}
        ax1.plot(ep, [h["train_loss"] for h in hist], **style)
        if any(h.get("val_acc") is not None for h in hist):
            ax2.plot(ep, [100 * h["val_acc"] if h.get("val_acc") is not None else float("nan") for h in hist],
                     **style)
    ax1.set(xlabel="epoch", ylabel="train loss", yscale="log", title="training loss")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="test accuracy")
    return _finish(fig, (ax1, ax2), path, title)


def plot_lm_curves(histories: dict[str, list[list[dict]]], path, title: str = "") -> Path:
    """Language-model curves: train and validation loss in bits per character per epoch, one line per recipe
    with its mean over seeds and a ± std band (``histories[name]`` is a list of trainer histories, one per
    seed, each a list of per-epoch dicts with ``epoch``, ``train_loss``, ``val_loss`` in nats)."""
    import math
    path = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = {"fp32": "black", "luq4": "tab:blue", "naive-log4": "tab:red"}
    other = iter(plt.get_cmap("tab10").colors[2:])
    for name, runs in histories.items():
        runs = [h for h in runs if h]
        if not runs:
            continue
        n_ep = min(len(h) for h in runs)
        ep = [runs[0][i]["epoch"] for i in range(n_ep)]
        color = colors.get(name) or next(other)
        for ax, key in zip(axes, ("train_loss", "val_loss")):
            v = torch.tensor([[h[i][key] / math.log(2) for i in range(n_ep)] for h in runs], dtype=torch.float64)
            m = v.mean(0)
            sd = v.std(0) if len(runs) > 1 else torch.zeros_like(m)
            ax.plot(ep, m.tolist(), color=color, lw=2.0 if name == "fp32" else 1.5,
                    ls="--" if name == "fp32" else "-", label=f"{name} ({len(runs)} seeds)")
            ax.fill_between(ep, (m - sd).tolist(), (m + sd).tolist(), color=color, alpha=0.2, lw=0)
    axes[0].set(xlabel="epoch", ylabel="bits per character", title="training loss (epoch mean)")
    axes[1].set(xlabel="epoch", ylabel="bits per character", title="validation loss")
    return _finish(fig, axes, path, title)


def grid_levels(info: dict) -> torch.Tensor | None:
    """The representable values of a layer's B-path gradient quantization (from ``last_backward['info']``),
    or ``None`` for an unquantized gradient. LUQ: ``±alpha * 2**k``; ShiftQuant: ``±q * s_0 * 2**-e`` for
    every exponent in use; affine quantizers: every level of the (first row's) grid."""
    q = info.get("B", {}).get("q")
    if q is None:
        return None
    if hasattr(q, "alpha"):
        fmt = q.fmt
        mags = q.alpha.double() * 2.0 ** torch.arange(fmt.max_exp + 1, dtype=torch.float64)
        return torch.cat([-mags.flip(0), torch.zeros(1, dtype=torch.float64), mags])
    if hasattr(q, "exponents"):
        qm = q.fmt.grid.qmax
        es = torch.unique(q.exponents.to(torch.int64)).double()
        codes = torch.arange(-qm, qm + 1, dtype=torch.float64)
        return torch.unique((codes[:, None] * q.scale.double() * 2.0 ** -es[None, :]).flatten())
    if hasattr(q, "step") and q.grid is not None:
        step = q.step.reshape(-1)[0].double()
        off = 0.0 if q.offset is None else q.offset.reshape(-1)[0].double()
        codes = torch.arange(q.grid.qmin, q.grid.qmax + 1, dtype=torch.float64)
        return codes * step + off
    return None


def plot_grad_hist(grad: torch.Tensor, levels: torch.Tensor | None, path, title: str = "") -> Path:
    """Histogram of ``|G|`` on log axes with the quantization levels (their magnitudes) as vertical lines."""
    path = Path(path)
    g = grad.detach().double().abs().flatten()
    g = g[g > 0]
    fig, ax = plt.subplots(figsize=(7, 4))
    if g.numel():
        lo, hi = float(g.min()), float(g.max())
        bins = torch.logspace(torch.log10(torch.tensor(lo)).item(), torch.log10(torch.tensor(hi)).item(), 80)
        ax.hist(g.numpy(), bins=bins.numpy(), color="tab:blue", alpha=0.7, label="|G| (unquantized)")
    if levels is not None:
        mags = torch.unique(levels.abs())
        mags = mags[mags > 0]
        for i, v in enumerate(mags.tolist()):
            ax.axvline(v, color="tab:red", lw=0.8, alpha=0.6, label="quantization levels" if i == 0 else None)
    ax.set(xscale="log", yscale="log", xlabel="|gradient|", ylabel="count", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finish(fig, axes, path: Path, title: str | None) -> Path:
    """Grid and legend on every axis, the title, then save ``fig`` to ``path`` and close it."""
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
