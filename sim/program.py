"""What a GEMM request becomes on the engine's streams: a *program* of commands and data.

A program is a list of :class:`Step`; each simulator back end (Amaranth sim, Icarus, Verilator)
executes the same program with the same cycle-level protocol and returns one :class:`StepResult`
per step. Everything here is plain Python (plus torch for tensors), so the program can be written to
JSON for a cocotb process and read back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from hw.gemm import formats as fm
from hw.gemm.buffer import buffer_words
from hw.gemm.engine import Op, command_layout

__all__ = [
    "EngineConfig", "Step", "StepResult", "B_ENCODERS", "encode_b", "check_a",
    "pack_command", "pack_operand", "unpack_signed", "dump_program", "load_program",
]


@dataclass(frozen=True)
class EngineConfig:
    """The parameters of a built :class:`~hw.gemm.engine.GemmEngine` (one Verilog / one build
    directory per distinct configuration)."""

    rows: int = 4
    cols: int = 4
    k_max: int = 1024
    formats: tuple = fm.DEFAULT_FORMATS
    a_depth: int = 4096
    b_depth: int = 4096
    c_depth: int = 1024
    dim_bits: int = 16

    def __post_init__(self):
        # The same checks, with the same messages, as GemmEngine's constructor (without building it).
        from hw.gemm.array import MAX_SIDE
        from hw.gemm.buffer import pow2_ceil
        from hw.gemm.pe import ProcessingElement
        object.__setattr__(self, "formats", fm.resolve_formats(self.formats))
        fm.check_int("dim_bits", self.dim_bits, 4, 20)
        fm.check_int("rows", self.rows, 1, MAX_SIDE)
        fm.check_int("cols", self.cols, 1, MAX_SIDE)
        ProcessingElement.resolve_config(self.k_max, self.formats)
        fm.check_int("k_max", self.k_max, 1, 2 ** self.dim_bits - 1)
        fm.check_int("a_depth", self.a_depth, pow2_ceil(self.rows), 2 ** 20)
        fm.check_int("b_depth", self.b_depth, pow2_ceil(self.cols), 2 ** 20)
        fm.check_int("c_depth", self.c_depth, 1, 2 ** 20)

    def engine(self):
        from hw.gemm.engine import GemmEngine
        return GemmEngine(self.rows, self.cols, k_max=self.k_max, formats=self.formats,
                          a_depth=self.a_depth, b_depth=self.b_depth, c_depth=self.c_depth,
                          dim_bits=self.dim_bits)

    @property
    def key(self) -> str:
        return (f"engine_{self.rows}x{self.cols}_k{self.k_max}_{'-'.join(self.formats)}"
                f"_a{self.a_depth}_b{self.b_depth}_c{self.c_depth}_d{self.dim_bits}")

    @property
    def acc_width(self) -> int:
        return fm.required_acc_width(self.k_max, self.formats)

    def a_words(self, m: int, k: int) -> int:
        return buffer_words(m, k, self.rows)

    def b_words(self, k: int, n: int) -> int:
        return buffer_words(k, n, self.cols)

    def c_words(self, m: int, n: int) -> int:
        return m * -(-n // self.cols)


@dataclass
class Step:
    """One command and its data: ``op`` (an :class:`~hw.gemm.engine.Op` name), the command fields,
    the elements to stream in (``a``: INT4 ints; ``b``: ``(m, s)`` pairs; ``c``: ints) and the number
    of results to read (READ_C)."""

    op: str
    m: int = 0
    k: int = 0
    n: int = 0
    trans_a: int = 0
    trans_b: int = 0
    trans_c: int = 0
    accumulate: int = 0
    a: list = field(default_factory=list)
    b: list = field(default_factory=list)
    c: list = field(default_factory=list)
    read: int = 0

    def fields(self) -> dict:
        return {"op": int(Op[self.op]), "m": self.m, "k": self.k, "n": self.n,
                "trans_a": self.trans_a, "trans_b": self.trans_b, "trans_c": self.trans_c,
                "accumulate": self.accumulate}


@dataclass
class StepResult:
    """What the engine reported after a step: its ``error`` flag, its ``cycles`` counter (meaningful
    after GEMM) and the elements read (READ_C)."""

    error: int
    cycles: int
    data: list


# ---- operand encodings -------------------------------------------------------------------------

def _enc_int4(v: int):
    if not -8 <= v <= 7:
        return None
    return v, 0


def _enc_log4(v: int):
    """0 or +-2**k, k in 0..max_exp -> (sign, k): m = +-1, no multiplier needed."""
    if v == 0:
        return 0, 0
    mag = abs(v)
    k = mag.bit_length() - 1
    if mag != 1 << k or k > fm.B_FORMATS["log4"].max_exp:
        return None
    return (1 if v > 0 else -1), k


def _enc_shift(v: int):
    """m * 2**s with m on the ShiftFormat grid and s in 0..e_max; the smallest s that fits."""
    fmt = fm.B_FORMATS["shift"]
    for s in range(fmt.e_max + 1):
        if v % (1 << s):
            break
        mant = v >> s
        if fmt.grid.contains(mant):
            return mant, s
    return None


B_ENCODERS = {"int4": _enc_int4, "log4": _enc_log4, "shift": _enc_shift}


def encode_b(values, b_format: str) -> list[tuple[int, int]]:
    """The PE operands ``(m, s)`` of a flat sequence of B values in ``b_format``; a ValueError names
    the first value that the format cannot represent."""
    if b_format not in B_ENCODERS:
        raise ValueError(f"unknown b_format {b_format!r}; allowed: {sorted(B_ENCODERS)}")
    enc = B_ENCODERS[b_format]
    out = []
    for i, v in enumerate(values):
        pair = enc(int(v))
        if pair is None:
            raise ValueError(f"b value {int(v)} (flat index {i}) is not representable in {b_format}: "
                             f"{_format_range(b_format)}")
        out.append(pair)
    return out


def _format_range(b_format: str) -> str:
    if b_format == "int4":
        return "int4 values are integers in [-8, 7]"
    if b_format == "log4":
        return f"log4 values are 0 or +-2**k with k in 0..{fm.B_FORMATS['log4'].max_exp}"
    f = fm.B_FORMATS["shift"]
    return f"shift values are m*2**s with m in [{f.grid.qmin}, {f.grid.qmax}] and s in 0..{f.e_max}"


def check_a(values) -> list[int]:
    out = []
    for i, v in enumerate(values):
        v = int(v)
        if not fm.A_GRID.contains(v):
            raise ValueError(f"a value {v} (flat index {i}) is outside INT4 [-8, 7]")
        out.append(v)
    return out


# ---- packing for the Verilog ports ---------------------------------------------------------------

def pack_command(fields: dict, dim_bits: int) -> int:
    return command_layout(dim_bits).const(fields).as_value().value


def pack_operand(pair, formats) -> int:
    m, s = pair
    return fm.operand_layout(formats).const({"m": m, "s": s}).as_value().value


def unpack_signed(raw: int, width: int) -> int:
    raw &= (1 << width) - 1
    return raw - (1 << width) if raw >> (width - 1) else raw


def dump_program(path, config: EngineConfig, steps: list[Step]) -> None:
    with open(path, "w") as f:
        json.dump({"config": asdict(config), "steps": [asdict(s) for s in steps]}, f)


def load_program(path) -> tuple[EngineConfig, list[Step]]:
    with open(path) as f:
        raw = json.load(f)
    cfg = raw["config"]
    cfg["formats"] = tuple(cfg["formats"])
    return EngineConfig(**cfg), [Step(**s) for s in raw["steps"]]
