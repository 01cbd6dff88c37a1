"""The board link: UART PHY, CRC units, frame receiver/transmitter and the command decoder.

The wire format (frame layout, opcodes, status codes) lives in :mod:`hw.wire` (pure Python, shared
with the host). :class:`hw.top.Accelerator` puts these blocks in front of the GEMM engine and the
quantizer units.
"""

from .crc import Crc32, crc8_step, crc32_step
from .decoder import CommandDecoder
from .framer import FrameReceiver, FrameTransmitter, event_layout, response_layout
from .uart import UartPhy, UartRx, UartTx, uart_divisor

__all__ = ["Crc32", "crc8_step", "crc32_step", "CommandDecoder", "FrameReceiver", "FrameTransmitter",
           "event_layout", "response_layout", "UartPhy", "UartRx", "UartTx", "uart_divisor"]
