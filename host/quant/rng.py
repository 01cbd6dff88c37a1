"""Vectorized torch implementation of the contract's random stream (``hw.numerics.rng_*``).

The stream is counter-based: word ``w`` of stream ``seed`` is ``mix64(seed << 32 | w)``, so the whole
stream for a tensor is one elementwise pass over a counter vector -- no sequential state. The int64
tensor arithmetic wraps modulo 2**64 exactly like the scalar definition; logical right shifts are
emulated with a mask because torch's ``>>`` on int64 is arithmetic.
"""

from __future__ import annotations

import sys

import torch

from hw import numerics as nx
from host.quant import native

__all__ = ["resolve_seed", "random_words", "random_draws", "uniform", "uniform_torch"]

_NATIVE_UNIFORM = {torch.float32: "tetrad_uniform_f32", torch.float64: "tetrad_uniform_f64"}

_M64 = nx.RNG_MASK64


def _as_i64(v: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _xor_srl_(x: torch.Tensor, k: int, tmp: torch.Tensor) -> None:
    """``x ^= x >>> k`` (logical shift of int64 bit patterns: torch's ``>>`` is arithmetic, so mask)."""
    torch.bitwise_right_shift(x, k, out=tmp)
    tmp.bitwise_and_((1 << (64 - k)) - 1)
    x.bitwise_xor_(tmp)


def _mix64_(x: torch.Tensor) -> torch.Tensor:
    """In-place Wang hash64shift of int64 bit patterns (see hw.numerics.rng_mix64).

    Fifteen elementwise passes through one scratch buffer, no other allocation: the stream is the
    dominant cost of every stochastic quantizer."""
    tmp = torch.bitwise_left_shift(x, 21)
    x.bitwise_not_().add_(tmp)          # ~x + (x << 21)
    _xor_srl_(x, 24, tmp)
    x.mul_(265)                         # == x + (x << 3) + (x << 8) modulo 2**64
    _xor_srl_(x, 14, tmp)
    x.mul_(21)                          # == x + (x << 2) + (x << 4) modulo 2**64
    _xor_srl_(x, 28, tmp)
    torch.bitwise_left_shift(x, 31, out=tmp)
    return x.add_(tmp)


def resolve_seed(seed: int | None = None, generator: torch.Generator | None = None) -> int:
    """The stream seed to use: ``seed`` if given, else 32 bits drawn from ``generator`` (or torch's
    default generator), so ``torch.manual_seed`` makes runs reproducible and the seed can be recorded
    and handed to hardware."""
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
            raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
        if generator is not None:
            raise ValueError("pass either seed= or generator=, not both")
        return seed
    return int(torch.randint(0, 2 ** 32, (1,), generator=generator, dtype=torch.int64).item())


def _check_words(seed: int, count: int, offset: int) -> None:
    """Refuse a bad seed or a word range outside the stream."""
    nx.rng_counter(seed, 0)
    if count < 0 or offset < 0 or offset + count > nx.RNG_MAX_WORDS:
        raise ValueError(f"word range [{offset}, {offset + count}) is outside [0, 2**32)")


def random_words(seed: int, count: int, offset: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Words ``offset .. offset+count-1`` of stream ``seed`` as int64 tensors holding the 64-bit pattern."""
    _check_words(seed, count, offset)
    x = torch.arange(offset, offset + count, dtype=torch.int64, device=device)
    x += seed << 32 if seed < 2 ** 31 else _as_i64(seed << 32)
    return _mix64_(x)


def random_draws(seed: int, count: int, bits: int = nx.DEFAULT_RAND_BITS, offset: int = 0,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Draws ``offset .. offset+count-1`` (unsigned ``bits``-bit integers) as an int32 tensor."""
    return _signed_fields(seed, count, bits, offset, device).to(torch.int32) & ((1 << bits) - 1)


def _draw_words(count: int, bits: int, offset: int) -> tuple[int, int, int]:
    """``(first_word, skip, n_words)``: the words holding draws ``offset .. offset+count-1``."""
    nx._check_bits(bits)
    if count < 0 or offset < 0:
        raise ValueError(f"draw count and offset must be non-negative, got {count}, {offset}")
    per_word = 64 // bits
    first_word, skip = divmod(offset, per_word)
    return first_word, skip, -(-(skip + count) // per_word)


def check_draws(seed: int, count: int, bits: int, offset: int = 0) -> None:
    """Refuse what :func:`uniform` would refuse (bad bits, seed or draw range), without drawing: for the
    fused kernels that draw inside their own pass."""
    first_word, _, n_words = _draw_words(count, bits, offset)
    _check_words(seed, n_words, first_word)


def _signed_fields(seed: int, count: int, bits: int, offset: int, device) -> torch.Tensor:
    """Draws ``offset ..`` read as two's-complement ``bits``-bit integers (see draw_to_uniform)."""
    first_word, skip, n_words = _draw_words(count, bits, offset)
    words = random_words(seed, n_words, first_word, device)
    if bits in (8, 16) and sys.byteorder == "little":
        # Zero-copy: on a little-endian machine element j of the narrow view is field j of its word.
        fields = words.view(torch.int16 if bits == 16 else torch.int8)
    else:
        shifts = torch.arange(0, 64, bits, dtype=torch.int64, device=words.device)
        half = 1 << (bits - 1)
        fields = ((((words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)) ^ half) - half).reshape(-1)
    return fields[skip:skip + count]


def uniform(seed: int, shape, bits: int = nx.DEFAULT_RAND_BITS, offset: int = 0,
            device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The uniform variates of draws ``offset ..`` (``hw.numerics.draw_to_uniform``), shaped ``shape``.

    Element ``i`` (row-major) of the result uses draw ``offset + i``. Exact in float32 for bits <= 16.
    On the CPU in float32/float64 one fused pass (:mod:`host.quant.native`) computes the same bits as
    the torch code, :func:`uniform_torch`, where the kernels are available.
    """
    shape = torch.Size(shape)
    lib = native.kernels() if torch.device(device).type == "cpu" and dtype in _NATIVE_UNIFORM else None
    if lib is None:
        return uniform_torch(seed, shape, bits, offset, device, dtype)
    check_draws(seed, shape.numel(), bits, offset)
    u = torch.empty(shape, dtype=dtype, device=device)
    getattr(lib, _NATIVE_UNIFORM[dtype])(seed, offset, u.numel(), bits, u.data_ptr())
    return u


def uniform_torch(seed: int, shape, bits: int = nx.DEFAULT_RAND_BITS, offset: int = 0,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:func:`uniform` in torch elementwise passes (the definition; any device and float dtype)."""
    shape = torch.Size(shape)
    u = _signed_fields(seed, shape.numel(), bits, offset, device).to(dtype)
    # u = (s + 2**(bits-1) + 1/2) / 2**bits, s the signed field: two in-place passes, both exact.
    u.mul_(2.0 ** -bits).add_(0.5 + 2.0 ** -(bits + 1))
    return u.reshape(shape)
