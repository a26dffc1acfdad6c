"""Compiled K-quant kernels (numba): the same algorithm as :mod:`core.export.kquants`, SIMD across groups.

Why a compiled kernel: the numpy quantizers run every search step over whole arrays of
groups, about 15 passes over memory per step, and reach a third to a half of ggml's C
speed per core. The same loops compiled by numba (LLVM; a well-kept package with wheels
for macOS arm64 and Linux) keep the groups in registers; written with the groups as the
innermost loop (16 lanes, see ``_LANES``), LLVM vectorizes the search, which ggml's scalar
reference code does not: measured per CPU second on this machine (bench/export.py,
bench/README.md) Q4_K 53 Mweights/s vs ggml 12, Q5_K 66 vs 15, Q6_K 74 vs 24 (one loop
per group, before: about ggml's speed). ``nogil=True`` lets :mod:`core.export.gguf` run
them on threads, one per core, with no copies of the rows and no worker processes.

Bit-identical to ``quantize_row_q{4,5,6}_K_ref`` (ggml-quants.c), the routines
``llama-quantize`` runs without an importance matrix: every value is float32 (constants
are written ``F(...)``, since a bare Python number would make numba widen the whole
expression to float64), operations keep the C code's order, sums run left to right,
nothing is fused (numba does not contract ``a*b + c`` without fastmath), ``nearest_int``
is ``np.rint`` (round half to even, as ggml's add-1.5*2^23 trick for these magnitudes),
and float16 conversion rounds to nearest even like ggml's software ``GGML_FP32_TO_FP16``.
tests/test_kquants.py checks every kernel against ggml itself and against the numpy code.

Written for Tuneloom from the published algorithm (the C routines above), not copied.
"""
from __future__ import annotations

import math
import os
import sys

import numba
import numpy as np

F = np.float32
_GROUP_MAX_EPS = np.float32(1e-15)


