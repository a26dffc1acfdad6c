"""Merge a trained LoRA / DoRA adapter into its base model: a plain HF model folder out.

The base is loaded with mlx-lm's model code, the adapter applied with mlx-lm's own
``load_adapters`` (the layout our trainer writes: ``adapters.safetensors`` +
``adapter_config.json``), and every adapted layer merged with its ``fuse()``. A
quantized base (QLoRA) is dequantized on the way, so the result is always a
full-precision model in the base's float dtype that ``core.export.gguf`` and other
tools can read. The folder is assembled next to ``out_dir`` and renamed into place
only when complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from core import arch
from core.events import NULL_EVENTS, CancelToken, Events, Progress, TuneloomError

# Tokenizer and generation files a model folder may carry; copied verbatim from the
# base so the fused model tokenizes and stops exactly as the base did.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
)
_TOKENIZER_GLOBS = ("*.tiktoken",)

_QUANT_CONFIG_KEYS = ("quantization", "quantization_config")


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TuneloomError(f"{what} not found: {path}", "Check that the folder is complete.") from None
    except ValueError as exc:
        raise TuneloomError(f"{what} is not valid JSON ({path}): {exc}") from exc


def _check_inputs(base_dir: Path, adapter_dir: Path) -> dict:
    if not base_dir.is_dir():
        raise TuneloomError(f"Base model folder not found: {base_dir}", "Download or import the base model again.")
    if not adapter_dir.is_dir():
        raise TuneloomError(f"Adapter folder not found: {adapter_dir}", "Choose a training run that saved an adapter.")
    base_config = _read_json(base_dir / "config.json", "The base model's config.json")
    adapter_config = _read_json(adapter_dir / "adapter_config.json", "The adapter's adapter_config.json")
    if not (adapter_dir / "adapters.safetensors").is_file():
        raise TuneloomError(f"No adapters.safetensors in {adapter_dir}.", "The run has not saved an adapter yet; train at least to the first save.")
    from core.checkpoints import check_run_adapter

    check_run_adapter(adapter_dir)  # a damaged file: its name and the checkpoint to take it from, no traceback
    kind = adapter_config.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora", "full"):
        raise TuneloomError(f"Unknown fine_tune_type {kind!r} in adapter_config.json.", "Expected lora, dora or full.")
    return base_config


def _float_dtype(model, base_config: dict):
    """The base's float dtype: that of its stored unquantized float weights (norms at
    least), else config.json's."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    for key, p in tree_flatten(model.parameters()):
        if mx.issubdtype(p.dtype, mx.floating) and not key.endswith((".scales", ".biases")):
            return p.dtype
    name = base_config.get("torch_dtype") or base_config.get("dtype")
    return {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}.get(name, mx.float16)


def _dtype_name(dtype) -> str:
    import mlx.core as mx

    return {mx.bfloat16: "bfloat16", mx.float16: "float16", mx.float32: "float32"}[dtype]


def _copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    for pattern in _TOKENIZER_GLOBS:
        for path in src.glob(pattern):
            shutil.copyfile(path, dst / path.name)
            copied.append(path.name)
    return copied


# Qwen3.5's zero-centred RMSNorm weights (the model scales by 1 + w; core.arch.Arch.centred_norms)
_QWEN35 = arch.BY_MODEL_TYPE["qwen3_5"]
_QWEN35_CENTRED_NORMS = _QWEN35.centred_norms


def _qwen35_hf_tensor(name: str, value, a: arch.Arch = _QWEN35):
    """One tensor of mlx-lm's in-memory text model of a hybrid family (Qwen3.5) as the Hugging Face
    checkpoint has it: centred norms back without the 1 mlx-lm adds on load, conv1d kernels as HF
    stores them, names from mlx-lm's layout (``a.text_prefixes[1]``) to the hub's (``[0]``)."""
    import mlx.core as mx

    if a.centred_norms and name.endswith(a.centred_norms) and value.ndim == 1:
        value = (value.astype(mx.float32) - 1.0).astype(value.dtype)
    elif "conv1d.weight" in name and value.ndim == 3 and value.shape[-1] == 1:
        value = value.moveaxis(2, 1)  # [C, K, 1] -> [C, 1, K]
    hf, mlx_prefix = a.text_prefixes
    outer = mlx_prefix.split(".")[0] + "."  # "language_model.": lm_head sits under it in mlx-lm's layout
    if name.startswith(mlx_prefix):
        name = hf + name[len(mlx_prefix):]
    elif name.startswith(outer):
        name = name[len(outer):]  # lm_head
    return name, value


