"""GEMM backends: where the integer training GEMMs of :func:`host.gemm.qgemm` actually run.

Every backend computes the same thing -- the exact integer product ``A @ value(B)`` of INT codes ``A``
and a B operand in one of the contract's formats (``hw.numerics``) -- so every backend returns the same
integers for the same inputs (ARCHITECTURE.md "Data flow of one training step").

==================  ===========================================================================
``"cpu"``           :class:`TorchBackend` ``("cpu")``: :func:`host.gemm.int_gemm` on the BLAS float path
``"cuda"``          :class:`TorchBackend` ``("cuda")``: the same exact path on the GPU (TF32 refused)
``"sim"``           :class:`SimBackend`: the RTL systolic array through ``sim.run_gemm`` (small models)
``"board"``         :class:`BoardBackend`: a board (or the simulated board) over the serial link
==================  ===========================================================================

:func:`get_backend` turns a name (or a ``"sim:verilator"`` / ``"board:socket://..."`` spec) into a
backend; :func:`use_backend` makes one the default of :func:`host.gemm.qgemm` inside a ``with`` block.
"""

from __future__ import annotations

import abc
import contextlib
import threading

import torch

__all__ = [
    "Backend", "BackendError", "BACKEND_NAMES", "get_backend", "use_backend", "current_backend",
    "TorchBackend", "SimBackend", "BoardBackend", "B_FORMATS",
]

B_FORMATS = ("int", "log", "shift")
"""Formats of the B operand: ``"int"`` (value = code), ``"log"`` (LOG4: ``sign(c) * 2**(|c|-1)``, 0 for
``c = 0``), ``"shift"`` (ShiftQuant: ``code << shift`` with a per-element shift)."""

BACKEND_NAMES = ("cpu", "cuda", "sim", "board")


class BackendError(RuntimeError):
    """A backend could not compute a GEMM (device gone, link dropped, simulator failed).

    The trainer catches it to keep the last checkpoint intact and, with ``--fallback cpu``, to continue
    the run on another backend.
    """


class Backend(abc.ABC):
    """One place where integer GEMMs run.

    Subclasses implement :meth:`gemm`; :func:`host.gemm.qgemm` validates the operands before calling it
    and checks the result after, so a backend sees only well-formed inputs.
    """

    #: short name used in reports and errors
    name: str = "backend"

    @property
    def device(self) -> torch.device:
        """Where the host keeps tensors for this backend (the operands arrive there)."""
        return torch.device("cpu")

    @abc.abstractmethod
    def gemm(self, a: torch.Tensor, b: torch.Tensor, *, b_format: str, b_shift: torch.Tensor | None,
             out_dtype: torch.dtype) -> torch.Tensor:
        """Exact ``a @ value(b)``.

        Parameters
        ----------
        a : (M, K) integer tensor
            A operand codes (any integer dtype).
        b : (K, N) integer tensor
            B operand codes in ``b_format``.
        b_format : {"int", "log", "shift"}
        b_shift : (K, N) integer tensor or None
            Per-element left shift of a ``"shift"`` operand (``None`` otherwise).
        out_dtype : torch.int32 or torch.int64
            Accumulator type of the result (``qgemm`` picks int32 when the worst case fits).

        Returns
        -------
        (M, N) tensor of ``out_dtype`` on :attr:`device`.
        """

    def describe(self) -> str:
        """One line for reports."""
        return self.name

    def close(self) -> None:
        """Release the device (a no-op for in-process backends)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"


def get_backend(spec) -> Backend:
    """A backend from a name or spec.

    Parameters
    ----------
    spec : str or Backend
        ``"cpu"``, ``"cuda"``, ``"sim"`` / ``"sim:icarus"`` / ``"sim:verilator"`` / ``"sim:amaranth"``,
        ``"board:URL"`` (e.g. ``"board:socket://127.0.0.1:4000"``), or a :class:`Backend` (returned as is).

    Raises
    ------
    ValueError
        Unknown name: the message lists the valid names.
    """
    if isinstance(spec, Backend):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"backend must be one of {list(BACKEND_NAMES)} or a Backend, got {spec!r}")
    name, _, arg = spec.partition(":")
    if name == "cpu" and not arg:
        return TorchBackend("cpu")
    if name == "cuda":
        return TorchBackend(spec)
    if name == "sim":
        return SimBackend(simulator=arg or "icarus")
    if name == "board":
        if not arg:
            raise ValueError("backend 'board' needs a URL: board:/dev/ttyUSB1 or board:socket://HOST:PORT")
        return BoardBackend(arg)
    raise ValueError(f"unknown backend {spec!r}; valid names: {list(BACKEND_NAMES)} "
                     f"(with options: 'cuda:N', 'sim:icarus|verilator|amaranth', 'board:URL')")


_state = threading.local()


def current_backend() -> Backend:
    """The backend :func:`host.gemm.qgemm` uses when none is passed (CPU unless :func:`use_backend`)."""
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    default = getattr(_state, "default", None)
    if default is None:
        default = _state.default = TorchBackend("cpu")
    return default


@contextlib.contextmanager
def use_backend(backend):
    """Make ``backend`` (a :class:`Backend` or a name for :func:`get_backend`) the default of ``qgemm``
    inside the block (thread-local, nestable)."""
    b = get_backend(backend)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(b)
    try:
        yield b
    finally:
        stack.pop()


from host.backends.torch_backend import TorchBackend  # noqa: E402  (the classes need Backend above)
from host.backends.sim_backend import SimBackend  # noqa: E402
from host.backends.board import BoardBackend  # noqa: E402