def kernel_cache_dir() -> str | None:
    """Where numba keeps the compiled kernels, when numba's own choice would not do; else None.

    A source checkout or an installed wheel: None, numba caches beside this file (``__pycache__``)
    or, where that folder is read-only, in its user-wide cache folder. A frozen app (the .app, the
    Linux one-folder build): Tuneloom's own cache folder (platformdirs), never inside the bundle
    (writing into a signed .app breaks its signature); build_macos.spec ships this file's source
    beside the bundle's code so that numba can key the cache on it. ``NUMBA_CACHE_DIR`` set by
    the user wins everywhere."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    if getattr(sys, "frozen", False):
        from platformdirs import user_cache_dir

        return os.path.join(user_cache_dir("Tuneloom", "Tuneloom"), "numba")
    return None


_CACHE_DIR = kernel_cache_dir()
if _CACHE_DIR and not numba.config.CACHE_DIR:
    numba.config.CACHE_DIR = _CACHE_DIR  # read by numba's cache locator when each kernel is decorated


def _jit(fn):
    """``njit(nogil)``, cached on disk (:func:`kernel_cache_dir`): compiled once per installation.

    The first export after an install compiles the kernels (a few seconds; ``./dev`` does it at
    set-up, :func:`warm_up`); later ones load them from the cache. Where no cache location can
    be had at all, numba says so at decoration: then compile in memory each run.
    """
    try:
        return numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True, cache=False, boundscheck=False, error_model="numpy")(fn)


def _jit_inline(fn):
    """:func:`_jit` for a kernel's parts, inlined into the kernel by numba (``inline="always"``: one
    body, as the kernel was before it was cut into parts; called through LLVM they ran slower)."""
    try:
        return numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy", inline="always")(fn)
    except RuntimeError:  # as in _jit
        return numba.njit(nogil=True, cache=False, boundscheck=False, error_model="numpy", inline="always")(fn)


@_jit
def _f16_bits(v):
    """float32 -> IEEE half bits, rounded to nearest even (numba has no float16 type).

    Exact in float64: scaling by a power of two and ``rint`` of a value below 2^53 lose
    nothing, so this is the correctly rounded conversion (checked against numpy's
    ``astype(float16)`` on millions of bit patterns in the tests).
    """
    f = float(v)
    sign = 0x8000 if (f < 0.0 or (f == 0.0 and math.copysign(1.0, f) < 0.0)) else 0
    a = abs(f)
    if a != a:
        return sign | 0x7E00
    if a >= 65520.0:
        return sign | 0x7C00
    if a < 6.103515625e-05:  # below half's smallest normal: a multiple of 2^-24
        return sign | int(np.rint(a * 16777216.0))
    m, e = math.frexp(a)  # a = m * 2^e, 0.5 <= m < 1
    q = int(np.rint(m * 2048.0))  # 1024..2048: 11 significant bits
    return sign | (((e + 14) << 10) + q - 1024)


@_jit
def _f16_value(h):
    """IEEE half bits -> float32 (exact)."""
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        v = F(m) * F(5.960464477539063e-08)
    elif e == 31:
        v = F(np.inf) if m == 0 else F(np.nan)
    else:
        v = F(1024 + m) * F(2.0 ** (e - 25))
    return -v if h & 0x8000 else v


@_jit
def _u8(v):
    # (uint8_t) nearest_int(v)
    return np.uint8(np.int64(np.rint(v)) & 0xFF)


# The search loops run across groups, not along them: each group's sums still go left to
# right over its own values (the C code's order, so the result stays bit-identical), but the
# innermost loop steps over the groups of a lane set (16 lanes: Q4_K/Q5_K take two
# super-blocks of 8 groups, Q6_K one of 16 groups), whose sums are independent, so LLVM
# turns it into SIMD (8 float32 lanes with AVX2, 4 with NEON). Values are laid out
# group-minor (``XT[i, lane]``). Per group the C code returns at a few points (an all-equal
# or all-zero group); here every lane runs every step and such lanes are masked afterwards
# (their steps may divide by zero: ``error_model="numpy"`` gives inf/nan there instead of
# raising, and their results are never used). The levels of the best step are recomputed
# only where a group's final scale rounds to 0 (the only place ggml keeps the search's own
# levels): from the best step's (iscale, min), which gives the same levels as copying them.
# Measured (bench/README.md): Q4_K 3-4x, Q5_K ~3x, Q6_K ~3x the scalar loop per core.
_LANES = 16


@_jit_inline
def _affine_load(x, b0, XT, WT):
    """The lane set of super-blocks ``b0`` and ``b0 + 1`` (the last one again when ``nb`` is odd):
    each group's values and weights ``sqrt(mean(x^2)) + |x|``, group-minor."""
    nb = x.shape[0]
    for half in range(2):
        xb = x[min(b0 + half, nb - 1)]
        for g in range(8):
            j = 8 * half + g
            s2 = F(0)
            for i in range(32):
                v = xb[32 * g + i]
                s2 += v * v
            av = np.sqrt(s2 / F(32))
            for i in range(32):
                v = xb[32 * g + i]
                XT[i, j] = v
                WT[i, j] = av + abs(v)


