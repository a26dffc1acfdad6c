"""The K-quant kernels shipped ahead of time as LLVM bitcode: a first export does not wait for numba.

Why: numba compiles the two kernels of :mod:`core.export.kquants_jit` in 3.0 (Q6_K) and 3.8-4.3
(Q4_K / Q5_K) CPU seconds, and nearly all of it is numba's own Python (typing the functions,
lowering them to LLVM IR), not LLVM. A first export after an install (``pip install``, the .app)
paid that on its critical path. The typing and lowering do not depend on the machine, so they are
done here once, when the kernels change, and their result ships in ``resources/kernels/``:

* **build** (``python -m core.export.kquants_aot``, by a developer after editing kquants_jit.py;
  a test fails until it is done): numba lowers a C-callable wrapper of each kernel with its
  optimizer off (``NUMBA_OPT=0``, so the IR is not yet fitted to this CPU), the wrapper's
  module and everything it links (the kernel, its parts, numba's reference counting) become one
  LLVM module per kernel, saved as bitcode (which later LLVM versions read). The manifest
  (``kquants.json``) records the kquants_jit.py source it came from (sha256), the LLVM version,
  each wrapper's symbol and a digest of each kernel's output on fixed check blocks, computed by
  numba's own kernel.
* **load** (:func:`load`, from :func:`core.export.kquants.prepare` and the cache fill): LLVM
  (llvmlite, numba's own dependency) optimizes the module for this CPU with numba's pass order
  (per function, a cheap module pass, then the full one, with numba's reference-count pruning)
  and makes machine code: about 0.7 (Q6_K) and 1.0 (Q4_K / Q5_K) CPU-s here instead of 3.0 and
  3.8-4.3, with the same speed and bit-identical output. The machine code is kept in the kernel
  cache (:func:`object_dir`), so later exports load it in milliseconds.

A shipped kernel is used only when the manifest's source hash is this kquants_jit.py's, the
bitcode parses, and the machine code gives the manifest's digest on the check blocks. Anything
else (an edited source not rebuilt, an older LLVM, another CPU's miscompile) is logged and the
numba kernel is used as before. ``TUNELOOM_SHIPPED_KERNELS=0`` turns the shipped kernels off.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import sys
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ENV = "TUNELOOM_SHIPPED_KERNELS"  # "0": numba compiles the kernels as before (tests of that path)
KERNEL_OF = {"Q4_K": "affine", "Q5_K": "affine", "Q6_K": "q6"}
NBYTES = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
_SOURCE = Path(__file__).with_name("kquants_jit.py")


def kernels_dir() -> Path:
    from core.paths import resources_dir

    return resources_dir() / "kernels"


def source_digest() -> str:
    return hashlib.sha256(_SOURCE.read_bytes()).hexdigest()


def check_blocks() -> np.ndarray:
    """The blocks each kernel's output digest is taken on: random rows at several scales, and the
    edge cases the kernels treat apart (an all-zero block, a flat group, a group of zeros in a row,
    tiny and large values, one outlier)."""
    rng = np.random.default_rng(20261206)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    x[8:16] *= np.float32(1e-3)
    x[16:24] *= np.float32(300.0)
    x[1] = 0
    x[2, :32] = 0.5
    x[3, 16:48] = 0
    x[4] *= np.float32(1e-20)
    x[5, 7] = 1e4
    x[6] = np.abs(x[6])
    x[7] = -np.abs(x[7])
    return x


def digest(out: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest()


def object_dir() -> Path:
    """Where the machine code made from the shipped kernels is kept: ``NUMBA_CACHE_DIR`` when set,
    the frozen app's cache folder (as numba's, :func:`kquants_jit.kernel_cache_dir`), else the
    ``__pycache__`` beside this file where it can be written, else the user's cache folder."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]) / "tuneloom-kernels"
    if not getattr(sys, "frozen", False):
        here = Path(__file__).with_name("__pycache__")
        try:
            here.mkdir(exist_ok=True)
            if os.access(here, os.W_OK):
                return here
        except OSError:
            pass
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("Tuneloom", "Tuneloom")) / "kernels"


# --------------------------------------------------------------------------- load

