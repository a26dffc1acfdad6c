"""Our GGUF export vs llama.cpp's own tools, on a Qwen2.5-0.5B-shaped model.

    .venv/bin/python bench/export.py [--layers 24] [--kquant-models qwen2.5,qwen3] [--repeat 1] [--work DIR]

* F16 and Q8_0: ``core.gguf_export.export_gguf`` vs llama.cpp's ``convert_hf_to_gguf.py``
  (``--outtype f16`` / ``q8_0``), each from the same safetensors folder;
* Q4_K_M / Q5_K_M / Q6_K: our export (straight from the safetensors) vs
  ``llama_model_quantize`` (llama-cpp-python) run on our F16 GGUF, 1 and 2 threads.

Every run is its own child process: wall time, and peak RSS from ``os.wait4``'s rusage
of that child alone. The models are Qwen2.5-0.5B-Instruct's (and, for the K-quants,
Qwen3-0.6B's) exact config and real tokenizer (tests/fixtures/models) with random
bfloat16 weights, as published.

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


def build_model(work: Path, name: str, layers: int) -> Path:
    """The hub model's exact config (``layers`` blocks) and tokenizer, random weights."""
    import pytest

    from fixtures import tiny_models

    config = json.loads((tiny_models.reference_dir(name) / "config.json").read_text())
    config["num_hidden_layers"] = layers
    if "max_window_layers" in config:
        config["max_window_layers"] = layers
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiny_models, "tiny_config", lambda _name: dict(config))
        return tiny_models.cached_tiny_model(name, work / f"{SHAPES[name][0]}-{layers}layers")