@_jit_inline
def _qkx2_start(XT, WT, fnmax, mn, mx, sum_w, sum_x, flat, isc, scales, best, bisc, bmn):
    """make_qkx2_quants up to its search, every lane at once: min (at most 0) and max, the weight
    sums, the first scale and its weighted error."""
    NL = XT.shape[1]
    for j in range(NL):
        mn[j] = XT[0, j]
        mx[j] = XT[0, j]
        sum_w[j] = WT[0, j]
        sum_x[j] = WT[0, j] * XT[0, j]
    for i in range(1, 32):
        for j in range(NL):
            xi = XT[i, j]
            if xi < mn[j]:
                mn[j] = xi
            if xi > mx[j]:
                mx[j] = xi
            sum_w[j] += WT[i, j]
            sum_x[j] += WT[i, j] * xi
    for j in range(NL):
        if mn[j] > 0:
            mn[j] = F(0)
        flat[j] = mx[j] == mn[j]  # C: levels 0, scale 0, min -min, no search
        isc[j] = fnmax / (mx[j] - mn[j])
        scales[j] = F(1) / isc[j]
        best[j] = F(0)
        bisc[j] = isc[j]
        bmn[j] = mn[j]
    for i in range(32):
        for j in range(NL):
            l = min(max(np.rint(isc[j] * (XT[i, j] - mn[j])), F(0)), fnmax)
            diff = scales[j] * l + mn[j] - XT[i, j]
            best[j] += WT[i, j] * (diff * diff)


@_jit_inline
def _qkx2_step(XT, WT, fnmax, rmin, rdelta, st, mn, mx, sum_w, sum_x, flat, isc, sl, sl2, sxl, ts, tm, cur,
               best, scales, bisc, bmn):
    """One step ``st`` of make_qkx2_quants' search, every lane at once: the levels of the step's
    iscale, the least-squares scale and min (min at most 0) for them, kept where their error is less."""
    NL = XT.shape[1]
    for j in range(NL):
        isc[j] = (rmin + rdelta * F(st) + fnmax) / (mx[j] - mn[j])
        sl[j] = F(0)
        sl2[j] = F(0)
        sxl[j] = F(0)
    for i in range(32):
        for j in range(NL):
            l = min(max(np.rint(isc[j] * (XT[i, j] - mn[j])), F(0)), fnmax)
            wl = WT[i, j] * l
            sl[j] += wl
            sl2[j] += wl * l
            sxl[j] += wl * XT[i, j]
    for j in range(NL):
        D = sum_w[j] * sl2[j] - sl[j] * sl[j]
        a = (sum_w[j] * sxl[j] - sum_x[j] * sl[j]) / D
        c = (sl2[j] * sum_x[j] - sl[j] * sxl[j]) / D
        if c > 0:
            c = F(0)
            a = sxl[j] / sl2[j]
        ts[j] = a
        tm[j] = c
        cur[j] = F(0)
    for i in range(32):
        for j in range(NL):
            l = min(max(np.rint(isc[j] * (XT[i, j] - mn[j])), F(0)), fnmax)
            diff = ts[j] * l + tm[j] - XT[i, j]
            cur[j] += WT[i, j] * (diff * diff)
    for j in range(NL):
        D = sum_w[j] * sl2[j] - sl[j] * sl[j]
        if D > 0 and cur[j] < best[j] and not flat[j]:
            bisc[j] = isc[j]
            bmn[j] = mn[j]
            best[j] = cur[j]
            scales[j] = ts[j]
            mn[j] = tm[j]


@_jit_inline
def _affine_header(o, off, flat, scales, mn, mins, ls, lm):
    """One super-block's 6-bit scales and mins (``ls``, ``lm``) from its 8 groups (lanes ``off`` on)
    and their float16 super-scales, written to the block's first 16 bytes; returns the two float16s' bits."""
    max_scale = F(0)
    max_min = F(0)
    for g in range(8):
        s = F(0) if flat[off + g] else scales[off + g]
        m = -mn[off + g]
        scales[off + g] = s
        mins[g] = m
        if s > max_scale:
            max_scale = s
        if m > max_min:
            max_min = m
    inv_s = F(63) / max_scale if max_scale > 0 else F(0)
    inv_m = F(63) / max_min if max_min > 0 else F(0)
    for g in range(8):
        a = _u8(inv_s * scales[off + g])
        c = _u8(inv_m * mins[g])
        ls[g] = a if a < 63 else np.uint8(63)
        lm[g] = c if c < 63 else np.uint8(63)
    hd = _f16_bits(max_scale / F(63))
    hm = _f16_bits(max_min / F(63))
    o[0] = hd & 0xFF
    o[1] = hd >> 8
    o[2] = hm & 0xFF
    o[3] = hm >> 8
    for g in range(4):
        o[4 + g] = ls[g] | ((ls[g + 4] >> 4) << 6)
        o[8 + g] = lm[g] | ((lm[g + 4] >> 4) << 6)
        o[12 + g] = (ls[g + 4] & 0xF) | ((lm[g + 4] & 0xF) << 4)
    return hd, hm


