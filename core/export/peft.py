"""A run's adapter as a PEFT folder (what ``PeftModel.from_pretrained`` loads on the base in transformers).

The layout is the one ``peft`` saves (``save_pretrained``): ``adapter_config.json`` (``peft_type``
LORA, ``task_type`` CAUSAL_LM, ``r``, ``lora_alpha``, ``target_modules``, ``use_dora``,
``base_model_name_or_path``, ...) and ``adapter_model.safetensors`` whose tensors are named
``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight`` (the module path being the
transformers one, ``model.layers.N.self_attn.q_proj``), plus ``...lora_magnitude_vector`` for DoRA.

mlx-lm keeps ``lora_a`` as (in, r) and ``lora_b`` as (r, out) and adds ``scale * (x lora_a) lora_b``;
PEFT keeps ``lora_A.weight`` as (r, in) and ``lora_B.weight`` as (out, r) and adds
``(lora_alpha / r) * B (A x)``: the matrices are transposed and ``lora_alpha = scale * r``. DoRA's
magnitude (mlx-lm ``m``, PEFT ``lora_magnitude_vector``) is the same (out,) vector in both: the norm
of each output row of ``W + scale * B A``.

A quantized (QLoRA) base is refused: the adapter corrects the 4-bit MLX weights, which transformers
does not load; the merged export is the way to share such a run.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from core import arch, runs
from core.events import NULL_EVENTS, CancelToken, Events, TuneloomError

_HF_CACHE_RE = re.compile(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]")


def hub_id_of(base: str | Path) -> str | None:
    """The Hugging Face repo id of a base folder in the hub cache (``.../models--Org--Name/snapshots/...``),
    or of one given as an id; None for other local folders."""
    text = str(base)
    m = _HF_CACHE_RE.search(text.replace("\\", "/") + ("/" if not text.endswith("/") else ""))
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) and not Path(text).exists():
        return text
    return None


def _peft_module_name(mlx_module: str, model_type: str | None) -> str:
    """mlx-lm's module path -> the transformers one (the same for Qwen2/Qwen3/Llama; Qwen3.5's text model
    lives under ``model.language_model``)."""
    family = arch.for_model_type(model_type)
    if family is not None and family.text_prefixes:  # (the hub's layout, mlx-lm's layout)
        hf, mlx_prefix = family.text_prefixes
        if mlx_module.startswith(mlx_prefix):
            return hf + mlx_module[len(mlx_prefix):]
    return mlx_module


def peft_tensors(base: Path, adapter_dir: Path, final: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """(PEFT state dict as float32 numpy, adapter_config.json) of a run's adapter."""
    from core.export.gguf import _read_safetensors_index

    base, adapter_dir = Path(base), Path(adapter_dir)
    acfg = runs.RunFolder(adapter_dir).adapter_config
    bcfg = runs.read_json(base / "config.json") or {}
    kind = acfg.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora"):
        raise TuneloomError(f"{adapter_dir.name} is a {kind} fine-tune, not an adapter PEFT can hold.",
                            "Share the merged model instead (--what merged).")
    if bcfg.get("quantization") or bcfg.get("quantization_config"):
        raise TuneloomError(
            f"{adapter_dir.name} was trained on a quantized (QLoRA) base, {base.name} ({base / 'config.json'}: "
            "\"quantization\"): the adapter corrects those 4-bit MLX weights, which transformers does not load, so "
            "a PEFT adapter would not give the fine-tune's answers.",
            "Export the merged model instead (the merged folder, MLX folder or GGUF).")
    params = acfg.get("lora_parameters") or {}
    scale = float(params.get("scale", 20.0))
    weights = runs.adapter_file(Path(adapter_dir), "final" if final else "best")  # the best, as Try and export use
    stored = _read_safetensors_index(weights)
    modules: dict[str, dict] = {}
    for t in stored:
        module, _, leaf = t.name.rpartition(".")
        modules.setdefault(module, {})[leaf] = t
    state: dict[str, np.ndarray] = {}
    ranks, targets, layers = set(), set(), set()
    model_type = bcfg.get("model_type")
    for module, leaves in sorted(modules.items()):
        if "lora_a" not in leaves or "lora_b" not in leaves:
            raise TuneloomError(f"{weights}: {module} is not a LoRA layer "
                                f"({', '.join(sorted(leaves))}).", "Share the merged model instead.")
        a, b = leaves["lora_a"].read_f32(), leaves["lora_b"].read_f32()
        name = "base_model.model." + _peft_module_name(module, model_type)
        state[name + ".lora_A.weight"] = np.ascontiguousarray(a.T)
        state[name + ".lora_B.weight"] = np.ascontiguousarray(b.T)
        if "m" in leaves:
            state[name + ".lora_magnitude_vector"] = leaves["m"].read_f32()
        ranks.add(a.shape[1])
        targets.add(module.rsplit(".", 1)[-1])
        m = re.search(r"\.layers\.(\d+)\.", module)
        if m:
            layers.add(int(m.group(1)))
    if not state:
        raise TuneloomError(f"{weights} holds no LoRA matrices.", "Train the run first.")
    if len(ranks) != 1:
        raise TuneloomError(f"The adapter mixes ranks {sorted(ranks)}.", "Share the merged model instead.")
    r = ranks.pop()
    n_layers = (bcfg.get("text_config") or bcfg).get("num_hidden_layers")
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "auto_mapping": None,
        "base_model_name_or_path": hub_id_of(acfg.get("base_model") or base) or str(base),
        "revision": None, "inference_mode": True,
        "r": r, "lora_alpha": scale * r, "lora_dropout": float(params.get("dropout", 0.0)),
        "target_modules": sorted(targets), "use_dora": kind == "dora", "use_rslora": False,
        "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True, "modules_to_save": None,
        "layers_to_transform": sorted(layers) if n_layers and layers and len(layers) < n_layers else None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    return state, config


def export_peft(source, out_dir, *, events: Events | None = None, cancel: CancelToken | None = None,
                card: bool = True, final: bool = False, force: bool = False) -> dict:
    """Write ``out_dir`` (a new folder, or one Tuneloom wrote before; another only with ``force``) as a PEFT
    adapter folder with a model card. Returns ``{"path", "files", "r", "lora_alpha", "target_modules",
    "base_model_name_or_path"}``."""
    from safetensors.numpy import save_file

    from core.export.pipeline import resolve_source
    from core.export.fuse import _replace_dir

    events = events or NULL_EVENTS
    base, adapter_dir = resolve_source(source)
    if adapter_dir is None:
        raise TuneloomError(f"{source} is a model folder: there is no adapter to write.", "Give a run folder.")
    from core.export.target import check_folder_target, mark_folder

    out_dir = Path(out_dir)
    check_folder_target(out_dir, "the PEFT folder", base=base, run=adapter_dir, force=force)
    state, config = peft_tensors(base, adapter_dir, final)
    if cancel is not None:
        cancel.checkpoint()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".part", dir=out_dir.parent))
    try:
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if card:
            from core.export.model_card import write_model_card

            write_model_card(tmp, adapter_dir, base, kind="peft")
        mark_folder(tmp, "peft")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    events.log("info", f"Wrote the PEFT adapter {out_dir}")
    return {"path": str(out_dir), "files": sorted(p.name for p in out_dir.iterdir() if not p.name.startswith(".")),
            "r": config["r"], "lora_alpha": config["lora_alpha"], "target_modules": config["target_modules"],
            "base_model_name_or_path": config["base_model_name_or_path"]}
