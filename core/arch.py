"""The supported model architectures: one record per family, every fact the rest of Tuneloom needs.

Training (which linear layers get LoRA adapters, whether examples may be packed, whether the
output head may run on trained positions only), the catalog's estimates, the model-folder check
(which tensors a checkpoint must hold), fusing (norms stored zero-centred) and the GGUF export
(llama.cpp architecture, Q/K row order, block tensors, biases, text sub-config, tensors to skip)
all read these records. A new family with a standard (Llama-like) block is one more ``Arch``
here; a family with a new kind of layer also needs its GGUF tensor rules (core.export.gguf's
``_ARCH_HOOKS``) and its catalog dimensions.

Module paths are as mlx-lm names a block's modules (``self_attn.q_proj``), which are also the
Hugging Face checkpoint's names below ``model.layers.N.``.
"""
from __future__ import annotations

from dataclasses import dataclass

# The parts of a standard decoder block (Llama, Qwen2, Qwen3 and Qwen3.5's full-attention layers)
ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
NORMS = ("input_layernorm", "post_attention_layernorm")
# The GGUF tensor kinds (gguf.MODEL_TENSOR member names) every standard block has in llama.cpp
STANDARD_GGUF_BLOCK = ("ATTN_NORM", "ATTN_Q", "ATTN_K", "ATTN_V", "ATTN_OUT", "FFN_NORM", "FFN_GATE", "FFN_UP",
                       "FFN_DOWN")

# Qwen3.5's Gated DeltaNet layers (3 of every 4) mix tokens through their input projections
# (q, k and v in one matrix; z, the output gate) and their output projection: these are its
# "attention" targets. in_proj_a / in_proj_b stay frozen: they produce one number per value head
# (decay and write strength of the recurrent state), so they are only n_value_heads rows
# (16 x 1024): a rank-8 update would be half their full rank, and they set how fast the state
# forgets, which a small fine-tune easily destabilises.
DELTANET = ("linear_attn.in_proj_qkv", "linear_attn.in_proj_z", "linear_attn.out_proj")
# every tensor of a DeltaNet layer's token mixer, as the checkpoint stores it (``<name>.weight``)
DELTANET_ALL = ("linear_attn.in_proj_qkv", "linear_attn.in_proj_z", "linear_attn.in_proj_a",
                "linear_attn.in_proj_b", "linear_attn.conv1d", "linear_attn.norm", "linear_attn.out_proj")


@dataclass(frozen=True)
class Arch:
    """One supported architecture family."""

    key: str  # our name for it (the mlx-lm / HF model_type)
    label: str  # as the user reads it ("Qwen2 / Qwen2.5")
    model_types: tuple[str, ...]  # config.json "model_type" values
    hf_classes: tuple[str, ...]  # config.json "architectures" values
    gguf_arch: str  # gguf.MODEL_ARCH member name
    attention: tuple[str, ...] = ATTENTION  # adapted by train (both "targets" settings)
    mlp: tuple[str, ...] = MLP  # adapted with targets="all"
    recurrent: tuple[str, ...] = ()  # recurrent token mixers' projections adapted like attention
    recurrent_tensors: tuple[str, ...] = ()  # every tensor of a recurrent layer (the folder check)
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3): self_attn.q_norm / k_norm
    qkv_bias: bool = False  # q/k/v projections carry biases (Qwen2)
    permute_qk: bool = False  # llama.cpp's LLAMA graph ropes interleaved pairs: Q/K rows reordered
    gguf_vocab_and_rope_dim: bool = False  # llama.cpp's converter writes vocab_size / rope dims (llama)
    gguf_block: tuple[str, ...] = STANDARD_GGUF_BLOCK  # GGUF tensor kinds every block has
    text_config: bool = False  # hyper-parameters nested under config["text_config"]
    text_prefixes: tuple[str, ...] = ()  # the text model's tensor prefixes, by layout (HF first)
    skip_prefixes: tuple[str, ...] = ()  # checkpoint tensors that are not the text model
    centred_norms: tuple[str, ...] = ()  # norm weights stored zero-centred (scaled by 1 + w)
    packing: bool = True  # examples may be packed into one row (no state flows along the row)
    selective_head: bool = True  # __call__ is head(body(x)): logits on trained positions only
    chat_fallback: str = "chatml"  # the chat format of a base model without a template
    classes_text: str = ""  # the HF classes as the supported-models sentence names them (default: all)

    @property
    def adapter_keys(self) -> tuple[str, ...]:
        """Every module train may adapt in this family (attention, recurrent mixers, MLP)."""
        return self.attention + self.recurrent + self.mlp


