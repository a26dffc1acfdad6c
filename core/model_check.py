"""A model folder checked before anyone trains on it (core.hub downloads; it re-exports these names).

``validate_model_dir(path)`` checks a folder before anyone trains on it:
architecture supported by mlx-lm and by our GGUF exporter, tokenizer present and
loadable, chat template present (or the model is a base model and we say which
template would be used), weights complete (every shard of the index, every tensor the
architecture needs, no truncated safetensors file), dtype and quantization recognised.
Every failure is its own :class:`ModelProblem` with its own message.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from core import arch
from core.events import TuneloomError
from core.model_folder import read_safetensors_header

# the files of which a model folder needs one to have a tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


class ModelInvalid(TuneloomError):
    """A model folder failed validation; ``check`` holds every problem."""

    def __init__(self, check: "ModelCheck"):
        first = check.problems[0].message if check.problems else "invalid model folder"
        more = f" (and {len(check.problems) - 1} more problem(s))" if len(check.problems) > 1 else ""
        super().__init__(first + more, "\n".join(p.message + (f" {p.hint}" if p.hint else "") for p in check.problems))
        self.check = check


@dataclass
class ModelProblem:
    code: str
    message: str
    hint: str = ""


@dataclass
class ModelCheck:
    path: Path
    problems: list[ModelProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    architecture: str | None = None
    model_type: str | None = None
    dtype: str | None = None
    quantization: dict | None = None
    tensor_dtypes: list[str] = field(default_factory=list)
    has_chat_template: bool = False
    chat_template_source: str | None = None  # where the template is (core.model_folder), None without one
    base_model: bool = False
    fallback_template: str | None = None  # the template used for chat data when the model has none
    weight_bytes: int = 0
    tensors: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def codes(self) -> list[str]:
        return [p.code for p in self.problems]

    def raise_if_invalid(self) -> "ModelCheck":
        if self.problems:
            raise ModelInvalid(self)
        return self

    def as_dict(self) -> dict:
        return {"path": str(self.path), "ok": self.ok, "architecture": self.architecture,
                "model_type": self.model_type, "dtype": self.dtype, "quantization": self.quantization,
                "chat_template": self.has_chat_template, "chat_template_source": self.chat_template_source,
                "base_model": self.base_model,
                "fallback_template": self.fallback_template, "weight_bytes": self.weight_bytes,
                "tensors": self.tensors, "notes": self.notes,
                "problems": [{"code": p.code, "message": p.message, "hint": p.hint} for p in self.problems]}


SUPPORTED_SUMMARY = arch.summary()

# For a base model with no chat template: ChatML is what Qwen's instruct models use; Zephyr's
# format is TinyLlama-Chat's. Jinja written here because no library ships them as constants.
FALLBACK_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "zephyr": (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
}


def fallback_chat_template(model_type: str | None) -> tuple[str, str]:
    """(name, jinja) of the template to use with a base model of this family."""
    a = arch.for_model_type(model_type)
    name = a.chat_fallback if a else "chatml"
    return name, FALLBACK_TEMPLATES[name]


_FLOAT_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_TENSOR_DTYPES = {"F32", "F16", "BF16"}
_QUANT_BITS = {2, 3, 4, 5, 6, 8}
_QUANT_GROUPS = {32, 64, 128}


def _model_type_supported_by_mlx(model_type: str) -> bool:
    import importlib.util

    try:
        from mlx_lm.utils import MODEL_REMAPPING
    except ImportError:  # pragma: no cover - mlx-lm is a dependency
        MODEL_REMAPPING = {}
    mt = MODEL_REMAPPING.get(model_type, model_type)
    try:
        return importlib.util.find_spec(f"mlx_lm.models.{mt}") is not None
    except (ImportError, ValueError):
        return False


def _recurrent_expected(config: dict, present: dict | None, a: arch.Arch) -> list[str]:
    """The text-model tensors of a hybrid checkpoint (Qwen3.5: those stored as ``<name>.weight``; the
    GGUF export checks the rest). The vision tower and the multi-token-prediction head are in
    the same weight files but need not be: nothing here trains or exports them. ``present``, the
    stored names, tells which of the family's layouts (``Arch.text_prefixes``) the folder has."""
    t = arch.text_config(config)
    prefixes = a.text_prefixes
    prefix = prefixes[0]
    if present and not any(k.startswith(prefix) for k in present):
        prefix = next((p for p in prefixes if any(k.startswith(p) for k in present)), prefix)
    names = [f"{prefix}embed_tokens", f"{prefix}norm"]
    if not t.get("tie_word_embeddings", False):
        names.append("lm_head" if prefix == prefixes[0] else prefix.split(".")[0] + ".lm_head")
    n, interval = int(t.get("num_hidden_layers") or 0), int(t.get("full_attention_interval", 4))
    kinds = t.get("layer_types") or ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n)]
    for i, kind in enumerate(kinds[:n]):
        p = f"{prefix}layers.{i}"
        names += [f"{p}.{m}" for m in arch.NORMS + a.mlp]
        names += [f"{p}.{m}" for m in (a.recurrent_tensors if kind == "linear_attention" else _attention_tensors(a))]
    return names


