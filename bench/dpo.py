"""DPO training speed and memory: Tuneloom (`tuneloom train --method dpo`) vs `mlx-lm-lora`'s DPO.

    .venv/bin/python bench/dpo.py [--peer-python /tmp/venv-lora/bin/python] [--layers 2] [--iters 10] [--rounds 2]

`mlx-lm-lora` (PyPI) is not a Tuneloom dependency: install it into a separate virtualenv
(`python -m venv /tmp/venv-lora && /tmp/venv-lora/bin/pip install mlx-lm-lora`) and pass its
interpreter with --peer-python.

Same model (Qwen2.5-0.5B config with the real tokenizer, random float32 weights, layers reduced
for a CPU, built by bench/train_throughput.py's `build_model`), same data (the demo world's
preference pairs from `core.demo.world.preference_dataset`, with the same system message on
both sides), same settings (LoRA rank 8, scale 2.0 = alpha 16 / rank 8, on every linear layer
of every block, batch of B pairs, max length, beta 0.1, sigmoid loss, learning rate 1e-4,
AdamW without weight decay, seed 0). The two tools run alternately in child processes of this
one, each round in the same order; both children load the system OpenBLAS first
(`core.accel`, as `import core` does), so the comparison is of the training loops.

What is measured, per tool:
- the step time: median over the steps after the warm-up steps; Tuneloom's from its
  metrics.jsonl (`trained_tokens_step / trained_tokens_per_sec`, the step's wall time), the
  peer's from its own per-step report (`iterations_per_second` with --steps-per-report 1, read
  through its training-callback hook), both including building the batch;
- the peak memory as each tool reports it (`mx.get_peak_memory()` in both);
- the reference pass: Tuneloom computes the base model's log-probabilities (the adapter
  switched off) once per pair before the first step and caches them, so its steps do no
  reference forward; that up-front pass is timed separately (`ref_pass_s`). mlx-lm-lora loads
  a second copy of the model as the reference (`load_reference_model`: the same weights loaded
  again and frozen) and runs it on both sides of every batch in every step;
- the child's whole wall time (load, reference pass, steps, validation at start and end).

And the cost of a Tuneloom DPO step next to a Tuneloom supervised step over the same tokens:
the same pairs written as 2 chat examples each (prompt + chosen, prompt + rejected), trained
with `--method sft` and a batch of 2B, so a step sees the same 2B sequences.
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
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SYSTEM = "You are a helpful assistant."


def build_data(dest: Path, n_train: int, n_valid: int) -> dict[str, Path]:
    """The demo world's preference pairs, written for each side: Tuneloom's prompt / chosen / rejected
    message lists (one file, split by --valid-fraction), mlx-lm-lora's flat strings with a `system`
    key (train.jsonl + valid.jsonl), and the supervised version (two chats per pair)."""
    from core.demo import world as demo_world

    train, valid, _ = demo_world.preference_dataset(n_train=n_train, n_valid=n_valid)
    sysm = {"role": "system", "content": SYSTEM}
    ours = dest / "tuneloom-dpo"
    peer = dest / "peer-dpo"
    sft = dest / "tuneloom-sft"
    for d in (ours, peer, sft):
        d.mkdir(parents=True, exist_ok=True)

    def text(msgs):
        assert len(msgs) == 1
        return msgs[0]["content"]

    def write(path, rows):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    write(ours / "pairs.jsonl", [{"prompt": [sysm] + p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}
                                 for p in train + valid])
    for name, part in (("train", train), ("valid", valid)):
        write(peer / f"{name}.jsonl", [{"system": SYSTEM, "prompt": text(p["prompt"]), "chosen": text(p["chosen"]),
                                        "rejected": text(p["rejected"])} for p in part])
    write(sft / "chats.jsonl", [{"messages": [sysm] + p["prompt"] + p[side]} for p in train + valid
                                for side in ("chosen", "rejected")])
    return {"ours": ours / "pairs.jsonl", "peer": peer, "sft": sft / "chats.jsonl"}


OURS = """
import sys, json, time
sys.path.insert(0, {root!r})
import core  # OpenBLAS before mlx
from core.train import preference as pref
_ref = pref.reference_logps
def timed(*a, **k):  # the up-front reference pass (train and validation pairs), timed
    t0 = time.perf_counter()
    out = _ref(*a, **k)
    print("REFPASS " + json.dumps({{"seconds": time.perf_counter() - t0, "pairs": len(a[1])}}), flush=True)
    return out
