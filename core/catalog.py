"""The curated models, kept as data in ``resources/catalog.json``.

Each entry names a hub repository and a revision (pinned to a commit where we know it),
the family and architecture, the parameter count, the download size, the licence, the
chat format and the memory that training with the default preset needs. This module
reads the file, tells whether a model fits this machine (unified memory on a Mac, RAM
elsewhere) and whether it is already in the Hugging Face cache.

The memory figure is ``core.train.estimate_memory`` (the estimate the trainer itself
checks before it starts) for the default preset, from the model's published
dimensions; ``train_memory_estimate`` recomputes it for any preset.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import arch
from core.events import TuneloomError
from core.paths import resources_dir
# The trainer refuses a run whose estimate passes REFUSE_SHARE of memory and warns past WARN_SHARE
# (core.presets, read by core.train.train too), so "fits" means the trainer will start; the memory
# figures in catalog.json are for the default preset.
from core.presets import DEFAULT_PRESET, REFUSE_SHARE, WARN_SHARE
from core.units import fmt_memory

# the linear layers core.train adapts (core.arch), by their last name as _linear_shapes gives them
_ATTENTION = tuple(k.rsplit(".", 1)[-1] for k in arch.ATTENTION_KEYS)
_MLP = tuple(k.rsplit(".", 1)[-1] for k in arch.MLP_KEYS)
_DELTANET = tuple(k.rsplit(".", 1)[-1] for k in arch.RECURRENT_KEYS)  # Qwen3.5's Gated DeltaNet projections


@dataclass(frozen=True)
class CatalogEntry:
    key: str
    name: str
    family: str
    architecture: str
    model_type: str
    params: int
    download_bytes: int
    licence: str
    chat_format: str
    train_memory_bytes: int
    hub_id: str | None = None
    revision: str | None = None
    revision_note: str = ""
    local: str | None = None  # a bundled model: path relative to resources/
    quantization: dict | None = None
    base: str | None = None  # for a quantized variant: the key of the full-precision model
    config: dict = field(default_factory=dict)  # the dimensions the estimates use
    notes: str = ""
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_local(self) -> bool:
        return self.local is not None

    @property
    def local_path(self) -> Path | None:
        return resources_dir() / self.local if self.local else None

    @property
    def quantized(self) -> bool:
        return self.quantization is not None


def catalog_path() -> Path:
    return resources_dir() / "catalog.json"


def load_catalog(path: str | os.PathLike | None = None) -> list[CatalogEntry]:
    p = Path(path) if path else catalog_path()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TuneloomError(f"Cannot read the model catalog {p}: {exc}", "Reinstall Tuneloom.") from exc
    names = {f for f in CatalogEntry.__dataclass_fields__ if f != "raw"}
    out = []
    for d in data["models"]:
        out.append(CatalogEntry(**{k: v for k, v in d.items() if k in names}, raw=d))
    return out


def get_entry(name: str, entries: list[CatalogEntry] | None = None) -> CatalogEntry | None:
    """The entry whose key or hub id is ``name`` (case-insensitive)."""
    low = name.lower()
    for e in entries if entries is not None else load_catalog():
        if e.key.lower() == low or (e.hub_id and e.hub_id.lower() == low):
            return e
    return None


# --------------------------------------------------------------------------- machine

def machine_memory_bytes() -> int:
    """Memory available to training: unified memory on a Mac (sysctl hw.memsize), RAM elsewhere."""
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True, timeout=5,
                                 check=True).stdout
            return int(out.strip())
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    from core.train.memory import total_memory_bytes

    return total_memory_bytes()


def fits(entry: CatalogEntry, memory_bytes: int | None = None, preset: str | None = None) -> tuple[bool, str]:
    """Whether training ``entry`` with ``preset`` (default: the catalog's) fits this machine, and why."""
    mem = machine_memory_bytes() if memory_bytes is None else memory_bytes
    need = entry.train_memory_bytes if preset in (None, DEFAULT_PRESET) else train_memory_estimate(entry, preset)
    where = "this Mac" if sys.platform == "darwin" else "this machine"
    # Qwen3.5: the recurrent layers' state dominates without "Save memory" (gradient checkpointing), which
    # the Train page offers when a run would not fit; the fit is judged with the settings that fit
    checkpointed = entry.raw.get("train_memory_checkpointed_bytes") if preset in (None, DEFAULT_PRESET) else None
    save = "\u201cSave memory\u201d"
    if not mem:
        if checkpointed:
            return True, f"needs about {fmt_memory(checkpointed)} with {save} on; the memory of {where} is unknown"
        return True, f"needs about {fmt_memory(need)}; the memory of {where} is unknown"
    if need > REFUSE_SHARE * mem and checkpointed and checkpointed < need:
        if checkpointed <= WARN_SHARE * mem:
            return True, f"fits: needs about {fmt_memory(checkpointed)} of {fmt_memory(mem)} with {save} (gradient " \
                         "checkpointing) on, which this model needs"
        if checkpointed <= REFUSE_SHARE * mem:
            return True, f"fits, but tightly: needs about {fmt_memory(checkpointed)} of {fmt_memory(mem)} with " \
                         f"{save} (gradient checkpointing) on, which this model needs; close other apps while training"
        alt = " Try its 4-bit version, or a smaller model." if not entry.quantized else " Try a smaller model."
        return False, (f"needs about {fmt_memory(checkpointed)} to train even with {save} on, {where} has "
                       f"{fmt_memory(mem)}.{alt}")
    if need > REFUSE_SHARE * mem:
        alt = " Try its 4-bit version, or a smaller model." if not entry.quantized else " Try a smaller model."
        return False, f"needs about {fmt_memory(need)} to train, {where} has {fmt_memory(mem)}.{alt}"
    if need > WARN_SHARE * mem:
        return True, (f"fits, but tightly: needs about {fmt_memory(need)} of {fmt_memory(mem)}; close other apps "
                      "while training")
    return True, f"fits: needs about {fmt_memory(need)} of {fmt_memory(mem)}"


# --------------------------------------------------------------------------- cache

def model_dir(entry: CatalogEntry, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder to train from if the model is here (bundled, or complete in the HF cache)."""
    if entry.is_local:
        p = entry.local_path
        return p if p is not None and p.is_dir() else None
    from core.hub import cached_snapshot

    return cached_snapshot(entry.hub_id, entry.revision or "main", cache_dir)


def is_downloaded(entry: CatalogEntry, cache_dir: str | os.PathLike | None = None) -> bool:
    return model_dir(entry, cache_dir) is not None


def fetch_entry(entry: CatalogEntry, **kwargs):
    """``core.hub.fetch_model`` at the entry's pinned revision (bundled models need nothing)."""
    if entry.is_local:
        from core.hub import FetchResult, validate_model_dir

        p = entry.local_path
        return FetchResult(entry.key, "local", "local", p, sorted(f.name for f in p.iterdir() if f.is_file()),
                           message=f"{entry.name} is bundled with Tuneloom", check=validate_model_dir(p))
    from core.hub import fetch_model

    return fetch_model(entry.hub_id, entry.revision or "main", **kwargs)


# --------------------------------------------------------------------------- estimates

def _head_dims(c: dict) -> tuple[int, int, int]:
    n_head = c["num_attention_heads"]
    n_kv = c.get("num_key_value_heads", n_head)
    hd = c.get("head_dim") or c["hidden_size"] // n_head
    return n_head, n_kv, hd


def text_dims(c: dict) -> dict:
    """A config's text-model dimensions at the top level (Qwen3.5 nests them in "text_config")."""
    return arch.text_config(c)


def is_hybrid(c: dict) -> bool:
    """Qwen3.5: Gated DeltaNet (linear attention) layers between full-attention ones."""
    c = text_dims(c)
    family = arch.for_model_type(c.get("model_type"))
    return "linear_num_value_heads" in c or bool(family and family.recurrent)


def layer_kinds(c: dict) -> list[str]:
    """"linear_attention" or "full_attention" for each layer (all full for the dense families)."""
    c = text_dims(c)
    n = c["num_hidden_layers"]
    if not is_hybrid(c):
        return ["full_attention"] * n
    if c.get("layer_types"):
        return list(c["layer_types"])
    interval = c.get("full_attention_interval", 4)
    return ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n)]


