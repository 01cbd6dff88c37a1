"""BoardBackend: the training GEMMs (and the on-chip quantizers) on a Tetrad board over its serial link.

The protocol is :mod:`hw.wire` (pure Python; the host never imports Amaranth): frames with a CRC-8
header check and a CRC-32, a sequence number per request, exactly one answer per frame. The driver is
stop-and-wait: it sends one request, waits for the answer with the same sequence number and

* on a damaged or missing answer, ``BAD_CRC``/``TIMEOUT``/``BAD_LENGTH`` answers, or silence for
  ``timeout_s``, re-sends the *same* frame (same sequence number and bytes): the device recognizes a
  retry of the frame it last executed and re-sends its stored answer instead of applying a WRITE or
  GEMM twice; after ``retries`` attempts it raises :class:`~host.backends.BackendError`;
* on ``BUSY`` (the device was still executing the previous attempt) it keeps waiting for that answer;
* on ``OUT_OF_RANGE``/``BAD_STATE``/``UNKNOWN_OP``/``UNSUPPORTED`` it raises at once (a driver or
  configuration error, not a link error).

``socket://HOST:PORT`` reaches the simulated board (:mod:`sim.board`) exactly as ``/dev/ttyUSB1``
reaches a real one. A GEMM of any size is cut into what the device's buffers hold: operands wider
than the array's formats are split into INT4 digit / format planes (as :class:`SimBackend` does), M and
N into tiles that fit the A/B/C buffers and one READ frame, and K into chunks of at most ``K_max``
accumulated in the engine's C buffer for as long as the accumulator provably cannot overflow
(:func:`hw.numerics.max_exact_k`), then summed on the host in int64.
"""

from __future__ import annotations

import random
import struct
import time

import torch

from host.backends import Backend, BackendError
from host.quant.fixed import to_fixed
from hw import numerics as nx
from hw import wire

__all__ = ["BoardBackend", "BoardLink"]

_RETRYABLE = (wire.Status.BAD_CRC, wire.Status.TIMEOUT, wire.Status.BAD_LENGTH)
_FMT_BOUNDS = {"int4": (8, 0), "log4": (1, 6), "shift": (7, 3)}      # |m| max, s max (hw.gemm.formats)


class BoardLink:
    """Framed, retried request/response over a pyserial port (:mod:`hw.wire`).

    Parameters
    ----------
    url : str
        pyserial URL (``/dev/ttyUSB1``, ``socket://127.0.0.1:4000``).
    baud : int
        Serial rate (ignored by ``socket://``).
    timeout_s : float
        Silence after which a request is re-sent.
    retries : int
        Attempts per request before :class:`BackendError`.
    """

    def __init__(self, url: str, *, baud: int = 3_000_000, timeout_s: float = 5.0, retries: int = 8):
        import serial
        self.url = url
        self.timeout_s = float(timeout_s)
        self.stall_s = min(self.timeout_s, 1.0)
        self.retries = int(retries)
        try:
            self.port = serial.serial_for_url(url, baudrate=baud, timeout=0.02, write_timeout=max(10.0, timeout_s))
        except (serial.SerialException, OSError, ValueError) as e:
            raise BackendError(f"BoardBackend({url}): could not open the link: {e}") from e
        self.seq = random.randrange(256)
        self.decoder = wire.FrameDecoder()
        self.stats = {"requests": 0, "retries": 0, "bytes_out": 0, "bytes_in": 0}

    def close(self):
        try:
            self.port.close()
        except Exception:       # noqa: BLE001 -- closing a dead link must not raise
            pass

    def request(self, op: int, payload: bytes = b"", *, timeout_s: float | None = None,
                what: str = "") -> bytes:
        """Send one request and return its OK answer's payload (after the status byte)."""
        import serial
        self.seq = (self.seq + 1) & 0xFF
        frame = wire.encode_frame(op, self.seq, payload)
        want_op = op | wire.RESPONSE
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        self.stats["requests"] += 1
        problem = "no answer"
        busy_waits = 0
        attempt = 0
        busy_resend = False
        while attempt < self.retries or busy_resend:
            if busy_resend:
                busy_resend = False             # a BUSY answer does not use up an attempt
            else:
                attempt += 1
            if attempt > 1:
                self.stats["retries"] += 1
            try:
                self.port.write(frame)
                self.stats["bytes_out"] += len(frame)
                now = time.monotonic()
                deadline = now + timeout_s            # for the answer to begin (the device may compute)
                stall = None                          # for a begun answer to continue
                errors = self.decoder.errors
                resend = False
                while not resend:
                    data = self.port.read(max(1, self.port.in_waiting or 1))
                    now = time.monotonic()
                    if data:
                        self.stats["bytes_in"] += len(data)
                        for f in self.decoder.feed(data):
                            if f.op != want_op or f.seq != self.seq or not f.payload:
                                continue            # a stale answer to an earlier request
                            st = f.payload[0]
                            if st == wire.Status.OK:
                                return f.payload[1:]
                            if st == wire.Status.BUSY:
                                # not applied: the device was still working (on an earlier attempt of
                                # this frame, whose answer may still come, or on something else); ask
                                # again shortly -- a retry is never applied twice
                                problem = "device busy"
                                busy_waits += 1
                                if busy_waits > 50:
                                    raise BackendError(f"BoardBackend({self.url}): device stayed busy "
                                                       f"during {what or wire.Op(op).name}")
                                time.sleep(min(0.5, 0.01 * 2 ** min(busy_waits, 6)))
                                resend = busy_resend = True
                                break
                            if st in _RETRYABLE:
                                problem = wire.Status(st).name
                                resend = True
                                break
                            raise BackendError(f"BoardBackend({self.url}): "
                                               f"{wire.StatusError(st, what or wire.Op(op).name)}")
                        if self.decoder.errors != errors and not resend:
                            # a damaged frame: ours, most likely; asking again is always safe
                            problem = "damaged answer"
                            self.stats["damaged"] = self.stats.get("damaged", 0) + 1
                            resend = True
                        stall = now + self.stall_s if self.decoder.pending else None
                    elif stall is not None and now > stall:
                        problem = f"answer stalled for {self.stall_s:.2f} s"
                        self.decoder.buf.clear()
                        break
                    elif now > deadline:
                        problem = f"no answer in {timeout_s:.2f} s"
                        self.decoder.buf.clear()
                        break
            except (serial.SerialException, OSError) as e:
                raise BackendError(f"BoardBackend({self.url}): link failed during {what or op}: {e}") from e
        raise BackendError(f"BoardBackend({self.url}): {what or wire.Op(op).name} failed after {self.retries} "
                           f"attempts (last problem: {problem})")


