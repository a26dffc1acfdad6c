"""Hugging Face model folder -> one GGUF file that llama.cpp (and so Ollama) reads exactly.

Supported: ``Qwen2ForCausalLM`` (gguf arch ``qwen2``), ``Qwen3ForCausalLM`` (``qwen3``),
``Qwen3_5ForConditionalGeneration`` (``qwen35``: the text model, without the vision tower
and the multi-token-prediction head) and ``LlamaForCausalLM`` (``llama``), in f32 / f16 /
bf16 / q8_0 / q4_0 and the K-quant mixes q4_k_m / q5_k_m / q6_k. Quantized files take
llama.cpp's per-tensor type choices (``llama_tensor_get_type`` in llama-quant.cpp) and its
quantizers' exact output: Q8_0, Q4_0, Q5_0, Q5_1 through ``gguf.quants``, the K-quants
through :mod:`core.export.kquants`.
So a quantized export equals ``llama-quantize`` run on our F16 export of the same
float16 weights, byte for byte (tests/test_kquants.py checks it).

The metadata follows what llama.cpp's own ``convert_hf_to_gguf.py`` writes for these
architectures (hyper-parameters, tokenizer model and pre-tokenizer, token types,
merges or SentencePiece scores, special token ids, add-BOS/EOS flags, chat template),
using the ``gguf`` package for every key, the tensor-name table and the writer, and
``gguf.SpecialVocab`` for special tokens, merges and the chat template.

The export streams: tensor infos are planned from the safetensors headers, the header
is written, then each tensor is read, converted and written on its own, so the whole
model is never in memory. The file is written next to ``out_path`` and renamed over it
only after it has been read back; a failure or a cancel leaves no file behind.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from core import arch

from core.export import kquants, quants
from core.atomic import atomic_path
from core.events import NULL_EVENTS, CancelToken, Events, TuneloomError
from core.units import fmt_bytes

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- tables

@dataclass(frozen=True)
class ArchSpec:
    """How one HF architecture maps onto a llama.cpp architecture."""

    arch: gguf.MODEL_ARCH
    # llama.cpp's LLAMA graph applies RoPE to interleaved pairs, HF Llama to the two
    # halves of each head: the converter reorders the Q/K rows; Qwen uses NEOX RoPE
    # in llama.cpp, which matches HF as is.
    permute_qk: bool = False
    # the converter writes vocab_size and rope.dimension_count for llama only
    write_vocab_and_rope_dim: bool = False
    # tensors llama.cpp requires per block beyond the common set
    extra_block_tensors: tuple[gguf.MODEL_TENSOR, ...] = ()
    extra_block_biases: tuple[gguf.MODEL_TENSOR, ...] = ()
    # hybrid and multimodal architectures (Qwen3.5): the hyper-parameters live under
    # "text_config"; checkpoint tensors with these name prefixes are not part of the text
    # model; per-tensor (name, shape, transform) rule; the tensors each block needs
    # (they differ between layer kinds); extra hyper-parameters; tensors always kept F32
    text_config: bool = False
    skip_prefixes: tuple[str, ...] = ()
    tensor_rule: Any = None  # (config, name, shape, hf_layout) -> (name, shape, transform | None)
    block_names: Any = None  # (config, block id) -> GGUF tensor names the block needs
    extra_hparams: Any = None  # (writer, config) -> None
    f32_tensors: tuple[gguf.MODEL_TENSOR, ...] = ()


# --------------------------------------------------------------------------- Qwen3.5

text_config = arch.text_config  # the text model's hyper-parameters at the top level (core.arch)
QWEN35_SKIPPED_PREFIXES = arch.BY_MODEL_TYPE["qwen3_5"].skip_prefixes


def _qwen35_is_recurrent(config: dict, bid: int) -> bool:
    layer_types = config.get("layer_types")
    if layer_types:
        return layer_types[bid] == "linear_attention"
    return (bid + 1) % int(config.get("full_attention_interval", 4)) != 0


def _tile_v_heads(x: np.ndarray, n_k: int, per_k: int, head_dim: int, axis: int = 0) -> np.ndarray:
    """Value heads from grouped order (all heads of key head 0, then of key head 1, ...) to
    tiled order (value head 0 of every key head, then value head 1, ...): what ggml's
    broadcasting of the key heads over the value heads expects (conversion/qwen.py,
    _LinearAttentionVReorderBase)."""
    x = np.moveaxis(x, axis, 0)
    shape = x.shape
    x = x.reshape(n_k, per_k, head_dim, *shape[1:]).swapaxes(0, 1).reshape(shape)
    return np.moveaxis(x, 0, axis)


def _qwen35_tensor(config: dict, name: str, shape: tuple[int, ...], hf_layout: bool):
    """(name for the tensor-name table, shape as written, transform or None) of one Qwen3.5
    text-model tensor: the transforms of llama.cpp's converter (Qwen3NextModel and
    _LinearAttentionVReorderBase in conversion/qwen.py).

    - Qwen3.5's RMSNorm weights are zero-centred (the model scales by 1 + w): the 1 is
      added, except for the DeltaNet's gated norm, which scales by w. A folder saved by
      mlx-lm (``hf_layout`` False: its conv1d kernels are [C, K, 1]) has it added already.
    - A_log is written as A = -exp(A_log); dt_bias is named dt_proj.bias (ssm_dt.bias).
    - The depthwise conv1d kernel, [C, 1, K] (mlx-lm: [C, K, 1]), is written as [C, K].
    - With more value heads than key heads, every DeltaNet tensor's value-head axis goes
      to tiled order (``_tile_v_heads``).
    """
    name = name.replace("language_model.", "")  # model.language_model.* (HF), language_model.model.* (mlx-lm)
    steps = []
    if name.endswith("norm.weight") and not name.endswith("linear_attn.norm.weight") and hf_layout:
        steps.append(lambda x: x + np.float32(1.0))
    if name.endswith(".A_log"):
        steps.append(lambda x: -np.exp(x))
    if name.endswith(".dt_bias"):
        name = name[: -len(".dt_bias")] + ".dt_proj.bias"
    if "conv1d" in name and len(shape) == 3:
        shape = (shape[0], shape[1] * shape[2])
        steps.append(lambda x, s=shape: x.reshape(s))
    n_k, n_v = int(config["linear_num_key_heads"]), int(config["linear_num_value_heads"])
    if n_v != n_k and ".linear_attn." in name:
        per_k = n_v // n_k
        d_v, qk = int(config["linear_value_head_dim"]), 2 * n_k * int(config["linear_key_head_dim"])

        def tile_rows_after(start: int, head_dim: int):
            def f(x):
                x = x.copy()
                x[start:] = _tile_v_heads(x[start:], n_k, per_k, head_dim)
                return x
            return f

        if ".in_proj_qkv." in name or ".conv1d." in name:
            steps.append(tile_rows_after(qk, d_v))  # q and k rows stay, the v rows are tiled
        elif ".in_proj_z." in name:
            steps.append(tile_rows_after(0, d_v))
        elif ".in_proj_a." in name or ".in_proj_b." in name or name.endswith((".A_log", ".dt_proj.bias")):
            steps.append(tile_rows_after(0, 1))
        elif ".out_proj." in name:
            steps.append(lambda x: _tile_v_heads(x, n_k, per_k, d_v, axis=1))
    if not steps:
        return name, shape, None

    def transform(x: np.ndarray) -> np.ndarray:
        for f in steps:
            x = f(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    return name, shape, transform


def _qwen35_block_names(config: dict, bid: int) -> list[str]:
    """What llama.cpp's qwen35 loader requires of block ``bid`` (src/models/qwen35.cpp)."""
    T, names = gguf.MODEL_TENSOR, gguf.TENSOR_NAMES

    def w(kind):
        return names[kind].format(bid=bid) + ".weight"

    need = [w(T.ATTN_NORM), w(T.ATTN_POST_NORM), w(T.FFN_GATE), w(T.FFN_UP), w(T.FFN_DOWN)]
    if _qwen35_is_recurrent(config, bid):
        need += [w(T.ATTN_QKV), w(T.ATTN_GATE), w(T.SSM_CONV1D), names[T.SSM_DT].format(bid=bid) + ".bias",
                 names[T.SSM_A].format(bid=bid), w(T.SSM_BETA), w(T.SSM_ALPHA), w(T.SSM_NORM), w(T.SSM_OUT)]
    else:
        need += [w(T.ATTN_Q), w(T.ATTN_K), w(T.ATTN_V), w(T.ATTN_OUT), w(T.ATTN_Q_NORM), w(T.ATTN_K_NORM)]
    return need


