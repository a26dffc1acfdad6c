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
from core.atomic import atomic_path
from core.events import NULL_EVENTS, CancelToken, Events, Progress, TuneloomError
from core.export import kquants, quants
# the tables, the vocabulary and the readers live beside this module (one-way imports: they
# import nothing from here); the names callers and tests read as core.export.gguf.X are here too
from core.export.gguf_read import GGUFTensorEntry, _read_safetensors_index, _StoredTensor, _ST_DTYPES, gguf_metadata_summary, read_tensor_table
from core.export.gguf_tables import (ARCHITECTURES, QT, QUANT_TYPES, ArchSpec, _BLOCK_TENSORS, _FALLBACK_TYPES, _KQUANTIZERS,
                                     _add_general, _add_hparams, _permute_for_llama_rope, text_config)
from core.export.gguf_vocab import BPE_PRE_TOKENIZERS, _add_vocab, _estimate_kv_bytes, _load_vocab, _Vocab, detect_bpe_pre

__all__ = ["ARCHITECTURES", "BPE_PRE_TOKENIZERS", "QUANT_TYPES", "ArchSpec", "GGUFTensorEntry", "detect_bpe_pre",
           "export_gguf", "gguf_metadata_summary", "read_tensor_table"]

from core.units import fmt_bytes  # noqa: E402

log = logging.getLogger(__name__)


_F16_MAX = float(np.finfo(np.float16).max)


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



# --------------------------------------------------------------------------- export

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
    ``events.report_progress(Progress(done, n_tensors, "tensor", name, item=name))`` after
    each tensor, and for quantized tensors also after each block of rows, with a fractional ``done``.
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
    kquants.prepare([p.qtype.name for p in plan if p.qtype in _KQUANTIZERS], cancel)
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
                on_rows = None if p.qtype in _FLOAT_TYPES else _rows_progress(events, i, len(plan), p.gguf_name)
                writer.write_tensor_data(_TensorStream(p, i, blocks, on_rows))
                events.report_progress(Progress(i + 1, len(plan), "tensor", p.gguf_name, item=p.gguf_name))
        finally:
            writer.close()
        if cancel:
            cancel.raise_if_cancelled()
        _verify(tmp, arch_name, plan)
        return tmp.stat().st_size


def _rows_progress(events: Events, i: int, n: int, name: str):
    """``on_rows`` of tensor ``i`` (a quantized one): the tensors written so far, fractional."""
    def on_rows(done: int, total: int) -> None:
        events.report_progress(Progress(i + done / total, n, "tensor", name, item=name))
    return on_rows


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
