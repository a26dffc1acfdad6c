"""Training on several Macs (`tuneloom train --hosts`): what a group costs, and what it could gain.

    .venv/bin/python bench/distributed.py                 # all three parts (14 min on 2 cores at load 16-23)
    .venv/bin/python bench/distributed.py --only bytes    # parts 2 and 3 only (seconds, no training)

1. Tokens/s for 1 vs 2 ranks on this machine. The same `tuneloom train` arguments (so the same
   TrainConfig and the same global batch) run once as one process and once as a group of two
   ranks on 127.0.0.1 (`--hosts` with a host file that names 127.0.0.1 twice: ring backend
   through `mlx.launch`). Each case is a child process of this one (the CLI); the figures come
   from the metrics.jsonl the run writes (per step: tokens_per_sec, trained_tokens_per_sec and the
   step time trained_tokens_step / trained_tokens_per_sec), medians after the warm-up steps.
   Cases alternate (1, 2, then 2, 1 in the next round) and the load average is recorded around
   each, because the machine is shared. Two ranks on one 2-core machine split the same cores,
   so this measures the group's overhead, not a speed-up. Models: the bundled demo model and a
   2-layer Qwen2.5-0.5B-shaped model (real config and tokenizer, random weights) built by
   bench/train_throughput.py's build_model.
2. Bytes all-reduced per step for every catalog model at LoRA rank 8 and 16 with the default
   targets (every linear layer of every block: TrainConfig.targets == "all"; and the "quick"
   preset's attention-only targets for comparison). Counted from the configs: each adapted linear
   of shape (out, in) adds lora_a (in x r) and lora_b (r x out), r * (in + out) float32 values,
   whose gradients mlx.nn.average_gradients all-reduces in chunks of >= 32 MiB. The count is
   checked against core.train.add_adapters on the mlx-lm model built lazily from the same config
   (shapes only, no weights), and, in part 1, against the trainer's own "trainable parameters".
3. From 2, a worked estimate of the speed-up over 10 GbE, Thunderbolt 4 and Thunderbolt 5
   (ring all-reduce: each rank sends and receives 2 (n-1)/n x the gradient bytes per step), with
   the link speeds, latency and single-Mac compute rate stated as assumptions (--link-*,
   --mac-tok-s); bench/README.md explains the arithmetic and the sources.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CATALOG = ROOT / "resources" / "catalog.json"
CONFIG_DIRS = (Path("/work/shared/reference-models"), ROOT / "tests" / "fixtures" / "models")
CHUNK_BYTES = 32 * 1024 ** 2  # mlx.nn.average_gradients' all_reduce_size
RANKS = (8, 16)


# ---------------------------------------------------------------------------
# Part 2: bytes all-reduced per step, from the config alone
# ---------------------------------------------------------------------------

def text_config(cfg: dict) -> dict:
    return {**cfg, **(cfg.get("text_config") or {})}  # Qwen3.5 nests its text dimensions


def adapted_linears(cfg: dict, targets: str = "all") -> list[tuple[str, int, int]]:
    """(name, in, out) of every linear layer the trainer puts a LoRA on, for every block.

    Written from the model definitions (mlx_lm.models.llama / qwen2 / qwen3 / qwen3_5) and
    core.train's key tables (ATTENTION_KEYS, DELTANET_KEYS, MLP_KEYS), independently of both,
    so that the lazy-model check below compares two different routes."""
    c = text_config(cfg)
    h, inter, n_layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    hd = c.get("head_dim") or h // heads
    mtype = c.get("model_type", "")
    out = []
    for i in range(n_layers):
        blk = f"layers.{i}."
        linear = False
        if mtype.startswith("qwen3_5"):
            kinds = c.get("layer_types")
            linear = (kinds[i] == "linear_attention") if kinds else (i + 1) % c.get("full_attention_interval", 4) != 0
        if linear:  # Gated DeltaNet: in_proj_b / in_proj_a are not adapted
            key_dim = c["linear_num_key_heads"] * c["linear_key_head_dim"]
            value_dim = c["linear_num_value_heads"] * c["linear_value_head_dim"]
            out += [(blk + "linear_attn.in_proj_qkv", h, 2 * key_dim + value_dim),
                    (blk + "linear_attn.in_proj_z", h, value_dim),
                    (blk + "linear_attn.out_proj", value_dim, h)]
        else:
            q_out = heads * hd * (2 if mtype.startswith("qwen3_5") else 1)  # Qwen3.5: query + output gate
            out += [(blk + "self_attn.q_proj", h, q_out), (blk + "self_attn.k_proj", h, kv * hd),
                    (blk + "self_attn.v_proj", h, kv * hd), (blk + "self_attn.o_proj", heads * hd, h)]
        if targets == "all":
            out += [(blk + "mlp.gate_proj", h, inter), (blk + "mlp.up_proj", h, inter),
                    (blk + "mlp.down_proj", inter, h)]
    return out


def lora_params(cfg: dict, rank: int, targets: str = "all") -> int:
    return sum(rank * (i + o) for _, i, o in adapted_linears(cfg, targets))


def chunk_count(sizes: list[int], itemsize: int = 4, limit: int = CHUNK_BYTES) -> int:
    """How many all_sum calls average_gradients makes: it closes a chunk once it reaches >= limit."""
    n, acc = 0, 0
    for s in sizes:
        acc += s * itemsize
        if acc >= limit:
            n, acc = n + 1, 0
    return n + (1 if acc else 0)


def _shape_only_defaults(cfg: dict) -> dict:
    """The catalog keeps only the dimensions; mlx-lm's ModelArgs also wants a few scalars that do
    not change any shape."""
    return {"rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, **cfg}


def lazy_trainer_count(config_dir: Path, rank: int, targets: str, quant: dict | None = None) -> dict:
    """core.train.add_adapters on the mlx-lm model built from config.json with no weights (MLX
    arrays are lazy: nothing is allocated), quantized first for the 4-bit entries: the
    trainable-parameter count, its dtype and the number of all_sum chunks in the trainer's order."""
    import core  # noqa: F401  (loads OpenBLAS before mlx.core, as every engine import does)
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load_model

    from core.train import TrainConfig, add_adapters

    model, _ = load_model(config_dir, lazy=True, strict=False)
    if quant:
        gs, bits = quant.get("group_size", 64), quant.get("bits", 4)
        nn.quantize(model, group_size=gs, bits=bits,
                    class_predicate=lambda p, m: isinstance(m, nn.Linear) and m.weight.shape[-1] % gs == 0)
    add_adapters(model, TrainConfig(model="", rank=rank, targets=targets))
    flat = tree_flatten(model.trainable_parameters())
    sizes = [v.size for _, v in flat]
    return {"params": sum(sizes), "dtypes": sorted({str(v.dtype).split(".")[-1] for _, v in flat}),
            "chunks": chunk_count(sizes, flat[0][1].dtype.size) if flat else 0}