pref.reference_logps = timed
from app.cli import main
sys.exit(main(["train", "--model", {model!r}, "--data", {data!r}, "--out", {out!r}, "--iters", "{iters}",
               "--rank", "8", "--alpha", "16", "--lr", "1e-4", "--batch", "{batch}", "--max-seq-len", "{seqlen}",
               "--seed", "0", "--warmup", "0", "--weight-decay", "0", "--valid-every", "0",
               "--checkpoint-every", "0", "--valid-batches", "1", "--valid-fraction", "{vfrac}"] + {extra!r}))
"""

PEER = """
import sys, json
sys.path.insert(0, {root!r})
import core  # loads OpenBLAS before mlx, as in Tuneloom's child
import mlx.core as mx
# train_dpo sets a wired-memory limit from a Metal-only key of mx.device_info(); on a CPU the key is
# absent, so give it 0 (set_wired_limit(0) is a no-op there) instead of a KeyError
_info = mx.device_info
mx.device_info = lambda: {{"max_recommended_working_set_size": 0, **_info()}}
import mlx_lm_lora.train as lt

class Report:  # mlx-lm-lora's own per-step report, through its training-callback hook
    def on_train_loss_report(self, info):
        print("REPORT " + json.dumps(info, default=lambda v: v.item()), flush=True)
    def on_val_loss_report(self, info):
        pass
_train_model = lt.train_model
def train_model(*args, **kwargs):
    kwargs["training_callback"] = Report()
    return _train_model(*args, **kwargs)
lt.train_model = train_model
sys.argv = ["mlx_lm_lora.train", "--model", {model!r}, "--train", "--train-mode", "dpo", "--data", {data!r},
            "--iters", "{iters}", "--batch-size", "{batch}", "--num-layers", "-1", "--learning-rate", "1e-4",
            "--max-seq-length", "{seqlen}", "--beta", "0.1", "--dpo-cpo-loss-type", "sigmoid",
            "--steps-per-report", "1", "--steps-per-eval", "100000", "--val-batches", "1",
            "--adapter-path", {out!r}, "--seed", "0", "-c", {cfg!r}]
