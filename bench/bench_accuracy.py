"""Benchmark: test accuracy of every recipe vs FP32, 3 seeds each, mean ± std (issue 7, "Accuracy").

Two default tasks: the MNIST-5k CNN (``host.nn.models.SmallCNN``, 4,000 train / 1,000 test) and the MNIST-1D
MLP (``host.nn.models.MLP``, 4,000 / 1,000); and, with ``--datasets text``, the character-level language model
(``host.nn.models.CharTransformer``, 2 pre-norm blocks with LayerNorm, causal softmax attention, on
``host.data.text``: 1,334 train / 149 test windows of 64 characters), scored by validation cross-entropy in
bits per character (lower is better; next-character accuracy is reported too). For every (dataset, recipe,
seed) the model is built under ``torch.manual_seed(seed)`` (so every recipe starts from the same weights for
a seed), trained with :class:`host.trainer.Trainer` on the CPU backend, and its final test accuracy (text:
validation bits per character) recorded. Runs are appended
to ``OUT/runs_<dataset>.jsonl`` as they finish, so an interrupted benchmark continues where it stopped.

Targets: the best 4-bit recipe within 0.5 pt of FP32 on MNIST-5k; every 4-bit recipe within 2 pt; the naive
biased 4-bit gradient baseline visibly worse.

The naive biased log-gradient baseline vs LUQ (docs/TRAINING.md, "Why naive-log4 fails on the Transformer")::

    .venv/bin/python bench/bench_accuracy.py --datasets text --recipes fp32,luq4,naive-log4 --flush-stats \
        --out build/bench-naive-log4

Run: ``.venv/bin/python bench/bench_accuracy.py [--datasets mnist5k,mnist1d] [--seeds 0,1,2] [--out DIR]``
then ``--report`` to print the table (markdown) and write ``OUT/accuracy_<dataset>.png`` (the
training curves of seed 0). Several processes (e.g. one per dataset) may share ``OUT``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from host.data import load_dataset
from host.nn import quant_layers
from host.nn.models import build_model
from host.plots import plot_curves, plot_lm_curves
from host.recipes import get_recipe, recipe_names
from host.trainer import Trainer, TrainingDiverged

SETTINGS = {   # per dataset: model, epochs, optimizer settings (the same for every recipe)
    "mnist5k": {"model": "cnn", "epochs": 5, "lr": 3e-3, "batch_size": 128},
    "mnist1d": {"model": "mlp", "epochs": 20, "lr": 3e-3, "batch_size": 128},
    "text": {"model": "transformer", "epochs": 30, "lr": 3e-3, "batch_size": 64},
}
LM = {"text"}      # language-model tasks: scored by validation loss (bits per character), lower is better
FOUR_BIT = ("shiftquant4", "luq4", "luq4-smp2", "luq4-fnt", "psq4", "lbt4")


def _flush_fractions(layers) -> dict:
    """Per quantized layer with a LUQ-family B-path gradient, on its last recorded backward: the fraction of
    the non-zero output-gradient entries below ``alpha`` (the underflow region) and the fraction the quantizer
    set to zero (naive-log4: every entry below alpha; luq4: each with probability ``1 - |g|/alpha``)."""
    out = {}
    for lay in layers:
        lb = lay.last_backward
        q = None if lb is None else lb["info"].get("B", {}).get("q")
        if q is None or not hasattr(q, "alpha"):
            continue
        g = lb["grad"]
        nz = g != 0
        n = max(int(nz.sum()), 1)
        out[lay.qname] = {"below_alpha": int(((g.abs() < q.alpha) & nz).sum()) / n,
                          "zeroed": int(((q.codes == 0) & nz).sum()) / n}
    return out


def run(dataset: str, recipe: str, seed: int, flush_stats: bool = False) -> dict:
    cfg = SETTINGS[dataset]
    data = load_dataset(dataset)
    torch.manual_seed(seed)
    model = build_model(cfg["model"], data.input_shape, data.num_classes)
    t = Trainer(model, recipe=get_recipe(recipe), backend="cpu", lr=cfg["lr"], batch_size=cfg["batch_size"],
                seed=seed, progress=False, task=data.task)
    flush = []
    if flush_stats:       # record each layer's last backward (a copy of G: the numerics are unchanged)
        layers = quant_layers(t.model)
        for lay in layers:
            lay.record = True
        run_epoch = t._run_epoch

        def _epoch_with_stats(*a, **kw):
            rec = run_epoch(*a, **kw)
            flush.append(_flush_fractions(layers))
            return rec
        t._run_epoch = _epoch_with_stats
    t0 = time.perf_counter()
    try:
        hist = t.fit(data.train, cfg["epochs"], val_data=data.test)
        final, status = hist[-1]["val_acc"], "ok"
    except TrainingDiverged as e:        # reported as such (chance accuracy), never silently dropped
        hist, final, status = t.history, 0.1, f"diverged: {e}"
    except Exception as e:               # a bug: recorded and flagged in the table, the sweep goes on
        hist, final, status = t.history, float("nan"), f"error: {type(e).__name__}: {e}"
    if dataset in LM:       # the score is the final validation loss in bits per character
        final = hist[-1]["val_loss"] / math.log(2) if status == "ok" else float("nan")
    return {"dataset": dataset, "recipe": recipe, "seed": seed, "final": final, "status": status,
            "epochs": cfg["epochs"], "model": cfg["model"], "time_s": time.perf_counter() - t0,
            "history": hist, "flush": flush}


def load_runs(out: Path) -> list[dict]:
    """Every run recorded under ``out`` (one ``runs_<dataset>.jsonl`` per dataset)."""
    runs = []
    for f in sorted(out.glob("runs_*.jsonl")):
        runs += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return runs


def report(out: Path) -> str:
    runs = load_runs(out)
    lines = []
    for ds in SETTINGS:
        rs = [r for r in runs if r["dataset"] == ds]
        if not rs:
            continue
        by = {}
        for r in rs:
            by.setdefault(r["recipe"], []).append(r)
        if ds in LM:
            lines += _report_lm(ds, by, out)
            continue
        ref = statistics.mean(r["final"] for r in by.get("fp32", [])) if "fp32" in by else None
        cfg = SETTINGS[ds]
        lines += [f"### {ds}: {cfg['model']}, {cfg['epochs']} epochs, Adam lr {cfg['lr']} (cosine), batch "
                  f"{cfg['batch_size']}", "",
                  "| recipe | seeds | test accuracy (%) mean ± std | Δ vs fp32 (pt) | per-seed |",
                  "|---|---|---|---|---|"]
        for name in recipe_names():
            if name not in by:
                continue
            acc = [100 * r["final"] for r in sorted(by[name], key=lambda r: r["seed"])]
            m = statistics.mean(acc)
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            d = "" if ref is None else f"{m - 100 * ref:+.2f}"
            bad = sorted({r["status"].split(":")[0] for r in by[name] if r["status"] != "ok"})
            flag = f" ({', '.join(bad)})" if bad else ""
            lines.append(f"| {name}{flag} | {len(acc)} | {m:.2f} ± {sd:.2f} | {d} | "
                         f"{', '.join(f'{a:.1f}' for a in acc)} |")
        lines.append("")
        mean_hist = {}
        for name, group in by.items():
            seed0 = min(group, key=lambda r: r["seed"])
            if seed0["history"]:
                mean_hist[name] = seed0["history"]
        plot_curves(mean_hist, out / f"accuracy_{ds}.png", title=f"{ds} ({cfg['model']}), seed 0")
    return "\n".join(lines)


def _ms(xs) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _report_lm(ds: str, by: dict, out: Path) -> list[str]:
    """Language-model table (validation bits per character, lower is better), the mean ± std curves plot
    ``OUT/curves_<dataset>.png`` and, when recorded, the per-layer flushed fractions of the last epoch."""
    cfg = SETTINGS[ds]
    ref = statistics.mean(r["final"] for r in by["fp32"]) if "fp32" in by else None
    lines = [f"### {ds}: {cfg['model']}, {cfg['epochs']} epochs, Adam lr {cfg['lr']} (cosine), batch "
             f"{cfg['batch_size']}", "",
             "| recipe | seeds | val loss (bits/char) mean ± std | Δ vs fp32 | val next-char acc (%) | "
             "per-seed bits/char | wall time per run (s) |",
             "|---|---|---|---|---|---|---|"]
    for name in recipe_names():
        if name not in by:
            continue
        rs = sorted(by[name], key=lambda r: r["seed"])
        m, sd = _ms([r["final"] for r in rs])
        am, asd = _ms([100 * r["history"][-1]["val_acc"] if r["history"] else float("nan") for r in rs])
        d = "" if ref is None else f"{m - ref:+.3f}"
        bad = sorted({r["status"].split(":")[0] for r in rs if r["status"] != "ok"})
        flag = f" ({', '.join(bad)})" if bad else ""
        lines.append(f"| {name}{flag} | {len(rs)} | {m:.3f} ± {sd:.3f} | {d} | {am:.2f} ± {asd:.2f} | "
                     f"{', '.join(f'{x:.3f}' for x in (r['final'] for r in rs))} | "
                     f"{statistics.mean(r['time_s'] for r in rs):.0f} |")
    lines.append("")
    flush = {n: [r["flush"][-1] for r in rs if r.get("flush")] for n, rs in by.items()}
    flush = {n: f for n, f in flush.items() if f and f[0]}
    if flush:
        layer_names = list(next(iter(flush.values()))[0])
        lines += ["Fraction of the non-zero output-gradient entries set to zero by the B-path quantizer "
                  "(last step of the last epoch, mean over seeds; in brackets: the fraction below alpha):", "",
                  "| recipe | " + " | ".join(layer_names) + " |", "|---" * (len(layer_names) + 1) + "|"]
        for n, fs in flush.items():
            cells = []
            for lay in layer_names:
                z = statistics.mean(f[lay]["zeroed"] for f in fs if lay in f)
                b = statistics.mean(f[lay]["below_alpha"] for f in fs if lay in f)
                cells.append(f"{100 * z:.0f} % ({100 * b:.0f} %)")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("")
    plot_lm_curves({n: [r["history"] for r in rs if r["history"]] for n, rs in by.items()},
                   out / f"curves_{ds}.png",
                   title=f"{ds} ({cfg['model']}): mean ± std over {max(len(v) for v in by.values())} seeds")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="mnist5k,mnist1d",
                   help=f"comma-separated tasks among {sorted(SETTINGS)} (text = the CharTransformer language "
                        f"model, scored in validation bits per character); default mnist5k,mnist1d")
    p.add_argument("--recipes", default=",".join(recipe_names()), help="comma-separated recipe names")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--out", default="bench/results/accuracy", help="results directory (runs_*.jsonl, plots)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--flush-stats", action="store_true",
                   help="record, per epoch and quantized layer, the fraction of gradient entries the LUQ-family "
                        "quantizer set to zero (copies each layer's last gradient; the numerics are unchanged)")
    p.add_argument("--report", action="store_true", help="only print the table from OUT/runs_*.jsonl")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report:
        print(report(out))
        return 0
    bad = [d for d in args.datasets.split(",") if d not in SETTINGS]
    if bad:
        p.error(f"unknown dataset(s) {bad}; valid: {sorted(SETTINGS)}")
    torch.set_num_threads(args.threads)
    done = {(r["dataset"], r["recipe"], r["seed"]) for r in load_runs(out)}
    todo = [(d, r, int(s)) for d in args.datasets.split(",") for s in args.seeds.split(",")
            for r in args.recipes.split(",") if (d, r, int(s)) not in done]
    print(f"{len(todo)} runs to do ({len(done)} already in {out}); machine {platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)", flush=True)
    for i, (d, r, s) in enumerate(todo):
        res = run(d, r, s, flush_stats=args.flush_stats)
        with open(out / f"runs_{d}.jsonl", "a") as f:
            f.write(json.dumps(res) + "\n")
        score = f"{res['final']:.3f} bits/char" if d in LM else f"{100 * res['final']:.2f} %"
        print(f"[{i + 1}/{len(todo)}] {d} {r} seed {s}: {score} ({res['status']}, "
              f"{res['time_s']:.0f} s)", flush=True)
    print(report(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
