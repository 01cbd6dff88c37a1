"""INT4 GEMM gateware: the processing element, the systolic array and the GEMM engine.

* :class:`~hw.gemm.pe.ProcessingElement` -- ``acc += (a * m) << s`` for the unified operand.
* :class:`~hw.gemm.array.SystolicArray` -- output-stationary ``rows x cols`` array with skew and drain.
* :class:`~hw.gemm.engine.GemmEngine` -- operand buffers, tiling, transposes, accumulate, cycle counter.
* :func:`top_ports` -- the signals of a component's interface, for Verilog conversion.

Gateware only: nothing here names a pin or imports ``host``.
"""

from amaranth.hdl import Signal, Value

__all__ = ["top_ports", "ProcessingElement", "SystolicArray", "GemmEngine", "Op", "B_FORMATS"]


def top_ports(component) -> list:
    """The interface signals of a ``wiring.Component`` as a flat list for ``verilog.convert(ports=...)``.

    Members that are constants (the ``ready`` of an ``always_ready`` stream) are left out: they are
    not wires, and Amaranth refuses them as ports."""
    ports = []
    for _path, _member, value in component.signature.flatten(component):
        value = Value.cast(value)
        if isinstance(value, Signal):
            ports.append(value)
    return ports


from .array import SystolicArray  # noqa: E402
from .engine import GemmEngine, Op  # noqa: E402
from .formats import B_FORMATS  # noqa: E402
from .pe import ProcessingElement  # noqa: E402
