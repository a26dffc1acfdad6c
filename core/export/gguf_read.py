"""Reading tensor files: safetensors headers in, a written GGUF's tables back.

numpy has no bfloat16, so safetensors' numpy loader refuses BF16 tensors and torch is
not a dependency: :func:`_read_safetensors_index` walks the documented layout itself.
:func:`read_tensor_table` and :func:`gguf_metadata_summary` read a GGUF's header
(metadata and tensor table) without loading its data: the export's read-back check, the
Export page's summary and the tests use them. Imports nothing of the writer.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from core.events import TuneloomError

QT = gguf.GGMLQuantizationType


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


# --------------------------------------------------------------------------- a GGUF's tables

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