def _pack_a(values: torch.Tensor) -> bytes:
    """INT4 elements, two per byte, low nibble first."""
    v = (values.reshape(-1).to(torch.int64) & 15)
    if v.numel() % 2:
        v = torch.cat([v, v.new_zeros(1)])
    return bytes((v[0::2] | (v[1::2] << 4)).to(torch.uint8).tolist())


def _encode_b(values: torch.Tensor, fmt: str) -> torch.Tensor:
    """B values -> PE operand bytes ``(m & 15) | s << 4`` (:mod:`hw.gemm.formats`)."""
    v = values.reshape(-1).to(torch.int64)
    if fmt == "int4":
        m, s = v, torch.zeros_like(v)
    elif fmt == "log4":
        mag = v.abs()
        s = torch.where(mag > 0, torch.log2(mag.clamp(min=1).to(torch.float64)).round().to(torch.int64), 0)
        m = torch.sign(v)
    else:
        m, s = v.clone(), torch.zeros_like(v)
        done = v.abs() <= 7
        for cand in range(1, 4):
            ok = ~done & (v % (1 << cand) == 0) & ((v >> cand).abs() <= 7)
            m = torch.where(ok, v >> cand, m)
            s = torch.where(ok, torch.full_like(v, cand), s)
            done |= ok
    return ((m & 15) | (s << 4)).to(torch.uint8)