lt.main()
"""


def run_child(python: str, code: str, env=None) -> tuple[str, float]:
    t0 = time.perf_counter()
    p = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    if p.returncode != 0:
        raise RuntimeError(p.stdout[-3000:] + p.stderr[-3000:])
    return p.stdout + "\n" + p.stderr, time.perf_counter() - t0


def load_avg() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def ours(model, data, out, iters, batch, seqlen, warm, vfrac, method) -> dict:
    load = load_avg()
    text, wall = run_child(sys.executable, OURS.format(root=str(ROOT), model=str(model), data=str(data),
                                                       out=str(out), iters=iters, batch=batch, seqlen=seqlen,
                                                       vfrac=vfrac, extra=["--method", method]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = {r["step"]: r for r in rows if "train_loss" in r}
    times = [steps[s]["trained_tokens_step"] / steps[s]["trained_tokens_per_sec"] for s in sorted(steps) if s > warm]
    tokens = [steps[s]["trained_tokens_step"] for s in sorted(steps) if s > warm]
    peak = max((r.get("peak_memory", 0) for r in rows), default=0)
    ref_s = sum(json.loads(line[8:])["seconds"] for line in text.splitlines() if line.startswith("REFPASS "))
    ref_pairs = [json.loads(line[8:])["pairs"] for line in text.splitlines() if line.startswith("REFPASS ")]
    return {"step_s": statistics.median(times), "trained_tokens_step": statistics.median(tokens),
            "peak_gb": peak / 1e9, "ref_pass_s": ref_s, "ref_pairs": ref_pairs, "wall_s": wall, "load": load,
            "steps_timed": len(times)}


def peer(python, model, data, out, iters, batch, seqlen, warm, cfg) -> dict:
    load = load_avg()
    text, wall = run_child(python, PEER.format(root=str(ROOT), model=str(model), data=str(data), out=str(out),
                                               iters=iters, batch=batch, seqlen=seqlen, cfg=str(cfg)),
                           env={**os.environ, "COLUMNS": "400", "TERM": "dumb"})
    times, tokens, peak = [], [], 0.0
    for line in text.splitlines():
        if line.startswith("REPORT "):
            info = json.loads(line[7:])
            if info["iteration"] > warm:
                times.append(1.0 / info["iterations_per_second"])
                tokens.append(info["tokens_per_second"] / info["iterations_per_second"])
            peak = max(peak, info["peak_memory"])
    if not times:
        raise RuntimeError("could not parse mlx-lm-lora's output:\n" + text[-3000:])
    return {"step_s": statistics.median(times), "trained_tokens_step": statistics.median(tokens), "peak_gb": peak,
            "wall_s": wall, "load": load, "steps_timed": len(times)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-python", default="/tmp/venv-lora/bin/python",
                    help="the interpreter of a virtualenv that has mlx-lm-lora installed")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warm", type=int, default=3, help="steps left out of the median (compile warm-up)")
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--valid", type=int, default=4, help="validation pairs")
    ap.add_argument("--train-pairs", type=int, default=0,
                    help="training pairs (default: iters x batch, one pass, so Tuneloom's reference pass "
                         "covers exactly the pairs the steps use)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-sft", action="store_true", help="skip the DPO-vs-supervised step comparison")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--work", type=Path, help="a folder to build the model and data in (kept; a model already "
                                               "there is reused)")
    a = ap.parse_args()
    from train_throughput import build_model

    n_train = a.train_pairs or a.iters * a.batch
    work = a.work or Path(tempfile.mkdtemp(prefix="tl-bench-dpo-"))
    model = work / f"model-{a.layers}"
    if not (model / "model.safetensors").exists():
        build_model(model, a.layers)
    data = build_data(work / "data", n_train, a.valid)
    if (work / "runs").exists():
        shutil.rmtree(work / "runs")
    vfrac = a.valid / (n_train + a.valid)
    cfg = work / "peer.yaml"
    cfg.write_text("lora_parameters:\n  rank: 8\n  scale: 2.0\n  dropout: 0.0\noptimizer: adamw\n"
                   "optimizer_config:\n  adamw:\n    weight_decay: 0.0\nfuse: false\n")
    runs: dict[str, list[dict]] = {"mlx-lm-lora dpo": [], "tuneloom dpo": []}
    if not a.no_sft:
        runs["tuneloom sft (2B chats)"] = []
    out = work / "runs"
    for r in range(a.rounds):
        runs["mlx-lm-lora dpo"].append(peer(a.peer_python, model, data["peer"], out / f"peer{r}", a.iters, a.batch,
                                            a.seqlen, a.warm, cfg))
        runs["tuneloom dpo"].append(ours(model, data["ours"], out / f"dpo{r}", a.iters, a.batch, a.seqlen, a.warm,
                                         vfrac, "dpo"))
        if not a.no_sft:
            runs["tuneloom sft (2B chats)"].append(ours(model, data["sft"], out / f"sft{r}", a.iters, 2 * a.batch,
                                                        a.seqlen, a.warm, vfrac, "sft"))
        print(f"round {r + 1}: " + json.dumps({k: v[-1] for k, v in runs.items()}), flush=True)
    res = {k: {"step_s": statistics.median(x["step_s"] for x in v),
               "steps_per_s": 1.0 / statistics.median(x["step_s"] for x in v),
               "trained_tokens_step": statistics.median(x["trained_tokens_step"] for x in v),
               "peak_gb": max(x["peak_gb"] for x in v),
               "wall_s": statistics.median(x["wall_s"] for x in v),
               "ref_pass_s": statistics.median(x.get("ref_pass_s", 0.0) for x in v),
               "step_s_each_round": [round(x["step_s"], 3) for x in v],
               "load_avg_at_start": [round(x["load"], 1) for x in v]} for k, v in runs.items()}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()}; Qwen2.5-0.5B shape with "
          f"{a.layers} layers, fp32, LoRA r8 all linear, {a.batch} pairs per step, max length {a.seqlen}, "
          f"beta 0.1, {n_train} training pairs, {a.iters} steps ({a.warm} warm-up left out), "
          f"{a.rounds} alternating rounds")
    base = res["mlx-lm-lora dpo"]
    for name, r in res.items():
        print(f"  {name:24s} {r['steps_per_s']:.3f} steps/s ({r['step_s']:.2f} s/step, rounds "
              f"{r['step_s_each_round']})  x{base['step_s'] / r['step_s']:4.2f}  peak {r['peak_gb']:.2f} GB  "
              f"{r['trained_tokens_step']:.0f} trained tok/step  ref pass {r['ref_pass_s']:.1f} s  "
              f"wall {r['wall_s']:.0f} s  load {r['load_avg_at_start']}")
    if not a.no_sft:
        dpo, sft = res["tuneloom dpo"], res["tuneloom sft (2B chats)"]
        per_tok = (dpo["step_s"] / dpo["trained_tokens_step"]) / (sft["step_s"] / sft["trained_tokens_step"])
        amort = (dpo["step_s"] + dpo["ref_pass_s"] / a.iters) / sft["step_s"]
        res["dpo_over_sft"] = {"step": dpo["step_s"] / sft["step_s"], "per_trained_token": per_tok,
                               "step_with_ref_pass_amortized": amort}
        print(f"  Tuneloom DPO step / SFT step over the same sequences: {dpo['step_s'] / sft['step_s']:.2f}x "
              f"({per_tok:.2f}x per trained token; {amort:.2f}x with the reference pass spread over the "
              f"{a.iters} steps)")
    print(json.dumps(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