def _qwen35_hparams(w: gguf.GGUFWriter, c: dict) -> None:
    """The Gated DeltaNet, layer-pattern and partial/multi-section RoPE keys llama.cpp's
    converter writes for qwen35 (Qwen3NextModel and _Qwen35MRopeMixin)."""
    n_k, n_v = int(c["linear_num_key_heads"]), int(c["linear_num_value_heads"])
    d_k, d_v = int(c["linear_key_head_dim"]), int(c["linear_value_head_dim"])
    if n_v % n_k or d_k != d_v:
        raise TuneloomError(
            f"This Qwen3.5 variant ({n_k} key / {n_v} value heads of {d_k}/{d_v} dims) is not one llama.cpp's qwen35 "
            "graph can run (it needs value heads in whole groups per key head and equal key/value head sizes).",
            "Export a published Qwen3.5 model.")
    n_layers, interval = int(c["num_hidden_layers"]), int(c.get("full_attention_interval", 4))
    layer_types = c.get("layer_types")
    if layer_types is not None:
        if len(layer_types) != n_layers:
            raise TuneloomError(f"layer_types has {len(layer_types)} entries for {n_layers} layers in config.json.",
                                "The config.json is damaged: download the model again.")
        # this gguf has no key for a free layer pattern, and llama.cpp derives it from
        # the interval when the file has none: the two must agree
        if any((t == "linear_attention") != ((i + 1) % interval != 0) for i, t in enumerate(layer_types)):
            raise TuneloomError("This Qwen3.5 variant's layer pattern is not one full-attention layer every "
                                f"{interval}, which is all a qwen35 GGUF can describe here.", "Export a published Qwen3.5 model.")
    w.add_ssm_conv_kernel(int(c["linear_conv_kernel_dim"]))
    w.add_ssm_state_size(d_k)
    w.add_ssm_group_count(n_k)
    w.add_ssm_time_step_rank(n_v)
    w.add_ssm_inner_size(d_v * n_v)
    w.add_full_attention_interval(interval)
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    w.add_rope_dimension_count(int(head_dim * rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 0.25))))
    # llama.cpp's loader requires the sections; Qwen3.5 always uses interleaved mRoPE,
    # [11, 11, 10] unless the config says otherwise
    sections = list(rope.get("mrope_section") or [11, 11, 10])
    w.add_rope_dimension_sections((sections + [0, 0, 0, 0])[:4])


# the GGUF tensor rules of families whose blocks are not the standard one (core.arch.Arch.key)
_ARCH_HOOKS: dict[str, dict] = {
    "qwen3_5": dict(tensor_rule=_qwen35_tensor, block_names=_qwen35_block_names, extra_hparams=_qwen35_hparams,
                    f32_tensors=(gguf.MODEL_TENSOR.SSM_CONV1D,)),
}


def _spec(a: arch.Arch) -> ArchSpec:
    """The GGUF side of one core.arch record."""
    T = gguf.MODEL_TENSOR
    return ArchSpec(getattr(gguf.MODEL_ARCH, a.gguf_arch), permute_qk=a.permute_qk,
                    write_vocab_and_rope_dim=a.gguf_vocab_and_rope_dim,
                    extra_block_tensors=tuple(T[k] for k in a.gguf_block if k not in arch.STANDARD_GGUF_BLOCK),
                    extra_block_biases=(T.ATTN_Q, T.ATTN_K, T.ATTN_V) if a.qkv_bias else (),
                    text_config=a.text_config, skip_prefixes=a.skip_prefixes, **_ARCH_HOOKS.get(a.key, {}))


# HF class -> its GGUF spec, for every family core.arch lists
ARCHITECTURES: dict[str, ArchSpec] = {cls: _spec(a) for a in arch.ARCHS for cls in a.hf_classes}

# the tensors every standard block has (core.arch.STANDARD_GGUF_BLOCK)
_BLOCK_TENSORS = tuple(gguf.MODEL_TENSOR[k] for k in arch.STANDARD_GGUF_BLOCK)

QT = gguf.GGMLQuantizationType
# quant name -> (file type recorded in the GGUF, llama.cpp's default type for the 2-D
# weight matrices of that file type; llama_ftype_get_default_type): core.export.quants' table
QUANT_TYPES: dict[str, tuple[gguf.LlamaFileType, QT]] = {
    q.name: (gguf.LlamaFileType[q.file_type], QT[q.weight_type]) for q in quants.QUANTS.values()}

# llama.cpp's tensor_type_fallback: a row that is not a whole number of 256-value
# super-blocks takes the nearest 32-block type (and F16 when even that does not fit).
# Every type on the right is one gguf.quants writes bit-exactly, so no substitute is needed.
_FALLBACK_TYPES: dict[QT, QT] = {QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0}

# hand-written K-quant packing (gguf.quants only dequantizes these)
_KQUANTIZERS = {QT.Q4_K: kquants.quantize_q4_k, QT.Q5_K: kquants.quantize_q5_k, QT.Q6_K: kquants.quantize_q6_k}

# HF byte-level BPE pre-tokenizer regexes -> llama.cpp's name for the same pre-tokenizer,
# and the BPE "ignore_merges" setting llama.cpp assumes for it.
BPE_PRE_TOKENIZERS: dict[str, tuple[str, bool]] = {
    # Qwen2 / Qwen2.5 / Qwen3 (and tokenizers trained with the same regex)
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": ("qwen2", False),
    # Llama 3 (digits grouped by three)
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": ("llama-bpe", True),
    # Qwen3.5 (letters may carry combining marks, \p{M}): llama.cpp's "qwen35"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": ("qwen35", False),
}
_ALLOWED_BPE_NORMALIZERS = (None, "NFC")

_F16_MAX = float(np.finfo(np.float16).max)


# --------------------------------------------------------------------------- safetensors

# numpy has no bfloat16, so safetensors' numpy loader refuses BF16 tensors and torch is
# not a dependency. The safetensors layout is simple and documented (u64 header size,
# JSON header with dtype/shape/byte offsets, raw little-endian data), so tensors are read
# straight from it: BF16 as uint16 shifted into float32, one tensor at a time.
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}


@dataclass(frozen=True)
class _StoredTensor:
    path: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file
    nbytes: int

    def read_f32(self, first_row: int = 0, n_rows: int | None = None) -> np.ndarray:
        """Rows ``first_row .. first_row + n_rows`` (all by default) as float32."""
        np_dtype = np.dtype(_ST_DTYPES[self.dtype]).newbyteorder("<")
        row_shape = self.shape[1:]
        total_rows = self.shape[0] if self.shape else 1
        if n_rows is None:
            n_rows = total_rows - first_row
        count = n_rows * math.prod(row_shape)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + first_row * math.prod(row_shape) * np_dtype.itemsize)
            data = np.fromfile(fh, dtype=np_dtype, count=count)
        if data.size != count:
            raise TuneloomError(f"{self.path.name} is truncated (tensor {self.name}).",
                                "Re-download or re-fuse the model.")
        if self.dtype == "BF16":
            data = (data.astype(np.uint32) << 16).view(np.float32)
        else:
            data = data.astype(np.float32, copy=False)
        return data.reshape((n_rows, *row_shape) if self.shape else ())


