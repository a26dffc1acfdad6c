"""Export a run's LoRA as a GGUF adapter (llama.cpp's layout) next to a shared base GGUF.

A merged export writes the whole model for every fine-tune; an adapter export writes the
LoRA matrices only (a few MB) and the base model once per base and GGUF type, in
Tuneloom's data folder, reused by every adapter of that base. Ollama gets a Modelfile
``FROM`` the base and ``ADAPTER`` the adapter (and the same through ``/api/create``'s
``adapters``); Ollama hands adapters to llama.cpp (``--lora``), which computes
``W x + (alpha / r) * B (A x)`` per adapted matrix.

The layout is the one llama.cpp's ``convert_lora_to_gguf.py`` writes (read as the
reference, not copied): ``general.type`` = ``adapter``, ``adapter.type`` = ``lora``,
``adapter.lora.alpha`` (float32), and per adapted weight ``<gguf name>.lora_a`` with the
PEFT shape (r, in) and ``<gguf name>.lora_b`` with (out, r), under the GGUF tensor names
of the base (``blk.N.attn_q.weight.lora_a``). mlx-lm stores ``lora_a`` as (in, r) and
``lora_b`` as (r, out) and adds ``scale * (x A) B``: both are transposed and
``alpha = scale * r``. For Llama the Q/K rows of the base are reordered for llama.cpp's
RoPE, so the rows of their ``lora_b`` are reordered the same way.

What cannot be applied exactly is refused with a message offering the merged export: a
DoRA adapter (its magnitude rescaling is no LoRA), a quantized (QLoRA) base (the adapter
was trained on the 4-bit weights, while the base GGUF would be made from other weights),
a full fine-tune, and architectures whose tensors llama.cpp rearranges beyond that
(Qwen3.5).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import runs
from core.events import NULL_EVENTS, CancelToken, Events, Progress, StageClock, TuneloomError
from core.units import fmt_bytes

ADAPTER_ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM")
BASES_FOLDER = "base-gguf"


class AdapterNotExact(TuneloomError):
    """The adapter cannot be applied on a base GGUF exactly; the merged export can."""


@dataclass
class AdapterTensors:
    alpha: float
    rank: int
    arch: str  # gguf architecture name (qwen2, qwen3, llama)
    tensors: list[tuple[str, np.ndarray, np.ndarray]]  # (gguf weight name, A (r, in), B (out, r)) float32

    @property
    def nbytes(self) -> int:
        return sum(a.size * 4 + b.size * 4 for _, a, b in self.tensors)


def _merged_hint() -> str:
    return ("Export the merged model instead (one file: tuneloom export RUN --gguf OUT.gguf, or "
            "\"Merged (one file)\" on the Export page).")


def weights_file(adapter_dir: Path, final: bool = False) -> Path:
    """The adapter weights an export takes: the run's best (lowest validation loss), as Try and the merged
    export do, or with ``final`` its last ones (core.runs.adapter_file)."""
    return runs.adapter_file(Path(adapter_dir), "final" if final else "best")


def check_adapter_exportable(base: Path, adapter_dir: Path, final: bool = False) -> tuple[dict, dict]:
    """(base config, adapter config) when the adapter can be exported as a GGUF adapter; else
    :class:`AdapterNotExact` saying why, with the merged export as the way out."""
    base, adapter_dir = Path(base), Path(adapter_dir)
    cfg_path = adapter_dir / runs.ADAPTER_CONFIG
    acfg = runs.RunFolder(adapter_dir).adapter_config
    if not acfg or not weights_file(adapter_dir, final).is_file():
        raise TuneloomError(f"{adapter_dir} has no adapter (adapter_config.json + adapters.safetensors).",
                            "Choose a run that has saved its adapter (train at least to the first save).")
    kind = acfg.get("fine_tune_type", "lora")
    if kind == "dora":
        raise AdapterNotExact(
            f"{adapter_dir.name} is a DoRA adapter ({cfg_path}: fine_tune_type \"dora\"): DoRA rescales each "
            "adapted weight by a learned magnitude, which a LoRA adapter for llama.cpp or Ollama cannot express.",
            _merged_hint())
    if kind != "lora":
        raise AdapterNotExact(f"{adapter_dir.name} is a {kind} fine-tune ({cfg_path}), not a LoRA adapter.",
                              _merged_hint())
    bcfg = runs.read_json(base / "config.json")
    if not isinstance(bcfg, dict):
        raise TuneloomError(f"{base / 'config.json'} is missing or not JSON.", "Choose the run's base model folder.")
    if bcfg.get("quantization") or bcfg.get("quantization_config"):
        raise AdapterNotExact(
            f"{adapter_dir.name} was trained on a quantized (QLoRA) base, {base.name} ({base / 'config.json'}: "
            "\"quantization\"): the adapter learned to correct those 4-bit weights, and the base GGUF that Ollama "
            "or llama.cpp would load holds other weights, so the adapter would not give the fine-tune's answers.",
            _merged_hint())
    archs = bcfg.get("architectures") or [bcfg.get("model_type", "unknown")]
    if archs[0] not in ADAPTER_ARCHITECTURES:
        raise AdapterNotExact(
            f"Adapter export supports {', '.join(ADAPTER_ARCHITECTURES)}; {base.name} is {archs[0]}.",
            _merged_hint())
    return bcfg, acfg


def read_adapter(base: Path, adapter_dir: Path, final: bool = False) -> AdapterTensors:
    """The run's LoRA matrices in llama.cpp's layout and names (see the module docstring)."""
    import gguf

    from core.export.gguf import ARCHITECTURES, _permute_for_llama_rope, _read_safetensors_index

    bcfg, acfg = check_adapter_exportable(base, adapter_dir, final)
    weights = weights_file(adapter_dir, final)
    spec = ARCHITECTURES[(bcfg.get("architectures") or [""])[0]]
    params = acfg.get("lora_parameters") or {}
    scale = float(params.get("scale", 20.0))
    n_layers = bcfg["num_hidden_layers"]
    n_head = bcfg["num_attention_heads"]
    n_kv = bcfg.get("num_key_value_heads", n_head)
    tensor_map = gguf.get_tensor_name_map(spec.arch, n_layers)
    stored = {t.name: t for t in _read_safetensors_index(weights)}
    pairs: dict[str, dict[str, object]] = {}
    for name, t in stored.items():
        module, _, kind = name.rpartition(".")
        if kind not in ("lora_a", "lora_b"):
            raise AdapterNotExact(f"{weights} holds {name}, which is not a LoRA matrix.",
                                  _merged_hint())
        pairs.setdefault(module, {})[kind] = t
    tensors = []
    rank = None
    for module in sorted(pairs, key=_natural):
        got = pairs[module]
        if set(got) != {"lora_a", "lora_b"}:
            raise TuneloomError(f"{weights}: {module} lacks its "
                                f"{'lora_b' if 'lora_a' in got else 'lora_a'}.", "The adapter file is damaged; "
                                "export from a checkpoint or train again.")
        gguf_name = tensor_map.get_name(module + ".weight", try_suffixes=(".weight",))
        if gguf_name is None:
            raise AdapterNotExact(f"The adapted layer {module} has no GGUF tensor name for {spec.arch.name}.",
                                  _merged_hint())
        a = got["lora_a"].read_f32()  # mlx-lm: (in, r)
        b = got["lora_b"].read_f32()  # mlx-lm: (r, out)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            raise TuneloomError(f"{module}: lora_a {a.shape} and lora_b {b.shape} do not fit together.",
                                "The adapter file is damaged; train again.")
        r = a.shape[1]
        if rank is not None and r != rank:
            raise AdapterNotExact(f"{module} has rank {r}, other layers {rank}: one adapter.lora.alpha cannot "
                                  "give every layer its scale.", _merged_hint())
        rank = r
        A = np.ascontiguousarray(a.T)  # (r, in), PEFT's lora_A
        B = np.ascontiguousarray(b.T)  # (out, r), PEFT's lora_B
        if spec.permute_qk and module.endswith("q_proj"):
            B = np.ascontiguousarray(_permute_for_llama_rope(B, n_head))
        elif spec.permute_qk and module.endswith("k_proj"):
            B = np.ascontiguousarray(_permute_for_llama_rope(B, n_kv))
        tensors.append((gguf_name + ".weight" if not gguf_name.endswith(".weight") else gguf_name, A, B))
    if not tensors:
        raise TuneloomError(f"{weights} holds no LoRA matrices.", "Train the run first.")
    return AdapterTensors(alpha=scale * rank, rank=rank, arch=gguf.MODEL_ARCH_NAMES[spec.arch], tensors=tensors)


def _natural(name: str):
    import re

    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def write_adapter_gguf(base: Path, adapter_dir: Path, out_path: Path, *, name: str | None = None,
                       events: Events | None = None, cancel: CancelToken | None = None, final: bool = False) -> dict:
    """Write the run's LoRA as a llama.cpp GGUF adapter at ``out_path`` (atomically). Returns
    ``{"path", "alpha", "rank", "n_tensors", "bytes"}``."""
    import gguf

    from core.atomic import atomic_path

    events = events or NULL_EVENTS
    ad = read_adapter(Path(base), Path(adapter_dir), final)
    out_path = Path(out_path)
    with atomic_path(out_path, suffix=".gguf") as tmp:
        w = gguf.GGUFWriter(str(tmp), ad.arch)
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(ad.alpha))
        w.add_name(name or Path(adapter_dir).name)
        for i, (wname, a, b) in enumerate(ad.tensors):
            if cancel is not None:
                cancel.checkpoint()
            # float32: the adapter is small, and the product B A is then exactly the trained one
            w.add_tensor(wname + ".lora_a", a.astype(np.float32))
            w.add_tensor(wname + ".lora_b", b.astype(np.float32))
            events.report_progress(Progress(i + 1, len(ad.tensors), "tensor", f"adapter {wname}", item=wname))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    _check_adapter_file(out_path, ad)
    return {"path": str(out_path), "alpha": ad.alpha, "rank": ad.rank, "n_tensors": 2 * len(ad.tensors),
            "bytes": out_path.stat().st_size}


def _check_adapter_file(path: Path, ad: AdapterTensors) -> None:
    """Read the adapter back: the keys llama.cpp's loader checks, and every matrix."""
    import gguf

    r = gguf.GGUFReader(str(path))
    fields = {k: r.fields[k] for k in ("general.type", "adapter.type", "general.architecture")}
    values = {k: bytes(f.parts[f.data[0]]).decode() for k, f in fields.items()}
    if values != {"general.type": "adapter", "adapter.type": "lora", "general.architecture": ad.arch}:
        raise TuneloomError(f"{path} did not read back as a LoRA adapter ({values}).", "Export again.")
    names = {t.name for t in r.tensors}
    want = {n + s for n, _, _ in ad.tensors for s in (".lora_a", ".lora_b")}
    if names != want:
        raise TuneloomError(f"{path} did not read back with every LoRA matrix.", "Export again.")