def _attention_tensors(a: arch.Arch) -> tuple[str, ...]:
    return a.attention + (("self_attn.q_norm", "self_attn.k_norm") if a.qk_norm else ())


def expected_tensors(config: dict, present: dict | None = None) -> list[str]:
    """Checkpoint tensors the supported architectures need (HF names, as stored; ``present``,
    the stored names, tells which layout a Qwen3.5 folder has)."""
    a = arch.for_model_type(config.get("model_type")) or arch.BY_MODEL_TYPE["llama"]
    if a.recurrent_tensors:
        return _recurrent_expected(config, present, a)
    n = int(config.get("num_hidden_layers") or 0)
    names = ["model.embed_tokens", "model.norm"]
    if not config.get("tie_word_embeddings", False):  # Llama/Qwen2/Qwen3 configs default to untied
        names.append("lm_head")
    for i in range(n):
        p = f"model.layers.{i}"
        names += [f"{p}.{m}" for m in arch.NORMS + _attention_tensors(a) + a.mlp]
    return names


def _display_name(p: Path) -> str:
    """A folder's name for messages: the repo id for a hub cache snapshot (named by its commit)."""
    if p.parent.name == "snapshots" and p.parent.parent.name.startswith("models--"):
        return p.parent.parent.name[len("models--"):].replace("--", "/")
    return p.name


def config_shape_mismatch(config: dict, dtypes: dict[str, str], shapes: dict[str, list]) -> str | None:
    """How config.json disagrees with the weights' shapes (hidden size from the norms, which are never
    quantized; vocabulary from an unquantized embedding), or None."""
    if not isinstance(config, dict):
        return None
    merged = {**config, **(config.get("text_config") if isinstance(config.get("text_config"), dict) else {})}
    hidden, vocab = merged.get("hidden_size"), merged.get("vocab_size")
    for k in sorted(shapes):
        shape = shapes[k]
        if not isinstance(shape, list):
            continue
        if isinstance(hidden, int) and k.endswith(("input_layernorm.weight", "model.norm.weight")) and len(shape) == 1:
            if shape[0] != hidden:
                return (f"config.json says hidden_size {hidden}, but the weights are {shape[0]} wide "
                        f"({k} has shape {shape})")
        if (isinstance(vocab, int) and k.endswith("embed_tokens.weight") and len(shape) == 2
                and dtypes.get(k) != "U32"):
            if shape[0] != vocab:
                return f"config.json says vocab_size {vocab}, but {k} has {shape[0]} rows (shape {shape})"
            if isinstance(hidden, int) and shape[1] != hidden:
                return (f"config.json says hidden_size {hidden}, but the weights are {shape[1]} wide "
                        f"({k} has shape {shape})")
    return None