def _read_safetensors_index(path: Path) -> list[_StoredTensor]:
    from core.model_folder import safetensors_layout

    try:
        header, base, _ = safetensors_layout(path)
    except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise TuneloomError(f"Cannot read {path.name}: {exc}", "The weights file looks damaged; re-download or re-fuse the model.") from exc
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info["dtype"]
        start, end = info["data_offsets"]
        out.append(_StoredTensor(path, name, dtype, tuple(info["shape"]), base + start, end - start))
    return out


# --------------------------------------------------------------------------- plan

@dataclass
class _PlannedTensor:
    src: _StoredTensor
    gguf_name: str
    qtype: QT
    out_shape: tuple[int, ...]  # numpy shape of the array handed to the writer
    out_dtype: type
    nbytes: int
    permute_heads: int | None = None  # llama Q/K row reorder over this many heads
    transform: Any = None  # float32 tensor as stored -> as written (Qwen3.5, see _qwen35_tensor)
    written_shape: tuple[int, ...] | None = None  # when the transform reshapes

    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor's shape as written (numpy order)."""
        return self.written_shape or self.src.shape


def _out_layout(shape: tuple[int, ...], qtype: QT) -> tuple[tuple[int, ...], type, int]:
    if qtype == QT.F32:
        return shape, np.float32, math.prod(shape) * 4
    if qtype == QT.F16:
        return shape, np.float16, math.prod(shape) * 2
    byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
    return byte_shape, np.uint8, math.prod(byte_shape)


@dataclass(frozen=True)
class _TypeRules:
    """What llama.cpp's per-tensor type choice needs to know about the model."""

    quant: str
    n_layers: int
    output_name: str  # output.weight, or token_embd.weight when the embedding is tied
    is_70b: bool = False  # llama.cpp's LLM_TYPE_70B (a bigger attn_v type in the 4-bit mixes)


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    # llama-quant.cpp: the first and last eighth of the layers and every third one between
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _block_size(qtype: QT) -> int:
    return gguf.GGML_QUANT_SIZES[qtype][0]


def _choose_qtype(gguf_name: str, shape: tuple[int, ...], rules: _TypeRules, events: Events) -> QT:
    """The type llama.cpp's converter + ``llama-quantize`` give this tensor.

    Mirrors ``tensor_allows_quantization``, ``llama_tensor_get_type_impl`` (for the file
    types offered here, no importance matrix, dense models) and ``tensor_type_fallback``.
    """
    # as llama.cpp's converter: 1-D tensors and norms stay F32, so do non-weight tensors
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return QT.F32
    default = QUANT_TYPES[rules.quant][1]
    if default in (QT.F32, QT.F16, QT.BF16):
        return default
    qtype = default
    ncols = shape[-1]
    layer = int(gguf_name.split(".")[1]) if gguf_name.startswith("blk.") else -1
    if gguf_name == rules.output_name:
        # the logits matrix (the token embedding when tied) costs the most quality
        if ncols % _block_size(default):
            qtype = QT.Q8_0
        elif default != QT.Q8_0:
            qtype = QT.Q6_K
    elif gguf_name.endswith(("attn_v.weight", "attn_qkv.weight")):
        # llama.cpp counts attn_qkv (Qwen3.5's DeltaNet input) as an attn_v-like tensor;
        # each layer has exactly one of the two, so its counter is the layer number
        if rules.quant in ("q4_k_m", "q5_k_m") and _use_more_bits(layer, rules.n_layers):
            qtype = QT.Q6_K
        if rules.is_70b and qtype == QT.Q4_K:
            qtype = QT.Q5_K
    elif gguf_name.endswith("ffn_down.weight"):
        if rules.quant in ("q4_k_m", "q5_k_m") and _use_more_bits(layer, rules.n_layers):
            qtype = QT.Q6_K
    if ncols % _block_size(qtype):
        wanted = qtype
        qtype = _FALLBACK_TYPES.get(qtype, qtype)
        if ncols % _block_size(qtype):
            qtype = QT.F16
        events.log("warning", f"{gguf_name}: row of {ncols} is not a multiple of {_block_size(wanted)} "
                              f"({wanted.name}); written as {qtype.name}, as llama.cpp does")
    return qtype


def _load_config(model_dir: Path) -> dict:
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise TuneloomError(f"{model_dir} has no config.json.", "Choose a Hugging Face model folder (config.json, tokenizer, *.safetensors).")
    try:
        return json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise TuneloomError(f"config.json in {model_dir} is not valid JSON: {exc}") from exc


def _arch_spec(config: dict) -> tuple[str, ArchSpec]:
    archs = config.get("architectures") or []
    hf_arch = archs[0] if archs else config.get("model_type", "unknown")
    spec = ARCHITECTURES.get(hf_arch)
    if spec is None:
        raise TuneloomError(
            f"Cannot export architecture {hf_arch!r} to GGUF.",
            "Supported: " + ", ".join(sorted(ARCHITECTURES)) + ". " + arch.summary(),
        )
    return hf_arch, spec


def _weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("model*.safetensors")) or sorted(
        p for p in model_dir.glob("*.safetensors") if not p.name.startswith("adapters")
    )
    if not files:
        raise TuneloomError(f"No *.safetensors weights in {model_dir}.", "Fuse the adapter first, or choose a folder with the model's weights.")
    return files


