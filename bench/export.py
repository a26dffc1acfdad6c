"""Our GGUF export vs llama.cpp's own tools, on a Qwen2.5-0.5B-shaped model.

    .venv/bin/python bench/export.py [--layers 24] [--repeat 1] [--work DIR]

* F16 and Q8_0: ``core.gguf_export.export_gguf`` vs llama.cpp's ``convert_hf_to_gguf.py``
  (``--outtype f16`` / ``q8_0``), each from the same safetensors folder;
* Q4_K_M / Q5_K_M / Q6_K: our export (straight from the safetensors) vs
  ``llama_model_quantize`` (llama-cpp-python) run on our F16 GGUF, 1 and 2 threads.

Every run is its own child process: wall time, and peak RSS from ``os.wait4``'s rusage
of that child alone. The model is Qwen2.5-0.5B-Instruct's config and real tokenizer
(tests/fixtures/models) with random bfloat16 weights, as published, ``--layers`` of them.

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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

DEFAULT_WORK = Path(os.environ.get("TUNELOOM_BENCH_DIR", Path.home() / ".cache" / "tuneloom-bench"))


def build_model(work: Path, layers: int) -> Path:
    """Qwen2.5-0.5B-Instruct's config (with ``layers`` blocks) and tokenizer, random weights."""
    import pytest

    from fixtures import tiny_models

    ref = json.loads((tiny_models.reference_dir("qwen2.5") / "config.json").read_text())
    dims = {k: ref[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size")}
    dims["num_hidden_layers"] = layers
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiny_models, "TINY_DIMS", dims)
        return tiny_models.cached_tiny_model("qwen2.5", work / f"qwen2.5-0.5b-{layers}layers")


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


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` as a child: wall seconds and that child's own peak RSS (MiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.stderr.write(out.decode(errors="replace")[-4000:])
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode})")
    return {"seconds": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24, help="transformer blocks (the real model has 24)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest time is kept")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="model, sources and outputs go here")
    ap.add_argument("--converter-python", default=str(DEFAULT_WORK / "convert-venv" / "bin" / "python"),
                    help="a Python with torch, numpy, sentencepiece and transformers for convert_hf_to_gguf.py")
    ap.add_argument("--llama-src", type=Path, help="a vendor/llama.cpp folder (default: fetched sdist)")
    ap.add_argument("--skip-kquants", action="store_true")
    args = ap.parse_args()

    import llama_cpp

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    out.mkdir(exist_ok=True)
    model = build_model(work, args.layers)
    src = args.llama_src or llama_src(work)
    converter = src / "convert_hf_to_gguf.py"
    conv_env = dict(os.environ, PYTHONPATH=str(src / "gguf-py"))
    for f in model.glob("*.safetensors"):  # page cache warm for everyone alike
        f.read_bytes()
    import math

    from core.gguf_export import read_tensor_table

    results: dict = {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "model": f"Qwen2.5-0.5B-Instruct config + tokenizer, {args.layers} layers, random bf16 weights",
        "model_bytes": sum(f.stat().st_size for f in model.glob("*.safetensors")),
        "llama_cpp_python": llama_cpp.__version__,
        "cases": {},
    }

    for quant in ("f16", "q8_0"):
        ours_out, conv_out = out / f"ours-{quant}.gguf", out / f"conv-{quant}.gguf"
        ours = best_of(args.repeat, [sys.executable, "-c", OURS.format(root=str(ROOT), model=str(model), out=str(ours_out), quant=quant)])
        conv = best_of(args.repeat, [args.converter_python, str(converter), str(model), "--outfile", str(conv_out),
                                     "--outtype", quant], conv_env)
        results["cases"][quant] = {
            "ours": ours, "convert_hf_to_gguf": conv,
            "time_ratio": round(ours["seconds"] / conv["seconds"], 2),
            "rss_ratio": round(ours["peak_rss_mib"] / conv["peak_rss_mib"], 2),
            "tensor_data": same_tensors(ours_out, conv_out),
        }
        print(quant, json.dumps(results["cases"][quant]), flush=True)
    results["n_params"] = sum(math.prod(t.shape) for t in read_tensor_table(out / "ours-f16.gguf")[1])

    if not args.skip_kquants:
        ftypes = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
                  "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K}
        f16 = out / "ours-f16.gguf"
        for quant, ftype in ftypes.items():
            ours_out = out / f"ours-{quant}.gguf"
            ours = best_of(args.repeat, [sys.executable, "-c", OURS.format(root=str(ROOT), model=str(model), out=str(ours_out), quant=quant)])
            case = {"ours": ours}
            for nthread in (1, 2):
                ref_out = out / f"llama-{quant}-t{nthread}.gguf"
                case[f"llama_model_quantize_t{nthread}"] = best_of(
                    args.repeat, [sys.executable, "-c", QUANTIZE.format(ftype=ftype, nthread=nthread, src=str(f16), dst=str(ref_out))])
            case["time_ratio_vs_t1"] = round(ours["seconds"] / case["llama_model_quantize_t1"]["seconds"], 2)
            case["tensor_data"] = same_tensors(ours_out, out / f"llama-{quant}-t1.gguf")
            results["cases"][quant] = case
            print(quant, json.dumps(case), flush=True)

    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
