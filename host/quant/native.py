"""Optional fused C kernels for the quantizers' hot loops (``native.c``), built on first use.

The golden torch code in ``host.quant`` stays the definition; the kernels only compute the same bits in
one pass (the counter-based random stream, LUQ's codes, stochastic rounding to codes) and are checked
against it in tests/test_native.py (SAWB's divide-clamp-round pass included). Two more kernels serve the
convolutions: an exact integer weight-gradient convolution for ``host.gemm.qconv2d_weight`` (INT8 x INT8
past the float32 bound), checked against the float64 one, and the B GEMM of a convolution fused with its
col2im (``host.nn.functional.conv_dgrad_native``), checked against ``matmul`` + ``F.fold`` (on AVX2 CPUs
its columns -- their byte operands transposed eight positions at a time -- and the INT8 weight gradient's
m = 8 terms use byte/word multiply-add intrinsics, picked at run
time; so do the 16-bit random draws, fused with the int8 stochastic rounding, and the LOG codes' lookup).
Also fused: ShiftQuant's channel maxima, exponents (with its input's finiteness test) and multiply-then-SR
pass (the multiply in AVX2 on whole vectors of channels), the per-tensor multiply-round-clamp of
``int_symmetric``/``int_unsigned``, the elementwise passes of the L1 normalization (``host.quant.l1norm``,
with its input's finiteness test and the sum of the backward's signs; AVX2 forms of three of them for
channels-last tensors; its per-channel divisor and backward scalars), a ShiftQuant operand's float32 values
for ``host.gemm.qconv2d_weight``, the input check's min/max (``host.quant.core.check_input_range``), the
LOG codes' table lookup of ``host.backends.torch_backend.b_values``; for LUQ's SMP samples, both samples'
codes in one pass, the sum of their LOG values (``host.nn.operand.summed_log_values``) and, for a
convolution's B GEMM, their codes packed in pairs (a format of the B kernel whose values are the two
samples' sums); DSQ's forward pass (the learned-clip quantizer of ``lbt4``/``lbt5``: codes, clamp mask and
dequantized values) and the products of its backward pass, and LBT's count of clipped gradient elements.
Each is checked against its torch code (tests/test_native.py, tests/test_fast_sq.py, tests/test_fast_smp.py).
StatQuant's (``psq4``/``bhq5``) kernels, checked in tests/test_fast_stat.py: the INT8 forward quantizer's
divide-round-clamp pass (``host.quant.forward.int8_per_tensor``); the per-row/per-column min/max
quantizer's slice extrema, scale data and subtract-multiply-SR pass (``host.quant.statquant``); the F
GEMM's rescale and zero-point terms (``host.nn.fast_stat.conv_forward_affine``); the B GEMM with its
rescale and zero-point terms fused with col2im (``conv_dgrad_affine``; for BHQ the GEMM's float64 rows
and, after the inverse transform, their col2im: ``conv_dgrad_transformed``); the U GEMM of UINT8 x UINT8
codes as an exact integer weight-gradient convolution (``host.gemm._conv_weight_u8``, checked against the
float64 one) and its zero-point sums over the batch (``batch_sum``, ``window_sums``).
SAWB's range and float64 1- and 2-norms (in ATen's one-thread reduction orders, checked against torch
once per process as well) and ``naive-log4``'s flush of the LOG codes below ``alpha``, checked in
tests/test_fast_luq.py.
They are compiled with the system C compiler into a per-user cache (``$TETRAD_NATIVE_CACHE``, else
``$XDG_CACHE_HOME/tetrad`` or ``~/.cache/tetrad``), keyed by a hash of the source and the flags, and loaded
with :mod:`ctypes` (no torch headers: the build takes about a second). On x86-64 Linux the vector loops
are built for the baseline and for AVX2 and picked at load time; a compiler that cannot do that gets the
baseline build.

If there is no compiler, the build fails, or ``TETRAD_NATIVE=0`` is set, :func:`kernels` returns ``None``
(with one warning for a failed build) and every caller uses its torch code: slower, never different.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

__all__ = ["kernels", "enabled"]

_SOURCE = Path(__file__).with_name("native.c")
# No fast-math and no FMA contraction: every float operation must round exactly as the torch code's.
_FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math"]
_COMPILERS = ("cc", "gcc", "clang")

_lib: ctypes.CDLL | None = None
_tried = False


def enabled() -> bool:
    """Whether the fused kernels may be used (``TETRAD_NATIVE=0`` turns them off)."""
    return os.environ.get("TETRAD_NATIVE", "1") != "0"


def _cache_dir() -> Path:
    if os.environ.get("TETRAD_NATIVE_CACHE"):
        return Path(os.environ["TETRAD_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tetrad"


def _build(defines: tuple[str, ...] = ()) -> Path:
    """Compile ``native.c`` into the cache (once per source/flags/compiler/``defines``, e.g.
    ``("TETRAD_NO_VECTOR_CLONES",)`` for the tests) and return the library path."""
    cc = next((c for c in _COMPILERS if shutil.which(c)), None)
    if cc is None:
        raise RuntimeError(f"no C compiler found (tried {', '.join(_COMPILERS)})")
    src = _SOURCE.read_bytes()
    flags = [*_FLAGS, *(f"-D{d}" for d in defines)]
    key = hashlib.sha256(src + " ".join([cc, *flags, sys.platform]).encode()).hexdigest()[:16]
    out_dir = _cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"tetrad_native_{key}.so"
    if lib.exists():
        return lib
    # Build under a temporary name and rename: concurrent processes (pytest -n) never load a partial file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        res = subprocess.run([cc, *flags, "-o", tmp, str(_SOURCE)], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{cc} failed: {res.stderr.strip()[:2000]}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    u64, i64, i32, ptr = ctypes.c_uint64, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    for name in ("tetrad_uniform_f32", "tetrad_uniform_f64"):
        fn = getattr(lib, name)
        fn.argtypes = [u64, u64, i64, i32, ptr]
        fn.restype = None
    lib.tetrad_luq_codes_f32.argtypes = [ptr, i64, ctypes.c_float, u64, u64, i32, i32, ptr, ptr, ptr]
    lib.tetrad_luq_codes_f32.restype = i64
    lib.tetrad_sr_codes_f32.argtypes = [ptr, i64, u64, u64, i32, i32, i32, i32, ptr]
    lib.tetrad_sr_codes_f32.restype = None
    lib.tetrad_sr_scaled_codes_f32.argtypes = [ptr, i64, i64, ptr, i32, u64, i32, i32, i32, i32, ptr]
    lib.tetrad_sr_scaled_codes_f32.restype = None
    lib.tetrad_shift_exponents_f32.argtypes = [ptr, i64, ctypes.c_float, i32, ptr]
    lib.tetrad_shift_exponents_f32.restype = None
    lib.tetrad_lookup_f32.argtypes = [ptr, i64, ptr, ptr]
    lib.tetrad_lookup_f32.restype = None
    lib.tetrad_l1_absdev_f32.argtypes = [ptr, i64, i64, i64, ptr, ptr]
    lib.tetrad_l1_absdev_f32.restype = i32
    lib.tetrad_l1_fwd_f32.argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr]
    lib.tetrad_l1_bwd_prep_f32.argtypes = [ptr, ptr, i64, i64, i64, ptr, ptr, ptr, ptr, ptr]
    lib.tetrad_l1_bwd_dx_f32.argtypes = [ptr, ptr, i64, i64, i64, ptr, ptr, ptr, ptr, ptr]
    for name in ("tetrad_l1_fwd_f32", "tetrad_l1_bwd_prep_f32", "tetrad_l1_bwd_dx_f32"):
        getattr(lib, name).restype = None
    lib.tetrad_conv_wgrad_i8.argtypes = [ptr, ptr] + [i64] * 15 + [ptr, ptr]
    lib.tetrad_conv_wgrad_i8.restype = None
    lib.tetrad_sawb_codes_f32.argtypes = [ptr, i64, ctypes.c_float, ctypes.c_float, ctypes.c_float, ptr]
    lib.tetrad_sawb_codes_f32.restype = None
    lib.tetrad_mulround_codes_f32.argtypes = [ptr, i64, ctypes.c_float, ctypes.c_float, ctypes.c_float, ptr]
    lib.tetrad_mulround_codes_f32.restype = None
    lib.tetrad_conv_bgrad.argtypes = [ptr, ptr, i64, i32, ptr] + [i64] * 15 + [ctypes.c_float, ptr, ptr, i32]
    lib.tetrad_conv_bgrad.restype = i32
    lib.tetrad_log_values_i8.argtypes = [ptr, i64, ptr]
    lib.tetrad_log_values_i8.restype = None
    lib.tetrad_conv_bgrad_scratch.argtypes = [i64] * 12
    lib.tetrad_conv_bgrad_scratch.restype = i64
    lib.tetrad_smp_log_sum_i16.argtypes = [ptr, i64, i64, ptr]
    lib.tetrad_smp_log_sum_i16.restype = i32
    lib.tetrad_smp_pack_log2.argtypes = [ptr, i64, ptr]
    lib.tetrad_smp_pack_log2.restype = i32
    lib.tetrad_luq_smp2_codes_f32.argtypes = [ptr, i64, ctypes.c_float, u64, u64, i32, ptr, ptr, ptr]
    lib.tetrad_luq_smp2_codes_f32.restype = i64
    lib.tetrad_dsq_fwd_f32.argtypes = [ptr, i64, ctypes.c_float, i32, ctypes.c_float, ctypes.c_float,
                                       ctypes.c_float, ptr, ptr, ptr]
    lib.tetrad_dsq_fwd_f32.restype = i32
    lib.tetrad_dsq_bwd_f32.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, i32, i32, ptr, ptr, ptr]
    lib.tetrad_dsq_bwd_f32.restype = None
    lib.tetrad_count_abs_above_f32.argtypes = [ptr, i64, ctypes.c_float]
    lib.tetrad_count_abs_above_f32.restype = i64
    lib.tetrad_stat_conv_wgrad_i16.argtypes = [ptr, ptr] + [i64] * 15 + [ptr, ptr, ptr]
    lib.tetrad_stat_conv_wgrad_i16.restype = None
    lib.tetrad_stat_wgrad_scratch.argtypes = [i64] * 8
    lib.tetrad_stat_wgrad_scratch.restype = i64
    lib.tetrad_stat_extrema_f32.argtypes = [ptr, i64, i64, i32, ptr, ptr]
    lib.tetrad_stat_extrema_f32.restype = i32
    lib.tetrad_stat_affine_sr_codes_f32.argtypes = [ptr, i64, i64, ptr, ptr, i32, u64, i32, i32, i32, i32, ptr]
    lib.tetrad_stat_affine_sr_codes_f32.restype = None
    lib.tetrad_stat_conv_dgrad_affine.argtypes = [ptr, ptr, i32] + [ptr] * 5 + [i64] * 15 + [ptr, ptr, ptr]
    lib.tetrad_stat_fold_f64.argtypes = [ptr] + [i64] * 14 + [ptr]
    lib.tetrad_stat_fold_f64.restype = None
    lib.tetrad_stat_conv_dgrad_affine.restype = None
    lib.tetrad_stat_batch_sum.argtypes = [ptr, i32, i64, i64, ptr]
    lib.tetrad_stat_batch_sum.restype = None
    f32 = ctypes.c_float
    lib.tetrad_stat_conv_fwd_affine.argtypes = [ptr, ptr, i32] + [i64] * 15 + [ptr, i32, f32, f32, f32, f32, ptr]
    lib.tetrad_stat_conv_fwd_affine.restype = None
    lib.tetrad_stat_int8_codes_f32.argtypes = [ptr, i64, i32, f32, f32, i32, i32, ptr]
    lib.tetrad_stat_int8_codes_f32.restype = None
    lib.tetrad_stat_minmax_params_f32.argtypes = [ptr, ptr, i64, ctypes.c_double, i32, ctypes.c_double, ptr, ptr,
                                                  ptr]
    lib.tetrad_stat_minmax_params_f32.restype = i32
    lib.tetrad_stat_window_sums.argtypes = [ptr, i32] + [i64] * 14 + [ptr, ptr]
    lib.tetrad_stat_window_sums.restype = None
    lib.tetrad_sawb_stats_f32.argtypes = [ptr, i64, ptr]
    lib.tetrad_sawb_stats_f32.restype = i32
    lib.tetrad_luq_flush_f32.argtypes = [ptr, i64, ctypes.c_float, ptr]
    lib.tetrad_luq_flush_f32.restype = None
    _load_sq(lib)
    return lib


def _load_sq(lib: ctypes.CDLL) -> None:
    """Signatures of the L1 normalization's channels-last passes and per-channel scalar kernels, of the
    ShiftQuant operand's float32 values for a weight-gradient convolution, of ShiftQuant's channel
    statistics with the finiteness test and scaled stochastic rounding, and of the input check's range."""
    i64, ptr, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
    lib.tetrad_sq_l1_absdev_cl.argtypes = [ptr, i64, i64, ptr, ptr]
    lib.tetrad_sq_l1_fwd_cl.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr]
    lib.tetrad_sq_l1_bwd_dx_cl.argtypes = [ptr, ptr, i64, i64, ptr, ptr, ptr, ptr, ptr]
    for name in ("tetrad_sq_l1_absdev_cl", "tetrad_sq_l1_fwd_cl", "tetrad_sq_l1_bwd_dx_cl"):
        getattr(lib, name).restype = ctypes.c_int32
    lib.tetrad_sq_l1_sigma_f32.argtypes = [ptr, i64, f32, f32, ptr, ptr]
    lib.tetrad_sq_l1_bwd_stats_f32.argtypes = [ptr, i64, f32, ptr, f32, ptr, ptr]
    for name in ("tetrad_sq_l1_sigma_f32", "tetrad_sq_l1_bwd_stats_f32"):
        getattr(lib, name).restype = None
    lib.tetrad_sq_shift_values_f32.argtypes = [ptr, i64, i64, ptr, ptr]
    lib.tetrad_sq_shift_values_f32.restype = i64
    lib.tetrad_sq_shift_channels_f32.argtypes = [ptr, i64, i64, ctypes.c_int, ctypes.c_int, ptr, ptr]
    lib.tetrad_sq_shift_channels_f32.restype = f32
    lib.tetrad_sq_minmax_f32.argtypes = [ptr, i64, ptr]
    lib.tetrad_sq_minmax_f32.restype = ctypes.c_int32
    lib.tetrad_sq_sr_scaled_codes_f32.argtypes = lib.tetrad_sr_scaled_codes_f32.argtypes
    lib.tetrad_sq_sr_scaled_codes_f32.restype = None


def kernels() -> ctypes.CDLL | None:
    """The loaded kernel library, or ``None`` where it is disabled or cannot be built (then use torch)."""
    global _lib, _tried
    if not enabled():
        return None
    if not _tried:
        _tried = True
        try:
            try:
                _lib = _load(_build())
            except (OSError, RuntimeError):
                # a toolchain without function multiversioning (old clang, a libc without ifunc): the
                # baseline build, the same results
                _lib = _load(_build(("TETRAD_NO_VECTOR_CLONES",)))
        except (OSError, RuntimeError) as e:
            warnings.warn(f"host.quant.native: fused kernels unavailable ({e}); using the torch code",
                          RuntimeWarning, stacklevel=2)
            _lib = None
    return _lib