def _plan_tensors(model_dir: Path, config: dict, spec: ArchSpec, quant: str, events: Events) -> list[_PlannedTensor]:
    n_layers = config["num_hidden_layers"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_head)
    tensor_map = gguf.get_tensor_name_map(spec.arch, n_layers)

    stored: list[_StoredTensor] = []
    for path in _weight_files(model_dir):
        stored.extend(_read_safetensors_index(path))
    names = {t.name for t in stored}
    if any(n.endswith((".scales", ".biases")) for n in names) or "quantization" in config:
        raise TuneloomError(
            "This model folder holds MLX-quantized weights, which GGUF export cannot read.",
            "Fuse an adapter into it first (fusing dequantizes) and export the fused folder.",
        )

    if spec.skip_prefixes:
        skipped = [t for t in stored if t.name.startswith(spec.skip_prefixes)]
        if skipped:
            events.log("info", f"Not exported: {len(skipped)} tensor(s) outside the text model (vision tower, "
                               "multi-token-prediction head), as llama.cpp's converter leaves them out of the text GGUF")
            stored = [t for t in stored if not t.name.startswith(spec.skip_prefixes)]
            names = {t.name for t in stored}
    # a folder saved by mlx-lm keeps its own layout (mlx-lm's sanitize test: conv1d kernels [C, K, 1])
    hf_layout = any("conv1d" in t.name and len(t.shape) == 3 and t.shape[-1] != 1 for t in stored)
    if spec.tensor_rule is not None:
        names = {spec.tensor_rule(config, n, (1, 1, 1), hf_layout)[0] for n in names}
    f32_names = {gguf.TENSOR_NAMES[k].format(bid=b) + ".weight" for k in spec.f32_tensors for b in range(n_layers)}

    # the matrix that produces the logits: llama.cpp uses the token embedding when tied
    output_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT] + ".weight"
    if not any(tensor_map.get_name(n, try_suffixes=(".weight",)) == output_name for n in names):
        output_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight"
    rules = _TypeRules(
        quant, n_layers, output_name,
        # the model types llama.cpp's loader calls 70B (src/models/llama.cpp, qwen2.cpp)
        is_70b=n_layers == 80 and (spec.arch == gguf.MODEL_ARCH.QWEN2 or (spec.arch == gguf.MODEL_ARCH.LLAMA and n_head != n_kv)),
    )
    plan: list[_PlannedTensor] = []
    for t in stored:
        if t.name.endswith(".rotary_emb.inv_freq"):
            continue  # recomputed by llama.cpp from rope_theta
        if t.dtype not in _ST_DTYPES:
            raise TuneloomError(f"Tensor {t.name} has dtype {t.dtype}, which GGUF export does not read.", "Export a float16/bfloat16/float32 model.")
        name, shape, transform = t.name, t.shape, None
        if spec.tensor_rule is not None:
            name, shape, transform = spec.tensor_rule(config, t.name, t.shape, hf_layout)
        gguf_name = tensor_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise TuneloomError(f"Unexpected tensor {t.name!r} for {gguf.MODEL_ARCH_NAMES[spec.arch]}.",
                                "The weights do not match config.json's architecture.")
        # tensors the converter always writes as F32 and llama-quantize never quantizes
        qtype = QT.F32 if gguf_name in f32_names else _choose_qtype(gguf_name, shape, rules, events)
        out_shape, out_dtype, nbytes = _out_layout(shape, qtype)
        permute = None
        if spec.permute_qk and t.name.endswith(("q_proj.weight", "q_proj.bias")):
            permute = n_head
        elif spec.permute_qk and t.name.endswith(("k_proj.weight", "k_proj.bias")):
            permute = n_kv
        plan.append(_PlannedTensor(t, gguf_name, qtype, out_shape, out_dtype, nbytes, permute, transform,
                                   shape if shape != t.shape else None))

    _check_complete(plan, config, spec, n_layers)
    return plan