def _config_dir_for(entry: dict, by_name: dict[str, Path], catalog: dict, work: Path) -> tuple[Path, str]:
    if entry.get("local"):
        return ROOT / "resources" / entry["local"], "the bundled folder"
    src = entry
    if entry.get("base"):
        src = next(m for m in catalog["models"] if m["key"] == entry["base"])
    name = (src.get("hub_id") or "").split("/")[-1]
    if name in by_name:
        return by_name[name], str(by_name[name].relative_to(by_name[name].parents[1]))
    d = work / "configs" / entry["key"]
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(_shape_only_defaults(src["config"])))
    return d, "resources/catalog.json (dimensions only)"


def bytes_table(work: Path, check: bool = True) -> list[dict]:
    catalog = json.loads(CATALOG.read_text())
    by_name: dict[str, Path] = {}
    seen_configs: dict[str, list[Path]] = {}
    for base in CONFIG_DIRS:
        for d in sorted(base.glob("*/config.json")):
            seen_configs.setdefault(d.parent.name, []).append(d.parent)
            by_name.setdefault(d.parent.name, d.parent)
    rows = []
    for entry in catalog["models"]:
        cdir, source = _config_dir_for(entry, by_name, catalog, work)
        cfg = json.loads((cdir / "config.json").read_text())
        for targets in ("all", "attention"):
            for r in RANKS:
                p = lora_params(cfg, r, targets)
                row = {"key": entry["key"], "targets": targets, "rank": r, "params": p, "bytes": 4 * p,
                       "linears": len(adapted_linears(cfg, targets)), "layers": text_config(cfg)["num_hidden_layers"],
                       "config": source, "model_params": entry.get("text_params") or entry.get("params")}
                if check:
                    lz = lazy_trainer_count(cdir, r, targets, entry.get("quantization"))
                    row.update(lazy_params=lz["params"], lazy_dtypes=lz["dtypes"], chunks=lz["chunks"])
                    if lz["params"] != p:
                        raise SystemExit(f"{entry['key']} r{r} {targets}: config count {p:,} != trainer's {lz['params']:,}")
                else:
                    row["chunks"] = math.ceil(4 * p / CHUNK_BYTES)
                rows.append(row)
    # the same model's config in both folders gives the same count (the fixtures are copies)
    for name, dirs in seen_configs.items():
        counts = {lora_params(json.loads((d / "config.json").read_text()), 8) for d in dirs}
        if len(counts) != 1:
            raise SystemExit(f"{name}: the reference and fixture configs disagree: {counts}")
    return rows


