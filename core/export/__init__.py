"""Export: a trained run (or a model folder) made into files other programs run.

The modules (the engine layout of the design notes, "Engine shape"):

- :mod:`~core.export.pipeline`: fuse -> GGUF -> Modelfile -> (optionally) Ollama, planned
  and checked before anything is written; :mod:`~core.export.run`: the export job of a run,
  its registration and the answer check; :mod:`~core.export.target`: where the files go.
- :mod:`~core.export.fuse`: the adapter folded into the base weights.
- :mod:`~core.export.gguf` (writer), :mod:`~core.export.gguf_tables` (per-architecture
  tensor names and metadata), :mod:`~core.export.gguf_vocab` (the tokenizer's vocabulary),
  :mod:`~core.export.kquants` / :mod:`~core.export.kquants_jit` (the K-quant kernels),
  :mod:`~core.export.quants` (the types offered), :mod:`~core.export.quant_price` (what a
  type costs in answers), :mod:`~core.export.adapter` (a LoRA adapter as a GGUF).
- Places and formats: :mod:`~core.export.ollama`, :mod:`~core.export.lmstudio`,
  :mod:`~core.export.llamacpp`, :mod:`~core.export.mlx`, :mod:`~core.export.peft`,
  :mod:`~core.export.model_card`, :mod:`~core.export.hub_push`.

The package itself offers the pipeline's public names (``from core.export import export,
plan_export``), as the one module ``core/export.py`` did before it became this package.
They load on first use (module ``__getattr__``), so importing a submodule (``core.export.quants``
from the Export page) does not load the pipeline, and the submodules may import each other
without a cycle through this file. Patch a name where it lives (``core.export.pipeline.X``):
``from core.export import X`` reads the pipeline's current value each time.
"""
from __future__ import annotations

import importlib

_PIPELINE = ("DISK_MARGIN_BYTES", "ExportPlan", "check_disk_space", "default_gguf_name", "estimate_export_bytes",
             "export", "gguf_file_bytes", "gguf_file_sizes", "plan_export", "read_back", "resolve_source",
             "run_tools", "tool_verify_case", "write_export_record")

__all__ = list(_PIPELINE)


def __getattr__(name: str):
    if name in _PIPELINE:
        return getattr(importlib.import_module("core.export.pipeline"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PIPELINE))