@_jit_inline
def _affine_levels(xb, off, hd, hm, ls, lm, flat, bisc, bmn, fnmax, L):
    """One super-block's levels ``L`` requantized from its stored scales and mins (the search's own
    levels where a group's scale rounds to 0, as ggml keeps them)."""
    fd = _f16_value(hd)
    fm = _f16_value(hm)
    for g in range(8):
        d = fd * F(ls[g])
        if d == 0:  # ggml keeps the search's levels
            for i in range(32):
                if flat[off + g]:
                    L[32 * g + i] = F(0)
                else:
                    l = np.rint(bisc[off + g] * (xb[32 * g + i] - bmn[off + g]))
                    L[32 * g + i] = min(max(l, F(0)), fnmax)
            continue
        dm = fm * F(lm[g])
        for i in range(32):
            l = np.rint((xb[32 * g + i] + dm) / d)
            L[32 * g + i] = min(max(l, F(0)), fnmax)


@_jit_inline
def _affine_pack(L, o, five):
    """The levels into the block after its header: Q5_K's high bits then nibbles, or Q4_K's nibbles."""
    if five:
        for i in range(32):
            o[16 + i] = 0
        for k in range(4):
            for i in range(32):
                l1 = np.uint8(L[64 * k + i])
                l2 = np.uint8(L[64 * k + 32 + i])
                o[16 + i] |= ((l1 >> 4) << (2 * k)) | ((l2 >> 4) << (2 * k + 1))
                o[48 + 32 * k + i] = (l1 & 0xF) | ((l2 & 0xF) << 4)
    else:
        for k in range(4):
            for i in range(32):
                o[16 + 32 * k + i] = np.uint8(L[64 * k + i]) | (np.uint8(L[64 * k + 32 + i]) << 4)


@_jit
def _affine_blocks(x, out, nmax, rmin, rdelta, nstep, five):
    """Q4_K (``five`` false) or Q5_K super-blocks: float32 (nb, 256) -> ``out`` uint8 (nb, 144 | 176).

    ggml's quantize_row_q{4,5}_K_ref: per group of 32, weights ``sqrt(mean(x^2)) + |x|`` and
    make_qkx2_quants (use_mad false; scale and -min), then 6-bit scales and mins per
    super-block and the levels requantized from them. Two super-blocks per lane set (the
    second repeats the last one when ``nb`` is odd; its output is not written)."""
    fnmax = F(nmax)
    nb = x.shape[0]
    NL = _LANES
    XT = np.empty((32, NL), F)
    WT = np.empty((32, NL), F)
    mn = np.empty(NL, F)
    mx = np.empty(NL, F)
    sum_w = np.empty(NL, F)
    sum_x = np.empty(NL, F)
    isc = np.empty(NL, F)
    sl = np.empty(NL, F)
    sl2 = np.empty(NL, F)
    sxl = np.empty(NL, F)
    ts = np.empty(NL, F)
    tm = np.empty(NL, F)
    cur = np.empty(NL, F)
    best = np.empty(NL, F)
    scales = np.empty(NL, F)
    bisc = np.empty(NL, F)
    bmn = np.empty(NL, F)
    flat = np.empty(NL, np.bool_)
    L = np.empty(256, F)
    mins = np.empty(8, F)
    ls = np.empty(8, np.uint8)
    lm = np.empty(8, np.uint8)
    for b0 in range(0, nb, 2):
        _affine_load(x, b0, XT, WT)
        # make_qkx2_quants, every lane at once
        _qkx2_start(XT, WT, fnmax, mn, mx, sum_w, sum_x, flat, isc, scales, best, bisc, bmn)
        for st in range(nstep + 1):
            _qkx2_step(XT, WT, fnmax, rmin, rdelta, st, mn, mx, sum_w, sum_x, flat, isc, sl, sl2, sxl, ts, tm, cur,
                       best, scales, bisc, bmn)
        # per super-block: 6-bit scales and mins, then the levels from them
        for half in range(2):
            b = b0 + half
            if b >= nb:
                break
            off = 8 * half
            o = out[b]
            hd, hm = _affine_header(o, off, flat, scales, mn, mins, ls, lm)
            _affine_levels(x[b], off, hd, hm, ls, lm, flat, bisc, bmn, fnmax, L)
            _affine_pack(L, o, five)