# ---------------------------------------------------------------------------
# Part 3: the link estimate
# ---------------------------------------------------------------------------

def ring_seconds(grad_bytes: int, chunks: int, n: int, gbit_s: float, latency_s: float, small_msgs: int = 3) -> float:
    """Time of one step's collectives on an n-rank ring: bandwidth term 2(n-1)/n x bytes / rate, plus
    2(n-1) hops of latency for each all_sum (the gradient chunks and the trainer's few small sums:
    tokens in the batch, the loss, the stop check)."""
    if n < 2:
        return 0.0
    moved = 2 * (n - 1) / n * grad_bytes
    return moved / (gbit_s * 1e9 / 8) + (chunks + small_msgs) * 2 * (n - 1) * latency_s


def speedup(step_1: float, comm: float, n: int) -> float:
    """Same global batch: each of n Macs computes 1/n of it, then all of them wait for the all-reduce
    (no overlap of compute and communication assumed)."""
    return step_1 / (step_1 / n + comm)


# ---------------------------------------------------------------------------
# Part 1: 1 vs 2 local ranks
# ---------------------------------------------------------------------------

def run_case(model: Path, data: Path, out: Path, hostfile: Path | None, args: list[str], env: dict) -> dict:
    cmd = [sys.executable, "-m", "app.cli", "train", *(["--hosts", str(hostfile)] if hostfile else []),
           "--model", str(model), "--data", str(data), *args, "--out", str(out)]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
    steps = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if "train_loss" in m:
            steps[m["step"]] = m
    m = re.search(r"([\d,]+) trainable parameters", p.stdout + p.stderr)
    return {"wall_s": wall, "load_before": load0, "load_after": os.getloadavg()[0], "steps": steps,
            "trainable": int(m.group(1).replace(",", "")) if m else None}


def summarise(runs: list[dict], warm: int) -> dict:
    tok, trained, secs, walls = [], [], [], []
    for r in runs:
        for s, m in sorted(r["steps"].items()):
            if s > warm:
                tok.append(m["tokens_per_sec"])
                trained.append(m["trained_tokens_per_sec"])
                secs.append(m["trained_tokens_step"] / m["trained_tokens_per_sec"])
        walls.append(r["wall_s"])
    return {"tok_s": statistics.median(tok), "trained_tok_s": statistics.median(trained),
            "step_s": statistics.median(secs), "step_s_min": min(secs), "step_s_max": max(secs),
            "wall_s": statistics.median(walls), "n_steps": len(secs)}


