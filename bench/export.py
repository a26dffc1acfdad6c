"""Our GGUF export vs llama.cpp's own tools, on a Qwen2.5-0.5B-shaped model.

    .venv/bin/python bench/export.py [--layers 24] [--kquant-models qwen2.5,qwen3] [--repeat 3]
                                     [--workers 2,1] [--work DIR]

* F16 and Q8_0: ``core.export.gguf.export_gguf`` vs llama.cpp's ``convert_hf_to_gguf.py``
  (``--outtype f16`` / ``q8_0``), each from the same safetensors folder;
* Q4_K_M / Q5_K_M / Q6_K: our export straight from the safetensors, with each worker
  count of ``--workers``, vs llama.cpp's route from the same folder: ``convert_hf_to_gguf.py
  --outtype f16``, then ``llama_model_quantize`` (llama-cpp-python) on that F16 file with
  1 and with 2 threads.

Every run is its own child process: wall time, and peak RSS from ``os.wait4``'s rusage
of that child alone. ``--repeat`` rounds each run every case once, ours and llama.cpp's
alternately, so a busy machine slows both alike; the figures are the medians over the
rounds, with the load average seen before each run. Our K-quant kernels are compiled
(numba) once per install and cached; a warm-up run fills that cache before timing and
its time is reported as ``first_run_compile_s``. The models are Qwen2.5-0.5B-Instruct's
(and, for the K-quants, Qwen3-0.6B's) exact config and real tokenizer
(tests/fixtures/models) with random bfloat16 weights, as published (``--dtype float16``
for float16 weights, where the K-quant files must be byte-identical to llama.cpp's).

Cold and warm: our K-quant runs go twice, "warm" with the kernels already in numba's cache (every
export after the first on an installation) and "cold" with ``NUMBA_CACHE_DIR`` pointed at a new,
empty folder for each run (the first export after an install: it compiles the kernels).

``--f16-route ours`` takes llama.cpp's route from Tuneloom's own F16 export instead of
``convert_hf_to_gguf.py`` (a stricter reference: ours is the faster F16 writer, and no torch venv
is needed); the route is then our F16 export + ``llama_model_quantize``.

The converter needs torch, which Tuneloom does not; it runs in its own venv:

    python3 -m venv ~/.cache/tuneloom-bench/convert-venv
    ~/.cache/tuneloom-bench/convert-venv/bin/pip install torch==2.13.0 'numpy<3' sentencepiece \
        transformers==4.57.6 'protobuf<5'

(its requirements file pins torch 2.11 from the PyTorch index and transformers 4.57.6),
with ``PYTHONPATH`` set to the gguf-py that ships beside the script. The script comes
from the llama-cpp-python source distribution of the installed version, which this
bench fetches with ``pip download`` into the work folder when ``--llama-src`` is not given.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

DEFAULT_WORK = Path(os.environ.get("TUNELOOM_BENCH_DIR", Path.home() / ".cache" / "tuneloom-bench"))


# hub config of each shape (tests/fixtures/models) and its real number of blocks
SHAPES = {"qwen2.5": ("Qwen2.5-0.5B-Instruct", 24), "qwen3": ("Qwen3-0.6B", 28)}


def build_model(work: Path, name: str, layers: int, dtype: str = "bfloat16") -> Path:
    """The hub model's exact config (``layers`` blocks) and tokenizer, random weights."""
    import pytest

    from fixtures import tiny_models

    config = json.loads((tiny_models.reference_dir(name) / "config.json").read_text())
    config["num_hidden_layers"] = layers
    if "max_window_layers" in config:
        config["max_window_layers"] = layers
    suffix = "" if dtype == "bfloat16" else f"-{dtype}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiny_models, "tiny_config", lambda _name: dict(config))
        return tiny_models.cached_tiny_model(name, work / f"{SHAPES[name][0]}-{layers}layers{suffix}", dtype=dtype)


def llama_src(work: Path) -> Path:
    """vendor/llama.cpp of the installed llama-cpp-python's source distribution."""
    import llama_cpp

    version = llama_cpp.__version__
    base = work / f"llama_cpp_python-{version}"
    if not (base / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py").is_file():
        sdist = work / f"llama_cpp_python-{version}.tar.gz"
        if not sdist.is_file():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", "llama-cpp-python", "--no-deps",
                            f"llama-cpp-python=={version}", "-d", str(work)], check=True)
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name and
                       ("/gguf-py/" in m.name or "/conversion/" in m.name or m.name.endswith((".py", "/models")))]
            tar.extractall(work, members=members, filter="data")
    return base / "vendor" / "llama.cpp"


