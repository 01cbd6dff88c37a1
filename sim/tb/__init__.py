"""cocotb testbenches (run through :mod:`sim.runner`; not pytest modules).

Each is built from small parts in the shape of cocotb's ``examples/matrix_multiplier``: a *driver*
applies transactions to the DUT, a *monitor* observes its outputs, a *model* (the golden integer GEMM,
:mod:`sim.model`) predicts them and a *checker* compares the two in order.

* :mod:`sim.tb.common` -- clock/reset, stream driver and monitor for Amaranth's flattened stream ports.
* :mod:`sim.tb.tb_pe` -- ProcessingElement.
* :mod:`sim.tb.tb_array` -- SystolicArray.
* :mod:`sim.tb.tb_engine` -- GemmEngine programs; also the executor behind ``sim.run_gemm``.
"""
