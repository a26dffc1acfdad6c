"""K-quant packing (Q4_K, Q5_K, Q6_K) in numpy, bit-identical to llama.cpp's own quantizer.

Hand-written because the ``gguf`` package quantizes Q8_0/Q4_0/Q5_x but not the K-quants
(it only dequantizes them), and Tuneloom must write Q4_K_M / Q5_K_M / Q6_K files
without a llama.cpp build on the user's machine.

The algorithm is ggml's reference one (``quantize_row_q{4,5,6}_K_ref`` with
``make_qkx2_quants`` / ``make_qx_quants`` in ggml-quants.c), which is what
``llama-quantize`` runs when no importance matrix is given. To come out bit-identical:

* every float operation is done in float32, in the C code's order (``w*l*x`` is
  ``(w*l)*x``, ``a*b - c*d`` rounds both products first);
* sums over a 16/32-value group run strictly left to right (:func:`_seqsum`), never
  numpy's pairwise summation: values are laid out group-position-major
  (``(32, n_groups)``) and accumulated row by row (checked at import);
* ``nearest_int`` (add 1.5*2^23, keep the mantissa) is round-half-to-even for the
  magnitudes that occur, which is ``np.rint``;
* f16 conversions round to nearest even, as ggml's software ``GGML_FP32_TO_FP16``.

Two implementations of that one algorithm, bit-identical to each other and to ggml:

* :mod:`core.export.kquants_jit`, the same loops compiled by numba, used when numba is
  installed (it is a dependency): about ggml's C speed per core, and it releases the
  GIL, so :mod:`core.export.gguf` runs one per core on threads;
* the numpy code below, vectorised over all groups of a chunk of super-blocks (the
  Python loops run over the chunks and the fixed search steps, 21 for Q4_K, 16 for
  Q5_K, 18 for Q6_K, never per block): the fallback where numba cannot be imported,
  about half of ggml's speed per core, and the tests' second opinion.

``TUNELOOM_KQUANT_BACKEND=numpy`` (or ``backend="numpy"``) forces the numpy code.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np

log = logging.getLogger(__name__)

QK_K = 256
# bytes per super-block of 256 values
Q4_K_BYTES = 2 + 2 + 12 + QK_K // 2            # d, dmin, scales/mins, 4-bit quants = 144
Q5_K_BYTES = 2 + 2 + 12 + QK_K // 8 + QK_K // 2  # + high bits = 176
Q6_K_BYTES = QK_K // 2 + QK_K // 4 + QK_K // 16 + 2  # ql, qh, int8 scales, d = 210

_GROUP_MAX_EPS = np.float32(1e-15)
_F = np.float32
# super-blocks handled per numpy pass: big enough that per-call overhead is small,
# small enough that the (32, n) temporaries stay in cache
_CHUNK_BLOCKS = 512


def _seqsum_loop(a: np.ndarray) -> np.ndarray:
    """Sum over axis 0 strictly in order, as the C loops accumulate."""
    acc = a[0].copy()
    for row in a[1:]:
        acc += row
    return acc


def _seqsum_reduce(a: np.ndarray) -> np.ndarray:
    # numpy reduces a C-contiguous array over its outer axis row by row into the
    # accumulator (pairwise summation applies only along the contiguous axis), the same
    # order as the loop above in one call: 2-3x faster on (32, 2048) groups
    return np.add.reduce(a, axis=0)


def _reduce_is_sequential() -> bool:
    """Check, rather than assume, that this numpy's outer-axis reduce is in order."""
    a = np.random.default_rng(0).standard_normal((32, 4096)).astype(np.float32)
    a *= np.float32(10) ** np.random.default_rng(1).integers(-4, 5, a.shape).astype(np.float32)
    return np.array_equal(_seqsum_reduce(a), _seqsum_loop(a)) and np.array_equal(
        _seqsum_reduce(a[:16]), _seqsum_loop(a[:16]))