class Kernel:
    """One shipped kernel made into machine code: ``quantize(kind, blocks, out)`` (GIL released).

    The numba kernels want (array, array, ...); the wrappers take plain pointers: C-contiguous
    float32 blocks (nb, 256) and uint8 output (nb, NBYTES)."""

    def __init__(self, name: str, engine, func, from_cache: bool) -> None:
        self.name = name
        self._engine = engine  # keeps the machine code alive
        self._func = func
        self.from_cache = from_cache

    def quantize(self, kind: str, blocks: np.ndarray, out: np.ndarray) -> None:
        if blocks.dtype != np.float32 or not blocks.flags.c_contiguous or blocks.shape[1:] != (256,):
            raise ValueError("the shipped kernels take C-contiguous float32 (n, 256) blocks")
        if out.dtype != np.uint8 or not out.flags.c_contiguous or out.shape != (blocks.shape[0], NBYTES[kind]):
            raise ValueError(f"the output of {kind} is C-contiguous uint8 (n, {NBYTES[kind]})")
        args = (blocks.ctypes.data, blocks.shape[0], out.ctypes.data)
        if self.name == "affine":
            self._func(*args, 1 if kind == "Q5_K" else 0)
        else:
            self._func(*args)

    def close(self) -> None:
        """Free the machine code now (a kernel that failed its check), not when the garbage
        collector gets to the engine's reference cycle. The kernel cannot be called after this."""
        self._func = None
        if not self._engine.closed:
            self._engine.close()


_lock = threading.Lock()
_loaded: dict[str, Kernel | None] = {}  # kernel name -> Kernel, or None once it could not be had
_kernel_locks: dict[str, threading.Lock] = {"affine": threading.Lock(), "q6": threading.Lock()}
_manifest_cache: dict | None = None


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def manifest() -> dict | None:
    """The shipped manifest when it fits this source, else None (logged once)."""
    global _manifest_cache
    with _lock:
        if _manifest_cache is None:
            _manifest_cache = _read_manifest()
        return _manifest_cache or None


def _read_manifest() -> dict:
    path = kernels_dir() / "kquants.json"
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.info("no shipped K-quant kernels (%s): numba compiles them", exc)
        return {}
    if m.get("source_sha256") != source_digest():
        log.warning("the shipped K-quant kernels were built from another kquants_jit.py: numba compiles "
                    "them (rebuild: python -m core.export.kquants_aot)")
        return {}
    import numba

    built = m.get("built_with", {}).get("numba", "")
    if built.split(".")[:2] != numba.__version__.split(".")[:2]:
        # the bitcode calls numba's runtime (its allocator, its reference counts): same release line only
        log.warning("the shipped K-quant kernels were built with numba %s, this is numba %s: numba compiles "
                    "them (rebuild: python -m core.export.kquants_aot)", built, numba.__version__)
        return {}
    return m


def kernel_for(kind: str) -> Kernel | None:
    """The shipped kernel for ``kind`` if it was loaded already (never loads; see :func:`load`)."""
    return _loaded.get(KERNEL_OF.get(kind, ""))


def tried(kind: str) -> bool:
    """Whether :func:`load` has tried ``kind``'s kernel in this process (None from
    :func:`kernel_for` then means it cannot be used here: no need to ask again)."""
    return KERNEL_OF.get(kind, "") in _loaded


def load(kinds, on_ready=None) -> dict[str, Kernel | None]:
    """Make the shipped kernels of ``kinds`` into machine code (or load it from :func:`object_dir`),
    each once per process; returns {kind: Kernel or None}. The first kind's kernel loads on this
    thread and a second one on a thread beside it (an LLVM context each; LLVM's calls release the
    GIL); ``on_ready(name, kernel)`` is called as each is done (kernel None: it cannot be used)."""
    names = list(dict.fromkeys(KERNEL_OF[k] for k in kinds if k in KERNEL_OF))
    if names and enabled():
        threads = [threading.Thread(target=_load_one, args=(n, on_ready), name=f"tuneloom-kernel-{n}", daemon=True)
                   for n in names[1:]]
        for t in threads:
            t.start()
        _load_one(names[0], on_ready)
        for t in threads:
            t.join()
    return {k: _loaded.get(KERNEL_OF[k]) for k in kinds if k in KERNEL_OF}


def _load_one(name: str, on_ready=None) -> None:
    with _kernel_locks[name]:
        if name not in _loaded:
            kernel = None
            try:
                m = manifest()
                if m is not None:
                    kernel = _make(name, m)
            except Exception as exc:  # noqa: BLE001 - anything here only means numba compiles instead
                log.warning("the shipped %s K-quant kernel could not be used (%s): numba compiles it", name, exc)
            _loaded[name] = kernel
    if on_ready is not None:
        on_ready(name, _loaded[name])


_runtime_ready = False


