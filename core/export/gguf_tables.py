"""The GGUF tables: per-architecture tensor rules, the quant types, the hyper-parameters.

What :mod:`core.export.gguf` writes about a model besides its vocabulary: the tensor-name
rules of each family core.arch lists (:data:`ARCHITECTURES`, with the Qwen3.5 hooks: its
recurrent blocks, tiled value heads and the text model's config), the GGUF file and tensor
types of each quant (:data:`QUANT_TYPES`, llama.cpp's fallbacks, the K-quant packers), the
hyper-parameter keys and the ``general.*`` metadata. Imports nothing of the writer.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from core import arch
from core.export import kquants, quants
from core.events import TuneloomError

log = logging.getLogger("core.export.gguf")


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



# --------------------------------------------------------------------------- tensor rules

def _permute_for_llama_rope(data: np.ndarray, n_head: int) -> np.ndarray:
    # rows of each head go from [first half | second half] (HF rotate_half) to
    # interleaved pairs (llama.cpp's LLAMA RoPE)
    rows = data.shape[0]
    return data.reshape(n_head, 2, rows // n_head // 2, *data.shape[1:]).swapaxes(1, 2).reshape(data.shape)
