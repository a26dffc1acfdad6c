"""Export a run or a model folder: fuse -> GGUF -> Modelfile -> (optionally) Ollama.

Everything an export needs is checked before anything is written (:func:`plan_export`):
the source, the chat template (present, reproducible as an Ollama TEMPLATE, and an
embedded GGUF template that gives the training prompt on Ollama's native path), the
Modelfile's values, the Ollama name, the GGUF type and the disk space for the fused
copy and the GGUF. The GGUF and the Modelfile are then written under temporary names
and renamed into place together, so a failure (cancel, disk full, anything) leaves no
GGUF without its Modelfile and no partial file. Registration comes last: when it
fails the GGUF and Modelfile stay, with the ``ollama create`` command in the error.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from core import atomic, runs
from core.events import NULL_EVENTS, CancelToken, Events, StageClock, TuneloomError
from core.export.quants import QUANTS, checked
from core.units import fmt_bytes

# K-quant mixes keep some tensors (output, attn_v, ffn_down) at more bits: allow for it (fallback only)
_QUANT_SLACK = 1.25
_FLOAT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
DISK_MARGIN_BYTES = 32 * 2**20


def resolve_source(source: str | Path, adapter: str | Path | None = None) -> tuple[Path, Path | None]:
    """(base model folder, adapter folder or None) for a run folder or a model folder."""
    src = Path(source)
    if not src.exists():
        raise TuneloomError(f"{src} does not exist.", "Give a run folder or a model folder.")
    run = runs.RunFolder(src)
    if run.has_adapter:  # a run folder
        base = run.base_model
        if not base:
            raise TuneloomError(f"{src} has adapters but does not say which base model they belong to.",
                                "Pass the model folder as SOURCE and the run with --adapter.")
        return Path(base), src
    if not (src / "config.json").exists():
        raise TuneloomError(f"{src} is neither a model folder (config.json) nor a run folder (adapters).")
    return src, Path(adapter) if adapter else None


def default_gguf_name(source: str | Path, quant: str = "f16") -> str:
    """The GGUF file name an export of ``source`` writes when no path is given: ``<folder>-<quant>.gguf``."""
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source).resolve().name).strip("-.") or "model"
    return f"{stem}-{quant.lower()}.gguf"


# --------------------------------------------------------------------------- disk estimate

def _tensor_values(model_dir: Path) -> tuple[int, int]:
    """(values once dequantized, bytes per float value) of a model folder's weights, from the
    safetensors headers (an MLX-quantized matrix stores 32 // bits values per U32)."""
    from core.model_folder import SAFETENSORS_DTYPE_BYTES, read_safetensors_header

    config = runs.read_json(model_dir / "config.json") or {}
    quant = config.get("quantization") or config.get("quantization_config") or {}
    values = 0
    float_bytes = 0
    for shard in sorted(model_dir.glob("*.safetensors")):
        header, _ = read_safetensors_header(shard)
        for name, info in header.items():
            if name == "__metadata__" or name.endswith((".scales", ".biases")):
                continue
            n = math.prod(info["shape"]) if info["shape"] else 1
            if info["dtype"] == "U32":
                # per-layer entries (mixed precision) are keyed by the module path
                layer = quant.get(name.rsplit(".", 1)[0]) if isinstance(quant, dict) else None
                bits = (layer or {}).get("bits") if isinstance(layer, dict) else None
                n *= 32 // int(bits or quant.get("bits") or 4)
            else:
                float_bytes = max(float_bytes, SAFETENSORS_DTYPE_BYTES[info["dtype"]] if info["dtype"] in ("F32", "F16", "BF16") else 0)
            values += n
    dtype = config.get("torch_dtype") or config.get("dtype")
    return values, _FLOAT_BYTES.get(dtype, float_bytes or 2)


def estimate_export_bytes(base: Path, quant: str, *, fuse: bool) -> dict:
    """Bytes the export will write: ``{"fused", "gguf"}`` (the fused copy is temporary). The GGUF's size is
    :func:`gguf_file_bytes` (the exporter's own tensor plan), or a per-weight figure for an MLX-quantized base."""
    values, float_bytes = _tensor_values(base)
    try:
        size = gguf_file_bytes(base, quant)
    except TuneloomError:
        # only for a base the exporter cannot plan directly (MLX-quantized: it is fused, i.e. dequantized,
        # first): bytes per weight of the type's blocks (core.export.quants, from gguf's GGML_QUANT_SIZES)
        q = QUANTS.get(quant.lower(), QUANTS["f16"])
        per = q.bytes_per_weight * (_QUANT_SLACK if q.name.startswith("q") else 1.0)
        size = int(values * per) + 8 * 2**20
    return {"fused": values * float_bytes if fuse else 0, "gguf": size}


def gguf_file_sizes(model_dir: Path, quants) -> dict[str, int]:
    """:func:`gguf_file_bytes` for several types, the vocabulary read once (a Qwen tokenizer.json is 7 MB)."""
    meta: dict = {}
    return {q: gguf_file_bytes(model_dir, q, _meta=meta) for q in quants}


def gguf_file_bytes(model_dir: Path, quant: str, *, _meta: dict | None = None) -> int:
    """The size of the GGUF an export of ``model_dir`` as ``quant`` writes, from safetensors headers and the
    tokenizer files only (milliseconds): every tensor with the type the exporter gives it (the K-quant mixes
    keep the output and some attn_v / ffn_down tensors at 6 bits, rows that are not whole blocks fall back)
    and its exact size from gguf's block sizes (GGML_QUANT_SIZES), the tensor table, and the metadata (the
    vocabulary, the merges, the chat template). A fused model has the base's tensors, so the base tells."""
    import gguf

    from core.export import gguf as ge

    model_dir = Path(model_dir)
    config = ge._load_config(model_dir)
    _, spec = ge._arch_spec(config)
    if spec.text_config:  # Qwen3.5 nests its text model's dimensions, as export_gguf reads them
        config = ge.text_config(config)
    plan = ge._plan_tensors(model_dir, config, spec, quant.lower(), NULL_EVENTS)
    align = gguf.GGUF_DEFAULT_ALIGNMENT
    data = sum(gguf.GGUFWriter.ggml_pad(p.nbytes, align) for p in plan)
    # per tensor: name (u64 length + bytes), n_dims (u32), dims (u64 each), type (u32), offset (u64)
    table = sum(8 + len(p.gguf_name.encode()) + 4 + 8 * len(p.out_shape) + 4 + 8 for p in plan)
    if _meta is None or "bytes" not in _meta:
        size = _metadata_bytes(model_dir, config)
        if _meta is not None:
            _meta["bytes"] = size
    else:
        size = _meta["bytes"]
    return 24 + size + table + align + data


def _metadata_bytes(model_dir: Path, config: dict) -> int:
    """The GGUF's key-value section: the vocabulary dominates (one string, type and, for SentencePiece,
    score per token; the BPE merges), then the chat template; about 2 kB of model parameters and names."""
    tok = runs.read_json(model_dir / "tokenizer.json") or {}
    model = tok.get("model") or {}
    vocab = model.get("vocab") or {}
    if not vocab:  # a slow-tokenizer folder: vocab.json and merges.txt
        vocab = runs.read_json(model_dir / "vocab.json") or {}
        try:
            lines = (model_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
            model = {"type": "BPE", "merges": [x for x in lines if x and not x.startswith("#version")]}
        except OSError:
            pass
    tokens = [t[0] if isinstance(t, list) else t for t in vocab] if isinstance(vocab, (dict, list)) else []
    seen = set(tokens)
    tokens += [a["content"] for a in tok.get("added_tokens") or [] if isinstance(a, dict)
               and a.get("content") not in seen]
    n = max(len(tokens), int(config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size") or 0))
    size = sum(8 + len(str(t).encode()) for t in tokens) + (n - len(tokens)) * (8 + 10)  # padded: [PAD12345]
    size += n * 4  # token types (i32)
    if model.get("type") != "BPE":
        size += n * 4  # scores (f32)
    merges = model.get("merges") or []
    size += sum(8 + len((" ".join(m) if isinstance(m, list) else str(m)).encode()) for m in merges)
    tcfg = runs.read_json(model_dir / "tokenizer_config.json") or {}
    template = tcfg.get("chat_template")
    size += len(template.encode()) if isinstance(template, str) else 1500
    return size + 2048


def _free_bytes(path: Path) -> int:
    p = path
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def check_disk_space(gguf_dir: Path, need: dict) -> None:
    """Refuse before writing when the fused copy and the GGUF will not fit (both go on the GGUF's drive)."""
    total = need["fused"] + need["gguf"]
    free = _free_bytes(gguf_dir)
    if free < total + DISK_MARGIN_BYTES:
        what = "the merged model and the GGUF file need" if need["fused"] else "the GGUF file needs"
        raise TuneloomError(
            f"Not enough disk space to export: {what} about {fmt_bytes(total)}, {fmt_bytes(free)} is free "
            f"on the drive of {gguf_dir}.",
            "Free some space, choose a folder on another drive, or pick a smaller type (q8_0 or q4_k_m).")


def _disk_full(exc: OSError, where: Path) -> TuneloomError:
    return TuneloomError(f"The drive of {where} filled up while exporting ({exc.strerror or exc}); nothing was kept.",
                         "Free some space or choose another folder, then export again.")


# --------------------------------------------------------------------------- the plan

@dataclass
class ExportPlan:
    """What an export will do, worked out (and checked) before anything is written."""

    base: Path
    adapter: Path | None
    gguf: Path | None  # None: Modelfile only
    modelfile: Path
    gguf_ref: Path  # the GGUF the Modelfile's FROM names
    quant: str
    thinking: bool
    template_source: str
    chat_format: object  # core.chat_templates.ChatFormat
    embedded_template: object  # core.chat_templates.EmbeddedTemplate
    modelfile_text: str
    parameters: dict
    tokenizer_config: dict
    need: dict = field(default_factory=dict)
    adapter_file: Path | None = None  # the run's adapter weights merged: its best (default) or final one
    tools: bool = False  # the run trained on tool calls (config.json "tools"): both templates render tools

    def as_dict(self) -> dict:
        return {"base": str(self.base), "adapter": str(self.adapter) if self.adapter else None,
                "gguf": str(self.gguf) if self.gguf else None, "modelfile": str(self.modelfile),
                "quant": self.quant, "thinking": self.thinking, "chat_template_source": self.template_source,
                "ollama_template": self.chat_format.kind, "embedded_template": self.embedded_template.kind,
                "tools": self.tools, "bytes_needed": self.need}


def plan_export(source, *, adapter=None, gguf=None, quant: str = "f16", ollama: str | None = None,
                system: str | None = None, modelfile: str | Path | None = None,
                temperature: float | None = None, replace: bool = False) -> ExportPlan:
    """Check everything an export needs and return the plan; raises :class:`TuneloomError` (nothing written).
    ``temperature``: the PARAMETER temperature to bake in (None: Tuneloom's default)."""
    from core.export import ollama as ol
    from core import chat_templates as ct
    from core.hub import validate_model_dir
    from core.model_folder import read_tokenizer_info, run_thinking

    if ollama:
        ol.validate_model_name(ollama)  # before minutes of fusing and writing, not after
    if gguf is None and modelfile is None:
        raise TuneloomError("Nothing to export: give a GGUF path, a Modelfile path, or both.",
                            "For example: tuneloom export RUN --gguf model.gguf")
    if gguf is None and ollama:
        raise TuneloomError("Registering in Ollama needs the GGUF file.", "Add --gguf OUT.gguf.")
    quant = checked(quant)
    base, adapter_dir = resolve_source(source, adapter)

    check = validate_model_dir(base, load_tokenizer=False)
    if not check.ok:
        first = check.problems[0]
        raise TuneloomError(f"The base model cannot be exported: {first.message}", first.hint)
    info = read_tokenizer_info(base)
    if not info.has_chat_template:
        raise ct.TemplateNotSupported(
            f"{base.name} has no chat template (not in tokenizer_config.json, chat_template.jinja or "
            "chat_template.json), so neither Ollama nor llama.cpp can be told how to build its prompt.",
            "Use a chat (instruct) model, or add its chat_template.jinja to the folder.")
    thinking = run_thinking(adapter_dir)
    tools = run_tools(adapter_dir)
    fmt = ct.export_chat_format(info.config, thinking=thinking, tools=tools)
    embedded = ct.embedded_chat_template(info.config, thinking=thinking, architecture=check.architecture, tools=tools)

    gguf_path = Path(gguf) if gguf is not None else None
    from core.export.target import check_targets, modelfile_for

    mf = Path(modelfile) if modelfile else modelfile_for(gguf_path)  # NAME.Modelfile: one per GGUF
    # before any work: not into the source, not over a file it did not make, and a folder it can write
    check_targets(gguf_path, mf, base=base, adapter=adapter_dir, replace=replace)
    gguf_ref = gguf_path if gguf_path is not None else mf.with_name(default_gguf_name(source, quant))
    num_ctx = runs.RunFolder(adapter_dir).config.get("max_seq_len") if adapter_dir else None
    if temperature is not None and not (0 <= float(temperature) <= 2):
        raise TuneloomError(f"The temperature must be between 0 and 2, not {temperature}.", "Use e.g. 0.7.")
    params = ol.modelfile_parameters(info.config, num_ctx=num_ctx, **(
        {"temperature": float(temperature)} if temperature is not None else {}))
    text = ol.modelfile_text(gguf_ref, mf.parent, fmt.template, fmt.stops, parameters=params, system=system,
                             modelfile_name=mf.name)

    need = estimate_export_bytes(base, quant, fuse=adapter_dir is not None) if gguf_path is not None else \
        {"fused": 0, "gguf": 0}
    if gguf_path is not None:
        check_disk_space(gguf_path.parent, need)
    return ExportPlan(base, adapter_dir, gguf_path, mf, gguf_ref, quant, thinking, info.describe_source(), fmt,
                      embedded, text, params, info.config, need, tools=tools)


def run_tools(run_dir: str | Path | None) -> bool:
    """Whether a training run trained on tool calls (``"tools": true`` in its config.json); False when absent."""
    if run_dir is None:
        return False
    return bool(runs.RunFolder(run_dir).config.get("tools"))


def tool_verify_case(run_dir: str | Path, *, events: Events | None = None) -> dict | None:
    """The held-out question the verify step asks with tools: the first validation record with tool
    definitions and an assistant turn that calls one, cut before that turn. ``{"messages", "tools",
    "expected", "model"}`` for :func:`core.export.ollama.check_tool_answer`; None when there is none."""
    from core import chat_templates as ct
    from core.evaluate import run_split

    try:
        records = run_split(run_dir, events=events)[1]
    except TuneloomError:
        return None
    for r in records:
        tools = getattr(r, "tools", None) or (r.get("tools") if isinstance(r, dict) else None)
        messages = list(getattr(r, "messages", None) or (r.get("messages") if isinstance(r, dict) else None) or [])
        if not tools:
            continue
        for i, m in enumerate(messages):
            if m.get("role") == "assistant" and m.get("tool_calls") and any(
                    x.get("role") == "user" for x in messages[:i]):
                base, _ = resolve_source(run_dir)
                return {"messages": messages[:i], "tools": list(tools), "expected": ct.tool_calls_of(m),
                        "model": str(base)}
    return None


def _temp_name(dest: Path, suffix: str) -> Path:
    from core.export.target import temp_prefix

    # the writer's pid in the name: the next export removes what a killed one left (export_target.clean_stale)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(dest), suffix=".part" + suffix, dir=dest.parent)
    os.close(fd)
    return Path(tmp)


def export(source, *, adapter=None, gguf=None, quant: str = "f16", ollama: str | None = None, system: str | None = None,
           force: bool = False, modelfile: str | Path | None = None, events: Events | None = None,
           cancel: CancelToken | None = None, temperature: float | None = None, verify_messages: list | None = None,
           verify_options: dict | None = None, replace_files: bool = False, final: bool = False,
           verify_tools: dict | None = None) -> dict:
    """Fuse, write the GGUF and its Modelfile, optionally register in Ollama.

    With ``gguf=None`` only the Modelfile is written (its FROM names
    ``<modelfile folder>/<source>-<quant>.gguf``, the file ``export(..., gguf=that)``
    would write). Returns ``{"base", "adapter", "gguf", "quant", "modelfile",
    "chat_template_source", "embedded_template", "ollama_template", "thinking",
    "ollama" | "ollama_command"}``.

    Named stages are reported as they start and end (``events.stage(name)`` /
    ``events.stage_done(name, ok, seconds)``): "fuse" (with an adapter), "gguf", then register_model's
    "upload", "create", "verify". ``verify_messages`` / ``verify_options``: see
    :func:`core.export.ollama.register_model`. A run's best adapter (``adapters_best.safetensors``) is merged
    where it has one; ``final=True`` merges the final one (``adapters.safetensors``). A run trained on tool
    calls (config.json ``"tools": true``) gets templates that render tools, and its verify step also asks a
    held-out question with its tools (``verify_tools``, default :func:`tool_verify_case`): the result's
    ``ollama.tool_check`` compares the calls Ollama parses with the held-out answer's.
    """
    from core.export import ollama as ol
    from core.atomic import write_text

    events = events or NULL_EVENTS
    plan = plan_export(source, adapter=adapter, gguf=gguf, quant=quant, ollama=ollama, system=system,
                       modelfile=modelfile, temperature=temperature, replace=replace_files)
    if plan.adapter is not None:
        plan.adapter_file = runs.adapter_file(plan.adapter, "final" if final else "best")
    result: dict = {"base": str(plan.base), "adapter": str(plan.adapter) if plan.adapter else None,
                    "adapter_file": plan.adapter_file.name if plan.adapter_file else None,
                    "quant": plan.quant, "chat_template_source": plan.template_source,
                    "ollama_template": plan.chat_format.kind, "embedded_template": plan.embedded_template.kind,
                    "thinking": plan.thinking, "tools": plan.tools}
    for note in plan.embedded_template.notes:
        events.log("info", note)
    if plan.gguf is None:
        try:
            write_text(plan.modelfile, plan.modelfile_text)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise _disk_full(exc, plan.modelfile.parent) from exc
            raise TuneloomError(f"Writing {plan.modelfile} failed: {exc}", "Choose a folder you can write to.") from exc
        result.update(gguf=None, modelfile=str(plan.modelfile), gguf_expected=str(plan.gguf_ref),
                      ollama_command=ol.ollama_create_command(plan.modelfile, "NAME"))
        events.log("info", f"Wrote {plan.modelfile} (FROM {plan.gguf_ref.name}; the GGUF is not written)")
        return result

    _write_gguf_and_modelfile(plan, events, cancel)
    result["loads_in_llama_cpp"] = read_back(plan.gguf, events)
    result.update(gguf=str(plan.gguf), modelfile=str(plan.modelfile))
    if ollama:
        if verify_tools is None and plan.tools and plan.embedded_template.kind == "tools" and plan.adapter:
            verify_tools = tool_verify_case(plan.adapter, events=events)
        result["ollama"] = ol.register_model(
            plan.gguf, ollama, template=plan.chat_format.template, stops=plan.chat_format.stops, system=system,
            force=force, parameters=plan.parameters, modelfile_path=plan.modelfile, events=events, cancel=cancel,
            verify_messages=verify_messages, verify_options=verify_options, verify_tools=verify_tools or None)
    else:
        result["ollama_command"] = ol.ollama_create_command(plan.modelfile, "NAME")
    return result


def read_back(gguf: Path, events: Events) -> bool | None:
    """Load the written GGUF with llama.cpp's own loader when llama-cpp-python is installed (as the demo
    does): a file llama.cpp refuses is an error, never "ok". None: llama.cpp is not available here."""
    from core.export import llamacpp

    if not llamacpp.available():
        return None
    try:
        llamacpp.LlamaCppModel(gguf, n_ctx=32, logits_all=False).close()
    except Exception as exc:  # noqa: BLE001 - llama-cpp-python raises ValueError / RuntimeError
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TuneloomError(f"{gguf} was written, but llama.cpp cannot load it ({why}).",
                            "The model folder's config.json or weights are inconsistent; check the folder "
                            "(tuneloom fetch FOLDER) and export again.") from exc
    events.log("info", f"llama.cpp loads {gguf.name}")
    return True


def _write_file(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _write_gguf_and_modelfile(plan: ExportPlan, events: Events, cancel: CancelToken | None) -> None:
    """Fuse (when there is an adapter), write the GGUF and the Modelfile under temporary names next
    to their destinations, then rename both; on any failure remove whatever this export wrote."""
    from core.export.fuse import fuse_model
    from core.export.gguf import export_gguf
    gguf, mf = plan.gguf, plan.modelfile
    stages = StageClock(events)
    try:
        gguf.parent.mkdir(parents=True, exist_ok=True)
        mf.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TuneloomError(f"Cannot create the export folder: {exc}", "Choose a folder you can write to.") from exc
    from core.export.target import clean_stale, fuse_prefix

    for folder in {gguf.parent, mf.parent}:
        for p in clean_stale(folder):
            events.log("info", f"removed {p.name}, left by an export that was stopped")
    fuse_dir = tmp_gguf = tmp_mf = None
    try:
        model_dir = plan.base
        if plan.adapter is not None:
            fuse_dir = Path(tempfile.mkdtemp(prefix=fuse_prefix(), dir=gguf.parent))
            stages.start("fuse")
            events.log("info", f"fusing {plan.adapter} into {plan.base}")
            model_dir = fuse_model(plan.base, plan.adapter, fuse_dir / "fused", events=events, cancel=cancel,
                                   adapter_file=plan.adapter_file)
            stages.done("fuse")
        stages.start("gguf")
        tmp_gguf = _temp_name(gguf, ".gguf")
        export_gguf(model_dir, tmp_gguf, quant=plan.quant, events=events, cancel=cancel,
                    chat_template=plan.embedded_template.template)
        if cancel is not None:
            cancel.checkpoint()
        tmp_mf = _temp_name(mf, "")
        _write_file(tmp_mf, plan.modelfile_text)
        atomic.replace(tmp_gguf, gguf)
        tmp_gguf = gguf  # until the Modelfile is in place too, a failure removes the GGUF
        atomic.replace(tmp_mf, mf)
        tmp_gguf = tmp_mf = None
        events.log("info", f"Wrote {gguf} and {mf}")
        stages.done("gguf")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _disk_full(exc, gguf.parent) from exc
        raise TuneloomError(f"Writing the export failed: {exc}", "Check that the folder is writable.") from exc
    except TuneloomError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            raise _disk_full(cause, gguf.parent) from exc
        raise
    finally:
        for leftover in (tmp_gguf, tmp_mf):
            if leftover is not None:
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        if fuse_dir is not None:
            shutil.rmtree(fuse_dir, ignore_errors=True)


def write_export_record(run_dir: str | Path, result: dict, **extra) -> Path | None:
    """Record an export of a run in ``<run>/exports/<gguf stem>.json`` (what, when, the Ollama name):
    :attr:`core.runs.RunInfo.exports` reads it and the History shows it. None when ``run_dir`` is
    not a run folder or there is no GGUF."""
    import json
    import time

    from core.atomic import write_text

    folder = runs.RunFolder(run_dir)
    run = folder.path
    if not result.get("gguf") or not folder.is_run:
        return None
    gguf = Path(result["gguf"])
    ollama = result.get("ollama") or {}
    rec = {"gguf": str(gguf), "modelfile": result.get("modelfile"), "quant": result.get("quant"),
           "size": gguf.stat().st_size if gguf.is_file() else None,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ollama": ollama.get("name") if ollama else None,
           "ollama_host": ollama.get("host") if ollama else None, "base": result.get("base"),
           "adapter": result.get("adapter"), "adapter_file": result.get("adapter_file"), "chat_template_source": result.get("chat_template_source"), **extra}
    # the measured price of this type (core.export.quant_price), when it was measured
    price = (folder.export_record("quant_price.json").get("quants") or {}).get(rec["quant"])
    if price:
        rec.setdefault("price", price)
    path = folder.exports_dir / f"{gguf.stem}.json"
    write_text(path, json.dumps(rec, ensure_ascii=False, indent=2) + "\n")
    from core.report import write_report

    try:
        write_report(run)  # the report card lists the exports
    except (OSError, ValueError):  # the export and its record are written; the card follows next time
        pass
    return path