# --------------------------------------------------------------------------- the shared base GGUF

def _base_fingerprint(base: Path, quant: str, template: str) -> dict:
    """What a cached base GGUF was made from: the folder, its weight files' sizes and times, the type, and
    the embedded chat template."""
    files = sorted(base.glob("*.safetensors")) + [base / "config.json"]
    return {"base": str(base.resolve()), "quant": quant,
            "files": {p.name: [p.stat().st_size, int(p.stat().st_mtime)] for p in files if p.is_file()},
            "template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest()}


def bases_dir() -> Path:
    from core.paths import app_data_dir

    return app_data_dir() / BASES_FOLDER


def base_gguf_path(base: str | Path, quant: str, *, thinking: bool = False) -> Path:
    """Where the shared base GGUF of ``base`` in type ``quant`` lives: ``<data>/base-gguf/<base>-<quant>.gguf``
    (``-thinking`` before the type for bases exported for thinking-on runs: their embedded template differs).
    Two different folders with the same name get a short hash of their path."""
    from core.export.pipeline import default_gguf_name

    base = Path(base)
    name = default_gguf_name(base, f"thinking-{quant}" if thinking else quant)
    path = bases_dir() / name
    record = runs.read_json(path.with_suffix(".json"))
    if isinstance(record, dict) and record.get("base") not in (None, str(base.resolve())):
        digest = hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:8]
        path = path.with_name(f"{path.stem}-{digest}.gguf")
    return path