def validate_model_dir(path: str | os.PathLike, *, load_tokenizer: bool = True) -> ModelCheck:
    """Check a model folder before training on it; every problem is reported, not only the first."""
    p = Path(path)
    check = ModelCheck(p)
    name = _display_name(p)
    if not p.is_dir():
        _adder(check)("not_a_folder", f"{p} is not a folder.", "Choose the folder that holds config.json.")
        return check
    config = _check_config(check, p, name)
    _check_dtype(check, config, name)
    _check_tokenizer(check, p, config, name, load_tokenizer)
    _check_weights(check, p, config, name)
    return check


def _adder(check: ModelCheck):
    """``add(code, message, hint="")``: a problem noted on ``check``."""
    return lambda code, msg, hint="": check.problems.append(ModelProblem(code, msg, hint))


def _check_config(check: ModelCheck, p: Path, name: str) -> dict:
    """config.json read, and its architecture supported by mlx-lm and by the GGUF exporter; the config
    ({} when there is none)."""
    add = _adder(check)
    config: dict = {}
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        add("no_config", f"{name} has no config.json: it is not a Hugging Face model folder.",
            "Choose the folder that holds config.json, the tokenizer files and *.safetensors.")
    else:
        try:
            config = json.loads(cfg_file.read_text(encoding="utf-8"))
            if not isinstance(config, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            add("bad_config", f"{name}/config.json cannot be read: {exc}.", "Download the model again.")
            config = {}
    archs = config.get("architectures") or []
    check.architecture = archs[0] if archs else None
    check.model_type = config.get("model_type")
    if config:
        by_mlx = bool(check.model_type) and _model_type_supported_by_mlx(check.model_type)
        by_gguf = arch.for_hf_class(check.architecture) is not None  # core.export.gguf exports each
        if not (by_mlx and by_gguf):
            what = check.architecture or (f"model_type {check.model_type!r}" if check.model_type else "unknown")
            if by_mlx:
                why = "mlx-lm can train it, but Tuneloom's GGUF exporter cannot export it"
            elif by_gguf:
                why = f"this mlx-lm has no model code for model_type {check.model_type!r}"
            else:
                why = "neither mlx-lm nor Tuneloom's GGUF exporter supports it"
            add("unsupported_architecture", f"{name}: architecture {what} is not supported ({why}).",
                SUPPORTED_SUMMARY + " Pick one of those.")
    return config


def _check_dtype(check: ModelCheck, config: dict, name: str) -> None:
    """The weights' dtype and quantization, as config.json says them."""
    add = _adder(check)
    dtype = config.get("torch_dtype") or config.get("dtype")
    check.dtype = dtype
    if dtype is not None and dtype not in _FLOAT_DTYPES:
        add("unknown_dtype", f"{name}: weight dtype {dtype!r} is not one Tuneloom can train "
            f"({', '.join(_FLOAT_DTYPES)}).", "Pick a float16, bfloat16 or float32 model.")
    quant = config.get("quantization") or config.get("quantization_config")
    if isinstance(quant, dict):
        method = quant.get("quant_method")
        bits, group = quant.get("bits"), quant.get("group_size")
        if method is not None and method != "mlx":  # gptq, awq, bitsandbytes, fp8, ...
            add("unsupported_quantization", f"{name} is quantized with {method!r}, which mlx-lm cannot train.",
                "Pick the unquantized model, or its MLX 4-bit version (mlx-community/...-4bit) for QLoRA.")
        elif bits not in _QUANT_BITS or group not in _QUANT_GROUPS or quant.get("mode", "affine") != "affine":
            add("unsupported_quantization", f"{name}: quantization {json.dumps(quant)} is not recognised "
                "(expected MLX affine quantization, 2-8 bits, groups of 32/64/128).",
                "Pick the unquantized model or an mlx-community 4-bit version.")
        else:
            check.quantization = {"bits": bits, "group_size": group}
            check.notes.append(f"quantized: {bits}-bit, groups of {group} (training uses QLoRA; export "
                               "dequantizes when fusing)")


def _check_tokenizer(check: ModelCheck, p: Path, config: dict, name: str, load_tokenizer: bool) -> None:
    """A tokenizer that loads, and the chat template (a base model has none: say which one is used)."""
    add = _adder(check)
    tok_files = [f for f in TOKENIZER_FILES if (p / f).is_file()]
    if (p / "vocab.json").is_file() and not (p / "tokenizer.json").is_file() and not (p / "merges.txt").is_file():
        tok_files.remove("vocab.json")
    from core.model_folder import ModelFolderError, read_tokenizer_info

    tok_info = None
    try:
        tok_info = read_tokenizer_info(p)
    except ModelFolderError as exc:
        add("bad_tokenizer_config", f"{name}: {exc}", exc.hint)
    template = bool(tok_info and tok_info.has_chat_template)
    if not tok_files:
        add("missing_tokenizer", f"{name} has no tokenizer (tokenizer.json, tokenizer.model or vocab.json + "
            "merges.txt).", "Copy the tokenizer files from the model's hub page into the folder, or download "
            "the model again.")
    elif load_tokenizer:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(p))
            if template and not getattr(tok, "chat_template", None):
                check.notes.append(f"{name}: the chat template in {tok_info.describe_source()} is not one "
                                   "transformers loads for this tokenizer; training will not see it.")
                template = False
        except Exception as exc:  # noqa: BLE001 - tokenizers raise many kinds
            add("tokenizer_unloadable", f"{name}: the tokenizer cannot be loaded: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}.",
                "The tokenizer files are damaged or need a newer transformers; download the model again.")
    check.has_chat_template = template
    check.chat_template_source = tok_info.describe_source() if template else None
    if template and config:
        _check_ollama_template(check, tok_info, name)
    if not template and config:
        check.base_model = True
        check.fallback_template, _ = fallback_chat_template(check.model_type)
        check.notes.append(f"{name} is a base model (it has no chat template): chat data will be formatted "
                           f"with the {check.fallback_template} template; plain-text data trains as it is.")


