"""Export a run or a model folder: fuse -> GGUF -> Modelfile -> (optionally) Ollama."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from core import runs
from core.events import NULL_EVENTS, CancelToken, Events, TuneloomError


def resolve_source(source: str | Path, adapter: str | Path | None = None) -> tuple[Path, Path | None]:
    """(base model folder, adapter folder or None) for a run folder or a model folder."""
    src = Path(source)
    if not src.exists():
        raise TuneloomError(f"{src} does not exist.", "Give a run folder or a model folder.")
    if (src / "adapter_config.json").exists() and (src / "adapters.safetensors").exists():  # a run folder
        cfg = runs.read_json(src / "adapter_config.json") or {}
        run_cfg = runs.read_json(src / "config.json") or {}
        base = cfg.get("base_model") or run_cfg.get("model")
        if not base:
            raise TuneloomError(f"{src} has adapters but does not say which base model they belong to.",
                                "Pass the model folder as SOURCE and the run with --adapter.")
        return Path(base), src
    if not (src / "config.json").exists():
        raise TuneloomError(f"{src} is neither a model folder (config.json) nor a run folder (adapters).")
    return src, Path(adapter) if adapter else None


def export(source, *, adapter=None, gguf, quant: str = "f16", ollama: str | None = None, system: str | None = None,
           force: bool = False, modelfile: str | Path | None = None, events: Events | None = None,
           cancel: CancelToken | None = None) -> dict:
    from core import ollama as ol
    from core.fuse import fuse_model
    from core.gguf_export import export_gguf

    events = events or NULL_EVENTS
    if ollama:
        ol.validate_model_name(ollama)  # before minutes of fusing and writing, not after
    base, adapter_dir = resolve_source(source, adapter)
    gguf = Path(gguf)
    result: dict = {"base": str(base), "adapter": str(adapter_dir) if adapter_dir else None}
    tmp = None
    try:
        model_dir = base
        if adapter_dir is not None:
            tmp = Path(tempfile.mkdtemp(prefix="tuneloom-fuse-", dir=gguf.parent if gguf.parent.exists() else None))
            events.log("info", f"fusing {adapter_dir} into {base}")
            model_dir = fuse_model(base, adapter_dir, tmp / "fused", events=events, cancel=cancel)
        res = export_gguf(model_dir, gguf, quant=quant, events=events, cancel=cancel)
        result.update(gguf=res["path"], quant=quant)
        tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        mf = Path(modelfile) if modelfile else gguf.with_name("Modelfile")
        num_ctx = None
        if adapter_dir is not None:
            num_ctx = (runs.read_json(adapter_dir / "config.json") or {}).get("max_seq_len")
        ol.write_modelfile(mf, gguf, tok_cfg, system=system, num_ctx=num_ctx)
        result["modelfile"] = str(mf)
        if ollama:
            template, stops = ol.go_template_for(tok_cfg)
            result["ollama"] = ol.register_model(
                gguf, ollama, template=template, stops=stops, system=system, force=force,
                parameters=ol.modelfile_parameters(tok_cfg, num_ctx=num_ctx), modelfile_path=mf,
                events=events, cancel=cancel)
        else:
            result["ollama_command"] = ol.ollama_create_command(mf, "NAME")
        return result
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