def ensure_base_gguf(base: Path, quant: str, *, template: str, thinking: bool = False,
                     events: Events | None = None, cancel: CancelToken | None = None) -> tuple[Path, bool]:
    """(path of the base GGUF, True when an earlier export was reused). Exported once per base, type and
    embedded template; a record next to it (``.json``) says what it was made from, so a changed base folder
    is exported again."""
    from core.atomic import write_json
    from core.export.pipeline import check_disk_space, estimate_export_bytes
    from core.export.gguf import export_gguf

    events = events or NULL_EVENTS
    path = base_gguf_path(base, quant, thinking=thinking)
    fingerprint = _base_fingerprint(Path(base), quant, template)
    record = path.with_suffix(".json")
    if path.is_file() and runs.read_json(record) == fingerprint:
        events.log("info", f"Reusing the base GGUF {path}")
        return path, True
    check_disk_space(path.parent, estimate_export_bytes(Path(base), quant, fuse=False))
    events.log("info", f"Writing the base GGUF once for every adapter of {Path(base).name}: {path}")
    export_gguf(base, path, quant=quant, events=events, cancel=cancel, chat_template=template)
    write_json(record, fingerprint)
    return path, False


# --------------------------------------------------------------------------- the whole adapter export

def estimate_adapter_bytes(adapter_dir: Path, final: bool = False) -> int:
    """Bytes of the adapter GGUF (float32 matrices), from the safetensors header."""
    from core.hub import read_safetensors_header

    header, _ = read_safetensors_header(weights_file(adapter_dir, final))
    values = sum(int(np.prod(v["shape"])) for k, v in header.items() if k != "__metadata__")
    return values * 4 + 64 * 1024


