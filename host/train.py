"""Command line: train a model with a recipe on a backend, or compare recipes.

::

    python -m host.train --recipe shiftquant4 --dataset mnist5k --model cnn --backend cpu --epochs 8 --out runs/sq4
    python -m host.train --compare fp32,shiftquant4,luq4 --dataset mnist5k --epochs 8 --out runs/cmp
    python -m host.train --recipe luq4 --dataset mnist5k --out runs/luq4 --resume        # continue a run
    python -m host.train --recipe lbt4 --set grad_bits=5 --set fwd_bits=5 ...            # override fields
    torchrun --nproc_per_node 2 -m host.train --recipe luq4 --dataset mnist5k ...         # data parallel (gloo)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

from host.backends import BACKEND_NAMES, BackendError
from host.data import dataset_names, load_dataset
from host.nn.models import MODELS, build_model
from host.recipes import Recipe, get_recipe, recipe_names
from host.trainer import BackendFailure, Trainer, TrainingDiverged

__all__ = ["main", "build_parser", "run_one", "format_table"]

DEFAULT_MODEL = {"mnist5k": "cnn", "digits": "cnn", "mnist1d": "mlp", "text": "transformer"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m host.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"recipes: {', '.join(recipe_names())}\ndatasets: {', '.join(dataset_names())}"
                                       f"\nmodels: {', '.join(MODELS)}\nbackends: {', '.join(BACKEND_NAMES)} "
                                       f"(cuda:N, sim:icarus|verilator|amaranth, board:URL)")
    p.add_argument("--recipe", default="fp32", help="training recipe (see below)")
    p.add_argument("--compare", default=None, metavar="R1,R2,...",
                   help="train each recipe (same init and seed) and print a table and a plot")
    p.add_argument("--dataset", default="mnist5k", help="dataset (see below)")
    p.add_argument("--model", default=None, help="model (default: cnn for images, mlp for mnist1d, "
                                                 "transformer for text)")
    p.add_argument("--backend", default="cpu", help="GEMM backend (see below)")
    p.add_argument("--fallback", default=None, help="backend to continue on if --backend fails (e.g. cpu)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--lr-schedule", default="cosine", choices=["cosine", "constant"])
    p.add_argument("--seed", type=int, default=0, help="model init, data order and quantizer streams")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a recipe field, e.g. --set grad_bits=5 (repeatable)")
    p.add_argument("--out", default="runs/train", help="output directory (checkpoint, metrics, plots)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--device", default=None, help="torch device of the model (default: the backend's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _overrides(items: list[str]) -> dict:
    fields = {f.name for f in dataclasses.fields(Recipe)}
    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        if key not in fields:
            raise ValueError(f"unknown recipe field {key!r}; valid: {sorted(fields)}")
        try:
            out[key] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            out[key] = val
    return out


def run_one(recipe: Recipe, data, args, out: Path, *, progress: bool = True) -> dict:
    """Train one recipe; returns ``{"recipe", "final", "best", "history", "time_s"}``."""
    torch.manual_seed(args.seed)
    model_name = args.model or DEFAULT_MODEL[data.name]
    model = build_model(model_name, data.input_shape, data.num_classes)
    trainer = Trainer(model, recipe=recipe, backend=args.backend, fallback=args.fallback,
                      optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                      lr_schedule=args.lr_schedule, device=args.device, seed=args.seed,
                      batch_size=args.batch_size, out_dir=out, progress=progress, task=data.task)
    if trainer.rank == 0:
        print(recipe.describe())
        print(f"model {model_name} on {data.name} ({len(data.train.tensors[1])} train / "
              f"{len(data.test.tensors[1])} test), backend {trainer.backend.describe()}, "
              f"world size {trainer.world}", flush=True)
    hist = trainer.fit(data.train, args.epochs, val_data=data.test, resume=args.resume)
    res = {"recipe": recipe.name, "model": model_name, "dataset": data.name, "history": hist,
           "final": hist[-1]["val_acc"], "best": max(h["val_acc"] for h in hist),
           "time_s": sum(h["time_s"] for h in hist)}
    if trainer.rank == 0:
        print(f"{recipe.name}: test accuracy {100 * res['final']:.2f} % after {len(hist)} epochs "
              f"({res['time_s']:.1f} s training); outputs in {out}", flush=True)
    return res


def format_table(results: list[dict], reference: str | None = "fp32") -> str:
    """A markdown table of final/best test accuracy (and the difference to the reference recipe)."""
    ref = next((r for r in results if r["recipe"] == reference), None)
    lines = ["| recipe | final test acc (%) | best (%) | vs fp32 (pt) | train time (s) |",
             "|---|---|---|---|---|"]
    for r in results:
        d = "" if ref is None else f"{100 * (r['final'] - ref['final']):+.2f}"
        lines.append(f"| {r['recipe']} | {100 * r['final']:.2f} | {100 * r['best']:.2f} | {d} | {r['time_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        over = _overrides(args.set)
        names = args.compare.split(",") if args.compare else [args.recipe]
        recipes = [get_recipe(n.strip(), **over) for n in names if n.strip()]
        data = load_dataset(args.dataset)
        model_name = args.model or DEFAULT_MODEL[data.name]
        if model_name not in MODELS:
            raise ValueError(f"unknown model {model_name!r}; valid names: {list(MODELS)}")
        from host.backends import get_backend
        get_backend(args.backend)
        if args.fallback:
            get_backend(args.fallback)
    except (ValueError, ImportError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    results = []
    try:
        for r in recipes:
            results.append(run_one(r, data, args, out / r.name if args.compare else out,
                                   progress=not args.no_progress))
    except (TrainingDiverged, BackendFailure, BackendError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.compare and int(os.environ.get("RANK", "0")) == 0:
        from host.plots import plot_curves
        table = format_table(results)
        print(table)
        (out / "compare.md").write_text(table + "\n")
        (out / "compare.json").write_text(json.dumps(results, indent=2))
        plot_curves({r["recipe"]: r["history"] for r in results}, out / "compare.png",
                    title=f"{data.name}, {results[0]['model']}, seed {args.seed}")
        print(f"table, results and plot in {out}/compare.md, compare.json, compare.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