def _check_weights(check: ModelCheck, p: Path, config: dict, name: str) -> None:
    """Every shard of the index, whole; dtypes recognised; every tensor the architecture needs; a config
    that belongs to these weights."""
    add = _adder(check)
    shards = sorted(p.glob("*.safetensors"))
    index_file = p / "model.safetensors.index.json"
    weight_map: dict[str, str] = {}
    if index_file.is_file():
        try:
            weight_map = dict(json.loads(index_file.read_text(encoding="utf-8"))["weight_map"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            add("corrupt_weights", f"{name}/model.safetensors.index.json cannot be read: {exc}.",
                "Download the model again.")
    if not shards and not weight_map:
        others = sorted(f.name for f in p.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".gguf", ".ckpt"))
        add("missing_weights", f"{name} has no weights (*.safetensors)" + (
            f"; it has {', '.join(others[:3])}, which Tuneloom cannot read" if others else "") + ".",
            "Download the model's *.safetensors files into the folder (or fetch it by hub id).")
    missing_shards = sorted(set(weight_map.values()) - {s.name for s in shards})
    for s in missing_shards:
        add("missing_weights", f"{name}: weight file {s} (listed in model.safetensors.index.json) is missing.",
            "The download is incomplete: fetch the model again.")
    present: dict[str, str] = {}
    shapes: dict[str, list] = {}
    for s in shards:
        try:
            header, expected = read_safetensors_header(s)
        except EOFError as exc:
            add("truncated_weights", f"{name}: {s.name} is truncated ({exc}).",
                "The download was cut short: fetch the model again.")
            continue
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            add("corrupt_weights", f"{name}: {s.name} is not a valid safetensors file ({exc}).",
                "Download the model again.")
            continue
        size = s.stat().st_size
        if size < expected:
            add("truncated_weights", f"{name}: {s.name} is truncated: it has {size:,} bytes, its header "
                f"needs {expected:,}.", "The download was cut short: fetch the model again.")
        elif size > expected:
            add("corrupt_weights", f"{name}: {s.name} has {size - expected:,} bytes more than its header "
                "describes.", "Download the model again.")
        check.weight_bytes += size
        for k, v in header.items():
            if k == "__metadata__":
                continue
            present[k] = v.get("dtype", "?")
            shapes[k] = v.get("shape")
    check.tensors = len(present)
    mismatch = config_shape_mismatch(config, present, shapes)
    if mismatch:
        add("config_mismatch", f"{name}: {mismatch}.",
            "config.json does not belong to these weights: download the model again, or put its own config.json back.")
    check.tensor_dtypes = sorted(set(present.values()))
    quantized_tensors = any(k.endswith(".scales") for k in present)
    if quantized_tensors and check.quantization is None and not any(pr.code == "unsupported_quantization"
                                                                   for pr in check.problems):
        add("unsupported_quantization", f"{name} holds quantized weights (*.scales) but config.json does not say "
            "how they are quantized.", "Download the model again with its config.json.")
    allowed = set(_TENSOR_DTYPES) | ({"U32"} if quantized_tensors else set())
    odd = sorted(set(present.values()) - allowed)
    if odd:
        add("unknown_dtype", f"{name}: tensors stored as {', '.join(odd)}, which Tuneloom cannot train.",
            "Pick a float16, bfloat16 or float32 model, or an MLX-quantized one.")
    if weight_map:
        absent = [t for t, shard in weight_map.items() if shard not in missing_shards and t not in present]
        if absent:
            add("missing_tensors", f"{name}: {len(absent)} tensor(s) listed in the index are not in the weight "
                f"files (first: {', '.join(absent[:3])}).", "The download is incomplete: fetch the model again.")
    if present and check.architecture in _arch_names() and not missing_shards:
        needed = expected_tensors(config, present)
        lacking = [t for t in needed if f"{t}.weight" not in present]
        if arch.for_hf_class(check.architecture).skip_prefixes:
            _note_qwen35_extras(check, present, name)
        if quantized_tensors:
            lacking += [t for t in needed if f"{t}.weight" in present and present[f"{t}.weight"] == "U32"
                        and f"{t}.scales" not in present]
        if lacking:
            add("missing_tensors", f"{name}: the weights lack {len(lacking)} tensor(s) a {check.architecture} "
                f"with {config.get('num_hidden_layers')} layers needs (first: "
                f"{', '.join(t + '.weight' for t in lacking[:3])}).",
                "The weights are incomplete or belong to another model: fetch the model again.")


def _check_ollama_template(check: ModelCheck, tok_info, name: str) -> None:
    """A note (not a problem: training and llama.cpp do not need it) when the chat template cannot be
    reproduced for Ollama, said before hours of training rather than at export."""
    from core.chat_templates import TemplateNotSupported, chat_format_for

    try:
        chat_format_for(tok_info.config)
    except TemplateNotSupported as exc:
        check.notes.append(f"{name}: {exc} The GGUF export will work; registering in Ollama will not.")
    except Exception as exc:  # noqa: BLE001 - a template that does not even render
        check.notes.append(f"{name}: the chat template fails on a simple conversation ({exc}).")


def _note_qwen35_extras(check: ModelCheck, present: dict, name: str) -> None:
    """Say what a Qwen3.5 folder holds beyond the text model: its weight files come with the
    vision tower and the multi-token-prediction head, which are downloaded with them."""
    extra = [k for k in present if k.startswith(arch.for_hf_class(check.architecture).skip_prefixes)]
    if extra:
        vision = sum(1 for k in extra if "visual" in k or "vision" in k)
        check.notes.append(f"{name}: the weight files also hold the vision tower ({vision} tensors) and the "
                           f"multi-token-prediction head ({len(extra) - vision} tensors); Tuneloom trains and "
                           "exports the text model only (the GGUF is text-only, as llama.cpp's own converter "
                           "writes it).")


def _arch_names() -> set[str]:
    return set(arch.BY_HF_CLASS)