def _runtime():
    """llvmlite's binding, with numba's runtime symbols (its reference counting and allocator, the
    helpers a wrapper calls on an error) registered where LLVM's linker finds them."""
    global _runtime_ready
    import llvmlite.binding as llvm

    with _lock:
        if not _runtime_ready:
            from numba.core.registry import cpu_target
            from numba.core.runtime import rtsys

            rtsys.initialize(cpu_target.target_context)  # (what numba does before its first compile)
            _runtime_ready = True
    return llvm


def _target_machine(llvm):
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
                                        opt=3, reloc="default", codemodel="jitdefault")


def _optimize(llvm, tm, mod) -> None:
    """LLVM's O3 pipeline for this CPU, loop vectorizer on and SLP off (numba's defaults), with
    numba's pruning of reference-count calls (without it the kernels' inner loops keep atomic
    increments and run 20% slower). numba itself runs function passes, a cheap module pass and
    then O3; measured here that costs a third more CPU for the same speed and the same output."""
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = False
    pb = llvm.create_pass_builder(tm, pto)
    mpm = pb.getModulePassManager()
    mpm.add_refprune_pass(llvm.RefPruneSubpasses.ALL)
    mpm.run(mod, pb)


def _make(name: str, m: dict, directory: Path | None = None) -> Kernel:
    llvm = _runtime()
    info = m["kernels"][name]
    bitcode = (Path(directory or kernels_dir()) / info["file"]).read_bytes()
    if hashlib.sha256(bitcode).hexdigest() != info["sha256"]:
        raise ValueError(f"{info['file']} is not the file the manifest names")
    tm = _target_machine(llvm)
    ctx = llvm.create_context()
    mod = llvm.parse_bitcode(bitcode, context=ctx)
    mod.triple = llvm.get_process_triple()
    mod.data_layout = str(tm.target_data)
    key = hashlib.sha256("\0".join([info["sha256"], mod.triple, llvm.get_host_cpu_name(),
                                    llvm.get_host_cpu_features().flatten(), ".".join(map(str, llvm.llvm_version_info))])
                         .encode()).hexdigest()[:20]
    cached_obj = object_dir() / f"kquants-{name}-{key}.o"
    obj = _read_object(cached_obj)
    if obj is None:
        _optimize(llvm, tm, mod)
    engine = llvm.create_mcjit_compiler(mod, tm)
    made = []
    engine.set_object_cache(lambda _m, buf: made.append(buf), lambda _m: obj)
    engine.finalize_object()
    addr = engine.get_function_address(info["symbol"])
    if not addr:
        raise ValueError(f"no symbol {info['symbol']} in {info['file']}")
    args = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p] + ([ctypes.c_int32] if name == "affine" else [])
    kernel = Kernel(name, engine, ctypes.CFUNCTYPE(None, *args)(addr), from_cache=obj is not None)
    try:
        _check(kernel, m)
    except BaseException as exc:
        kernel.close()  # its machine code is not used: freed now
        if obj is None or not isinstance(exc, ValueError):
            raise
        # kept machine code that is whole but wrong (made by another LLVM build for this key): made again once
        log.info("the kept K-quant machine code %s gives other output: made again", cached_obj)
        cached_obj.unlink(missing_ok=True)
        return _make(name, m, directory)
    if obj is None and made:
        _store(cached_obj, made[0])
    return kernel


def _check(kernel: Kernel, m: dict) -> None:
    x = check_blocks()
    for kind, want in m["check"].items():
        if KERNEL_OF[kind] != kernel.name:
            continue
        out = np.empty((x.shape[0], NBYTES[kind]), np.uint8)
        kernel.quantize(kind, x, out)
        if digest(out) != want:
            raise ValueError(f"its {kind} output on the check blocks differs from numba's kernel")