def adapter_modelfile_text(base_gguf: Path, adapter_gguf: Path, modelfile: Path, template: str, stops,
                           *, parameters: dict, system: str | None) -> str:
    """A Modelfile ``FROM`` the base GGUF (absolute: it lives in Tuneloom's data folder) with ``ADAPTER``
    the adapter GGUF (relative to the Modelfile when beside it)."""
    from core.export import ollama as ol

    text = ol.modelfile_text(adapter_gguf, modelfile.parent, template, stops, parameters=parameters, system=system)
    lines = text.split("\n")
    i = next(k for k, line in enumerate(lines) if line.startswith("FROM "))
    adapter_ref = lines[i][len("FROM "):]
    lines[i] = "FROM " + ol._modelfile_value(str(Path(base_gguf).resolve()), "base GGUF path")
    lines.insert(i + 1, "ADAPTER " + adapter_ref)
    return "\n".join(lines)


def export_adapter(source, *, gguf, quant: str = "f16", ollama: str | None = None, system: str | None = None,
                   force: bool = False, modelfile: str | Path | None = None, temperature: float | None = None,
                   events: Events | None = None, cancel: CancelToken | None = None,
                   verify_messages: list | None = None, verify_options: dict | None = None,
                   ollama_host: str | None = None, final: bool = False) -> dict:
    """``tuneloom export RUN --adapter-only --gguf OUT.gguf [--ollama NAME]`` (the run's best adapter; with
    ``final`` its last one).

    Writes the adapter GGUF at ``gguf`` and a Modelfile next to it (``<gguf stem>.Modelfile``), makes sure
    the base GGUF exists in Tuneloom's data folder (exported once per base, type and template), and
    registers ``FROM`` base + ``ADAPTER`` adapter in Ollama when ``ollama`` is given. Returns
    ``{"adapter_gguf", "base_gguf", "base_reused", "modelfile", "quant", "alpha", "rank", "base", "adapter",
    "ollama" | "ollama_command", ...}``."""
    from core.export import ollama as ol
    from core.atomic import write_text
    from core.export.pipeline import plan_export, resolve_source

    events = events or NULL_EVENTS
    if gguf is None:
        raise TuneloomError("An adapter export needs the adapter's path.", "Add --gguf OUT.gguf.")
    gguf = Path(gguf)
    if gguf.suffix.lower() != ".gguf":
        raise TuneloomError(f"{gguf} does not end in .gguf.", "Name the adapter file like adapter.gguf.")
    base, adapter_dir = resolve_source(source)
    if adapter_dir is None:
        raise TuneloomError(f"{source} is a model folder, not a run: there is no adapter to export.",
                            "Give a run folder.")
    check_adapter_exportable(base, adapter_dir, final)
    if ollama:
        ol.validate_model_name(ollama)
    mf = Path(modelfile) if modelfile else gguf.with_name(gguf.stem + ".Modelfile")
    # every check the merged export makes on the template, the Modelfile values and the type
    from core.export.target import check_targets

    # the adapter and its Modelfile: not into the source, not over a file this export did not make (issue 25)
    check_targets(gguf, mf, base=base, adapter=adapter_dir, replace=force)
    plan = plan_export(source, gguf=None, quant=quant, modelfile=mf, system=system, temperature=temperature,
                       replace=True)  # the Modelfile was checked just above, with the adapter it names
    base_path = base_gguf_path(base, plan.quant, thinking=plan.thinking)
    if Path(gguf).resolve() == base_path.resolve():
        raise TuneloomError(f"{gguf} is the shared base GGUF.", "Choose another path for the adapter.")
    from core.export.pipeline import check_disk_space

    check_disk_space(gguf.parent, {"fused": 0, "gguf": estimate_adapter_bytes(adapter_dir, final)})
    text = adapter_modelfile_text(base_path, gguf, mf, plan.chat_format.template, plan.chat_format.stops,
                                  parameters=plan.parameters, system=system)
    for note in plan.embedded_template.notes:
        events.log("info", note)

    # one "gguf" stage (the merged export's name for writing the files): the shared base (when not there
    # yet), then the adapter and its Modelfile
    stages = StageClock(events)
    stages.start("gguf")
    base_gguf, reused = ensure_base_gguf(base, plan.quant, template=plan.embedded_template.template,
                                         thinking=plan.thinking, events=events, cancel=cancel)
    info = write_adapter_gguf(base, adapter_dir, gguf, name=Path(adapter_dir).name, events=events, cancel=cancel,
                              final=final)
    write_text(mf, text)
    events.log("info", f"Wrote {gguf} ({fmt_bytes(info['bytes'])}) and {mf}")
    stages.done("gguf")
    result = {"base": str(base), "adapter": str(adapter_dir), "adapter_gguf": str(gguf), "gguf": str(gguf),
              "base_gguf": str(base_gguf), "base_reused": reused, "modelfile": str(mf), "quant": plan.quant,
              "alpha": info["alpha"], "rank": info["rank"], "adapter_bytes": info["bytes"],
              "base_bytes": base_gguf.stat().st_size, "chat_template_source": plan.template_source,
              "ollama_template": plan.chat_format.kind, "embedded_template": plan.embedded_template.kind,
              "thinking": plan.thinking}
    if ollama:
        result["ollama"] = ol.register_model(
            base_gguf, ollama, template=plan.chat_format.template, stops=plan.chat_format.stops, system=system,
            force=force, parameters=plan.parameters, modelfile_path=mf, events=events, cancel=cancel,
            verify_messages=verify_messages, verify_options=verify_options, adapter_path=gguf, host=ollama_host)
    else:
        result["ollama_command"] = ol.ollama_create_command(mf, "NAME")
    return result


def exact_adapter_reason(source) -> str | None:
    """None when ``source`` (a run) can be exported as an adapter; else the sentence saying why not (the
    Export page shows it next to the merged choice)."""
    from core.export.pipeline import resolve_source

    try:
        base, adapter_dir = resolve_source(source)
        if adapter_dir is None:
            return "A model folder has no adapter."
        check_adapter_exportable(base, adapter_dir)
    except TuneloomError as exc:
        return str(exc)
    return None


__all__ = ["AdapterNotExact", "check_adapter_exportable", "read_adapter", "write_adapter_gguf", "base_gguf_path",
           "ensure_base_gguf", "export_adapter", "exact_adapter_reason", "estimate_adapter_bytes", "bases_dir",
           "adapter_modelfile_text"]