# A small launcher runs each case: a child forked straight from this (large) bench
# process would start its peak-RSS count at this process's size, since Linux carries
# the pre-exec high-water mark over into the child's ru_maxrss.
LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = proc.stderr.read()
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - t0
code = os.waitstatus_to_exitcode(status)
if code:
    sys.stderr.write(err.decode(errors="replace")[-4000:])
print(json.dumps({"code": code, "seconds": wall, "maxrss_kib": usage.ru_maxrss,
                  "cpu_s": usage.ru_utime + usage.ru_stime}))
"""


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` in a fresh process: wall seconds and its own peak RSS (MiB)."""
    load = round(os.getloadavg()[0], 2)
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"launcher failed: {done.stderr[-2000:]}")
    res = json.loads(done.stdout.strip().splitlines()[-1])
    if res["code"]:
        sys.stderr.write(done.stderr)
        raise RuntimeError(f"{cmd[:3]} failed ({res['code']})")
    return {"seconds": round(res["seconds"], 2), "peak_rss_mib": round(res["maxrss_kib"] / 1024, 1),
            "cpu_s": round(res["cpu_s"], 1), "load_before": load}


OURS = """
import sys; sys.path.insert(0, {root!r})
from core.export.gguf import export_gguf
export_gguf({model!r}, {out!r}, {quant!r}, workers={workers})
"""

WARM_UP = """
import sys; sys.path.insert(0, {root!r})
import numpy as np
from core.export import kquants
assert kquants.backend() == "numba", kquants.backend()
x = np.zeros((1, 256), np.float32)
kquants.quantize_q4_k(x); kquants.quantize_q5_k(x); kquants.quantize_q6_k(x)
"""

QUANTIZE = """
import ctypes, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = {ftype}; p.nthread = {nthread}
assert llama_cpp.llama_model_quantize({src!r}.encode(), {dst!r}.encode(), ctypes.byref(p)) == 0
"""


KERNELS = """
import ctypes, json, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import gguf, llama_cpp, numpy as np
from core.export import kquants
lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
lib.ggml_quantize_chunk.restype = ctypes.c_size_t
lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                    ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
x = (np.random.default_rng(0).standard_normal((1024, 1792)) * 0.02).astype(np.float32)
QT = gguf.GGMLQuantizationType
res = {{}}
for name, fn, qt in [("Q4_K", kquants.quantize_q4_k, QT.Q4_K), ("Q5_K", kquants.quantize_q5_k, QT.Q5_K),
                     ("Q6_K", kquants.quantize_q6_k, QT.Q6_K)]:
    fn(x[:1])  # compiled (or loaded from the cache) before timing
    row = {{}}
    for label, call in [("numba", lambda: fn(x, backend="numba")), ("numpy", lambda: fn(x, backend="numpy")),
                        ("ggml", lambda: lib.ggml_quantize_chunk(int(qt), x.ctypes.data, out.ctypes.data, 0,
                                                                 x.shape[0], x.shape[1], None))]:
        out = np.empty(gguf.quant_shape_to_byte_shape(x.shape, qt), np.uint8)
        best = min((lambda c: (call(), time.process_time() - c)[1])(time.process_time()) for _ in range(3))
        row[label] = round(x.size / best / 1e6, 1)
    res[name] = row
print(json.dumps(res))
"""