def throughput(work: Path, a) -> dict:
    import train_throughput as tt  # its model and data builders, not a copy of them

    env = {**os.environ, "TUNELOOM_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1"}
    hostfile = work / "hosts.txt"
    hostfile.write_text("127.0.0.1\n127.0.0.1\n")
    common = ["--batch", str(a.batch), "--seed", "0", "--rank", "8", "--alpha", "16", "--lr", "1e-4",
              "--checkpoint-every", "0", "--valid-every", "0", "--valid-batches", "1"]
    qwen = tt.build_model(work / "qwen2l", 2)
    cases = {
        "demo": (ROOT / "resources" / "demo" / "model", ROOT / "resources" / "demo" / "data",
                 common + ["--iters", str(a.demo_iters), "--max-seq-len", "512"], a.demo_warm, a.demo_rounds),
        "qwen2.5-0.5b-2layers": (qwen, tt.build_data(work / "qdata", "equal", n=48),
                                 common + ["--iters", str(a.qwen_iters), "--max-seq-len", str(a.qwen_seqlen)],
                                 a.qwen_warm, a.qwen_rounds),
    }
    results = {}
    for name, (model, data, args, warm, rounds) in cases.items():
        by_n: dict[int, list[dict]] = {1: [], 2: []}
        for r in range(rounds):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                res = run_case(model, data, work / f"{name}-r{r}-n{n}", hostfile if n == 2 else None, args, env)
                by_n[n].append(res)
                print(f"  {name} round {r} ranks {n}: {res['wall_s']:.0f} s wall, load {res['load_before']:.1f}"
                      f" -> {res['load_after']:.1f}", file=sys.stderr)
        # the group computes the single-process curve: compare each step's loss
        one, two = by_n[1][0]["steps"], by_n[2][0]["steps"]
        rel = max(abs(two[s]["train_loss"] - one[s]["train_loss"]) / abs(one[s]["train_loss"]) for s in one)
        cfg = json.loads((Path(model) / "config.json").read_text())
        results[name] = {"ranks": {n: summarise(v, warm) for n, v in by_n.items()},
                         "loads": [x for v in by_n.values() for x in (v[0]["load_before"], v[0]["load_after"])],
                         "max_rel_loss_diff": rel, "trainer_trainable": by_n[1][0]["trainable"],
                         "config_trainable": lora_params(cfg, 8), "warm": warm, "rounds": rounds,
                         "args": args}
        if results[name]["trainer_trainable"] != results[name]["config_trainable"]:
            raise SystemExit(f"{name}: trainer reports {results[name]['trainer_trainable']} trainable parameters, "
                             f"the config count is {results[name]['config_trainable']}")
    return results


# ---------------------------------------------------------------------------