_seqsum = _seqsum_reduce if _reduce_is_sequential() else _seqsum_loop


def _f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16)


# --------------------------------------------------------------------------- ggml's search routines

def _make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float,
                      nstep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx2_quants (use_mad=false) over groups laid out as columns.

    ``x``, ``w``: (n, groups) float32. Returns (L as float32 (n, groups), scale, the_min).
    """
    fnmax = _F(nmax)
    mn = np.minimum(x.min(axis=0), _F(0))
    mx = x.max(axis=0)
    sum_w = _seqsum(w)
    sum_x = _seqsum(w * x)
    flat = mx == mn  # all values equal (or all zero): L = 0, scale 0
    laux = np.empty_like(x)
    tmp = np.empty_like(x)
    wl = np.empty_like(x)

    xm = x - mn  # x - min for the current min of each group, updated with it

    def levels(iscale: np.ndarray, out: np.ndarray) -> np.ndarray:
        # clamp(nearest_int(iscale*(x - min)), 0, nmax)
        np.multiply(xm, iscale, out=out)
        np.rint(out, out=out)
        return np.clip(out, _F(0), fnmax, out=out)

    def weighted_error(scale: np.ndarray, offset: np.ndarray, lev: np.ndarray) -> np.ndarray:
        # sum of w * (scale*l + min - x)^2, left to right
        np.multiply(lev, scale, out=tmp)
        np.add(tmp, offset, out=tmp)
        np.subtract(tmp, x, out=tmp)
        np.multiply(tmp, tmp, out=tmp)
        np.multiply(w, tmp, out=tmp)
        return _seqsum(tmp)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rng = mx - mn
        rng[flat] = 1
        iscale = fnmax / rng
        iscale[flat] = 0
        scale = _F(1) / iscale
        L = levels(iscale, np.empty_like(x))
        best_error = weighted_error(scale, mn, L)
        for step in range(nstep + 1):
            # the C code keeps updating ``min`` with the best fit so far, so later steps
            # scale from the current minimum
            rng = mx - mn
            rng[flat] = 1
            iscale = (_F(rmin) + _F(rdelta) * _F(step) + fnmax) / rng
            iscale[flat] = 0
            levels(iscale, laux)
            np.multiply(w, laux, out=wl)
            sum_l = _seqsum(wl)
            sum_l2 = _seqsum(np.multiply(wl, laux, out=tmp))
            sum_xl = _seqsum(np.multiply(wl, x, out=tmp))
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            if pos.any():
                this_min[pos] = 0
                this_scale[pos] = (sum_xl / sum_l2)[pos]
            cur_error = weighted_error(this_scale, this_min, laux)
            better = (D > 0) & (cur_error < best_error)
            if better.any():
                np.copyto(L, laux, where=better)
                best_error = np.where(better, cur_error, best_error)
                scale = np.where(better, this_scale, scale)
                mn = np.where(better, this_min, mn)
                cols = np.flatnonzero(better)
                xm[:, cols] = x[:, cols] - mn[cols]
    scale[flat] = 0
    return L, scale, -mn


def _make_qx_quants_rmse1(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qx_quants with rmse_type 1 and no weights, groups as columns.

    Returns (L = level + nmax as float32 (n, groups), scale).
    """
    fnmax = _F(nmax)
    ax = np.abs(x)
    imax = ax.argmax(axis=0)  # the first largest |x|, as the C loop's strict '>'
    cols = np.arange(x.shape[1])
    amax = ax[imax, cols]
    xmax = x[imax, cols]
    zero = amax < _GROUP_MAX_EPS
    xmax = np.where(zero, _F(1), xmax)
    w = x * x
    wx = w * x  # the C code's w*x[i]*l is (w*x[i])*l
    lev = np.empty_like(x)
    tmp = np.empty_like(x)

    def levels(iscale: np.ndarray) -> np.ndarray:
        np.multiply(x, iscale, out=lev)
        np.rint(lev, out=lev)
        return np.clip(lev, -fnmax, fnmax - 1, out=lev)

    def sums() -> tuple[np.ndarray, np.ndarray]:
        sumlx = _seqsum(np.multiply(wx, lev, out=tmp))
        np.multiply(w, lev, out=tmp)
        return sumlx, _seqsum(np.multiply(tmp, lev, out=tmp))

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        levels(-fnmax / xmax)
        sumlx, suml2 = sums()
        scale = np.where(suml2 != 0, sumlx / suml2, _F(0))
        best = scale * sumlx
        L = lev + fnmax
        for step in range(-9, 10):
            if step == 0:
                continue
            levels(-(fnmax + _F(0.1) * _F(step)) / xmax)
            sumlx, suml2 = sums()
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            if better.any():
                np.copyto(L, lev + fnmax, where=better)
                scale = np.where(better, sumlx / suml2, scale)
                best = np.where(better, scale * sumlx, best)
    L[:, zero] = 0
    scale[zero] = 0
    return L, scale