def llama_src(work: Path) -> Path:
    """vendor/llama.cpp of the installed llama-cpp-python's source distribution."""
    import llama_cpp

    version = llama_cpp.__version__
    base = work / f"llama_cpp_python-{version}"
    if not (base / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py").is_file():
        sdist = work / f"llama_cpp_python-{version}.tar.gz"
        if not sdist.is_file():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
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
print(json.dumps({"code": code, "seconds": wall, "maxrss_kib": usage.ru_maxrss}))
"""


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` in a fresh process: wall seconds and its own peak RSS (MiB)."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"launcher failed: {done.stderr[-2000:]}")
    res = json.loads(done.stdout.strip().splitlines()[-1])
    if res["code"]:
        sys.stderr.write(done.stderr)
        raise RuntimeError(f"{cmd[:3]} failed ({res['code']})")
    return {"seconds": round(res["seconds"], 2), "peak_rss_mib": round(res["maxrss_kib"] / 1024, 1)}


OURS = """
import sys; sys.path.insert(0, {root!r})
from core.gguf_export import export_gguf
export_gguf({model!r}, {out!r}, {quant!r})
"""

QUANTIZE = """
import ctypes, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = {ftype}; p.nthread = {nthread}
assert llama_cpp.llama_model_quantize({src!r}.encode(), {dst!r}.encode(), ctypes.byref(p)) == 0
"""


def best_of(repeat: int, cmd: list[str], env: dict | None = None) -> dict:
    runs = [measure(cmd, env) for _ in range(repeat)]
    return {"seconds": min(r["seconds"] for r in runs), "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}


def same_tensors(a: Path, b: Path) -> str:
    """'identical' or the share of tensors / blocks whose bytes differ."""
    import gguf
    import numpy as np

    from core.gguf_export import read_tensor_table

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

    from core.gguf_export import read_tensor_table

    counts: dict[str, int] = {}
    for t in read_tensor_table(path)[1]:
        counts[t.qtype.name] = counts.get(t.qtype.name, 0) + math.prod(t.shape)
    total = sum(counts.values())
    return {k: round(v / total, 3) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24, help="Qwen2.5-0.5B blocks (the real model has 24)")
    ap.add_argument("--qwen3-layers", type=int, default=28, help="Qwen3-0.6B blocks for the K-quant runs (real: 28)")
    ap.add_argument("--kquant-models", default="qwen2.5,qwen3",
                    help="models for the K-quant runs: Qwen2.5-0.5B's rows of 896 are not whole 256-blocks, so "
                         "only its ffn_down is K-quantized; every Qwen3-0.6B matrix is ('' to skip)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest time is kept")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="model, sources and outputs go here")
    ap.add_argument("--converter-python", default=str(DEFAULT_WORK / "convert-venv" / "bin" / "python"),
                    help="a Python with torch, numpy, sentencepiece and transformers for convert_hf_to_gguf.py")
    ap.add_argument("--llama-src", type=Path, help="a vendor/llama.cpp folder (default: fetched sdist)")
    args = ap.parse_args()

    import math

    import llama_cpp

    from core.gguf_export import read_tensor_table

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    out.mkdir(exist_ok=True)
    src = args.llama_src or llama_src(work)
    converter = src / "convert_hf_to_gguf.py"
    conv_env = dict(os.environ, PYTHONPATH=str(src / "gguf-py"))
    layers = {"qwen2.5": args.layers, "qwen3": args.qwen3_layers}
    models = {}
    for name in ["qwen2.5"] + [m for m in args.kquant_models.split(",") if m and m != "qwen2.5"]:
        models[name] = build_model(work, name, layers[name])
        for f in models[name].glob("*.safetensors"):  # page cache warm for everyone alike
            subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)

    results: dict = {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "llama_cpp_python": llama_cpp.__version__,
        "models": {},
        "convert": {},
        "kquants": {},
    }

    def ours_cmd(model: Path, dst: Path, quant: str) -> list[str]:
        return [sys.executable, "-c", OURS.format(root=str(ROOT), model=str(model), out=str(dst), quant=quant)]

    # F16 and Q8_0 from the safetensors: ours vs convert_hf_to_gguf.py
    for name, model in models.items():
        for quant in ("f16", "q8_0") if name == "qwen2.5" else ("f16",):
            ours_out, conv_out = out / f"{name}-ours-{quant}.gguf", out / f"{name}-conv-{quant}.gguf"
            ours = best_of(args.repeat, ours_cmd(model, ours_out, quant))
            conv = best_of(args.repeat, [args.converter_python, str(converter), str(model), "--outfile", str(conv_out),
                                         "--outtype", quant], conv_env)
            case = {
                "ours": ours, "convert_hf_to_gguf": conv,
                "time_ratio": round(ours["seconds"] / conv["seconds"], 2),
                "rss_ratio": round(ours["peak_rss_mib"] / conv["peak_rss_mib"], 2),
                "tensor_data": same_tensors(ours_out, conv_out),
            }
            results["convert"][f"{name} {quant}"] = case
            print(name, quant, json.dumps(case), flush=True)
        f16 = out / f"{name}-ours-f16.gguf"
        results["models"][name] = {
            "shape": f"{SHAPES[name][0]} config + tokenizer, {layers[name]} layers (real: {SHAPES[name][1]}), random bf16 weights",
            "params": sum(math.prod(t.shape) for t in read_tensor_table(f16)[1]),
            "safetensors_bytes": sum(f.stat().st_size for f in model.glob("*.safetensors")),
        }

    # K-quants: ours from the safetensors vs llama_model_quantize on our F16 file
    ftypes = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
              "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K}
    for name in [m for m in args.kquant_models.split(",") if m]:
        model, f16 = models[name], out / f"{name}-ours-f16.gguf"
        for quant, ftype in ftypes.items():
            ours_out = out / f"{name}-ours-{quant}.gguf"
            case = {"ours": best_of(args.repeat, ours_cmd(model, ours_out, quant))}
            for nthread in (1, 2):
                case[f"llama_model_quantize_t{nthread}"] = best_of(args.repeat, [sys.executable, "-c", QUANTIZE.format(
                    ftype=ftype, nthread=nthread, src=str(f16), dst=str(out / f"{name}-llama-{quant}-t{nthread}.gguf"))])
            case["time_ratio_vs_t1"] = round(case["ours"]["seconds"] / case["llama_model_quantize_t1"]["seconds"], 2)
            conv_f16 = results["convert"].get(f"{name} f16", {}).get("convert_hf_to_gguf")
            if conv_f16:  # llama.cpp's whole route: convert to F16, then quantize
                case["end_to_end_ratio_vs_convert_plus_quantize_t1"] = round(
                    case["ours"]["seconds"] / (conv_f16["seconds"] + case["llama_model_quantize_t1"]["seconds"]), 2)
            case["types"] = type_shares(ours_out)
            case["tensor_data"] = same_tensors(ours_out, out / f"{name}-llama-{quant}-t1.gguf")
            results["kquants"][f"{name} {quant}"] = case
            print(name, quant, json.dumps(case), flush=True)

    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