def _write_hf_layout(folder: Path, a: arch.Arch = _QWEN35) -> None:
    """Rewrite the weights mlx-lm saved for a Qwen3.5 into the Hugging Face layout.

    mlx-lm keeps Qwen3.5 in its own layout (``language_model.model.*`` names, the RMSNorm
    offset added, conv1d kernels as [C, K, 1]) and ``save_model`` writes it as it is; a
    fused folder must be a plain HF checkpoint that transformers, llama.cpp's converter,
    core.export.gguf and mlx-lm itself read alike. The norm shift is exact: a bfloat16
    1 + w minus 1 is representable again. The text model only: mlx-lm drops the vision
    tower and the multi-token-prediction head on load.
    """
    import mlx.core as mx

    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else None
    weight_map = {}
    for path in sorted(folder.glob("model*.safetensors")):
        tensors = dict(_qwen35_hf_tensor(k, v, a) for k, v in mx.load(str(path)).items())
        mx.eval(tensors)
        part = path.with_name(f".{path.stem}.part.safetensors")  # mlx adds .safetensors to any other name
        mx.save_safetensors(str(part), tensors, metadata={"format": "pt"})
        part.replace(path)
        weight_map.update({k: path.name for k in tensors})
    if index is not None:
        index["weight_map"] = dict(sorted(weight_map.items()))
        index_path.write_text(json.dumps(index, indent=4), encoding="utf-8")


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` to ``out_dir``; an older ``out_dir`` is removed only after."""
    from core.atomic import new_mode

    os.chmod(tmp, new_mode(directory=True))  # mkdtemp's folder is 0700: a plain new folder's permissions
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{tmp.name}")
        out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except BaseException:
        if old is not None:
            old.rename(out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fuse_model(base_dir, adapter_dir, out_dir, *, events: Events | None = None,
               cancel: CancelToken | None = None, adapter_file: str | Path | None = None) -> Path:
    """Merge the adapter in ``adapter_dir`` into the model in ``base_dir``; write ``out_dir``.

    ``out_dir`` becomes a standard HF folder: ``config.json`` (without quantization keys),
    ``model.safetensors`` in the base's float dtype and the base's tokenizer files.
    Returns ``out_dir``. Raises :class:`TuneloomError` when the inputs are missing or do
    not belong together, :class:`Cancelled` when ``cancel`` fires (nothing is written).
    ``adapter_file``: the adapter's weights from another file of ``adapter_dir`` (a run's best).
    """
    events = events or NULL_EVENTS
    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    base_config = _check_inputs(base_dir, adapter_dir)

    def check():
        if cancel:
            cancel.raise_if_cancelled()

    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import dequantize_model, load_model, save_model

    events.log("info", f"Loading base model {base_dir.name}")
    events.report_progress(Progress(0, None, "layer", "loading base model", item=base_dir.name))
    try:
        model, _ = load_model(base_dir, lazy=True)
    except (ValueError, FileNotFoundError) as exc:
        raise TuneloomError(f"Cannot load the base model in {base_dir}: {exc}",
                            "The folder needs config.json and its *.safetensors weights, for a model type mlx-lm supports.") from exc
    check()

    was_quantized = any(k in base_config for k in _QUANT_CONFIG_KEYS)
    dtype = _float_dtype(model, base_config)
    if was_quantized and dtype == mx.bfloat16:
        # a dequantized weight plus the adapter's update, merged in float32 below, loses most to a
        # bfloat16 rounding (8 significant bits; it moved the tiny test models' logits by up to 0.3):
        # float16 keeps 11, and the dequantized values are far inside its range
        dtype = mx.float16

    events.report_progress(Progress(0, None, "layer", "applying adapter"))
    try:
        model = load_adapters(model, str(adapter_dir))
        if adapter_file is not None and Path(adapter_file).name != "adapters.safetensors":
            # another weights file of the same adapter (a run's adapters_best.safetensors)
            model.load_weights(str(adapter_file), strict=False)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TuneloomError(f"The adapter in {adapter_dir} does not fit the base model {base_dir.name}: {exc}",
                            "Fuse with the same base model the adapter was trained on.") from exc
    check()

    if was_quantized:  # merge in float32: scale * q + bias + delta, rounded once at the end
        model.set_dtype(mx.float32)
    adapted = [(name, module) for name, module in model.named_modules() if hasattr(module, "fuse")]
    total = len(adapted) + 1
    fused = []
    for i, (name, module) in enumerate(adapted):
        check()
        # dequantize=True: a QLoRA base comes out as a plain full-precision Linear
        fused.append((name, module.fuse(dequantize=True)))
        events.report_progress(Progress(i + 1, total, "layer", f"merging {name}", item=name))
    if fused:
        model.update_modules(tree_unflatten(fused))
    if was_quantized:
        model = dequantize_model(model)  # the layers no adapter touched (embeddings, lm_head, ...)
    leftovers = [k for k, _ in tree_flatten(model.parameters()) if k.endswith((".scales", ".lora_a", ".lora_b"))]
    if leftovers:
        raise TuneloomError(f"Merging left unmerged parameters, e.g. {leftovers[0]}.", "This model/adapter combination is not supported for fusing.")
    model.set_dtype(dtype)
    mx.eval(model.parameters())
    check()

    config = {k: v for k, v in base_config.items() if k not in _QUANT_CONFIG_KEYS}
    if "torch_dtype" in config or "dtype" not in config:
        config["torch_dtype"] = _dtype_name(dtype)
    if "dtype" in config:  # the key's name since transformers 5
        config["dtype"] = _dtype_name(dtype)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".part", dir=out_dir.parent))
    try:
        events.report_progress(Progress(len(adapted), total, "layer", "saving merged weights"))
        save_model(tmp, model, donate_model=True)
        del model
        family = arch.for_model_type(base_config.get("model_type"))
        if family is not None and family.text_prefixes:  # mlx-lm saves it in its own layout
            _write_hf_layout(tmp, family)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        copied = _copy_tokenizer_files(base_dir, tmp)
        if not any(n in copied for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
            events.log("warning", f"No tokenizer files found in {base_dir}; the fused model has none.")
        check()
        _replace_dir(tmp, out_dir)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    events.report_progress(Progress(total, total, "layer", "fused"))
    events.log("info", f"Fused {len(adapted)} adapted layer(s) into {out_dir}")
    return out_dir
