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

from core.events import TuneloomError
from core.paths import resources_dir

DEFAULT_PRESET = "quick"
# The trainer refuses a run whose estimate passes 90% of memory and warns past 60%
# (core.train.train): the same thresholds here, so "fits" means the trainer will start.
REFUSE_SHARE = 0.9
WARN_SHARE = 0.6

_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


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
    from core.train import total_memory_bytes

    return total_memory_bytes()


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def fits(entry: CatalogEntry, memory_bytes: int | None = None, preset: str | None = None) -> tuple[bool, str]:
    """Whether training ``entry`` with ``preset`` (default: the catalog's) fits this machine, and why."""
    mem = machine_memory_bytes() if memory_bytes is None else memory_bytes
    need = entry.train_memory_bytes if preset in (None, DEFAULT_PRESET) else train_memory_estimate(entry, preset)
    where = "this Mac" if sys.platform == "darwin" else "this machine"
    if not mem:
        return True, f"needs about {_gb(need)}; the memory of {where} is unknown"
    if need > REFUSE_SHARE * mem:
        alt = " Try its 4-bit version, or a smaller model." if not entry.quantized else " Try a smaller model."
        return False, f"needs about {_gb(need)} to train, {where} has {_gb(mem)}.{alt}"
    if need > WARN_SHARE * mem:
        return True, f"fits, but tightly: needs about {_gb(need)} of {_gb(mem)}; close other apps while training"
    return True, f"fits: needs about {_gb(need)} of {_gb(mem)}"


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


def _linear_shapes(c: dict) -> dict[str, tuple[int, int]]:
    """(in, out) of each adapted linear layer of one block."""
    h, inter = c["hidden_size"], c["intermediate_size"]
    n_head, n_kv, hd = _head_dims(c)
    return {"q_proj": (h, n_head * hd), "k_proj": (h, n_kv * hd), "v_proj": (h, n_kv * hd),
            "o_proj": (n_head * hd, h), "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}


def param_count(c: dict, include_lm_head: bool | None = None) -> int:
    """Parameters of a Qwen2/Qwen3/Llama model from its config (lm_head counted unless tied)."""
    h, v, layers = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    n_head, n_kv, hd = _head_dims(c)
    shapes = _linear_shapes(c)
    block = sum(i * o for i, o in shapes.values()) + 2 * h
    if c.get("model_type") == "qwen2" or c.get("attention_bias"):
        block += n_head * hd + 2 * n_kv * hd
    if c.get("model_type") == "qwen3":
        block += 2 * hd
    lm_head = (not c.get("tie_word_embeddings", False)) if include_lm_head is None else include_lm_head
    return v * h + layers * block + h + (v * h if lm_head else 0)


def quantized_weight_bytes(c: dict, bits: int = 4, group_size: int = 64, scale_bytes: int = 2) -> int:
    """Bytes of an MLX-quantized checkpoint: linear layers and embeddings packed at ``bits`` with a
    scale and a bias per group, norms and biases in 16 bits (mlx-lm drops a tied lm_head)."""
    h, v, layers = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    per_weight = bits / 8 + 2 * scale_bytes / group_size
    linear = layers * sum(i * o for i, o in _linear_shapes(c).values()) + v * h
    if not c.get("tie_word_embeddings", False):
        linear += v * h
    rest = param_count(c, include_lm_head=False) - layers * sum(i * o for i, o in _linear_shapes(c).values()) - v * h
    return int(linear * per_weight + rest * 2)


def lora_param_count(c: dict, targets: str = "all", rank: int = 8, num_layers: int = -1) -> int:
    keys = _ATTENTION + (_MLP if targets == "all" else ())
    shapes = _linear_shapes(c)
    layers = c["num_hidden_layers"] if num_layers < 0 else min(num_layers, c["num_hidden_layers"])
    return layers * sum(rank * (shapes[k][0] + shapes[k][1]) for k in keys)


def train_memory_estimate(entry_or_config: CatalogEntry | dict, preset: str = DEFAULT_PRESET,
                          weight_bytes: int | None = None) -> int:
    """``core.train.estimate_memory`` for training with ``preset`` (TrainConfig defaults filled in)."""
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