@_jit_inline
def _q6_load(xb, XT, W, WX):
    """One super-block's 16 groups of 16 into the lanes, group-minor: values, weights ``x^2`` and ``x^3``."""
    for g in range(16):
        for i in range(16):
            v = xb[16 * g + i]
            w = v * v
            XT[i, g] = v
            W[i, g] = w
            WX[i, g] = w * v


@_jit_inline
def _qx_sums(XT, W, WX, isc, slx, sl2):
    """make_qx_quants' sums for the levels of ``isc`` (clamped to -32..31), every lane at once, added
    to ``slx`` and ``sl2`` (zeroed by the caller, in its loop that sets ``isc``)."""
    NL = XT.shape[1]
    f32 = F(32)
    for i in range(16):
        for g in range(NL):
            l = min(max(np.rint(isc[g] * XT[i, g]), -f32), f32 - F(1))
            slx[g] += WX[i, g] * l
            sl2[g] += W[i, g] * l * l


@_jit_inline
def _qx_search(XT, W, WX, mx, amax, isc, slx, sl2, best, scales, bisc):
    """make_qx_quants (rmse_type 1, nmax 32), every lane at once: each group's largest magnitude
    (``amax``, signed ``mx``), the start's scale, then the 18 steps around it, the best kept."""
    NL = XT.shape[1]
    f32 = F(32)
    for g in range(NL):
        mx[g] = F(0)
        amax[g] = F(0)
    for i in range(16):
        for g in range(NL):
            ax = abs(XT[i, g])
            if ax > amax[g]:
                amax[g] = ax
                mx[g] = XT[i, g]
    # the start: iscale = -nmax / max, its scale taken whatever it gives
    for g in range(NL):
        isc[g] = -f32 / mx[g]
        slx[g] = F(0)
        sl2[g] = F(0)
    _qx_sums(XT, W, WX, isc, slx, sl2)
    for g in range(NL):
        s = slx[g] / sl2[g] if sl2[g] != 0 else F(0)
        scales[g] = s
        best[g] = s * slx[g]
        bisc[g] = isc[g]
    for st in range(-9, 10):
        if st == 0:
            continue
        for g in range(NL):
            isc[g] = -(f32 + F(0.1) * F(st)) / mx[g]
            slx[g] = F(0)
            sl2[g] = F(0)
        _qx_sums(XT, W, WX, isc, slx, sl2)
        for g in range(NL):
            if sl2[g] > 0 and slx[g] * slx[g] > best[g] * sl2[g]:
                s = slx[g] / sl2[g]
                scales[g] = s
                best[g] = s * slx[g]
                bisc[g] = isc[g]


