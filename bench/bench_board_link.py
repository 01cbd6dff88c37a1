"""GEMM throughput of BoardBackend over the simulated board's link (``python -m bench.bench_board_link``).

Starts the simulated board (``sim.board``, Verilator, 4x4 by default) unless ``--port`` names a running
one, runs square int4 GEMMs of a few sizes and prints, per size: wall time, MAC/s, link bytes, frames,
device cycles (the engine's GEMM cycles) and the device-cycle utilisation of the array. Everything is
checked against ``host.gemm.int_gemm``.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch


def run(port: int, sizes, reps: int = 1) -> list[dict]:
    from host.backends import BoardBackend
    from host.gemm import int_gemm
    be = BoardBackend(f"socket://127.0.0.1:{port}", timeout_s=30)
    info = be.connect()
    rows = []
    g = torch.Generator().manual_seed(0)
    for s in sizes:
        a = torch.randint(-8, 8, (s, s), generator=g)
        b = torch.randint(-8, 8, (s, s), generator=g)
        ls0, st0 = be.link_stats, dict(be.stats)
        t0 = time.perf_counter()
        for _ in range(reps):
            c = be.gemm(a, b, b_format="int", b_shift=None, out_dtype=torch.int64)
        wall = (time.perf_counter() - t0) / reps
        assert torch.equal(c, int_gemm(a, b).to(torch.int64))
        ls1 = be.link_stats
        cyc = (be.stats["device_cycles"] - st0["device_cycles"]) / reps
        macs = s ** 3
        rows.append(dict(size=s, wall_s=wall, macs_per_s=macs / wall,
                         bytes=(ls1["bytes_out"] + ls1["bytes_in"] - ls0["bytes_out"] - ls0["bytes_in"]) / reps,
                         frames=(ls1["requests"] - ls0["requests"]) / reps, gemm_cycles=cyc,
                         array_util=macs / (cyc * info["rows"] * info["cols"])))
    be.close()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0, help="a running sim.board (default: start one)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args(argv)
    from sim.board import start_board
    ctx = contextlib.nullcontext(args.port) if args.port else start_board()
    with ctx as port:
        rows = run(port, args.sizes, args.reps)
    print("| M=K=N | wall s | MAC/s | link bytes | frames | engine GEMM cycles | array utilisation |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['wall_s']:.2f} | {r['macs_per_s']:.0f} | {r['bytes']:.0f} | {r['frames']:.0f} "
              f"| {r['gemm_cycles']:.0f} | {r['array_util']:.0%} |")


if __name__ == "__main__":
    main()
