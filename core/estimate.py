"""Before a run starts: how much memory it will take, how long it will run, and what to change when it
does not fit. Read by the Train page (through ``app.gui.jobs``) and by ``tuneloom train --dry-run``'s
kind of callers; no Qt, no MLX import (the window is waiting while it runs)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from core.presets import REFUSE_SHARE

@dataclass
class TrainEstimate:
    """What a run with these options will take, before it starts."""

    memory_bytes: int
    available_bytes: int
    steps: int
    seconds: float | None  # None: no basis for a guess
    basis: str  # how the duration was estimated, in words
    fits: bool = True
    fix: str = ""  # what to change when it does not fit
    tokens_per_step: float = 0.0


def _weights_of(model_dir: Path) -> tuple[int, int]:
    """(parameters, bytes as stored) from the safetensors headers (no tensor is read)."""
    from core.model_folder import SAFETENSORS_DTYPE_BYTES as sizes, read_safetensors_header

    params = stored = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        header, _ = read_safetensors_header(f)
        for name, t in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in t.get("shape", []):
                count *= d
            params += count
            stored += count * sizes.get(t.get("dtype", "F32"), 4)
    return params, stored


_MATMUL_RATE: list[float] = []


def machine_flops() -> float:
    """Float32 matmul rate of this machine's processor (numpy, about a tenth of a second; measured once).
    numpy rather than MLX: importing MLX holds the interpreter for a moment, and the window is waiting.
    On a Mac, MLX trains on the GPU: the figure is scaled by a rough factor there until a real run's
    speed replaces it (estimate_training prefers that)."""
    if _MATMUL_RATE:
        return _MATMUL_RATE[0]
    import sys

    import numpy as np

    a = np.random.default_rng(0).standard_normal((384, 384), dtype=np.float32)
    a @ a
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.1:
        a @ a
        reps += 1
    rate = reps * 2 * 384 ** 3 / (time.perf_counter() - t0)
    if sys.platform == "darwin":
        rate *= 4.0
    _MATMUL_RATE.append(rate)
    return rate


def measured_pace(model_dir: Path, runs_root: Path | None = None) -> float | None:
    """Wall-clock seconds per training example of the latest run on this model that got going: its elapsed
    time over the examples its steps took (validation, checkpoints and all included)."""
    from core import runs

    want = str(Path(model_dir).resolve())
    for d in runs.run_dirs(runs_root)[:30]:
        run = runs.RunFolder(d)
        cfg = run.config
        try:
            same = str(Path(cfg.get("model", "")).resolve()) == want
        except OSError:
            same = False
        if not same:
            continue
        steps = [m for m in run.metrics if "train_loss" in m and "elapsed" in m]
        if len(steps) >= 10:
            first, last = steps[2], steps[-1]  # from the third step: the first ones compile
            examples = (last["step"] - first["step"]) * int(cfg.get("batch", 4)) * int(cfg.get("grad_accum", 1))
            if examples > 0 and last["elapsed"] > first["elapsed"]:
                return (last["elapsed"] - first["elapsed"]) / examples
    return None


def _memory_fix(text_cfg: dict, weight_bytes: int, lora: int, options: dict, avail: int) -> str:
    """The smallest change, in words, that makes the run fit in 90% of ``avail``."""
    from core.train.memory import estimate_memory

    batch, seq = int(options["batch"]), int(options["max_seq_len"])
    ck = bool(options.get("grad_checkpoint"))

    def fits(b, s_, c):
        return estimate_memory(text_cfg, weight_bytes, lora, b, s_, c) <= REFUSE_SHARE * avail

    if not ck and fits(batch, seq, True):
        return "Turn on \u201cSave memory (recompute)\u201d."
    b = batch
    while b > 1 and not fits(b, seq, ck):
        b //= 2
    if fits(b, seq, ck):
        return f"Lower the batch size to {b} (or turn on \u201cSave memory (recompute)\u201d)." if not ck else \
            f"Lower the batch size to {b}."
    s_ = seq
    while s_ > 64 and not fits(1, s_, True):
        s_ //= 2
    if fits(1, s_, True):
        return (f"Lower the batch size to 1 and the max length to {s_} tokens, with \u201cSave memory "
                "(recompute)\u201d on.")
    return "Choose a smaller or a 4-bit (quantized) model."


def estimate_training(model_dir: Path, options: dict, n_train: int, lengths: list[int] | None = None,
                      events=None, cancel=None) -> TrainEstimate:
    """Peak memory (core.train.estimate_memory) and duration of a run with ``options`` (TrainConfig
    values). The duration uses the speed of the last run on the same model when there is one, else
    a calibrated cost model: about 4 x parameters floating-point operations per token (forward and
    backward through the frozen weights) at half this machine's measured matmul rate."""
    import sys

    from core import catalog
    from core.train.memory import estimate_memory, total_memory_bytes

    cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    text_cfg = cfg.get("text_config") or cfg
    params, stored = _weights_of(model_dir)
    quantized = "quantization" in cfg or "quantization_config" in cfg
    weight_bytes = stored if (quantized or sys.platform == "darwin") else params * 4  # float32 on the CPU
    try:
        lora = catalog.lora_param_count(text_cfg, options.get("targets", "all"), int(options["rank"]),
                                        int(options.get("num_layers", -1)))
    except (KeyError, TypeError, ValueError):
        lora = 0
    batch, seq = int(options["batch"]), int(options["max_seq_len"])
    sides = 2 if options.get("method") in ("dpo", "orpo") else 1  # a preference pair is two sequences
    mem = estimate_memory(text_cfg, weight_bytes, lora, batch * sides, seq, bool(options.get("grad_checkpoint")))
    avail = total_memory_bytes()
    fits = not avail or mem <= REFUSE_SHARE * avail
    fix = ""
    if not fits:
        fix = _memory_fix(text_cfg, weight_bytes, lora, options, avail)
    accum = max(1, int(options.get("grad_accum", 1)))
    per_epoch = max(1, (n_train // max(1, batch)) // accum)
    steps = int(options["iters"]) if options.get("iters") else max(1, int(round(float(options["epochs"]) * per_epoch)))
    mean_len = (sum(min(n, seq) for n in lengths) / len(lengths)) if lengths else seq / 2
    tokens_per_step = sides * batch * accum * mean_len * 1.15  # padding to the longest in a batch
    pace = measured_pace(model_dir)
    if pace:
        seconds = steps * sides * batch * accum * pace
        basis = "at the pace of your last run on this model"
    else:
        rate = machine_flops() * 0.5 / max(1.0, 4.0 * params)  # tokens per second
        seconds = steps * tokens_per_step / rate if rate else None
        basis = "from a quick speed test of this computer"
    if seconds and options.get("grad_checkpoint"):
        seconds *= 1.33
    return TrainEstimate(int(mem), int(avail), steps, seconds, basis, fits, fix, tokens_per_step)
