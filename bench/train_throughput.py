"""Training throughput: Tuneloom's trainer vs `mlx_lm lora` (the command-line tool).

    .venv/bin/python bench/train_throughput.py [--layers 4] [--iters 12] [--rounds 2]

Same model (Qwen2.5-0.5B config with the real tokenizer, random float32 weights, layers reduced
for a CPU), same data, same hyper-parameters (LoRA rank 8 on all linear layers, batch 4, prompt
masking), run alternately in child processes of this one. Both children load the system
OpenBLAS first (core.accel), so the comparison is of the training loops, not of BLAS libraries.
Reports trained (loss-bearing) tokens per second, as each tool reports it, after warm-up steps,
and peak memory. Two datasets: equal-length examples and mixed-length examples.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REF = ROOT / "tests" / "fixtures" / "models" / "Qwen2.5-0.5B-Instruct"
sys.path.insert(0, str(ROOT))


def build_model(dest: Path, layers: int) -> Path:
    import core  # noqa: F401
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import qwen2
    from transformers import AutoTokenizer

    dest.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((REF / "config.json").read_text())
    cfg["num_hidden_layers"] = layers
    cfg["torch_dtype"] = "float32"
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in ("tokenizer_config.json", "generation_config.json", "vocab.json", "merges.txt"):
        (dest / f).write_bytes((REF / f).read_bytes())
    AutoTokenizer.from_pretrained(str(REF)).backend_tokenizer.save(str(dest / "tokenizer.json"))
    mx.random.seed(0)
    model = qwen2.Model(qwen2.ModelArgs.from_dict(cfg))
    model.set_dtype(mx.float32)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(dest / "model.safetensors"), weights, metadata={"format": "pt"})
    return dest


WORDS = ("alpha beta gamma delta model token river stone garden window paper music light cloud "
         "orange silver quiet rapid gentle simple complex answer question system").split()


def build_data(dest: Path, kind: str, n: int = 96, seed: int = 0) -> Path:
    """Chats whose answers are `equal` (~192 words) or `mixed` (12 to 240 words) long."""
    rng = random.Random(seed)
    dest.mkdir(parents=True, exist_ok=True)
    rows = []
    for _ in range(n):
        q = " ".join(rng.choices(WORDS, k=rng.randint(8, 24) if kind == "mixed" else 16))
        k = rng.randint(12, 240) if kind == "mixed" else 192
        a = " ".join(rng.choices(WORDS, k=k))
        rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    for name, part in (("train", rows), ("valid", rows[:8])):
        (dest / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return dest


OURS = """
import sys, json
sys.path.insert(0, {root!r})
from app.cli import main
sys.exit(main(["train", "--model", {model!r}, "--data", {data!r}, "--out", {out!r}, "--iters", "{iters}",
               "--rank", "8", "--alpha", "16", "--lr", "1e-4", "--batch", "{batch}", "--max-seq-len", "{seqlen}",
               "--seed", "0"] + {extra!r}))
"""

THEIRS = """
import sys
sys.path.insert(0, {root!r})
import json
import core  # loads OpenBLAS before mlx, as in our child
import mlx_lm.lora as lora
from mlx_lm.lora import main

# read mlx-lm's own per-step report (its console UI is a rich table) through its callback hook
_train = lora.train
class Report:
    def on_train_loss_report(self, info):
        print("REPORT " + json.dumps(info), flush=True)
    def on_val_loss_report(self, info):
        pass
def train(*args, **kwargs):
    kwargs["training_callback"] = Report()
    return _train(*args, **kwargs)
lora.train = train
sys.argv = ["mlx_lm.lora", "--model", {model!r}, "--train", "--data", {data!r}, "--iters", "{iters}",
            "--batch-size", "{batch}", "--num-layers", "-1", "--learning-rate", "1e-4",
            "--max-seq-length", "{seqlen}", "--mask-prompt", "--steps-per-report", "1",
            "--steps-per-eval", "100000", "--val-batches", "1", "--adapter-path", {out!r}, "--seed", "0",
            "-c", {cfg!r}]