@_jit_inline
def _q6_levels(xb, hd, sc, amax, bisc, L):
    """One super-block's levels ``L`` (0..63) from its stored scales (the search's own levels where a
    group's scale rounds to 0, as ggml keeps them)."""
    f32 = F(32)
    fd = _f16_value(hd)
    for g in range(16):
        d = fd * F(sc[g])
        if d == 0:  # ggml keeps the search's levels
            for i in range(16):
                if amax[g] < _GROUP_MAX_EPS:
                    L[16 * g + i] = F(0)
                else:
                    l = np.rint(bisc[g] * xb[16 * g + i])
                    L[16 * g + i] = min(max(l, -f32), f32 - F(1)) + f32
            continue
        for i in range(16):
            l = np.rint(xb[16 * g + i] / d)
            L[16 * g + i] = min(max(l, F(-32)), F(31)) + f32


@_jit_inline
def _q6_pack(L, sc, hd, o):
    """The levels' low nibbles and high bits, the 8-bit scales and the float16 super-scale into the block."""
    for h in range(2):
        for i in range(32):
            q1 = np.uint8(L[128 * h + i])
            q2 = np.uint8(L[128 * h + 32 + i])
            q3 = np.uint8(L[128 * h + 64 + i])
            q4 = np.uint8(L[128 * h + 96 + i])
            o[64 * h + i] = (q1 & 0xF) | ((q3 & 0xF) << 4)
            o[64 * h + 32 + i] = (q2 & 0xF) | ((q4 & 0xF) << 4)
            o[128 + 32 * h + i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
    for g in range(16):
        o[192 + g] = np.uint8(sc[g])
    o[208] = hd & 0xFF
    o[209] = hd >> 8


@_jit
def _q6_blocks(x, out):
    """Q6_K super-blocks: float32 (nb, 256) -> ``out`` uint8 (nb, 210).

    ggml's quantize_row_q6_K_ref: make_qx_quants (rmse_type 1, no weights, nmax 32) per
    group of 16, its 16 groups in one lane set; then 8-bit scales and the levels from them."""
    nb = x.shape[0]
    NL = _LANES
    XT = np.empty((16, NL), F)
    W = np.empty((16, NL), F)
    WX = np.empty((16, NL), F)
    mx = np.empty(NL, F)
    amax = np.empty(NL, F)
    isc = np.empty(NL, F)
    slx = np.empty(NL, F)
    sl2 = np.empty(NL, F)
    best = np.empty(NL, F)
    scales = np.empty(NL, F)
    bisc = np.empty(NL, F)
    L = np.empty(256, F)
    sc = np.empty(16, np.int8)
    for b in range(nb):
        xb = x[b]
        o = out[b]
        _q6_load(xb, XT, W, WX)
        _qx_search(XT, W, WX, mx, amax, isc, slx, sl2, best, scales, bisc)
        # 8-bit scales against the largest scale in magnitude
        max_scale = F(0)
        max_abs = F(0)
        for g in range(16):
            if amax[g] < _GROUP_MAX_EPS:  # C: levels 0, scale 0, no search
                scales[g] = F(0)
            s = scales[g]
            if abs(s) > max_abs:
                max_abs = abs(s)
                max_scale = s
        if max_abs < _GROUP_MAX_EPS:
            for i in range(210):
                o[i] = 0
            continue
        iscale = F(-128) / max_scale
        hd = _f16_bits(F(1) / iscale)
        for g in range(16):
            v = np.int64(np.rint(iscale * scales[g]))
            sc[g] = np.int8(min(127, v))
        _q6_levels(xb, hd, sc, amax, bisc, L)
        _q6_pack(L, sc, hd, o)


# --------------------------------------------------------------------------- entry points

def quantize_q4_k_into(blocks: np.ndarray, out: np.ndarray) -> None:
    """float32 C-contiguous (nb, 256) -> ``out`` uint8 (nb, 144). Releases the GIL."""
    _affine_blocks(blocks, out, 15, F(-1.0), F(0.1), 20, False)


def quantize_q5_k_into(blocks: np.ndarray, out: np.ndarray) -> None:
    """float32 C-contiguous (nb, 256) -> ``out`` uint8 (nb, 176). Releases the GIL."""
    _affine_blocks(blocks, out, 31, F(-0.5), F(0.1), 15, True)


def quantize_q6_k_into(blocks: np.ndarray, out: np.ndarray) -> None:
    """float32 C-contiguous (nb, 256) -> ``out`` uint8 (nb, 210). Releases the GIL."""
    _q6_blocks(blocks, out)


# --------------------------------------------------------------------------- for the tests

@_jit
def _f16_bits_into(a, out):
    for i in range(a.shape[0]):
        out[i] = _f16_bits(a[i])


@_jit
def _f16_values_into(h, out):
    for i in range(h.shape[0]):
        out[i] = _f16_value(h[i])


def f16_bits_array(a: np.ndarray) -> np.ndarray:
    """The kernels' float32 -> float16 bits, elementwise (checked against numpy)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    out = np.empty(a.shape[0], dtype=np.uint16)
    _f16_bits_into(a, out)
    return out


def f16_values_array(h: np.ndarray) -> np.ndarray:
    """The kernels' float16 bits -> float32, elementwise."""
    h = np.ascontiguousarray(h, dtype=np.int64)
    out = np.empty(h.shape[0], dtype=np.float32)
    _f16_values_into(h, out)
    return out


# --------------------------------------------------------------------------- the cache

_WARM_UP = {"Q4_K": (quantize_q4_k_into, 144), "Q5_K": (quantize_q5_k_into, 176), "Q6_K": (quantize_q6_k_into, 210)}


KERNEL_OF = {"Q4_K": "_affine_blocks", "Q5_K": "_affine_blocks", "Q6_K": "_q6_blocks"}


def cached(kind: str) -> bool | None:
    """Whether numba's cache holds a compiled kernel for ``kind`` from this very source, checked
    without compiling or loading it; None where there is no cache (caching unavailable here)."""
    cache = getattr(globals()[KERNEL_OF[kind]], "_cache", None)
    index = getattr(cache, "_cache_file", None)
    if index is None:  # numba's NullCache
        return None
    try:
        return bool(index._load_index())  # {} when missing, or written for another version of the source
    except Exception:  # noqa: BLE001 - numba internals: unknown reads as not cached
        return False


def warm_up(kinds=("Q4_K", "Q5_K", "Q6_K")) -> dict[str, int]:
    """Compile (or load from the cache) the kernels of ``kinds``, in that order, on one block each;
    returns how many of the kernels came from the cache (``numba`` dispatchers'
    ``stats.cache_hits``; Q4_K and Q5_K share one kernel)."""
    x = np.zeros((1, 256), np.float32)
    x[0, ::3] = np.linspace(-1, 1, 86, dtype=np.float32)
    for kind in kinds:
        fn, nbytes = _WARM_UP[kind]
        fn(x, np.empty((1, nbytes), np.uint8))
    entry = [globals()[n] for n in ("_affine_blocks", "_q6_blocks")]
    return {"cache_hits": sum(sum(d.stats.cache_hits.values()) for d in entry),
            "cache_misses": sum(sum(d.stats.cache_misses.values()) for d in entry)}


if __name__ == "__main__":  # python -m core.export.kquants_jit: fill the cache (./dev does at set-up)
    import json
    import time

    from core.export import kquants_aot, kquants_jit  # the module the exports import, not this __main__ copy

    t0 = time.perf_counter()
    # the shipped kernels (kquants_aot) into machine code once; numba compiles only what they lack
    shipped = {k: v is not None for k, v in kquants_aot.load(list(_WARM_UP)).items()}
    got = kquants_jit.warm_up([k for k in _WARM_UP if not shipped.get(k)])
    print(json.dumps({**got, "shipped": shipped, "seconds": round(time.perf_counter() - t0, 2),
                      "cache": kquants_jit._affine_blocks.stats.cache_path}))
