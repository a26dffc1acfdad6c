"""The GGUF types Tuneloom writes: one table read by the exporter, the CLI, the Export page and the size estimate.

Each type names its GGUF file type and the type llama.cpp gives the 2-D weight matrices of such a
file (``llama_ftype_get_default_type``) as ``gguf`` members; bytes per weight come from gguf's own
``GGML_QUANT_SIZES``. Importing this module does not import gguf (the CLI's parser reads the table).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuantType:
    name: str  # as the CLI and file names spell it ("q4_k_m")
    label: str  # as the screen shows it ("Q4_K_M")
    blurb: str  # one line: its size, its quality and when to pick it
    file_type: str  # gguf.LlamaFileType member recorded in the file
    weight_type: str  # gguf.GGMLQuantizationType member of its 2-D weight matrices

    @property
    def bytes_per_weight(self) -> float:
        """Bytes a weight takes in this type's blocks (gguf.GGML_QUANT_SIZES: block bytes / values per block).
        K-quant mixes keep some tensors at more bits: the exporter's tensor plan has the exact size."""
        import gguf

        values, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[self.weight_type]]
        return size / values


QUANTS: dict[str, QuantType] = {q.name: q for q in (
    QuantType("f32", "F32", "32 bits a weight, twice F16; no smaller loss than F16 for a model trained in 16 bits.",
              "ALL_F32", "F32"),
    QuantType("f16", "F16", "16 bits a weight, the largest file; exactly the fine-tune's quality. Pick it to keep "
                            "everything, or to quantize later with other tools.", "MOSTLY_F16", "F16"),
    QuantType("bf16", "BF16", "16 bits a weight like F16, with F32's range; for models published in bfloat16.",
              "MOSTLY_BF16", "BF16"),
    QuantType("q8_0", "Q8_0", "8.5 bits a weight, about half of F16; answers almost always the same as F16. Pick it "
                              "when memory allows: the safest smaller file.", "MOSTLY_Q8_0", "Q8_0"),
    QuantType("q4_0", "Q4_0", "4.5 bits a weight, the older 4-bit type; more loss than Q4_K_M at about its size.",
              "MOSTLY_Q4_0", "Q4_0"),
    QuantType("q4_k_m", "Q4_K_M", "4.8 bits a weight on average, about 30% of F16; some loss, noticeable on tiny "
                                  "models. Ollama's usual choice for models of 3B and more.", "MOSTLY_Q4_K_M", "Q4_K"),
    QuantType("q5_k_m", "Q5_K_M", "5.5 bits a weight on average, about a third of F16; a small loss. Pick it for "
                                  "larger models on a laptop.", "MOSTLY_Q5_K_M", "Q5_K"),
    QuantType("q6_k", "Q6_K", "6.6 bits a weight, about 40% of F16; very close to F16. Pick it for a good model that "
                              "must be smaller than Q8_0.", "MOSTLY_Q6_K", "Q6_K"),
)}

# the types the Export page offers and the quality check measures, largest first
OFFERED = ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m")
DEFAULT = "f16"  # `tuneloom export`'s type when none is given: full quality


def checked(name: str) -> str:
    """``name`` as the table spells it (lower case); TuneloomError when it is no type of the table."""
    from core.events import TuneloomError

    q = str(name).lower()
    if q not in QUANTS:
        raise TuneloomError(f"Unknown GGUF type {name!r}.", "Choose one of: " + ", ".join(QUANTS) + ".")
    return q