def _read_object(path: Path) -> bytes | None:
    """The machine code kept in ``path`` (its sha256, then the object file), or None when it is
    missing or damaged: then it is made again (LLVM would not survive loading a damaged object)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    obj = data[32:]
    if len(data) <= 32 or hashlib.sha256(obj).digest() != data[:32]:
        log.info("the kept K-quant machine code %s is damaged: made again", path)
        return None
    return obj


def _store(path: Path, obj: bytes) -> None:
    from core.atomic import atomic_path

    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(hashlib.sha256(obj).digest() + obj)
    except OSError as exc:  # only a speed-up for the next export
        log.info("could not keep the K-quant machine code in %s: %s", path.parent, exc)


# --------------------------------------------------------------------------- build

_NAME_OF_DYNAMIC = re.compile(r"@numba\.dynamic\.globals\.[0-9a-f]+(\.\d+)?")
_ADDRESS = re.compile(r"inttoptr \(i64 -?\d+ to ptr\)")


def _build_in_this_process(out_dir: Path) -> dict:
    """(Run with NUMBA_OPT=0 and an empty NUMBA_CACHE_DIR: see :func:`build`.)"""
    import llvmlite.binding as llvm
    from numba import carray, cfunc, types

    from core.export import kquants_jit as kj

    F = np.float32
    sig_affine = types.void(types.CPointer(types.float32), types.int64, types.CPointer(types.uint8), types.int32)
    sig_q6 = types.void(types.CPointer(types.float32), types.int64, types.CPointer(types.uint8))

    @cfunc(sig_affine, nogil=True, boundscheck=False, error_model="numpy")
    def affine(xp, nb, op, five):
        # one call of the kernel (two would be two copies of it for LLVM to optimize)
        q5 = five != 0
        kj._affine_blocks(carray(xp, (nb, 256)), carray(op, (nb, 176 if q5 else 144)), 31 if q5 else 15,
                          F(-0.5) if q5 else F(-1.0), F(0.1), 15 if q5 else 20, q5)

    @cfunc(sig_q6, nogil=True, boundscheck=False, error_model="numpy")
    def q6(xp, nb, op):
        kj._q6_blocks(carray(xp, (nb, 256)), carray(op, (nb, 210)))

    x = check_blocks()
    check = {}
    for kind, fn in (("Q4_K", kj.quantize_q4_k_into), ("Q5_K", kj.quantize_q5_k_into), ("Q6_K", kj.quantize_q6_k_into)):
        out = np.empty((x.shape[0], NBYTES[kind]), np.uint8)
        fn(x, out)
        check[kind] = digest(out)
    kernels = {}
    for name, wrapper in (("affine", affine), ("q6", q6)):
        ir = wrapper._library.get_llvm_str()
        # numba's pointers to live objects of this process: only in loads that the optimizer drops
        # (checked below); a null there, and stable names, make the file the same on every build
        names = {}
        ir = _NAME_OF_DYNAMIC.sub(lambda mo: names.setdefault(mo.group(0), f"@tuneloom.dynamic.{len(names)}"), ir)
        ir = _ADDRESS.sub("null", ir)
        mod = llvm.parse_assembly(ir)
        mod.verify()
        bitcode = mod.as_bitcode()
        probe = llvm.parse_bitcode(bitcode)
        _optimize(llvm, _target_machine(llvm), probe)
        if "@tuneloom.dynamic." in str(probe):
            raise RuntimeError(f"the {name} kernel uses numba's pointers to live objects: it cannot ship")
        file = f"kquants-{name}.bc"
        (out_dir / file).write_bytes(bitcode)
        kernels[name] = {"file": file, "sha256": hashlib.sha256(bitcode).hexdigest(), "symbol": wrapper.native_name}
    import llvmlite
    import numba

    return {"source_sha256": source_digest(), "built_with": {"numba": numba.__version__, "llvmlite": llvmlite.__version__,
            "llvm": ".".join(map(str, llvm.llvm_version_info)), "triple": llvm.get_process_triple()},
            "kernels": kernels, "check": check}


def build(out_dir: Path | None = None) -> dict:
    """Build the shipped kernels into ``out_dir`` (default ``resources/kernels``), then load them in
    a fresh process and check them as :func:`load` does; returns the manifest."""
    import subprocess
    import tempfile

    out_dir = Path(out_dir or kernels_dir())
    out_dir.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parent.parent.parent)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_OPT="0", NUMBA_CACHE_DIR=cache, PYTHONHASHSEED="0",  # (same file each build)
                   PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        code = ("import json, sys; from pathlib import Path; from core.export import kquants_aot as a; "
                "m = a._build_in_this_process(Path(sys.argv[1])); "
                "(Path(sys.argv[1]) / 'kquants.json').write_text(json.dumps(m, indent=1) + chr(10))")
        subprocess.run([sys.executable, "-c", code, str(out_dir)], env=env, check=True, cwd=root)
    m = json.loads((out_dir / "kquants.json").read_text(encoding="utf-8"))
    for name in m["kernels"]:
        _make(name, m, out_dir)  # raises if a kernel does not give numba's output here
    return m


if __name__ == "__main__":  # python -m core.export.kquants_aot: rebuild resources/kernels after editing kquants_jit.py
    print(json.dumps(build(), indent=1))
