"""Shared helpers of the board tests: one simulated board (Verilator) per test session, and a TCP
proxy that damages the byte stream."""

from __future__ import annotations

import os
import random
import select
import socket
import threading

import pytest

from sim.board import BoardConfig, start_board

__all__ = ["board_port", "icebreaker_port", "FaultyProxy"]


@pytest.fixture(scope="session")
def board_port():
    """The port of a simulated 4x4 board (sim.board's default configuration) on Verilator, started for
    the test session; ``TETRAD_TEST_BOARD_PORT=PORT`` uses an already running ``python -m sim.board``."""
    if os.environ.get("TETRAD_TEST_BOARD_PORT"):
        yield int(os.environ["TETRAD_TEST_BOARD_PORT"])
        return
    with start_board(simulator="verilator") as port:
        yield port


@pytest.fixture(scope="session")
def icebreaker_port():
    """The port of a simulated iCEBreaker (``python -m sim.board --board icebreaker``: exactly the
    board's default Accelerator -- 2x2 INT4, no quantizer units, 7-bit dimensions -- with the byte
    link) on Verilator; ``TETRAD_TEST_ICEBREAKER_PORT=PORT`` uses an already running one."""
    if os.environ.get("TETRAD_TEST_ICEBREAKER_PORT"):
        yield int(os.environ["TETRAD_TEST_ICEBREAKER_PORT"])
        return
    with start_board(BoardConfig.for_board("icebreaker"), simulator="verilator") as port:
        yield port


class FaultyProxy:
    """A loopback TCP proxy between a client and ``127.0.0.1:target`` that corrupts, drops, duplicates
    and delays bytes, each with probability ``rate`` per byte (in both directions), from a seeded RNG.

    ``counts`` records what it did. Use as a context manager; ``port`` is where clients connect."""

    def __init__(self, target: int, *, rate: float = 0.01, seed: int = 0, delay_s: float = 0.02):
        self.target, self.rate, self.delay_s = target, rate, delay_s
        self.rng = random.Random(seed)
        self.counts = {"corrupt": 0, "drop": 0, "dup": 0, "delay": 0, "bytes": 0}
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.port = self.server.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.server.close()

    def _mangle(self, data: bytes) -> tuple[bytes, bool]:
        out = bytearray()
        delay = False
        for b in data:
            self.counts["bytes"] += 1
            r = self.rng.random()
            if r < self.rate / 4:
                self.counts["corrupt"] += 1
                out.append(b ^ (1 << self.rng.randrange(8)))
            elif r < self.rate / 2:
                self.counts["drop"] += 1
            elif r < 3 * self.rate / 4:
                self.counts["dup"] += 1
                out += bytes((b, b))
            elif r < self.rate:
                self.counts["delay"] += 1
                delay = True
                out.append(b)
            else:
                out.append(b)
        return bytes(out), delay

    def _run(self):
        self.server.settimeout(0.2)
        client = None
        while not self.stop.is_set() and client is None:
            try:
                client, _ = self.server.accept()
            except socket.timeout:
                continue
        if client is None:
            return
        up = socket.create_connection(("127.0.0.1", self.target))
        for s in (client, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = {client: up, up: client}
        try:
            while not self.stop.is_set():
                ready, _, _ = select.select([client, up], [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    out, delay = self._mangle(data)
                    if delay:
                        # hold the rest of this chunk back for a while (a stalled link)
                        cut = len(out) // 2
                        peer[s].sendall(out[:cut])
                        self.stop.wait(self.delay_s)
                        out = out[cut:]
                    peer[s].sendall(out)
        except OSError:
            return
        finally:
            client.close()
            up.close()