def kernel_speeds() -> dict:
    """Single-core K-quant speed (Mweights per CPU second, best of 3) of our two
    implementations and ggml's own quantizer, on one 1024 x 1792 matrix; CPU time, so
    other jobs on the machine matter less than for wall time."""
    done = subprocess.run([sys.executable, "-c", KERNELS.format(root=str(ROOT))], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(runs: list[dict]) -> dict:
    """Median wall time over the rounds, every round's time and load, the largest peak RSS."""
    return {"seconds": round(statistics.median(r["seconds"] for r in runs), 2),
            "runs_s": [r["seconds"] for r in runs], "load_before": [r["load_before"] for r in runs],
            "cpu_s": round(statistics.median(r.get("cpu_s", float("nan")) for r in runs), 1),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}


def same_tensors(a: Path, b: Path) -> str:
    """'identical' or the share of tensors / blocks whose bytes differ."""
    import gguf
    import numpy as np

    from core.export.gguf import read_tensor_table

    def table(path):
        data = np.memmap(path, dtype=np.uint8, mode="r")
        return {t.name: (t.qtype, data[t.offset:t.offset + t.nbytes]) for t in read_tensor_table(path)[1]}

    ta, tb = table(a), table(b)
    if ta.keys() != tb.keys():
        return f"different tensor sets ({len(ta)} vs {len(tb)})"
    diff_types = [n for n in ta if ta[n][0] != tb[n][0]]
    if diff_types:
        return f"{len(diff_types)} tensor types differ, e.g. {diff_types[0]}"
    blocks = differing = 0
    for name, (qtype, xa) in ta.items():
        size = gguf.GGML_QUANT_SIZES[qtype][1]
        d = (xa.reshape(-1, size) != tb[name][1].reshape(-1, size)).any(axis=1)
        blocks += d.size
        differing += int(d.sum())
    return "identical" if not differing else f"{differing} of {blocks} blocks differ ({differing / blocks:.4%})"


def type_shares(path: Path) -> dict[str, float]:
    """Share of the weights stored in each tensor type."""
    import math

    from core.export.gguf import read_tensor_table

    counts: dict[str, int] = {}
    for t in read_tensor_table(path)[1]:
        counts[t.qtype.name] = counts.get(t.qtype.name, 0) + math.prod(t.shape)
    total = sum(counts.values())
    return {k: round(v / total, 3) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24, help="Qwen2.5-0.5B blocks (the real model has 24)")
    ap.add_argument("--qwen3-layers", type=int, default=28, help="Qwen3-0.6B blocks for the K-quant runs (real: 28)")
    ap.add_argument("--kquant-models", default="qwen2.5,qwen3",
                    help="models for the K-quant runs: Qwen2.5-0.5B's rows of 896 are not whole 256-blocks, so "
                         "only its ffn_down is K-quantized; every Qwen3-0.6B matrix is ('' to skip)")
    ap.add_argument("--kquants", default="q4_k_m,q5_k_m,q6_k", help="K-quant mixes to run")
    ap.add_argument("--workers", default="2,1", help="our export's worker counts for the K-quant runs")
    ap.add_argument("--no-q8", action="store_true", help="skip the Qwen2.5 Q8_0 comparison")
    ap.add_argument("--llama-threads", default="1,2", help="llama_model_quantize thread counts")
    ap.add_argument("--convert-models", default="qwen2.5," + "qwen3",
                    help="models for the F16 (and Q8_0) comparison; a K-quant model's F16 convert always runs")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"], help="the models' weights")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each case's median over them is reported")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="model, sources and outputs go here")
    ap.add_argument("--converter-python", default=str(DEFAULT_WORK / "convert-venv" / "bin" / "python"),
                    help="a Python with torch, numpy, sentencepiece and transformers for convert_hf_to_gguf.py")
    ap.add_argument("--llama-src", type=Path, help="a vendor/llama.cpp folder (default: fetched sdist)")
    ap.add_argument("--out-json", type=Path, help="results file (default: WORK/results[-float16].json)")
    ap.add_argument("--f16-route", choices=["convert", "ours"], default="convert",
                    help="the F16 file llama_model_quantize starts from: convert_hf_to_gguf.py's, or our export's")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold (empty kernel cache) runs")
    return ap.parse_args(argv)


class Bench:
    """One bench run: the options read, the models built, the commands of each case, and every case's runs."""

    def __init__(self, args: argparse.Namespace):
        import llama_cpp

        self.args = args
        self.work = work = args.work
        work.mkdir(parents=True, exist_ok=True)
        self.out = work / "out"
        self.out.mkdir(exist_ok=True)
        src = args.llama_src or (llama_src(work) if args.f16_route == "convert" else work)
        self.converter = src / "convert_hf_to_gguf.py"
        self.conv_env = dict(os.environ, PYTHONPATH=str(src / "gguf-py"))
        self.layers = {"qwen2.5": args.layers, "qwen3": args.qwen3_layers}
        self.kq_models = [m for m in args.kquant_models.split(",") if m]
        self.kquants = [q for q in args.kquants.split(",") if q]
        self.workers = [int(w) for w in args.workers.split(",")]
        self.threads = [int(t) for t in args.llama_threads.split(",")]
        self.conv_models = [m for m in args.convert_models.split(",") if m] if args.f16_route == "convert" else []
        self.tag = "" if args.dtype == "bfloat16" else f"-{args.dtype}"
        self.models: dict[str, Path] = {}
        for name in dict.fromkeys(self.conv_models + self.kq_models):
            self.models[name] = build_model(work, name, self.layers[name], args.dtype)
            for f in self.models[name].glob("*.safetensors"):  # page cache warm for everyone alike
                subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)
        self.ftypes = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
                       "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K}
        convert_cases = [(m, "f16") for m in dict.fromkeys(self.conv_models + self.kq_models)] if (
            self.conv_models or args.f16_route == "convert") else []
        if "qwen2.5" in self.conv_models and not args.no_q8:
            convert_cases.insert(1, ("qwen2.5", "q8_0"))
        self.convert_cases = convert_cases
        self.runs: dict[str, list[dict]] = {}

    # -- the commands of each case
    def ours_cmd(self, model: Path, dst: Path, quant: str, n_workers: int | None = None) -> list[str]:
        return [sys.executable, "-c", OURS.format(root=str(ROOT), model=str(model), out=str(dst), quant=quant,
                                                  workers=n_workers)]

    def convert_cmd(self, model: Path, dst: Path, quant: str) -> list[str]:
        return [self.args.converter_python, str(self.converter), str(model), "--outfile", str(dst), "--outtype", quant]

    def quantize_cmd(self, f16: Path, dst: Path, quant: str, nthread: int) -> list[str]:
        return [sys.executable, "-c", QUANTIZE.format(ftype=self.ftypes[quant], nthread=nthread, src=str(f16),
                                                      dst=str(dst))]

    def run(self, key: str, cmd: list[str], env: dict | None = None) -> None:
        r = measure(cmd, env)
        self.runs.setdefault(key, []).append(r)
        print(f"round {len(self.runs[key])}: {key}: {r}", flush=True)

    # -- the routes
    def start_results(self) -> dict:
        """Fill numba's kernel cache (timed: the first run's compile), then the results' header."""
        import time

        import llama_cpp

        args = self.args
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", WARM_UP.format(root=str(ROOT))], check=True)
        return {
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
            "llama_cpp_python": llama_cpp.__version__,
            "dtype": args.dtype,
            "rounds": args.repeat,
            "first_run_compile_s": round(time.perf_counter() - t0, 1),
            "f16_route": args.f16_route,
            "kernels_mweights_per_cpu_s": kernel_speeds(),
            "models": {},
            "convert": {},
            "kquants": {},
        }

    def run_routes(self) -> None:
        """Every round runs every case once, ours and llama.cpp's interleaved."""
        args, out, tag, models = self.args, self.out, self.tag, self.models
        cold_dir = self.work / "numba-cold"
        for r in range(args.repeat):
            for name, quant in self.convert_cases:
                model = models[name]
                self.run(f"{name} {quant} ours", self.ours_cmd(model, out / f"{name}{tag}-ours-{quant}.gguf", quant))
                self.run(f"{name} {quant} convert",
                         self.convert_cmd(model, out / f"{name}{tag}-conv-{quant}.gguf", quant), self.conv_env)
            for name in self.kq_models:
                if args.f16_route == "ours":
                    self.run(f"{name} f16 route", self.ours_cmd(models[name], out / f"{name}{tag}-ours-f16.gguf", "f16"))
                    conv_f16 = out / f"{name}{tag}-ours-f16.gguf"
                else:
                    conv_f16 = out / f"{name}{tag}-conv-f16.gguf"
                for quant in self.kquants:
                    for w in self.workers:
                        self.run(f"{name} {quant} ours w{w}",
                                 self.ours_cmd(models[name], out / f"{name}{tag}-ours-{quant}-w{w}.gguf", quant, w))
                        if not args.no_cold:  # an empty kernel cache of its own: the first export after an install
                            fresh = cold_dir / f"{name}-{quant}-w{w}-round{r}"
                            shutil.rmtree(fresh, ignore_errors=True)
                            self.run(f"{name} {quant} ours cold w{w}",
                                     self.ours_cmd(models[name], out / f"{name}{tag}-ours-cold-{quant}-w{w}.gguf",
                                                   quant, w),
                                     dict(os.environ, NUMBA_CACHE_DIR=str(fresh)))
                    for t in self.threads:
                        self.run(f"{name} {quant} quantize t{t}",
                                 self.quantize_cmd(conv_f16, out / f"{name}{tag}-llama-{quant}-t{t}.gguf", quant, t))

    # -- the report
    def report_convert(self, results: dict) -> None:
        """Ours vs convert_hf_to_gguf.py per F16 / Q8_0 case, and the models' shapes."""
        import math

        from core.export.gguf import read_tensor_table

        out, tag, runs = self.out, self.tag, self.runs
        for name, quant in self.convert_cases:
            ours, conv = summary(runs[f"{name} {quant} ours"]), summary(runs[f"{name} {quant} convert"])
            results["convert"][f"{name} {quant}"] = {
                "ours": ours, "convert_hf_to_gguf": conv,
                "time_ratio": round(ours["seconds"] / conv["seconds"], 2),
                "rss_ratio": round(ours["peak_rss_mib"] / conv["peak_rss_mib"], 2),
                "tensor_data": same_tensors(out / f"{name}{tag}-ours-{quant}.gguf",
                                            out / f"{name}{tag}-conv-{quant}.gguf"),
            }
        for name in self.models:
            f16 = out / f"{name}{tag}-ours-f16.gguf"
            if f16.exists():
                results["models"][name] = {
                    "shape": f"{SHAPES[name][0]} config + tokenizer, {self.layers[name]} layers "
                             f"(real: {SHAPES[name][1]}), random {self.args.dtype} weights",
                    "params": sum(math.prod(t.shape) for t in read_tensor_table(f16)[1]),
                    "safetensors_bytes": sum(f.stat().st_size for f in self.models[name].glob("*.safetensors")),
                }

    def report_kquants(self, results: dict) -> None:
        """Per K-quant model and mix: ours (warm, cold) vs llama.cpp's route, their ratios, the files compared."""
        args, out, tag, runs, workers, threads = self.args, self.out, self.tag, self.runs, self.workers, self.threads
        for name in self.kq_models:
            conv = summary(runs[f"{name} f16 convert" if args.f16_route == "convert" else f"{name} f16 route"])
            for quant in self.kquants:
                case: dict = {f"ours_w{w}": summary(runs[f"{name} {quant} ours w{w}"]) for w in workers}
                if not args.no_cold:
                    case.update({f"ours_cold_w{w}": summary(runs[f"{name} {quant} ours cold w{w}"]) for w in workers})
                for t in threads:
                    q = summary(runs[f"{name} {quant} quantize t{t}"])
                    case[f"llama_route_t{t}"] = {
                        "convert_f16": conv["seconds"], "quantize": q["seconds"], "quantize_runs_s": q["runs_s"],
                        "seconds": round(conv["seconds"] + q["seconds"], 2),
                        "peak_rss_mib": max(conv["peak_rss_mib"], q["peak_rss_mib"]),
                    }
                best = min((case[f"llama_route_t{t}"] for t in threads), key=lambda r: r["seconds"])
                for w in workers:
                    ours = case[f"ours_w{w}"]
                    for t in threads:
                        case[f"w{w}_time_ratio_vs_route_t{t}"] = round(
                            ours["seconds"] / case[f"llama_route_t{t}"]["seconds"], 2)
                    case[f"w{w}_time_ratio_vs_faster_route"] = round(ours["seconds"] / best["seconds"], 2)
                    if not args.no_cold:
                        cold = case[f"ours_cold_w{w}"]
                        for t in threads:
                            case[f"w{w}_cold_time_ratio_vs_route_t{t}"] = round(
                                cold["seconds"] / case[f"llama_route_t{t}"]["seconds"], 2)
                    case[f"w{w}_rss_ratio"] = round(ours["peak_rss_mib"] / best["peak_rss_mib"], 2)
                ref = out / f"{name}{tag}-llama-{quant}-t{threads[0]}.gguf"
                first = out / f"{name}{tag}-ours-{quant}-w{workers[0]}.gguf"
                case["types"] = type_shares(first)
                case["tensor_data"] = same_tensors(first, ref)
                case["same_file_for_every_worker_count"] = all(
                    (out / f"{name}{tag}-ours-{quant}-w{w}.gguf").read_bytes() == first.read_bytes()
                    for w in workers[1:])
                results["kquants"][f"{name} {quant}"] = case


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    bench = Bench(args)
    results = bench.start_results()
    bench.run_routes()
    bench.report_convert(results)
    bench.report_kquants(results)
    dest = args.out_json or args.work / f"results{bench.tag}.json"
    dest.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