class BoardBackend(Backend):
    """GEMMs (and QUANT) on a board over the serial link.

    The link is opened, and HELLO read, on first use (so constructing a backend for an unplugged board
    does not fail; its first GEMM raises :class:`BackendError`).

    Parameters
    ----------
    url : str
        A pyserial URL: ``/dev/ttyUSB1``, ``COM3`` or ``socket://HOST:PORT`` (the simulated board).
    timeout_s : float, default 5.0
        Silence after which a request is re-sent (GEMMs get extra time for their cycles).
    retries : int, default 8
        Attempts per request before :class:`BackendError`.
    baud : int, default 3_000_000
        Serial rate of a real board.
    max_frame : int or None
        Largest request/answer payload to use (default: the device's ``max_payload``). Smaller frames
        survive a noisy link better: at a byte error rate ``p`` a frame of ``L`` bytes gets through
        with probability ``(1 - p)**L``.
    transpose : {"auto", "never", "always"}
        Send an operand stored transposed (the engine reads it transposed): ``"auto"`` when the tensor is
        a transposed view, ``"always"`` to exercise the path.

    Attributes
    ----------
    info : dict
        The HELLO fields (rows, cols, k_max, buffer sizes, ...).
    stats : dict
        Requests, retries, bytes, GEMM frames, device cycles.
    """

    def __init__(self, url: str, *, timeout_s: float = 5.0, retries: int = 8, baud: int = 3_000_000,
                 transpose: str = "auto", max_frame: int | None = None):
        if not isinstance(url, str) or not url:
            raise ValueError(f"BoardBackend: url must be a non-empty string, got {url!r}")
        if not timeout_s > 0:
            raise ValueError(f"BoardBackend: timeout_s must be > 0, got {timeout_s!r}")
        if not isinstance(retries, int) or retries < 1:
            raise ValueError(f"BoardBackend: retries must be a positive int, got {retries!r}")
        if transpose not in ("auto", "never", "always"):
            raise ValueError(f"BoardBackend: transpose must be 'auto', 'never' or 'always', got {transpose!r}")
        self.url, self.timeout_s, self.retries, self.baud = url, float(timeout_s), retries, baud
        self.transpose = transpose
        if max_frame is not None and (not isinstance(max_frame, int) or max_frame < 32):
            raise ValueError(f"BoardBackend: max_frame must be an int >= 32 or None, got {max_frame!r}")
        self.max_frame = max_frame
        self.name = f"board:{url}"
        self._link: BoardLink | None = None
        self.info: dict | None = None
        self.stats = {"gemm_frames": 0, "device_cycles": 0}

    # -- link -----------------------------------------------------------------------------------
    def connect(self) -> dict:
        """Open the link and read HELLO (idempotent); returns :attr:`info`."""
        if self._link is None:
            link = BoardLink(self.url, baud=self.baud, timeout_s=self.timeout_s, retries=self.retries)
            try:
                info = wire.unpack_hello(b"\0" + link.request(wire.Op.HELLO, what="HELLO"))
            except BackendError:
                link.close()
                raise
            if info["version"] != wire.VERSION:
                link.close()
                raise BackendError(f"BoardBackend({self.url}): device speaks protocol version "
                                   f"{info['version']}, this host {wire.VERSION}")
            info["formats_list"] = tuple(f for f, bit in wire.FORMAT_BITS.items() if info["formats"] & bit)
            self._link, self.info = link, info
        return self.info

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    def describe(self) -> str:
        if self.info:
            return f"board:{self.url} {self.info['rows']}x{self.info['cols']}"
        return f"board:{self.url}"

    def counters(self) -> dict:
        """The device's COUNTERS (cycles, busy, stalled, frames ok/bad, duplicates, last GEMM cycles)."""
        self.connect()
        return wire.unpack_counters(b"\0" + self._link.request(wire.Op.COUNTERS, what="COUNTERS"))

    @property
    def link_stats(self) -> dict:
        return dict(self._link.stats) if self._link else {}

    # -- GEMM -------------------------------------------------------------------------------------
    def gemm(self, a, b, *, b_format, b_shift, out_dtype):
        from host.backends.sim_backend import SimBackend, int4_digits
        info = self.connect()
        a_cpu = a.detach().to("cpu")
        m, k = a_cpu.shape
        n = b.shape[1]
        a_planes = int4_digits(a_cpu)
        b_planes = SimBackend._b_planes(b.detach().to("cpu"), b_format,
                                        None if b_shift is None else b_shift.detach().to("cpu"))
        fmt = b_planes[0][1]
        if fmt not in info["formats_list"]:
            # a B operand of a format the device lacks: its int4 digit planes are always exact
            if "int4" not in info["formats_list"]:
                raise BackendError(f"{self.describe()}: device has no {fmt} or int4 format")
            vals = sum((p[2].to(torch.int64) << p[0]) for p in b_planes)
            b_planes = [(4 * d, "int4", v) for d, v in enumerate(int4_digits(vals))]
            fmt = "int4"
        a_st = torch.cat(a_planes, dim=0)
        b_st = torch.cat([p[2].to(torch.int64) for p in b_planes], dim=1)
        ta = self.transpose == "always" or (self.transpose == "auto" and not a.is_contiguous()
                                            and a.t().is_contiguous())
        tb = self.transpose == "always" or (self.transpose == "auto" and not b.is_contiguous()
                                            and b.t().is_contiguous())
        c_st = self.exact_gemm(a_st, b_st, fmt, trans_a=ta, trans_b=tb)
        acc = torch.zeros((m, n), dtype=torch.int64)
        for i in range(len(a_planes)):
            for j, (wshift, _, _) in enumerate(b_planes):
                acc += c_st[i * m:(i + 1) * m, j * n:(j + 1) * n] << (4 * i + wshift)
        return acc.to(out_dtype).to(a.device)

    def tiles(self, m: int, k: int, n: int, fmt: str) -> tuple[int, int, int, int]:
        """``(m_t, k_t, n_t, group_k)``: tiles that fit the device's A/B/C buffers and one READ frame,
        and the longest reduction accumulated on the device before the host adds it up."""
        info = self.info
        r, c = info["rows"], info["cols"]

        def p2(v):
            return 1 << (v - 1).bit_length()
        b_max, s_max = _FMT_BOUNDS[fmt]
        group_k = nx.max_exact_k(info["acc_width"], 8, b_max, s_max)
        # one tile of rows (A) / cols (B) at k_t must fit its buffer: on a device with small buffers
        # (iCEBreaker) that, not k_max, bounds the reduction of one GEMM; and no dimension may reach
        # 2**dim_bits (the device answers OUT_OF_RANGE)
        dim_max = (1 << info["dim_bits"]) - 1
        k_t = min(k, info["k_max"], group_k, r * max(1, info["a_depth"] // p2(r)),
                  c * max(1, info["b_depth"] // p2(c)), dim_max)
        m_t = min(m, r * max(1, info["a_depth"] // (p2(r) * -(-k_t // r))), info["c_depth"], dim_max)
        n_t = min(n, c * max(1, info["b_depth"] // (p2(c) * -(-k_t // c))), dim_max)
        n_t = min(n_t, c * max(1, info["c_depth"] // m_t))
        return m_t, k_t, n_t, group_k

    def _frame_room(self) -> int:
        return min(self.info["max_payload"], self.max_frame or self.info["max_payload"])

    def exact_gemm(self, a: torch.Tensor, b: torch.Tensor, fmt: str, *, trans_a: bool = False,
                   trans_b: bool = False) -> torch.Tensor:
        """``a @ b`` (int64) with ``a`` on INT4 and ``b`` values in the device format ``fmt``, tiled."""
        info = self.connect()
        m, k = a.shape
        n = b.shape[1]
        m_t, k_t, n_t, group_k = self.tiles(m, k, n, fmt)
        out = torch.zeros((m, n), dtype=torch.int64)
        link = self._link
        for m0 in range(0, m, m_t):
            mm = min(m_t, m - m0)
            for n0 in range(0, n, n_t):
                nn = min(n_t, n - n0)
                in_group = 0
                for k0 in range(0, k, k_t):
                    kk = min(k_t, k - k0)
                    a_t = a[m0:m0 + mm, k0:k0 + kk]
                    b_t = b[k0:k0 + kk, n0:n0 + nn]
                    self._write(wire.Target.A, a_t.t() if trans_a else a_t, trans_a)
                    self._write(wire.Target.B, b_t.t() if trans_b else b_t, trans_b, fmt=fmt)
                    flags = int(trans_a) | (int(trans_b) << 1) | (int(in_group > 0) << 2)
                    tiles = -(-mm // info["rows"]) * -(-nn // info["cols"])
                    extra = tiles * max(kk, info["rows"]) / 20_000.0     # simulated boards: ~20k cycles/s
                    ans = link.request(wire.Op.GEMM, wire.GEMM_REQ.pack(mm, kk, nn, flags),
                                       timeout_s=self.timeout_s + extra, what=f"GEMM {mm}x{kk}x{nn}")
                    self.stats["gemm_frames"] += 1
                    self.stats["device_cycles"] += struct.unpack("<I", ans[:4])[0]
                    in_group += kk
                    last = k0 + kk >= k
                    if last or in_group + min(k_t, k - k0 - kk) > group_k:
                        per = max(1, min(wire.READ_MAX, (self._frame_room() - 1) // 4))
                        raw = bytearray()
                        for off in range(0, mm * nn, per):
                            cnt = min(per, mm * nn - off)
                            part = link.request(wire.Op.READ, wire.READ_REQ.pack(mm, nn, 0, off, cnt),
                                                what=f"READ {mm}x{nn} @{off}")
                            if len(part) != 4 * cnt:
                                raise BackendError(f"{self.describe()}: READ returned {len(part)} bytes, "
                                                   f"expected {4 * cnt}")
                            raw += part
                        c = torch.frombuffer(raw, dtype=torch.int32).reshape(mm, nn)
                        out[m0:m0 + mm, n0:n0 + nn] += c.to(torch.int64)
                        in_group = 0
        return out

    def _write(self, target: int, stored: torch.Tensor, trans: bool, *, fmt: str | None = None) -> None:
        """Send a stored matrix (row-major) in WRITE chunks that fit the device's payload buffer."""
        rows, cols = stored.shape
        flat = stored.contiguous().reshape(-1)
        room = self._frame_room() - wire.WRITE_HDR.size
        per = min(0xFFFF, room * 2 if target == wire.Target.A else room)
        data = None if target == wire.Target.A else _encode_b(flat, fmt)
        for off in range(0, flat.numel(), per):
            cnt = min(per, flat.numel() - off)
            body = _pack_a(flat[off:off + cnt]) if target == wire.Target.A else bytes(data[off:off + cnt].tolist())
            self._link.request(wire.Op.WRITE, wire.WRITE_HDR.pack(int(target), int(trans), rows, cols, off, cnt)
                               + body, what=f"WRITE {'AB'[target]} @{off}")

    # -- QUANT --------------------------------------------------------------------------------------
    def quantize(self, name: str, x: torch.Tensor, *, seed: int | None = None,
                 generator: torch.Generator | None = None, rounding: str = "sr", fallback: bool = False):
        """Run an on-chip quantizer on ``x``; returns what ``host.quant`` returns, bit for bit:

        * ``"shiftquant"`` -> ``host.quant.shiftquant(x, 4, axis="row", e_max=3, rounding=, scale=<the
          device's, HELLO shift_scale>, seed=)`` (:class:`~host.quant.core.ShiftQuantized`);
        * ``"luq"`` -> ``host.quant.luq(x, max_exp=6, alpha_mode="pow2", seed=)``.

        ``x`` must be fixed point with 16-bit integers (``sim.quant.units.to_fixed``'s convention), 2-D
        or more for shiftquant (rows are the channels), and at most HELLO's ``quant_max`` elements.

        A device built without quantizer units (HELLO ``quant_units == 0``, e.g. the iCEBreaker's; it
        answers QUANT with ``UNSUPPORTED``) raises :class:`~host.backends.BackendError`, or with
        ``fallback=True`` runs the same ``host.quant`` call on the host (what the device would have
        returned; training always quantizes on the host, so only this method is affected).
        """
        info = self.connect()
        if not info["quant_units"] and fallback:
            return host_quantize(name, x, info, seed=seed, generator=generator, rounding=rounding,
                                 who=f"{self.describe()}.quantize({name!r})")
        payload, ctx = quant_request(name, x, info, seed=seed, generator=generator, rounding=rounding,
                                     who=f"{self.describe()}.quantize({name!r})")
        ans = self._link.request(wire.Op.QUANT, payload, what=f"QUANT {name}")
        return quant_result(ans, ctx)


def quant_request(name: str, x: torch.Tensor, info: dict, *, seed=None, generator=None, rounding="sr",
                  who: str = "quantize"):
    """The QUANT request payload for ``x`` and the context :func:`quant_result` needs."""
    from host.quant.rng import resolve_seed
    if name not in ("shiftquant", "luq"):
        raise ValueError(f"{who}: name must be 'shiftquant' or 'luq', got {name!r}")
    if not info["quant_units"]:
        raise BackendError(f"{who}: this device was built without quantizer units")
    if rounding not in ("sr", "rdn") or (name == "luq" and rounding != "sr"):
        raise ValueError(f"{who}: rounding must be 'sr' (or 'rdn' for shiftquant), got {rounding!r}")
    if name == "shiftquant" and x.dim() < 2:
        raise ValueError(f"{who}: expected a tensor with >= 2 dimensions, got shape {tuple(x.shape)}")
    xi, ex = to_fixed(x, 16, who)
    if xi.numel() > info["quant_max"]:
        raise ValueError(f"{who}: {xi.numel()} elements exceed the device's {info['quant_max']} per QUANT")
    s = resolve_seed(seed, generator) if rounding == "sr" else (seed or 0)
    rows = xi.shape[0] if name == "shiftquant" else 1
    cols = xi.numel() // rows
    unit = wire.QuantUnit.SHIFTQUANT if name == "shiftquant" else wire.QuantUnit.LUQ
    body = struct.pack(f"<{xi.numel()}h", *xi.reshape(-1).tolist())
    payload = wire.QUANT_HDR.pack(int(unit), int(rounding == "rdn"), rows, cols, s) + body
    ctx = dict(name=name, shape=tuple(x.shape), dim=x.dim(), exp=ex, seed=s, rounding=rounding, rows=rows,
               cols=cols, n=xi.numel(), shift_scale=info["shift_scale"], who=who)
    return payload, ctx


def host_quantize(name: str, x: torch.Tensor, info: dict, *, seed=None, generator=None, rounding="sr",
                  who: str = "quantize"):
    """What a device with quantizer units answers to QUANT, computed by ``host.quant`` (the same
    quantizer settings and seed rule: :meth:`BoardBackend.quantize`)."""
    from host import quant
    from host.quant.rng import resolve_seed
    if name not in ("shiftquant", "luq"):
        raise ValueError(f"{who}: name must be 'shiftquant' or 'luq', got {name!r}")
    if rounding not in ("sr", "rdn") or (name == "luq" and rounding != "sr"):
        raise ValueError(f"{who}: rounding must be 'sr' (or 'rdn' for shiftquant), got {rounding!r}")
    if name == "shiftquant" and x.dim() < 2:
        raise ValueError(f"{who}: expected a tensor with >= 2 dimensions, got shape {tuple(x.shape)}")
    s = resolve_seed(seed, generator) if rounding == "sr" else (seed or 0)
    if name == "shiftquant":
        return quant.shiftquant(x, 4, axis="row", e_max=3, rounding=rounding,
                                scale="float" if info["shift_scale"] else "pow2",
                                seed=s if rounding == "sr" else None)
    return quant.luq(x, max_exp=6, alpha_mode="pow2", seed=s)


def quant_result(ans: bytes, ctx: dict):
    """The ``host.quant`` result from a QUANT answer (payload after the status byte)."""
    import math

    from host.quant.core import LogQuantized, ShiftQuantized, codes_dtype
    shape, ex, s = ctx["shape"], ctx["exp"], ctx["seed"]
    if ctx["name"] == "shiftquant":
        max_abs, scale_exp, r_lo, r_hi, r_exp, _bits = wire.SHIFT_INFO.unpack(ans[:wire.SHIFT_INFO.size])
        raw = torch.tensor(list(ans[wire.SHIFT_INFO.size:]), dtype=torch.int64)
        if raw.numel() != ctx["n"]:
            raise BackendError(f"{ctx['who']}: {raw.numel()} codes for {ctx['n']} elements")
        codes = ((raw & 15) ^ 8) - 8
        exps = (raw >> 4).reshape(ctx["rows"], ctx["cols"])
        if max_abs == 0:
            scale = torch.ones((), dtype=torch.float32)
        elif ctx["shift_scale"] == 0:
            scale = torch.tensor(math.ldexp(1.0, scale_exp + ex), dtype=torch.float32)
        else:
            scale = torch.tensor(math.ldexp(float(max_abs), ex), dtype=torch.float32) / 7
        sr = ctx["rounding"] == "sr"
        return ShiftQuantized(
            codes=codes.to(codes_dtype(-7, 7)).reshape(shape), method="shiftquant",
            seed=s if sr else None, rand_bits=nx.DEFAULT_RAND_BITS if sr else None, scale=scale,
            exponents=exps[:, :1].to(torch.int8).reshape((shape[0],) + (1,) * (ctx["dim"] - 1)), axis=0,
            fmt=nx.ShiftFormat(nx.int_grid(4), 3))
    max_abs, alpha_exp = wire.LUQ_INFO.unpack(ans[:wire.LUQ_INFO.size])
    codes = torch.tensor(list(ans[wire.LUQ_INFO.size:]), dtype=torch.int64)
    if codes.numel() != ctx["n"]:
        raise BackendError(f"{ctx['who']}: {codes.numel()} codes for {ctx['n']} elements")
    codes = ((codes & 0xFF) ^ 0x80) - 0x80
    alpha = 1.0 if max_abs == 0 else math.ldexp(1.0, alpha_exp + ex)
    return LogQuantized(codes=codes.to(torch.int8).reshape(shape), method="luq", seed=s,
                        rand_bits=nx.DEFAULT_RAND_BITS, alpha=torch.tensor(alpha, dtype=torch.float32),
                        fmt=nx.LogFormat(6))