LINKS = {  # name: (nominal Gb/s, assumed effective TCP Gb/s for the ring backend)
    "10 GbE": (10, 9.4),
    "Thunderbolt 4 (IP bridge)": (40, 16.0),
    "Thunderbolt 5 (IP bridge)": (80, 32.0),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("bytes", "throughput"), help="run one part (bytes also prints the estimate)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--demo-iters", type=int, default=10)
    ap.add_argument("--demo-warm", type=int, default=2)
    ap.add_argument("--demo-rounds", type=int, default=2)
    ap.add_argument("--qwen-iters", type=int, default=4)
    ap.add_argument("--qwen-warm", type=int, default=1)
    ap.add_argument("--qwen-rounds", type=int, default=1)
    ap.add_argument("--qwen-seqlen", type=int, default=64)
    ap.add_argument("--mac-tok-s", type=float, default=1150.0,
                    help="assumed single-Mac LoRA rate for a 0.6B model (trained tokens/s), scaled by 1/parameters "
                         "for the others (see bench/README.md)")
    ap.add_argument("--step-tokens", type=int, default=4 * 512, help="tokens per step assumed (batch 4 x 512)")
    ap.add_argument("--latency-us", type=float, default=300.0, help="assumed latency of one ring hop over TCP")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tl-bench-dist-"))
    out: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}

    if a.only != "throughput":
        rows = bytes_table(work)
        out["bytes"] = rows
        print("\n## bytes all-reduced per step (float32 LoRA gradients; ring: each rank sends 2(n-1)/n of this)")
        print("| model | targets | rank | adapted linears | trainable params | bytes | all_sum chunks |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['key']} | {r['targets']} | {r['rank']} | {r['linears']} | {r['params']:,} | "
                  f"{r['bytes'] / 2**20:.1f} MiB | {r['chunks']} |")
        print("(every count equals core.train.add_adapters' trainable parameters on the mlx-lm model built from "
              "the same config; dtypes: " + ", ".join(sorted({d for r in rows for d in r['lazy_dtypes']})) + ")")

        ref = next(r for r in rows if r["key"] == "qwen3-0.6b" and r["targets"] == "all" and r["rank"] == 8)
        print(f"\n## link estimate: {a.step_tokens} tokens per step; one Mac trains a "
              f"{ref['model_params'] / 1e9:.2f}B model at {a.mac_tok_s:.0f} tok/s, other models scaled by parameters; "
              f"{a.latency_us:.0f} us per ring hop")
        est = []
        print("| model | rank | gradient | 1 Mac step | link (assumed TCP rate) | all-reduce, 2 Macs | speed-up 2 Macs "
              "| all-reduce, 4 Macs | speed-up 4 Macs |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            if r["targets"] != "all" or r["key"] == "demo" or r["key"].endswith("4bit"):
                continue
            rate = a.mac_tok_s * ref["model_params"] / r["model_params"]
            step_1 = a.step_tokens / rate
            for link, (_, gbit) in LINKS.items():
                c2 = ring_seconds(r["bytes"], r["chunks"], 2, gbit, a.latency_us * 1e-6)
                c4 = ring_seconds(r["bytes"], r["chunks"], 4, gbit, a.latency_us * 1e-6)
                s2, s4 = speedup(step_1, c2, 2), speedup(step_1, c4, 4)
                est.append({"key": r["key"], "rank": r["rank"], "link": link, "gbit_s": gbit, "step_1_s": step_1,
                            "comm_2_s": c2, "speedup_2": s2, "comm_4_s": c4, "speedup_4": s4})
                print(f"| {r['key']} | {r['rank']} | {r['bytes'] / 2**20:.1f} MiB | {step_1:.2f} s | {link} "
                      f"({gbit:g} Gb/s) | {c2 * 1e3:.0f} ms | {s2:.2f}x | {c4 * 1e3:.0f} ms | {s4:.2f}x |")
        out["estimate"] = {"assumptions": {"mac_tok_s_0.6b": a.mac_tok_s, "step_tokens": a.step_tokens,
                                           "latency_us": a.latency_us, "links": LINKS}, "rows": est}

    if a.only != "bytes":
        print(f"\nload average before part 1: {os.getloadavg()}", file=sys.stderr)
        res = throughput(work, a)
        out["throughput"] = res
        print("\n## 1 vs 2 local ranks (ring on 127.0.0.1, same TrainConfig and global batch)")
        print("| model | ranks | tok/s | trained tok/s | step (median, min-max) | run wall time | load average |")
        print("|---|---|---|---|---|---|---|")
        for name, r in res.items():
            for n, s in r["ranks"].items():
                print(f"| {name} | {n} | {s['tok_s']:.1f} | {s['trained_tok_s']:.1f} | {s['step_s']:.2f} s "
                      f"({s['step_s_min']:.2f}-{s['step_s_max']:.2f}, {s['n_steps']} steps) | {s['wall_s']:.0f} s | "
                      f"{min(r['loads']):.1f}-{max(r['loads']):.1f} |")
            print(f"(  {name}: 2 ranks / 1 rank tokens/s = {r['ranks'][2]['tok_s'] / r['ranks'][1]['tok_s']:.2f}x; "
                  f"largest relative step-loss difference {r['max_rel_loss_diff']:.1e}; trainer's trainable "
                  f"parameters {r['trainer_trainable']:,} = config count {r['config_trainable']:,})")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
