"""Benchmark: test accuracy of every recipe vs FP32, 3 seeds each, mean ± std (issue 7, "Accuracy").

Two tasks: the MNIST-5k CNN (``host.nn.models.SmallCNN``, 4,000 train / 1,000 test) and the MNIST-1D MLP
(``host.nn.models.MLP``, 4,000 / 1,000). For every (dataset, recipe, seed) the model is built under
``torch.manual_seed(seed)`` (so every recipe starts from the same weights for a seed), trained with
:class:`host.trainer.Trainer` on the CPU backend, and its final test accuracy recorded. Runs are appended
to ``OUT/runs_<dataset>.jsonl`` as they finish, so an interrupted benchmark continues where it stopped.

Targets: the best 4-bit recipe within 0.5 pt of FP32 on MNIST-5k; every 4-bit recipe within 2 pt; the naive
biased 4-bit gradient baseline visibly worse.

Run: ``.venv/bin/python bench/bench_accuracy.py [--datasets mnist5k,mnist1d] [--seeds 0,1,2] [--out DIR]``
then ``--report`` to print the table (markdown) and write ``OUT/accuracy_<dataset>.png`` (the
training curves of seed 0). Several processes (e.g. one per dataset) may share ``OUT``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from host.data import load_dataset
from host.nn.models import build_model
from host.plots import plot_curves
from host.recipes import get_recipe, recipe_names
from host.trainer import Trainer, TrainingDiverged

SETTINGS = {   # per dataset: model, epochs, optimizer settings (the same for every recipe)
    "mnist5k": {"model": "cnn", "epochs": 5, "lr": 3e-3, "batch_size": 128},
    "mnist1d": {"model": "mlp", "epochs": 20, "lr": 3e-3, "batch_size": 128},
}
FOUR_BIT = ("shiftquant4", "luq4", "luq4-smp2", "luq4-fnt", "psq4", "lbt4")


def run(dataset: str, recipe: str, seed: int) -> dict:
    cfg = SETTINGS[dataset]
    data = load_dataset(dataset)
    torch.manual_seed(seed)
    model = build_model(cfg["model"], data.input_shape, data.num_classes)
    t = Trainer(model, recipe=get_recipe(recipe), backend="cpu", lr=cfg["lr"], batch_size=cfg["batch_size"],
                seed=seed, progress=False)
    t0 = time.perf_counter()
    try:
        hist = t.fit(data.train, cfg["epochs"], val_data=data.test)
        final, status = hist[-1]["val_acc"], "ok"
    except TrainingDiverged as e:        # reported as such (chance accuracy), never silently dropped
        hist, final, status = t.history, 0.1, f"diverged: {e}"
    except Exception as e:               # a bug: recorded and flagged in the table, the sweep goes on
        hist, final, status = t.history, float("nan"), f"error: {type(e).__name__}: {e}"
    return {"dataset": dataset, "recipe": recipe, "seed": seed, "final": final, "status": status,
            "epochs": cfg["epochs"], "model": cfg["model"], "time_s": time.perf_counter() - t0,
            "history": hist}


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="mnist5k,mnist1d")
    p.add_argument("--recipes", default=",".join(recipe_names()))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="bench/results/accuracy")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="only print the table from OUT/runs_*.jsonl")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report:
        print(report(out))
        return 0
    torch.set_num_threads(args.threads)
    done = {(r["dataset"], r["recipe"], r["seed"]) for r in load_runs(out)}
    todo = [(d, r, int(s)) for d in args.datasets.split(",") for s in args.seeds.split(",")
            for r in args.recipes.split(",") if (d, r, int(s)) not in done]
    print(f"{len(todo)} runs to do ({len(done)} already in {out}); machine {platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)", flush=True)
    for i, (d, r, s) in enumerate(todo):
        res = run(d, r, s)
        with open(out / f"runs_{d}.jsonl", "a") as f:
            f.write(json.dumps(res) + "\n")
        print(f"[{i + 1}/{len(todo)}] {d} {r} seed {s}: {100 * res['final']:.2f} % ({res['status']}, "
              f"{res['time_s']:.0f} s)", flush=True)
    print(report(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
