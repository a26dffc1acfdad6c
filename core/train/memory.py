"""The memory a run needs (estimate_memory: the trainer's refusal, the catalog's "fits" and the window's
estimate use the same figure), the machine's memory and the peak the run reached."""
from __future__ import annotations

import os

from core.events import TuneloomError
from core.presets import REFUSE_SHARE, WARN_SHARE


def total_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def estimate_memory(model_config: dict, weight_bytes: int, lora_params: int, batch: int, seq_len: int,
                    grad_checkpoint: bool, act_bytes: int = 4) -> int:
    """Rough peak bytes: weights + LoRA (param, grad, Adam m, v) + activations + logits."""
    model_config = {**model_config, **(model_config.get("text_config") or {})}  # Qwen3.5 nests its dimensions
    hidden = model_config.get("hidden_size", 1024)
    layers = model_config.get("num_hidden_layers", 24)
    inter = model_config.get("intermediate_size", 4 * hidden)
    vocab = model_config.get("vocab_size", 32000)
    tokens = batch * seq_len
    per_layer = tokens * (10 * hidden + 3 * inter) * act_bytes
    acts = per_layer * (2 if grad_checkpoint else layers)
    if model_config.get("linear_num_value_heads"):
        # Qwen3.5's Gated DeltaNet layers train through mlx-lm's step-by-step recurrence,
        # whose backward pass keeps about three state-sized arrays (value heads x value dim
        # x key dim floats) per token and layer: measured 2.1 (eager) to 2.9 (mx.compile)
        # on Qwen3.5-0.8B's dimensions (3 MiB per token and layer), one layer at a time
        # with checkpointing. For this family it is most of the memory.
        state = (model_config["linear_num_value_heads"] * model_config["linear_value_head_dim"]
                 * model_config["linear_key_head_dim"] * 4)
        kinds = model_config.get("layer_types") or [
            "full_attention" if (i + 1) % model_config.get("full_attention_interval", 4) == 0 else "linear_attention"
            for i in range(layers)]
        n_linear = sum(1 for k in kinds if k == "linear_attention")
        acts += tokens * state * 3 * (1 if grad_checkpoint else n_linear)
    logits = tokens * vocab * 4 * 3  # logits, softmax, grad
    return int(weight_bytes + lora_params * 4 * 4 + acts + logits)


def _peak_memory() -> float:
    import mlx.core as mx

    fn = getattr(mx, "get_peak_memory", None) or getattr(getattr(mx, "metal", None), "get_peak_memory", None)
    try:
        return float(fn()) if fn else 0.0
    except Exception:  # noqa: BLE001 - not every backend reports
        return 0.0


def check_fits(model_config: dict, weight_bytes: int, lora_params: int, rows: int, seq_len: int,
               grad_checkpoint: bool, events) -> None:
    """Say the run's estimated peak memory; refuse a run past REFUSE_SHARE of the machine's memory
    (TuneloomError with what to change), warn past WARN_SHARE (core.presets)."""
    from core.units import fmt_memory

    est = estimate_memory(model_config, weight_bytes, lora_params, rows, seq_len, grad_checkpoint)
    avail = total_memory_bytes()
    events.log("info", f"model {fmt_memory(weight_bytes)}, {lora_params:,} trainable parameters, "
                       f"estimated peak memory {fmt_memory(est)} of {fmt_memory(avail)}")
    if avail and est > REFUSE_SHARE * avail:
        raise TuneloomError(f"This run needs about {fmt_memory(est)} but the machine has {fmt_memory(avail)}.",
                            "Use a smaller batch, a shorter max sequence length, gradient checkpointing, "
                            "or a quantized (4-bit) model.")
    if avail and est > WARN_SHARE * avail:
        events.log("warning", "This run will use most of the memory; close other apps or lower the batch size.")