def _linear_shapes(c: dict, kind: str = "full_attention") -> dict[str, tuple[int, int]]:
    """(in, out) of each adapted linear layer of one block (of the given kind, for Qwen3.5)."""
    c = text_dims(c)
    h, inter = c["hidden_size"], c["intermediate_size"]
    mlp = {"gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    if kind == "linear_attention":
        nk, nv = c["linear_num_key_heads"], c["linear_num_value_heads"]
        dk, dv = c["linear_key_head_dim"], c["linear_value_head_dim"]
        return {"in_proj_qkv": (h, 2 * nk * dk + nv * dv), "in_proj_z": (h, nv * dv), "out_proj": (nv * dv, h), **mlp}
    n_head, n_kv, hd = _head_dims(c)
    q_out = n_head * hd * (2 if is_hybrid(c) else 1)  # Qwen3.5's q_proj also yields the output gate
    return {"q_proj": (h, q_out), "k_proj": (h, n_kv * hd), "v_proj": (h, n_kv * hd),
            "o_proj": (n_head * hd, h), **mlp}


def qwen35_param_counts(c: dict) -> dict[str, int]:
    """Parameters of a Qwen3.5 checkpoint by part, from its config.json: the text model (what is
    trained and exported), the multi-token-prediction head and the vision tower (both in the
    hub's weight files, neither trained nor exported). Every tensor of a checkpoint
    (tests/fixtures/models/Qwen3.5-0.8B/tiny-layout.json) counted from its shape; checked
    against the published weight files: 2 bytes x the total is the size of
    Qwen3.5-0.8B's / 2B's model.safetensors less its JSON header (65 / 82 kB)."""
    t = text_dims(c)
    h, ff, vocab = t["hidden_size"], t["intermediate_size"], t["vocab_size"]
    n_head, n_kv, hd = _head_dims(t)
    nk, nv = t["linear_num_key_heads"], t["linear_num_value_heads"]
    dk, dv, kernel = t["linear_key_head_dim"], t["linear_value_head_dim"], t["linear_conv_kernel_dim"]
    mlp, norms = 3 * h * ff, 2 * h
    full = h * 2 * n_head * hd + 2 * h * n_kv * hd + n_head * hd * h + 2 * hd  # q (+gate), k, v, o, q/k norms
    conv = 2 * nk * dk + nv * dv
    linear = h * conv + h * nv * dv + 2 * h * nv + conv * kernel + 2 * nv + dv + nv * dv * h  # qkv, z, a, b, conv, A, dt, norm, out
    text = vocab * h + h + sum((linear if k == "linear_attention" else full) + mlp + norms for k in layer_kinds(t))
    if not t.get("tie_word_embeddings", c.get("tie_word_embeddings", False)):
        text += vocab * h
    n_mtp = t.get("mtp_num_hidden_layers", 0)
    mtp = 2 * h * h + 2 * h + n_mtp * (full + mlp + norms) + h if n_mtp else 0  # fc, 2 norms, blocks, norm
    v = c.get("vision_config") or {}
    vision = 0
    if v:
        vh, vi, merged = v["hidden_size"], v["intermediate_size"], v["hidden_size"] * v["spatial_merge_size"] ** 2
        block = 4 * vh * vh + 4 * vh + 2 * vi * vh + vi + vh + 4 * vh  # qkv, proj, fc1, fc2 (+biases), 2 layer norms
        vision = (vh * v["in_channels"] * v["temporal_patch_size"] * v["patch_size"] ** 2 + vh  # patch embedding
                  + v["num_position_embeddings"] * vh + v["depth"] * block
                  + 2 * vh + merged * merged + merged + v["out_hidden_size"] * merged + v["out_hidden_size"])  # merger
    return {"text": text, "mtp": mtp, "vision": vision, "total": text + mtp + vision}


def param_count(c: dict, include_lm_head: bool | None = None) -> int:
    """Parameters of a Qwen2/Qwen3/Llama model from its config (lm_head counted unless tied);
    of a Qwen3.5, its text model (see ``qwen35_param_counts`` for the whole checkpoint)."""
    if is_hybrid(c):
        return qwen35_param_counts(c)["text"]
    h, v, layers = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    n_head, n_kv, hd = _head_dims(c)
    shapes = _linear_shapes(c)
    block = sum(i * o for i, o in shapes.values()) + 2 * h
    family = arch.for_model_type(c.get("model_type"))
    if (family and family.qkv_bias) or c.get("attention_bias"):
        block += n_head * hd + 2 * n_kv * hd
    if family and family.qk_norm:
        block += 2 * hd
    lm_head = (not c.get("tie_word_embeddings", False)) if include_lm_head is None else include_lm_head
    return v * h + layers * block + h + (v * h if lm_head else 0)


def quantized_weight_bytes(c: dict, bits: int = 4, group_size: int = 64, scale_bytes: int = 2) -> int:
    """Bytes of an MLX-quantized checkpoint: linear layers and embeddings packed at ``bits`` with a
    scale and a bias per group, norms and biases in 16 bits (mlx-lm drops a tied lm_head)."""
    per_weight = bits / 8 + 2 * scale_bytes / group_size
    if is_hybrid(c):
        # the text model as mlx-lm converts it: every linear layer and the embedding
        # packed (in_proj_a/b too), norms, conv kernels, A_log and dt_bias in 16 bits
        t = text_dims(c)
        h, v = t["hidden_size"], t["vocab_size"]
        nv = t["linear_num_value_heads"]
        linear = v * h + sum(sum(i * o for i, o in _linear_shapes(t, k).values()) + (2 * h * nv if k == "linear_attention" else 0)
                             for k in layer_kinds(t))
        if not t.get("tie_word_embeddings", c.get("tie_word_embeddings", False)):
            linear += v * h
        return int(linear * per_weight + (qwen35_param_counts(c)["text"] - linear) * 2)
    h, v, layers = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    linear = layers * sum(i * o for i, o in _linear_shapes(c).values()) + v * h
    if not c.get("tie_word_embeddings", False):
        linear += v * h
    rest = param_count(c, include_lm_head=False) - layers * sum(i * o for i, o in _linear_shapes(c).values()) - v * h
    return int(linear * per_weight + rest * 2)


def lora_param_count(c: dict, targets: str = "all", rank: int = 8, num_layers: int = -1) -> int:
    """LoRA parameters core.train adds: the token mixers (attention; Qwen3.5's DeltaNet
    projections) and with ``targets="all"`` the MLP, in the last ``num_layers`` blocks."""
    keys = _ATTENTION + _DELTANET + (_MLP if targets == "all" else ())
    kinds = layer_kinds(c)
    if num_layers >= 0:
        kinds = kinds[len(kinds) - min(num_layers, len(kinds)):]
    total = 0
    for kind in kinds:
        shapes = _linear_shapes(c, kind)
        total += sum(rank * (shapes[k][0] + shapes[k][1]) for k in keys if k in shapes)
    return total


def train_memory_estimate(entry_or_config: CatalogEntry | dict, preset: str = DEFAULT_PRESET,
                          weight_bytes: int | None = None, grad_checkpoint: bool | None = None) -> int:
    """``core.train.estimate_memory`` for training with ``preset`` (TrainConfig defaults filled in;
    ``grad_checkpoint`` overrides the preset's)."""
    from core.train import PRESETS, TrainConfig, estimate_memory

    if isinstance(entry_or_config, CatalogEntry):
        c = entry_or_config.config
        if weight_bytes is None:
            weight_bytes = entry_or_config.raw.get("weight_bytes") or entry_or_config.download_bytes
    else:
        c = entry_or_config
    if weight_bytes is None:
        weight_bytes = 2 * param_count(c)
    if preset not in PRESETS:
        raise TuneloomError(f"Unknown preset {preset!r}.", f"Choose one of: {', '.join(PRESETS)}.")
    defaults = TrainConfig(model="")
    p: dict[str, Any] = {**{k: getattr(defaults, k) for k in ("rank", "batch", "max_seq_len", "targets",
                                                              "num_layers", "grad_checkpoint")}, **PRESETS[preset]}
    if grad_checkpoint is not None:
        p["grad_checkpoint"] = grad_checkpoint
    lora = lora_param_count(c, p["targets"], p["rank"], p["num_layers"])
    return estimate_memory(c, weight_bytes, lora, p["batch"], p["max_seq_len"], p["grad_checkpoint"])


def refresh_estimates(path: str | os.PathLike | None = None) -> int:
    """Recompute every ``train_memory_bytes`` in the catalog file (after ``estimate_memory`` or the
    presets change): ``python -m core.catalog --refresh-estimates``. Returns how many changed."""
    from core.atomic import write_json

    p = Path(path) if path else catalog_path()
    data = json.loads(p.read_text(encoding="utf-8"))
    changed = 0
    data["memory_preset"] = DEFAULT_PRESET
    for d in data["models"]:
        new = train_memory_estimate(d["config"], DEFAULT_PRESET, weight_bytes=d["weight_bytes"])
        changed += new != d.get("train_memory_bytes")
        d["train_memory_bytes"], d["train_memory_preset"] = new, DEFAULT_PRESET
        if "train_memory_checkpointed_bytes" in d:  # Qwen3.5: the figure with gradient checkpointing too
            ck = train_memory_estimate(d["config"], DEFAULT_PRESET, weight_bytes=d["weight_bytes"], grad_checkpoint=True)
            changed += ck != d["train_memory_checkpointed_bytes"]
            d["train_memory_checkpointed_bytes"] = ck
    write_json(p, data)
    return changed


# --------------------------------------------------------------------------- presentation

def catalog_rows(memory_bytes: int | None = None, cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """One dict per entry with what a table shows: size, memory, fit and whether it is here."""
    mem = machine_memory_bytes() if memory_bytes is None else memory_bytes
    rows = []
    for e in load_catalog():
        ok, why = fits(e, mem)
        rows.append({"key": e.key, "name": e.name, "hub_id": e.hub_id, "revision": e.revision,
                     "params": e.params, "download_bytes": e.download_bytes,
                     "train_memory_bytes": e.train_memory_bytes, "fits": ok, "fit_reason": why,
                     "downloaded": is_downloaded(e, cache_dir), "licence": e.licence,
                     "chat_format": e.chat_format, "quantized": e.quantized})
    return rows


if __name__ == "__main__":
    if sys.argv[1:] == ["--refresh-estimates"]:
        print(f"{refresh_estimates()} estimate(s) changed in {catalog_path()}")
    else:
        print("usage: python -m core.catalog --refresh-estimates", file=sys.stderr)
        sys.exit(2)