def _nearest_u8(a: np.ndarray) -> np.ndarray:
    """``(uint8_t) nearest_int(a)``: C's conversion wraps modulo 256."""
    return (np.rint(a).astype(np.int64) & 0xFF).astype(np.uint8)


# --------------------------------------------------------------------------- Q4_K / Q5_K

def _quantize_k_affine(blocks: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Shared part of Q4_K and Q5_K: (d f16, dmin f16, 12 scale bytes, L uint8 (nb, 256))."""
    nb = blocks.shape[0]
    # (32 positions, nb*8 groups): group g = block*8 + j
    xt = np.ascontiguousarray(blocks.reshape(nb * 8, 32).T)
    sum_x2 = _seqsum(xt * xt)
    av_x = np.sqrt(sum_x2 / _F(32))
    w = av_x + np.abs(xt)
    L, scales, mins = _make_qkx2_quants(xt, w, nmax, rmin, rdelta, nstep)
    scales = scales.reshape(nb, 8)
    mins = mins.reshape(nb, 8)

    max_scale = np.maximum(scales.max(axis=1), _F(0))
    max_min = np.maximum(mins.max(axis=1), _F(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, _F(63) / np.where(max_scale > 0, max_scale, _F(1)), _F(0))
        inv_min = np.where(max_min > 0, _F(63) / np.where(max_min > 0, max_min, _F(1)), _F(0))
    ls = np.minimum(_nearest_u8(inv_scale[:, None] * scales), np.uint8(63))
    lm = np.minimum(_nearest_u8(inv_min[:, None] * mins), np.uint8(63))
    packed = np.empty((nb, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    d16 = _f16(max_scale / _F(63))
    dmin16 = _f16(max_min / _F(63))

    # final levels from the stored (rounded) scales; groups whose scale rounds to 0
    # keep the levels of the search
    d = d16.astype(np.float32)[:, None] * ls.astype(np.float32)    # (nb, 8)
    dm = dmin16.astype(np.float32)[:, None] * lm.astype(np.float32)
    x = blocks.reshape(nb, 8, 32)
    with np.errstate(divide="ignore", invalid="ignore"):
        lnew = np.clip(np.rint((x + dm[..., None]) / d[..., None]), 0, _F(nmax))
    Lb = L.T.reshape(nb, 8, 32)
    Lb = np.where((d != 0)[..., None], lnew, Lb)
    return d16, dmin16, packed, Lb.reshape(nb, QK_K).astype(np.uint8)


def _q4_k_blocks(blocks: np.ndarray) -> np.ndarray:
    nb = blocks.shape[0]
    d16, dmin16, packed, L = _quantize_k_affine(blocks, 15, -1.0, 0.1, 20)
    L = L.reshape(nb, 4, 2, 32)
    qs = (L[:, :, 0, :] | (L[:, :, 1, :] << 4)).reshape(nb, 128)
    return np.concatenate([d16.view(np.uint8).reshape(nb, 2), dmin16.view(np.uint8).reshape(nb, 2), packed, qs], axis=1)


def _q5_k_blocks(blocks: np.ndarray) -> np.ndarray:
    nb = blocks.shape[0]
    d16, dmin16, packed, L = _quantize_k_affine(blocks, 31, -0.5, 0.1, 15)
    L = L.reshape(nb, 4, 2, 32)
    hi = (L >> 4).astype(np.uint8)
    shifts = (np.arange(8, dtype=np.uint8)).reshape(1, 4, 2, 1)  # bit 2k+h
    qh = np.bitwise_or.reduce(hi << shifts, axis=(1, 2)).astype(np.uint8)
    lo = L & 0xF
    qs = (lo[:, :, 0, :] | (lo[:, :, 1, :] << 4)).reshape(nb, 128)
    return np.concatenate([d16.view(np.uint8).reshape(nb, 2), dmin16.view(np.uint8).reshape(nb, 2), packed, qh, qs], axis=1)


# --------------------------------------------------------------------------- Q6_K

def _q6_k_blocks(blocks: np.ndarray) -> np.ndarray:
    nb = blocks.shape[0]
    xt = np.ascontiguousarray(blocks.reshape(nb * 16, 16).T)
    L, scales = _make_qx_quants_rmse1(xt, 32)
    scales = scales.reshape(nb, 16)
    L = L.T.reshape(nb, 16, 16)

    # the scale of largest magnitude, first one on ties
    ibest = np.abs(scales).argmax(axis=1)
    max_scale = scales[np.arange(nb), ibest]
    zero = np.abs(max_scale) < _GROUP_MAX_EPS
    safe = np.where(zero, _F(1), max_scale)
    iscale = _F(-128) / safe
    d16 = _f16(_F(1) / iscale)
    sc = np.minimum(np.rint(iscale[:, None] * scales), _F(127)).astype(np.int8)
    d = d16.astype(np.float32)[:, None] * sc.astype(np.float32)  # (nb, 16)
    x = blocks.reshape(nb, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        lnew = np.clip(np.rint(x / d[..., None]), _F(-32), _F(31)) + _F(32)
    L = np.where((d != 0)[..., None], lnew, L).reshape(nb, QK_K).astype(np.uint8)

    L = L.reshape(nb, 2, 4, 32)
    lo = L & 0xF
    ql = np.concatenate([lo[:, :, 0, :] | (lo[:, :, 2, :] << 4), lo[:, :, 1, :] | (lo[:, :, 3, :] << 4)], axis=2)
    hi = L >> 4
    qh = hi[:, :, 0, :] | (hi[:, :, 1, :] << 2) | (hi[:, :, 2, :] << 4) | (hi[:, :, 3, :] << 6)
    out = np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64), sc.view(np.uint8), d16.view(np.uint8).reshape(nb, 2)], axis=1)
    out[zero] = 0  # an all-zero super-block is written as zeros, d included
    return out


# --------------------------------------------------------------------------- public API

_BLOCK_FUNCS = {"Q4_K": (_q4_k_blocks, Q4_K_BYTES), "Q5_K": (_q5_k_blocks, Q5_K_BYTES), "Q6_K": (_q6_k_blocks, Q6_K_BYTES)}


_BACKEND_ENV = "TUNELOOM_KQUANT_BACKEND"
_jit_module = None  # core.export.kquants_jit once imported, False when unavailable or not wanted


def _jit():
    """The compiled kernels, imported on first use (numba's import costs ~0.5 s), or None."""
    global _jit_module
    if _jit_module is None:
        wanted = os.environ.get(_BACKEND_ENV, "").lower()
        if wanted == "numpy":
            _jit_module = False
        else:
            try:
                from core.export import kquants_jit
                _jit_module = kquants_jit
            except Exception as exc:  # noqa: BLE001 - missing, or broken (a frozen app without sources)
                if wanted == "numba":
                    raise
                log.warning("numba is not available (%s): K-quants use the slower numpy code", exc)
                _jit_module = False
    return _jit_module or None


_COMPILE_IN_CHILDREN = True  # a cold kernel compiles in a child process of its own (see prepare)
_CHILD_COMPILE_LIMIT_S = 300  # a child compiling longer than this is stuck: this process compiles instead


class _Gate:
    """Whether prepare() has a kind's kernel ready; a block that needs the kernel waits here. The wait
    ends with :class:`~core.events.Cancelled` as soon as the export that started prepare() is
    cancelled (the block is dropped anyway), so a cancel never waits for a compile."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self.cancel = None

    def close(self, cancel) -> None:
        self.cancel = cancel
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def wait(self) -> None:
        if self._open.is_set():  # (a later call after a cancelled export is not itself cancelled)
            return
        while not self._open.wait(0.05):
            self._raise_if_cancelled()
        self._raise_if_cancelled()

    def _raise_if_cancelled(self) -> None:
        if self.cancel is not None and self.cancel.cancelled:
            from core.events import Cancelled

            raise Cancelled()


_ready: dict[str, _Gate] = {}  # kind -> open once prepare() has its kernel ready (or gave up)


def prepare(kinds, cancel=None) -> "threading.Thread | None":
    """Start compiling (or loading from numba's cache) the kernels of ``kinds`` ("Q4_K", "Q5_K",
    "Q6_K"); returns the thread that does it, or None when the numpy code is wanted (nothing to
    compile) or ``kinds`` is empty.

    Why: the first export after an install used to compile its kernels: a few seconds of numba's
    own Python each, which holds the GIL. Now the kernels ship as bitcode
    (:mod:`core.export.kquants_aot`): LLVM makes them into machine code here in about a second
    (Q6_K first, the affine kernel on a thread beside it; LLVM releases the GIL) or loads that code
    from the kernel cache, and each kind's gate opens as soon as its kernel is ready. Only where the
    shipped kernels cannot be used (another numba, a source edited but not rebuilt) does numba
    compile: a kernel that numba's cache does not hold yet is compiled in a
    spawned child process of its own (Q4_K / Q5_K share one kernel, Q6_K has another), so two
    kernels compile at once on two cores and neither holds this process's GIL, which the export's
    tokenizer and header work needs meanwhile; the child writes numba's cache, and this process
    then loads the kernel from it (well under a second). A kernel already cached is loaded here.
    A block that needs a kernel waits until its kind is ready (:func:`_quantize`). ``cancel`` (the
    export's token) stops the children and ends those waits at once. A failure here is only
    logged: the block's own call then compiles, or falls back to the numpy code."""
    kinds = [k for k in dict.fromkeys(kinds) if k in _JIT_FUNCS]
    if not kinds or _jit_module is False or os.environ.get(_BACKEND_ENV, "").lower() == "numpy":
        return None
    gates = {k: _ready.setdefault(k, _Gate()) for k in kinds}
    for g in gates.values():
        g.close(cancel)

    def run():
        try:
            jit = _jit()  # numba's import (~0.5 s) on this thread too
            if jit is None:
                return
            shipped = _load_shipped(kinds, gates)
            kinds_left = [k for k in kinds if shipped.get(k) is None]
            if _COMPILE_IN_CHILDREN:
                _compile_cold_in_children(jit, kinds_left, cancel)
            for kind in kinds_left:
                if cancel is not None and cancel.cancelled:
                    return
                jit.warm_up([kind])
                gates[kind].open()
        except Exception as exc:  # noqa: BLE001 - the export's own call reports it (and falls back)
            log.info("compiling the K-quant kernels ahead failed: %s", exc)
        finally:
            for g in gates.values():
                g.open()

    thread = threading.Thread(target=run, name="tuneloom-kquant-compile", daemon=True)
    thread.start()
    return thread


def _load_shipped(kinds, gates=None) -> dict:
    """The shipped kernels of ``kinds`` (:mod:`core.export.kquants_aot`: machine code made from
    bitcode in about a second, or loaded from the kernel cache), each kind's gate opened as soon as
    its kernel is ready (the first kind's kernel loads on this thread, a second one beside it);
    {kind: kernel or None}. None throughout when the shipped kernels are off or unusable here."""
    from core.export import kquants_aot

    if not kquants_aot.enabled():
        return {}

    def ready(name, kernel):
        if kernel is not None and gates:
            for kind, gate in gates.items():
                if kquants_aot.KERNEL_OF[kind] == name:
                    gate.open()

    return kquants_aot.load(kinds, on_ready=ready)


def _compile_cold_in_children(jit, kinds, cancel=None) -> None:
    """One spawned child per kernel that numba's cache lacks; returns when they have ended, when
    ``cancel`` fires (the children are stopped) or after :data:`_CHILD_COMPILE_LIMIT_S`."""
    cold = {}
    for kind in kinds:
        if jit.cached(kind) is False:  # None: no cache here (a child's work would be lost)
            cold.setdefault(jit.KERNEL_OF[kind], kind)
    if not cold:
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # (fork would copy this process's threads' state: MLX, Qt)
    children = [ctx.Process(target=jit.warm_up, args=([kind],), name=f"tuneloom-compile-{kind}", daemon=True)
                for kind in cold.values()]
    for c in children:
        c.start()
    deadline = time.monotonic() + _CHILD_COMPILE_LIMIT_S
    try:
        while (alive := next((c for c in children if c.is_alive()), None)) is not None:
            if (cancel is not None and cancel.cancelled) or time.monotonic() > deadline:
                break
            alive.join(0.05)
    finally:
        for c in children:
            if c.is_alive():  # cancelled, or stuck: this process compiles instead (when not cancelled)
                c.terminate()
                c.join(5)
            elif c.exitcode:
                log.info("compiling the %s kernel in a child process failed (exit %s)", c.name, c.exitcode)


_FILL_ENV = "TUNELOOM_KERNEL_FILL"  # "0": the window does not fill numba's cache at start (the tests' default)
# how much the filling child lowers its priority (19, the lowest; a test of what it leaves sets 0: at 19
# on a machine busy with other work it may wait minutes for a core)
_FILL_NICE_ENV = "TUNELOOM_KERNEL_FILL_NICE"


class _Fill(threading.Thread):
    """Starts the filling child from a thread of its own (a spawn start is tens of milliseconds the
    window's thread should not wait) and waits for it: ``join()`` waits for the child, ``exitcode``
    is then the child's."""

    def __init__(self) -> None:
        super().__init__(name="tuneloom-kernel-fill", daemon=True)
        self.exitcode: int | None = None

    def run(self) -> None:
        import multiprocessing as mp

        try:
            child = mp.get_context("spawn").Process(target=_fill_cache, name="tuneloom-kernel-fill", daemon=True)
            child.start()
        except Exception as exc:  # noqa: BLE001 - only a speed-up: the first export compiles instead
            log.info("could not start filling the K-quant kernel cache: %s", exc)
            return
        child.join()
        self.exitcode = child.exitcode


def fill_cache_in_background() -> "_Fill | None":
    """Fill the kernel cache with every K-quant kernel in a spawned child process at the lowest CPU
    priority (the shipped kernels' machine code, about 1.5 CPU-s; numba's compile of any kernel
    they lack), so that the first export after an install (the .app, a wheel) loads its kernels
    instead of making them on its critical path. The window calls this once it
    is up; the child checks the cache itself (importing numba here would hold the window's thread)
    and compiles only what is missing, so on later starts it costs one short idle process.
    Returns the thread that starts and waits for the child (both end with the app), or None where
    the numpy code is wanted or ``TUNELOOM_KERNEL_FILL=0``."""
    if os.environ.get(_FILL_ENV, "1") == "0" or os.environ.get(_BACKEND_ENV, "").lower() == "numpy":
        return None
    fill = _Fill()
    fill.start()
    return fill


def _fill_cache() -> None:
    """(In the child.) At the lowest priority: the shipped kernels into machine code (kept in the
    kernel cache), and numba's compile of each kernel they lack and numba's cache lacks."""
    try:
        os.nice(int(os.environ.get(_FILL_NICE_ENV, "19")))
    except (AttributeError, OSError, ValueError):  # (no nice on Windows)
        pass
    from core.export import kquants_jit

    shipped = _load_shipped(list(_JIT_FUNCS))
    missing = [k for k in _JIT_FUNCS if shipped.get(k) is None and kquants_jit.cached(k) is False]
    if missing:
        kquants_jit.warm_up(missing)


def backend() -> str:
    """``"numba"`` or ``"numpy"``: which implementation the K-quants run by default."""
    return "numba" if _jit() else "numpy"


_JIT_FUNCS = {"Q4_K": "quantize_q4_k_into", "Q5_K": "quantize_q5_k_into", "Q6_K": "quantize_q6_k_into"}


def _quantize(data: np.ndarray, kind: str, backend: str | None = None) -> np.ndarray:
    func, nbytes = _BLOCK_FUNCS[kind]
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 0 or data.shape[-1] % QK_K:
        raise ValueError(f"{kind} needs rows that are a multiple of {QK_K} values, got shape {data.shape}")
    if backend not in (None, "numba", "numpy"):
        raise ValueError(f"unknown K-quant backend {backend!r}")
    jit = None if backend == "numpy" else _jit()
    if backend == "numba" and jit is None:
        raise RuntimeError("the numba K-quant kernels are not available")
    blocks = data.reshape(-1, QK_K)
    out = np.empty((blocks.shape[0], nbytes), dtype=np.uint8)
    if jit is not None:
        gate = _ready.get(kind)
        if gate is not None:
            gate.wait()  # prepare() is bringing this kernel (from a child's compile or the cache)
        try:
            # one call for all blocks, GIL released throughout; the kernels want C order
            from core.export import kquants_aot

            # (loaded once: prepare() has done it for an export. Tried and unusable here is asked
            # once too: no lock is taken per tensor either way)
            shipped = kquants_aot.kernel_for(kind) if kquants_aot.enabled() else None
            if shipped is None and kquants_aot.enabled() and not kquants_aot.tried(kind):
                shipped = _load_shipped([kind]).get(kind)
            if shipped is not None:
                shipped.quantize(kind, np.ascontiguousarray(blocks), out)
            else:
                getattr(jit, _JIT_FUNCS[kind])(np.ascontiguousarray(blocks), out)
            return out.reshape(*data.shape[:-1], data.shape[-1] // QK_K * nbytes)
        except Exception as exc:  # noqa: BLE001 - numba could not compile here: same result, slower
            if backend == "numba":
                raise
            _disable_jit(exc)
    for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        out[start:start + _CHUNK_BLOCKS] = func(blocks[start:start + _CHUNK_BLOCKS])
    return out.reshape(*data.shape[:-1], data.shape[-1] // QK_K * nbytes)


def _disable_jit(exc: BaseException) -> None:
    global _jit_module
    if _jit_module:
        log.warning("the numba K-quant kernels failed (%s): using the slower numpy code", exc)
    _jit_module = False


def quantize_q4_k(data: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """float32 (..., n*256) -> uint8 (..., n*144) in ggml's block_q4_K layout."""
    return _quantize(data, "Q4_K", backend)


def quantize_q5_k(data: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """float32 (..., n*256) -> uint8 (..., n*176) in ggml's block_q5_K layout."""
    return _quantize(data, "Q5_K", backend)


def quantize_q6_k(data: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """float32 (..., n*256) -> uint8 (..., n*210) in ggml's block_q6_K layout."""
    return _quantize(data, "Q6_K", backend)


# --------------------------------------------------------------------------- dequantization (for checks)

def _scale_min_k4(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's get_scale_min_k4 for all 8 groups: (scales, mins) as (nb, 8) uint8."""
    sc = np.empty((packed.shape[0], 8), dtype=np.uint8)
    mn = np.empty_like(sc)
    sc[:, :4] = packed[:, 0:4] & 63
    mn[:, :4] = packed[:, 4:8] & 63
    sc[:, 4:] = (packed[:, 8:12] & 0xF) | ((packed[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (packed[:, 8:12] >> 4) | ((packed[:, 4:8] >> 6) << 4)
    return sc, mn


def _dequant_affine(blocks: np.ndarray, L: np.ndarray) -> np.ndarray:
    nb = blocks.shape[0]
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    sc, mn = _scale_min_k4(blocks[:, 4:16])
    scale = d * sc.astype(np.float32)
    offset = dmin * mn.astype(np.float32)
    return (scale[..., None] * L.reshape(nb, 8, 32).astype(np.float32) - offset[..., None]).reshape(nb, QK_K)


def dequantize_q4_k(data: np.ndarray) -> np.ndarray:
    blocks = np.asarray(data, dtype=np.uint8).reshape(-1, Q4_K_BYTES)
    nb = blocks.shape[0]
    qs = blocks[:, 16:].reshape(nb, 4, 32)
    L = np.stack([qs & 0xF, qs >> 4], axis=2)  # (nb, 4, 2, 32)
    return _dequant_affine(blocks, L).reshape(*data.shape[:-1], data.shape[-1] // Q4_K_BYTES * QK_K)


def dequantize_q5_k(data: np.ndarray) -> np.ndarray:
    blocks = np.asarray(data, dtype=np.uint8).reshape(-1, Q5_K_BYTES)
    nb = blocks.shape[0]
    qh = blocks[:, 16:48]
    qs = blocks[:, 48:].reshape(nb, 4, 32)
    lo = np.stack([qs & 0xF, qs >> 4], axis=2)  # (nb, 4, 2, 32)
    shifts = np.arange(8, dtype=np.uint8).reshape(1, 4, 2, 1)
    hi = (qh[:, None, None, :] >> shifts) & 1
    return _dequant_affine(blocks, lo | (hi << 4)).reshape(*data.shape[:-1], data.shape[-1] // Q5_K_BYTES * QK_K)


def dequantize_q6_k(data: np.ndarray) -> np.ndarray:
    blocks = np.asarray(data, dtype=np.uint8).reshape(-1, Q6_K_BYTES)
    nb = blocks.shape[0]
    ql = blocks[:, :128].reshape(nb, 2, 2, 32)
    qh = blocks[:, 128:192].reshape(nb, 2, 32)
    sc = blocks[:, 192:208].view(np.int8).astype(np.float32)
    d = blocks[:, 208:210].copy().view(np.float16).astype(np.float32)
    L = np.empty((nb, 2, 4, 32), dtype=np.uint8)
    L[:, :, 0] = ql[:, :, 0] & 0xF
    L[:, :, 1] = ql[:, :, 1] & 0xF
    L[:, :, 2] = ql[:, :, 0] >> 4
    L[:, :, 3] = ql[:, :, 1] >> 4
    for t in range(4):
        L[:, :, t] |= ((qh >> (2 * t)) & 3) << 4
    q = L.reshape(nb, 16, 16).astype(np.float32) - 32
    return ((d * sc)[..., None] * q).reshape(*data.shape[:-1], data.shape[-1] // Q6_K_BYTES * QK_K)