main()
"""


def run_child(code: str, env=None) -> tuple[str, float]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    if p.returncode != 0:
        raise RuntimeError(p.stdout[-3000:] + p.stderr[-3000:])
    return p.stdout + "\n" + p.stderr, time.perf_counter() - t0


def ours(model, data, out, iters, batch, seqlen, warm, extra) -> dict:
    text, wall = run_child(OURS.format(root=str(ROOT), model=str(model), data=str(data), out=str(out),
                                       iters=iters, batch=batch, seqlen=seqlen, extra=extra))
    steps = {}
    for line in text.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            if "step" in d:
                steps.setdefault(d["step"], {}).update(d)
    rates = [steps[s]["trained_tokens_per_sec"] for s in sorted(steps) if s > warm and "trained_tokens_per_sec" in steps[s]]
    peak = max((steps[s].get("peak_memory", 0) for s in steps), default=0)
    return {"trained_tok_s": statistics.median(rates), "peak_gb": peak / 1e9, "wall_s": wall}


def theirs(model, data, out, iters, batch, seqlen, warm, cfg) -> dict:
    text, wall = run_child(THEIRS.format(root=str(ROOT), model=str(model), data=str(data), out=str(out),
                                         iters=iters, batch=batch, seqlen=seqlen, cfg=str(cfg)),
                           env={**os.environ, "COLUMNS": "400", "TERM": "dumb"})
    rates, peak = [], 0.0
    for line in text.splitlines():
        if line.startswith("REPORT "):
            info = json.loads(line[7:])
            if info["iteration"] > warm:
                rates.append(info["tokens_per_second"])
            peak = max(peak, info["peak_memory"])
    if not rates:
        raise RuntimeError("could not parse mlx_lm output:\n" + text[-3000:])
    return {"trained_tok_s": statistics.median(rates), "peak_gb": peak, "wall_s": wall}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--warm", type=int, default=3, help="steps left out of the median (compile warm-up)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pack", action="store_true", help="also run ours with sequence packing")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tl-bench-"))
    model = build_model(work / "model", a.layers)
    cfg = work / "lora.yaml"
    cfg.write_text("lora_parameters:\n  rank: 8\n  scale: 2.0\n  dropout: 0.0\n")
    results = {}
    for kind in ("equal", "mixed"):
        data = build_data(work / f"data-{kind}", kind)
        runs = {"tuneloom": [], "mlx_lm lora": []}
        if a.pack:
            runs["tuneloom --pack"] = []
        for r in range(a.rounds):
            runs["mlx_lm lora"].append(theirs(model, data, work / f"t{r}{kind}", a.iters, a.batch, a.seqlen, a.warm, cfg))
            runs["tuneloom"].append(ours(model, data, work / f"o{r}{kind}", a.iters, a.batch, a.seqlen, a.warm, []))
            if a.pack:
                runs["tuneloom --pack"].append(ours(model, data, work / f"p{r}{kind}", a.iters, a.batch, a.seqlen,
                                                    a.warm, ["--pack"]))
        results[kind] = {k: {"trained_tok_s": statistics.median(x["trained_tok_s"] for x in v),
                             "peak_gb": max(x["peak_gb"] for x in v)} for k, v in runs.items()}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()}; "
          f"Qwen2.5-0.5B shape with {a.layers} layers, LoRA r8 all linear, batch {a.batch}, fp32, "
          f"{a.iters} iters ({a.warm} warm-up left out), {a.rounds} alternating rounds")
    for kind, res in results.items():
        base = res["mlx_lm lora"]["trained_tok_s"]
        for name, r in res.items():
            print(f"  {kind:6s} {name:16s} {r['trained_tok_s']:9.1f} trained tok/s  x{r['trained_tok_s'] / base:4.2f}  "
                  f"peak {r['peak_gb']:.2f} GB")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