def _check_complete(plan: list[_PlannedTensor], config: dict, spec: ArchSpec, n_layers: int) -> None:
    """Fail here with a clear message rather than in llama.cpp's loader."""
    have = {p.gguf_name: p for p in plan}
    names = gguf.TENSOR_NAMES
    need = [names[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight", names[gguf.MODEL_TENSOR.OUTPUT_NORM] + ".weight"]
    for bid in range(n_layers):
        if spec.block_names is not None:
            need += spec.block_names(config, bid)
            continue
        for kind in _BLOCK_TENSORS + spec.extra_block_tensors:
            need.append(names[kind].format(bid=bid) + ".weight")
        for kind in spec.extra_block_biases:
            need.append(names[kind].format(bid=bid) + ".bias")
    if not config.get("tie_word_embeddings", False):
        need.append(names[gguf.MODEL_TENSOR.OUTPUT] + ".weight")
    missing = [n for n in need if n not in have]
    if missing:
        raise TuneloomError(
            f"The model's weights are incomplete: {len(missing)} tensor(s) missing, e.g. {missing[0]}.",
            "Re-download or re-fuse the model.",
        )
    emb = have[names[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight"].src.shape
    if emb[0] != config["vocab_size"]:
        raise TuneloomError(f"Embedding has {emb[0]} rows but config.json says vocab_size {config['vocab_size']}.",
                            "The weights and config.json do not belong together.")


# --------------------------------------------------------------------------- hyper-parameters

def _add_hparams(w: gguf.GGUFWriter, config: dict, spec: ArchSpec, ftype: gguf.LlamaFileType) -> None:
    n_head = config["num_attention_heads"]
    w.add_block_count(config["num_hidden_layers"])
    if (n_ctx := config.get("max_position_embeddings")) is not None:
        w.add_context_length(n_ctx)
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(config.get("num_key_value_heads", n_head))
    # transformers >= 5 writes rope_theta (and the scaling) inside "rope_parameters"
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    theta = config.get("rope_theta", rope.get("rope_theta"))
    if theta is not None:
        w.add_rope_freq_base(float(theta))
    _add_rope_scaling(w, rope)
    w.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    if (head_dim := config.get("head_dim")) is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if spec.write_vocab_and_rope_dim:
        w.add_vocab_size(config["vocab_size"])
        w.add_rope_dimension_count(config.get("head_dim") or config["hidden_size"] // n_head)
    if spec.extra_hparams is not None:
        spec.extra_hparams(w, config)
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_rope_scaling(w: gguf.GGUFWriter, rope: dict) -> None:
    rope_type = rope.get("rope_type", rope.get("type"))
    if rope_type in (None, "default"):
        return
    factor = rope.get("factor")
    if rope_type == "linear" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(factor))
    elif rope_type == "yarn" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(factor))
        if (orig := rope.get("original_max_position_embeddings")) is not None:
            w.add_rope_scaling_orig_ctx_len(int(orig))
    else:
        raise TuneloomError(f"RoPE scaling {rope_type!r} is not supported by the GGUF export.",
                            "Export a model without this rope_scaling, or convert it with llama.cpp's own converter.")


# --------------------------------------------------------------------------- tokenizer

@dataclass
class _Vocab:
    model: str  # "gpt2" or "llama"
    pre: str
    tokens: list
    toktypes: list[int]
    scores: list[float] | None
    special: gguf.SpecialVocab
    add_space_prefix: bool | None = None


def _does_token_look_special(token: str) -> bool:
    # llama.cpp's converter marks added tokens shaped like <|...|> as CONTROL even when
    # the tokenizer calls them non-special (e.g. Qwen's <|fim_prefix|>)
    return token.startswith("<|") and token.endswith("|>")


def detect_bpe_pre(tokenizer_json: dict) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE ``tokenizer.json``.

    Decided from the tokenizer's structure (normalizer, pre-tokenizer regex, byte-level
    settings), so a custom tokenizer trained with Qwen2's regex is recognised as well.
    """
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise TuneloomError("The tokenizer is not a byte-level BPE tokenizer llama.cpp can reproduce.",
                            "Supported: Qwen-style and Llama-3-style byte-level BPE, SentencePiece (tokenizer.model).")
    norm = tokenizer_json.get("normalizer")
    norm_type = norm.get("type") if norm else None
    if norm_type not in _ALLOWED_BPE_NORMALIZERS:
        raise TuneloomError(f"Unrecognised tokenizer normalizer {norm_type!r}.", "llama.cpp would tokenize this model differently; export is refused.")
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    regex = None
    if (len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel"
            and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert")
            and not steps[1].get("add_prefix_space") and not steps[1].get("use_regex", True)):
        regex = (steps[0].get("pattern") or {}).get("Regex")
    entry = BPE_PRE_TOKENIZERS.get(regex) if regex is not None else None
    if entry is None:
        raise TuneloomError(
            "Unrecognised pre-tokenizer in tokenizer.json.",
            "Only Qwen2- and Llama-3-style byte-level pre-tokenizers are supported; llama.cpp would split text differently.",
        )
    name, ignore_merges = entry
    if bool(model.get("ignore_merges", False)) != ignore_merges:
        raise TuneloomError(f"The tokenizer's ignore_merges={model.get('ignore_merges')} does not match llama.cpp's {name!r} pre-tokenizer.",
                            "llama.cpp would tokenize this model differently; export is refused.")
    if norm_type == "NFC" and name not in ("qwen2", "qwen35"):
        raise TuneloomError("Unrecognised tokenizer normalizer 'NFC' for this pre-tokenizer.", "")
    return name


def _load_bpe_tokenizer(model_dir: Path, scratch: Path):
    """(tokenizers.Tokenizer, folder SpecialVocab should read) for a byte-level BPE model."""
    from tokenizers import Tokenizer

    tok_json = model_dir / "tokenizer.json"
    if tok_json.is_file():
        return Tokenizer.from_file(str(tok_json)), model_dir
    if not (model_dir / "vocab.json").is_file():
        raise TuneloomError(f"No tokenizer found in {model_dir}.", "The folder needs tokenizer.json (or vocab.json + merges.txt, or tokenizer.model).")
    # slow-tokenizer files only: let transformers build the fast tokenizer, as a hub
    # folder's tokenizer.json would be, and give SpecialVocab a folder that has it
    from transformers import AutoTokenizer

    backend = AutoTokenizer.from_pretrained(str(model_dir)).backend_tokenizer
    backend.save(str(scratch / "tokenizer.json"))
    for name in ("tokenizer_config.json", "config.json", "chat_template.jinja", "chat_template.json"):
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, scratch / name)
    return Tokenizer.from_file(str(scratch / "tokenizer.json")), scratch


def _bpe_vocab(model_dir: Path, vocab_size: int, scratch: Path) -> _Vocab:
    tok, special_dir = _load_bpe_tokenizer(model_dir, scratch)
    pre = detect_bpe_pre(json.loads(tok.to_str()))
    vocab = tok.get_vocab(with_added_tokens=True)
    if max(vocab.values()) >= vocab_size:
        raise TuneloomError(f"The tokenizer has token id {max(vocab.values())} but the model's vocab_size is {vocab_size}.",
                            "The tokenizer does not belong to these weights.")
    added = tok.get_added_tokens_decoder()
    reverse = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    toktypes: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            toktypes.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if i in added:
            info = added[i]
            if not info.normalized:
                # llama.cpp matches added tokens on their pre-normalised text
                token = tok.decode(tok.encode(token, add_special_tokens=False).ids, skip_special_tokens=False)
            if info.special or _does_token_look_special(token):
                toktypes.append(gguf.TokenType.CONTROL)
            else:
                toktypes.append(gguf.TokenType.USER_DEFINED)
        else:
            toktypes.append(gguf.TokenType.NORMAL)
        tokens.append(token)

    special = gguf.SpecialVocab(special_dir, load_merges=True)
    if not special.merges:
        raise TuneloomError("The tokenizer has no BPE merges.", "The tokenizer files look incomplete.")
    for kind, text in (("bos", "a"), ("eos", "a")):
        if kind not in special.add_special_token:
            # not stated in tokenizer_config.json: ask the tokenizer what it does
            with_special = tok.encode(text, add_special_tokens=True).ids
            without = tok.encode(text, add_special_tokens=False).ids
            tid = special.special_token_ids.get(kind)
            if kind == "bos":
                special.add_special_token[kind] = len(with_special) > len(without) and with_special[0] == tid
            else:
                special.add_special_token[kind] = len(with_special) > len(without) and with_special[-1] == tid
    return _Vocab("gpt2", pre, tokens, toktypes, None, special)


def _spm_vocab(model_dir: Path, vocab_size: int) -> _Vocab:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(model_dir / "tokenizer.model"))
    T = gguf.TokenType
    tokens: list[bytes] = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    toktypes = [int(T.UNUSED)] * vocab_size
    if sp.vocab_size() > vocab_size:
        raise TuneloomError(f"tokenizer.model has {sp.vocab_size()} pieces but the model's vocab_size is {vocab_size}.",
                            "The tokenizer does not belong to these weights.")
    for i in range(sp.vocab_size()):
        kind = T.NORMAL
        if sp.IsUnknown(i):
            kind = T.UNKNOWN
        elif sp.IsControl(i):
            kind = T.CONTROL
        elif sp.IsUnused(i):
            kind = T.UNUSED
        elif sp.IsByte(i):
            kind = T.BYTE
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = sp.GetScore(i)
        toktypes[i] = int(kind)

    # tokens added on top of the SentencePiece model, as the converter reads them
    added_json = model_dir / "added_tokens.json"
    if added_json.is_file():
        for text, tid in json.loads(added_json.read_text(encoding="utf-8")).items():
            if tid < vocab_size:
                tokens[tid], scores[tid], toktypes[tid] = text.encode("utf-8"), -1000.0, int(T.USER_DEFINED)
    add_space_prefix = None
    cfg_path = model_dir / "tokenizer_config.json"
    if cfg_path.is_file():
        tcfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        add_space_prefix = tcfg.get("add_prefix_space")
        for tid_s, data in (tcfg.get("added_tokens_decoder") or {}).items():
            tid, text = int(tid_s), data["content"]
            if tid >= vocab_size:
                continue
            if data.get("special") or _does_token_look_special(text):
                toktypes[tid] = int(T.CONTROL)
            else:
                text = text.replace("\u2581", " ")
                toktypes[tid] = int(T.USER_DEFINED)
            tokens[tid], scores[tid] = text.encode("utf-8"), -1000.0

    special = gguf.SpecialVocab(model_dir, n_vocab=len(tokens))
    # HF's LlamaTokenizer adds BOS and not EOS unless tokenizer_config.json says otherwise
    special.add_special_token.setdefault("bos", True)
    special.add_special_token.setdefault("eos", False)
    return _Vocab("llama", "default", tokens, toktypes, scores, special, add_space_prefix)


def _load_vocab(model_dir: Path, vocab_size: int, scratch: Path) -> _Vocab:
    # the converter's order for these architectures: SentencePiece when there is a
    # tokenizer.model, byte-level BPE otherwise
    if (model_dir / "tokenizer.model").is_file():
        return _spm_vocab(model_dir, vocab_size)
    return _bpe_vocab(model_dir, vocab_size, scratch)


def _add_vocab(w: gguf.GGUFWriter, v: _Vocab) -> None:
    w.add_tokenizer_model(v.model)
    w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    if v.scores is not None:
        w.add_token_scores(v.scores)
    w.add_token_types(v.toktypes)
    if v.add_space_prefix is not None:
        w.add_add_space_prefix(v.add_space_prefix)
    v.special.add_to_gguf(w, quiet=True)


def _add_general(w: gguf.GGUFWriter, model_dir: Path, total_params: int) -> None:
    w.add_type(gguf.GGUFType.MODEL)
    try:
        meta = gguf.Metadata.load(None, model_dir, None, total_params)
        if meta.name is None:
            meta.name = model_dir.name
        meta.set_gguf_meta_model(w)
    except Exception as exc:  # noqa: BLE001 - a model card we cannot parse only costs the name
        log.debug("model card metadata skipped: %s", exc)
        w.add_name(model_dir.name)


# --------------------------------------------------------------------------- export

def _permute_for_llama_rope(data: np.ndarray, n_head: int) -> np.ndarray:
    # rows of each head go from [first half | second half] (HF rotate_half) to
    # interleaved pairs (llama.cpp's LLAMA RoPE)
    rows = data.shape[0]
    return data.reshape(n_head, 2, rows // n_head // 2, *data.shape[1:]).swapaxes(1, 2).reshape(data.shape)


# Rows are read, converted and written in blocks of about this many values: a big matrix
# (a 151k-token embedding is 136-155M values) is never whole in memory, and the blocks of
# the tensors are what the worker threads share out (:class:`_PlanBlocks`). Peak memory
# stays near (2 * workers) * 1M * (4 + 4) bytes beyond the writer's own, whatever the model,
# plus at most _PRIME_BYTES of converted blocks while the vocabulary is read; a
# block takes well under 0.2 s at the slowest type (numpy Q4_K), so a cancel waits for
# little more than that.
_CHUNK_VALUES = 1 << 20


def _convert_rows(p: _PlannedTensor, data: np.ndarray) -> np.ndarray:
    if p.qtype == QT.F16 and data.size and float(np.abs(data).max()) > _F16_MAX:
        raise TuneloomError(f"{p.gguf_name} has values beyond float16's range.", "Export as bf16 or f32 instead.")
    quantizer = _KQUANTIZERS.get(p.qtype)
    data = np.ascontiguousarray(data)
    return quantizer(data) if quantizer else gguf.quants.quantize(data, p.qtype)


def _convert_block(p: _PlannedTensor, rows, first: int, n: int) -> np.ndarray:
    """Rows ``first .. first + n`` of ``p`` converted; ``rows`` is the tensor in memory or None."""
    data = p.src.read_f32(first, n) if rows is None else rows[first:first + n]
    out = _convert_rows(p, data)
    if out.shape != (n, *p.out_shape[1:]) or out.dtype != p.out_dtype:
        raise RuntimeError(f"{p.gguf_name}: converted to {out.shape} {out.dtype}, planned {p.out_shape} {p.out_dtype}")
    return out


class _BlockPool:
    """The worker threads of one export, converting row blocks in parallel.

    Why threads: the K-quant kernels (core.export.kquants_jit, numba ``nogil``) hold no GIL,
    and neither do numpy's loops over a block or the file reads, so threads use every
    core with none of what worker processes cost: no copy of the rows per worker (a
    block is handed over as an array, not pickled or staged in shared memory), no
    interpreter start per worker (macOS's ``spawn`` re-imports numpy and gguf, about a
    second each), and nothing that can be orphaned: the threads belong to this process
    and are joined before the export returns or raises. Measured scaling: bench/README.md.
    One worker converts in the calling thread.
    """

    def __init__(self, workers: int):
        self.workers = workers
        self._executor = None
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(workers, thread_name_prefix="tuneloom-gguf")

    def __enter__(self) -> "_BlockPool":
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is not None:
            # queued blocks are dropped, running ones finish (each well under a second)
            self._executor.shutdown(wait=True, cancel_futures=True)


def _tensor_jobs(p: _PlannedTensor):
    """The conversion of ``p`` as consecutive ``(fn, args, rows done after it, rows in all, bytes out)``
    (each type works row by row)."""
    shape = p.shape
    if len(shape) < 2:  # 1-D tensors are small: one job
        yield _convert_1d, (p,), 1, 1, p.nbytes
        return
    rows = None
    if p.transform is not None:  # Qwen3.5's reorders and reshapes: small tensors, done whole
        rows = p.transform(p.src.read_f32())
    if p.permute_heads:
        # the Llama Q/K reorder mixes rows within a head: reorder the (small) tensor
        # first, then convert its rows in blocks like any other
        rows = _permute_for_llama_rope(p.src.read_f32(), p.permute_heads)
    step = max(1, _CHUNK_VALUES // math.prod(shape[1:]))
    for first in range(0, shape[0], step):
        n = min(step, shape[0] - first)
        yield _convert_block, (p, rows, first, n), first + n, shape[0], p.nbytes * n // shape[0]


def _convert_1d(p: _PlannedTensor) -> np.ndarray:
    data = p.src.read_f32()
    if p.transform is not None:
        data = p.transform(data)
    if p.permute_heads:
        data = _permute_for_llama_rope(data, p.permute_heads)
    out = _convert_rows(p, data)
    if out.shape != p.out_shape or out.dtype != p.out_dtype:
        raise RuntimeError(f"{p.gguf_name}: converted to {out.shape} {out.dtype}, planned {p.out_shape} {p.out_dtype}")
    return out


class _PlanBlocks:
    """Every block of every tensor of the plan, converted on the pool and handed back in file order.

    One stream across the tensors keeps every worker busy at the tensor boundaries: a
    Qwen3-0.6B layer's matrices are 1 to 3 blocks each, so converting tensor by tensor left
    a worker idle at the end of most of them (1.5 of 2 cores in use; one stream: 1.9).
    At most ``2 * workers`` blocks are in flight, so memory stays bounded and the writer
    streams; :meth:`prime` lets the workers run further ahead, up to a byte budget of
    converted blocks, while the calling thread does other work (reading the vocabulary).
    ``close`` drops the queued blocks and waits for the running ones, so none outlives the
    export.
    """

    def __init__(self, plan: list[_PlannedTensor], pool: _BlockPool, cancel: CancelToken | None):
        self._jobs = ((i, fn, args, done, total, nbytes) for i, p in enumerate(plan)
                      for fn, args, done, total, nbytes in _tensor_jobs(p))
        self._executor = pool._executor
        self._window = 2 * pool.workers
        self._cancel = cancel
        from collections import deque

        self._pending: deque = deque()
        self._exhausted = False

    def _submit(self, limit: int, budget: int | None = None) -> None:
        used = 0
        while not self._exhausted and len(self._pending) < limit:
            job = next(self._jobs, None)
            if job is None:
                self._exhausted = True
                return
            i, fn, args, done, total, nbytes = job
            self._pending.append((i, done, total, self._executor.submit(fn, *args)))
            used += nbytes
            if budget is not None and used >= budget:
                return

    def prime(self, budget_bytes: int) -> None:
        """Start converting up to ``budget_bytes`` of output (at most 256 blocks) ahead of the writer."""
        if self._executor is not None:
            self._submit(256, budget_bytes)

    def next_block(self) -> tuple[int, int, int, np.ndarray]:
        """``(tensor index, rows done, rows in all, converted block)`` of the next block in the file."""
        if self._executor is None:
            if self._cancel:
                self._cancel.raise_if_cancelled()
            i, fn, args, done, total, _n = next(self._jobs)
            return i, done, total, fn(*args)
        from concurrent.futures import TimeoutError as FutureTimeout

        self._submit(self._window)
        i, done, total, fut = self._pending[0]
        while True:
            if self._cancel:
                self._cancel.raise_if_cancelled()
            try:
                out = fut.result(timeout=0.05)
                break
            except FutureTimeout:
                continue
        self._pending.popleft()
        self._submit(self._window)
        return i, done, total, out

    def close(self) -> None:
        from concurrent.futures import wait

        futures = [f for *_x, f in self._pending]
        for fut in futures:
            fut.cancel()
        wait(futures)
        self._pending.clear()


class _TensorStream:
    """A planned tensor that converts itself block by block while it is written.

    ``GGUFWriter.write_tensor_data`` needs only ``nbytes`` and ``tofile(fout)`` from
    the array it is given (on little-endian machines), so handing it this object keeps
    the writer's own bookkeeping (tensor order, alignment padding) without ever holding
    the whole converted tensor. Its blocks come from the export's :class:`_PlanBlocks`;
    ``on_rows(done, total)`` follows the blocks written.
    """

    def __init__(self, p: _PlannedTensor, index: int, blocks: _PlanBlocks, on_rows=None):
        self.p, self.index, self.blocks, self.nbytes = p, index, blocks, p.nbytes
        self.on_rows = on_rows

    def tofile(self, fout) -> None:
        written = 0
        while True:
            i, done, total, chunk = self.blocks.next_block()
            if i != self.index:
                raise RuntimeError(f"{self.p.gguf_name}: got a block of tensor {i}, expected {self.index}")
            chunk.tofile(fout)
            written += chunk.nbytes
            if done >= total:
                break
            if self.on_rows:
                self.on_rows(done, total)
        if written != self.nbytes:
            raise RuntimeError(f"{self.p.gguf_name}: wrote {written} bytes, planned {self.nbytes}")


# per-block progress for the types whose conversion is the slow part of an export
_FLOAT_TYPES = (QT.F32, QT.F16, QT.BF16)


_U64 = struct.Struct("<Q")


def _pack_array_fast(val, sub_type) -> bytes | None:
    """A metadata array packed as ``gguf.GGUFWriter._pack_val`` packs it (little-endian), in one
    pass: the writer packs a 151k-token vocabulary and its merges item by item (about a second
    of one core); here a string array is one ``join`` and a number array one ``struct.pack``.
    None for what this does not cover (nested arrays, mixed or unknown item types): the
    writer's own code packs those."""
    VT = gguf.GGUFValueType
    first = val[0]
    try:
        ltype = sub_type if sub_type is not None else VT.get_type(first)
    except ValueError:
        return None
    if sub_type is None:
        # the writer's rule: every item of the type of the first (checked once per Python type)
        reps = {type(v): v for v in val}
        if any(VT.get_type(r) is not ltype for r in reps.values()):
            return None
    head = struct.pack("<IQ", ltype, len(val))
    if ltype == VT.STRING:
        if not all(isinstance(v, (str, bytes, bytearray)) for v in val):
            return None
        encoded = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in val]
        pack = _U64.pack
        return head + b"".join([piece for e in encoded for piece in (pack(len(e)), e)])
    fmt = gguf.GGUFWriter._simple_value_packing.get(ltype)
    if fmt is None:
        return None
    return head + struct.pack(f"<{len(val)}{fmt}", *val)


class _Writer(gguf.GGUFWriter):
    """``gguf.GGUFWriter`` with large metadata arrays packed by :func:`_pack_array_fast`: the same
    bytes (tests/test_gguf_export.py compares them with the writer's own packing)."""

    def _pack_val(self, val: Any, vtype, add_vtype: bool, sub_type=None) -> bytes:
        if (vtype == gguf.GGUFValueType.ARRAY and self.endianess == gguf.GGUFEndian.LITTLE
                and isinstance(val, (list, tuple)) and len(val) > 256):
            packed = _pack_array_fast(val, sub_type)
            if packed is not None:
                return (struct.pack("<I", vtype) if add_vtype else b"") + packed
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def _estimate_kv_bytes(v: _Vocab) -> int:
    toks = sum(len(t) + 12 for t in v.tokens)
    merges = sum(len(m.encode("utf-8")) + 8 for m in v.special.merges)
    template = len(str(v.special.chat_template or "").encode("utf-8"))
    return toks + merges + template + 64 * 1024


def export_gguf(model_dir, out_path, quant: str = "f16", *, events: Events | None = None,
                cancel: CancelToken | None = None, workers: int | None = None,
                chat_template: str | None = None) -> dict:
    """Write ``model_dir`` (a HF folder with float weights) as one GGUF file.

    ``tokenizer.chat_template`` is ``chat_template`` when given (core.export.pipeline passes the one that
    gives Ollama's native path the training prompt), else the folder's own, read by
    core.model_folder wherever the folder keeps it.

    Returns ``{"path", "quant", "arch", "n_tensors", "bytes"}``. Raises
    :class:`TuneloomError` for anything the user can fix (unsupported architecture or
    tokenizer, missing files, not enough disk space) and :class:`Cancelled` when
    ``cancel`` fires; in every failure ``out_path`` is left as it was.

    ``workers``: threads converting row blocks in parallel (default ``os.cpu_count()``;
    1 converts in the calling thread). The file is the same for any count. Progress:
    ``events.progress(done, n_tensors, tensor name)`` after each tensor, and for
    quantized tensors also after each block of rows, with a fractional ``done``.
    """
    events = events or NULL_EVENTS
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise TuneloomError(f"workers must be a whole number of at least 1, got {workers!r}.")
    model_dir, out_path = Path(model_dir), Path(out_path)
    quant = quants.checked(quant)
    ftype = QUANT_TYPES[quant][0]

    config = _load_config(model_dir)
    hf_arch, spec = _arch_spec(config)
    if spec.text_config:
        config = text_config(config)
    arch_name = gguf.MODEL_ARCH_NAMES[spec.arch]
    events.log("info", f"Exporting {model_dir.name} ({hf_arch} -> {arch_name}, {quant})")

    plan = _plan_tensors(model_dir, config, spec, quant, events)
    # the K-quant kernels this file needs, compiled (first export after an install) or loaded from
    # numba's cache on a thread of their own, in the order the file first needs them
    kquants.prepare([p.qtype.name for p in plan if p.qtype in _KQUANTIZERS])
    with _BlockPool(workers) as pool:
        blocks = _PlanBlocks(plan, pool, cancel)
        try:
            # the workers start on the first tensors while this thread reads the vocabulary
            blocks.prime(_PRIME_BYTES)
            return _export(model_dir, out_path, quant, arch_name, config, spec, ftype, plan, blocks, events,
                           cancel, chat_template)
        finally:
            blocks.close()


# converted blocks the workers may hold ahead of the writer while the vocabulary is read
_PRIME_BYTES = 48 << 20


def _export(model_dir: Path, out_path: Path, quant: str, arch_name: str, config: dict, spec: ArchSpec, ftype,
            plan: list[_PlannedTensor], blocks: _PlanBlocks, events: Events, cancel: CancelToken | None,
            chat_template: str | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="tuneloom-tok-") as scratch:
        vocab = _load_vocab(model_dir, config["vocab_size"], Path(scratch))
    if chat_template is None:
        from core.model_folder import read_tokenizer_info

        chat_template = read_tokenizer_info(model_dir).chat_template
    if chat_template:
        vocab.special.chat_template = chat_template
    if cancel:
        cancel.raise_if_cancelled()

    tensor_bytes = sum(gguf.GGUFWriter.ggml_pad(p.nbytes, gguf.GGUF_DEFAULT_ALIGNMENT) for p in plan)
    needed = tensor_bytes + _estimate_kv_bytes(vocab)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TuneloomError(f"Cannot create {out_path.parent}: {exc}", "Choose a folder you can write to.") from exc
    free = shutil.disk_usage(out_path.parent).free
    if free < needed + 16 * 1024 * 1024:
        raise TuneloomError(
            f"Not enough disk space for the GGUF file: it needs about {fmt_bytes(needed)}, "
            f"{fmt_bytes(free)} is free on the drive of {out_path.parent}.",
            "Free some space, choose another folder, or pick a smaller type (q8_0 or q4_k_m).",
        )

    total_params = sum(math.prod(p.src.shape) for p in plan)
    try:
        size = _write(out_path, arch_name, model_dir, config, spec, ftype, vocab, plan, total_params, events, cancel,
                      blocks)
    except OSError as exc:
        raise TuneloomError(f"Writing {out_path} failed: {exc}", "Check that the folder is writable and has free space.") from exc

    events.log("info", f"Wrote {out_path} ({fmt_bytes(size)}, {len(plan)} tensors)")
    return {"path": str(out_path), "quant": quant, "arch": arch_name, "n_tensors": len(plan), "bytes": size}


def _write(out_path: Path, arch_name: str, model_dir: Path, config: dict, spec: ArchSpec, ftype,
           vocab: _Vocab, plan: list[_PlannedTensor], total_params: int, events: Events,
           cancel: CancelToken | None, blocks: _PlanBlocks) -> int:
    """Header and metadata first, then the tensors one by one; the size of the new file."""
    with atomic_path(out_path, suffix=".gguf") as tmp:
        writer = _Writer(tmp, arch_name)
        try:
            _add_general(writer, model_dir, total_params)
            _add_hparams(writer, config, spec, ftype)
            _add_vocab(writer, vocab)
            for p in plan:
                writer.add_tensor_info(p.gguf_name, p.out_shape, np.dtype(p.out_dtype), p.nbytes, raw_dtype=p.qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for i, p in enumerate(plan):
                if cancel:
                    cancel.raise_if_cancelled()
                on_rows = None
                if p.qtype not in _FLOAT_TYPES:
                    def on_rows(done, total, i=i, name=p.gguf_name):
                        events.progress(i + done / total, len(plan), name)
                writer.write_tensor_data(_TensorStream(p, i, blocks, on_rows))
                events.progress(i + 1, len(plan), p.gguf_name)
        finally:
            writer.close()
        if cancel:
            cancel.raise_if_cancelled()
        _verify(tmp, arch_name, plan)
        return tmp.stat().st_size


def _verify(path: Path, arch_name: str, plan: list[_PlannedTensor]) -> None:
    """Read the written file's header back: keys, and every tensor's name, type, place and size.

    A header walk rather than ``gguf.GGUFReader``: the reader builds a numpy view per
    vocabulary entry, which for a 151k-token BPE vocabulary (tokens, types, merges) takes
    several seconds, longer than writing the tensors. The tests read every export back
    with ``gguf.GGUFReader`` and llama.cpp.
    """
    keys, tensors, data_start = read_tensor_table(path)
    arch = keys.get(gguf.Keys.General.ARCHITECTURE)
    if arch != arch_name or len(tensors) != len(plan):
        raise RuntimeError(f"GGUF read-back mismatch: arch {arch!r}, {len(tensors)} tensors")
    alignment = int(keys.get(gguf.Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT))
    expected_offset = data_start
    for t, p in zip(tensors, plan):
        if (t.name != p.gguf_name or t.qtype != p.qtype or t.nbytes != p.nbytes
                or tuple(reversed(t.shape)) != p.shape or t.offset != expected_offset):
            raise RuntimeError(f"GGUF read-back mismatch at tensor {t.name}")
        expected_offset += gguf.GGUFWriter.ggml_pad(t.nbytes, alignment)
    if path.stat().st_size < (tensors[-1].offset + tensors[-1].nbytes if tensors else data_start):
        raise RuntimeError("GGUF read-back mismatch: the file is shorter than its tensors")


@dataclass(frozen=True)
class GGUFTensorEntry:
    """One row of a GGUF file's tensor table."""

    name: str
    shape: tuple[int, ...]  # ggml order: the row length first
    qtype: QT
    offset: int  # absolute position of the data in the file
    nbytes: int


_GGUF_SCALAR = {  # GGUFValueType -> struct format
    gguf.GGUFValueType.UINT8: "<B", gguf.GGUFValueType.INT8: "<b", gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h", gguf.GGUFValueType.UINT32: "<I", gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f", gguf.GGUFValueType.BOOL: "<?", gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q", gguf.GGUFValueType.FLOAT64: "<d",
}


def read_tensor_table(path, arrays: dict | None = None) -> tuple[dict[str, Any], list[GGUFTensorEntry], int]:
    """(scalar and string keys, tensor table, start of the data section) of a GGUF file.

    Array values (vocabulary, merges, scores) are stepped over, not decoded, so this
    takes a fraction of a second on any model; the tensor data is not read. With ``arrays``
    (a dict), each array key is added to it as ``(length, values)``: ``values`` a numpy array
    for numbers, None for strings.
    """
    import mmap

    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        unpack = struct.unpack_from
        if buf[:4] != b"GGUF":
            raise RuntimeError(f"{path} is not a GGUF file")
        version, n_tensors, n_kv = unpack("<IQQ", buf, 4)
        if version != 3:
            raise RuntimeError(f"{path}: GGUF version {version} is not supported")
        off = 24

        def string(off: int) -> tuple[str, int]:
            (n,) = unpack("<Q", buf, off)
            return bytes(buf[off + 8:off + 8 + n]).decode("utf-8", errors="replace"), off + 8 + n

        keys: dict[str, Any] = {}
        for _ in range(n_kv):
            key, off = string(off)
            (vtype,) = unpack("<I", buf, off)
            off += 4
            if vtype == gguf.GGUFValueType.STRING:
                keys[key], off = string(off)
            elif vtype == gguf.GGUFValueType.ARRAY:
                itype, count = unpack("<IQ", buf, off)
                off += 12
                if itype == gguf.GGUFValueType.STRING:
                    for _ in range(count):
                        off += 8 + unpack("<Q", buf, off)[0]
                    if arrays is not None:
                        arrays[key] = (count, None)
                elif itype in _GGUF_SCALAR:
                    if arrays is not None:
                        arrays[key] = (count, np.frombuffer(buf, np.dtype(_GGUF_SCALAR[itype]), count, off).copy())
                    off += count * struct.calcsize(_GGUF_SCALAR[itype])
                else:
                    raise RuntimeError(f"{path}: nested GGUF arrays are not supported (key {key})")
            else:
                fmt = _GGUF_SCALAR[vtype]
                (keys[key],) = unpack(fmt, buf, off)
                off += struct.calcsize(fmt)

        raw = []
        for _ in range(n_tensors):
            name, off = string(off)
            (n_dims,) = unpack("<I", buf, off)
            shape = unpack(f"<{n_dims}Q", buf, off + 4)
            qtype, rel = unpack("<IQ", buf, off + 4 + 8 * n_dims)
            off += 4 + 8 * n_dims + 12
            raw.append((name, tuple(shape), QT(qtype), rel))
    alignment = int(keys.get(gguf.Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT))
    data_start = gguf.GGUFWriter.ggml_pad(off, alignment)
    tensors = []
    for name, shape, qtype, rel in raw:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        tensors.append(GGUFTensorEntry(name, shape, qtype, data_start + rel, math.prod(shape) // block * size))
    return keys, tensors, data_start


# --------------------------------------------------------------------------- inspection

def gguf_metadata_summary(path) -> dict:
    """The facts about a GGUF that decide how llama.cpp / Ollama will run it.

    Read with ``read_tensor_table``'s header walk, not ``gguf.GGUFReader`` (tens of seconds on a
    248k-token vocabulary); tests/test_gguf_export.py checks the two agree.
    """
    arrays: dict = {}
    keys, tensors, _ = read_tensor_table(Path(path), arrays)
    K = gguf.Keys
    arch = keys.get(K.General.ARCHITECTURE)
    template = keys.get(K.Tokenizer.CHAT_TEMPLATE)
    ftype = keys.get(K.General.FILE_TYPE)
    return {
        "arch": arch,
        "name": keys.get(K.General.NAME),
        "file_type": gguf.LlamaFileType(ftype).name if ftype is not None else None,
        "context_length": keys.get(K.LLM.CONTEXT_LENGTH.format(arch=arch)),
        "tokenizer_model": keys.get(K.Tokenizer.MODEL),
        "tokenizer_pre": keys.get(K.Tokenizer.PRE),
        "n_tokens": arrays[K.Tokenizer.LIST][0] if K.Tokenizer.LIST in arrays else 0,
        "bos_id": keys.get(K.Tokenizer.BOS_ID),
        "eos_id": keys.get(K.Tokenizer.EOS_ID),
        "pad_id": keys.get(K.Tokenizer.PAD_ID),
        "unk_id": keys.get(K.Tokenizer.UNK_ID),
        "add_bos": keys.get(K.Tokenizer.ADD_BOS),
        "add_eos": keys.get(K.Tokenizer.ADD_EOS),
        "has_chat_template": bool(template),
        "chat_template": template,
        "n_tensors": len(tensors),
        "tensor_types": sorted({t.qtype.name for t in tensors}),
    }