# Parts of a Qwen3.5 checkpoint that are not the text model of llama.cpp's qwen35 graph.
# The vision tower (model.visual.*; vision_tower.* in mlx-vlm's layout) is read by llama.cpp
# from a separate mmproj file, never from the text GGUF. The multi-token-prediction head
# (mtp.*) is dropped deliberately, as llama.cpp's converter does with --no-mtp: llama.cpp uses
# it only for speculative decoding, mlx-lm drops it on load so a fine-tune never trains it, and
# without it the file needs no nextn_predict_layers and block_count is num_hidden_layers.
QWEN35_SKIPPED_PREFIXES = ("model.visual.", "visual.", "vision_tower.", "model.vision_tower.", "mtp.", "model.mtp.")

ARCHS: tuple[Arch, ...] = (
    Arch("qwen2", "Qwen2 / Qwen2.5", ("qwen2",), ("Qwen2ForCausalLM",), "QWEN2", qkv_bias=True),
    Arch("qwen3", "Qwen3", ("qwen3",), ("Qwen3ForCausalLM",), "QWEN3", qk_norm=True,
         gguf_block=STANDARD_GGUF_BLOCK + ("ATTN_Q_NORM", "ATTN_K_NORM")),
    Arch("qwen3_5", "Qwen3.5", ("qwen3_5",),
         ("Qwen3_5ForConditionalGeneration", "Qwen3_5ForCausalLM"), "QWEN35",
         classes_text="Qwen3_5ForConditionalGeneration, its text model",
         recurrent=DELTANET, recurrent_tensors=DELTANET_ALL, qk_norm=True, text_config=True,
         # the hub's (transformers) layout, and the one mlx-lm and mlx-vlm save (mlx-community's
         # 4-bit conversions, a folder fused by mlx-lm)
         text_prefixes=("model.language_model.", "language_model.model."),
         skip_prefixes=QWEN35_SKIPPED_PREFIXES,
         # zero-centred RMSNorm weights, as mlx-lm's qwen3_5.sanitize names them (mlx-lm adds the
         # 1 on load; the DeltaNet's gated norm scales by w and is not among them)
         centred_norms=(".input_layernorm.weight", ".post_attention_layernorm.weight", "model.norm.weight",
                        ".q_norm.weight", ".k_norm.weight"),
         # its Gated DeltaNet layers carry a state matrix per head and a 4-token causal
         # convolution along the sequence: a block-diagonal mask cannot stop it flowing from one
         # packed example into the next
         packing=False),
    Arch("llama", "Llama / TinyLlama", ("llama",), ("LlamaForCausalLM",), "LLAMA", permute_qk=True,
         gguf_vocab_and_rope_dim=True, chat_fallback="zephyr"),
)

# Relatives of the supported recurrent families that mlx-lm can load but Tuneloom does not export:
# training refuses to pack them for the same reason.
OTHER_RECURRENT_TYPES = ("qwen3_5_moe", "qwen3_next")

BY_MODEL_TYPE: dict[str, Arch] = {mt: a for a in ARCHS for mt in a.model_types}
BY_HF_CLASS: dict[str, Arch] = {c: a for a in ARCHS for c in a.hf_classes}


def for_model_type(model_type: str | None) -> Arch | None:
    return BY_MODEL_TYPE.get(model_type or "")


def for_hf_class(name: str | None) -> Arch | None:
    return BY_HF_CLASS.get(name or "")


def for_config(config: dict) -> Arch | None:
    """The record of a config.json (by its "architectures", else its "model_type")."""
    archs = config.get("architectures") or []
    return (for_hf_class(archs[0]) if archs else None) or for_model_type(config.get("model_type"))


def text_config(config: dict) -> dict:
    """A config with its ``text_config`` (a multimodal checkpoint's text model) lifted to the top
    level, as llama.cpp's converter reads the hyper-parameters (the text values win)."""
    sub = config.get("text_config")
    return {**config, **(sub if isinstance(sub, dict) else {})}


def _union(attr: str) -> tuple[str, ...]:
    out: list[str] = []
    for a in ARCHS:
        out += [k for k in getattr(a, attr) if k not in out]
    return tuple(out)


# Every family's modules together (train adapts the ones a model's layers have)
ATTENTION_KEYS = _union("attention")
MLP_KEYS = _union("mlp")
RECURRENT_KEYS = _union("recurrent")
SELECTIVE_HEAD_TYPES = frozenset(mt for a in ARCHS if a.selective_head for mt in a.model_types)
RECURRENT_TYPES = frozenset(mt for a in ARCHS if not a.packing for mt in a.model_types) | set(OTHER_RECURRENT_TYPES)


def summary() -> str:
    """The supported families in one sentence (the folder check's hint)."""
    parts = [f"{a.label} ({a.classes_text or ', '.join(a.hf_classes)})" for a in ARCHS]
    return "Tuneloom trains and exports " + ", ".join(parts[:-1]) + " and " + parts[-1] + " models."
