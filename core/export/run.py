"""A run's export as the window does it, for the window and the CLI alike: the GGUF and its Modelfile in the
run's ``exports/``, registered in Ollama, and checked: Ollama and Tuneloom answer the same held-out question
greedily, and the two answers are shown side by side (:func:`answer_check`). Every export is recorded in
the run's ``exports/`` (core.export.pipeline.write_export_record).
"""
from __future__ import annotations

import time
from pathlib import Path

from core import runs
from core.export.quants import OFFERED

VERIFY_TOKENS = 96
# greedy, so Ollama's answer can be compared with Tuneloom's own for the same prompt
VERIFY_OPTIONS = {"temperature": 0, "top_k": 1, "seed": 0, "num_predict": VERIFY_TOKENS}


def export_paths(run_dir: Path, quant: str) -> tuple[Path, Path]:
    d = runs.RunFolder(run_dir).exports_dir  # one Modelfile per GGUF, named after it: a second export never replaces the first's
    return d / f"model-{quant}.gguf", d / f"model-{quant}.Modelfile"


def export_sizes(run_dir, events=None, cancel=None) -> dict[str, int]:
    """{type: bytes of the GGUF an export writes} for the types offered (core.export.pipeline.gguf_file_sizes)."""
    from core.export.pipeline import gguf_file_sizes, resolve_source

    base, _ = resolve_source(run_dir)
    try:
        return gguf_file_sizes(base, list(OFFERED))
    except Exception:  # noqa: BLE001  (an MLX-quantized base: the per-weight estimate)
        from core.export.pipeline import estimate_export_bytes

        return {k: estimate_export_bytes(base, k, fuse=False)["gguf"] for k in OFFERED}


def verify_messages(run_dir) -> list | None:
    """The first validation example's prompt (what the verify step asks Ollama and Tuneloom)."""
    from core.evaluate import run_split, to_rows
    from core.events import TuneloomError

    try:
        rows = to_rows(run_split(run_dir)[1], 1)
    except TuneloomError:
        return None
    return rows[0].messages if rows else None


def tuneloom_answer(run_dir, messages, cancel=None) -> str:
    from core.evaluate import run_encoder
    from core.generate import ChatModel, run_base_model

    base = run_base_model(run_dir)
    model = ChatModel(base, adapter_dir=run_dir, encoder=run_encoder(run_dir, base))
    return model.answer(messages, max_tokens=VERIFY_TOKENS, cancel=cancel)


def export_run(run_dir, quant, name, system, temperature, force, register, events=None, cancel=None,
               adapter_only=False, final=False):
    """Write the GGUF and Modelfile; with ``register``, register in Ollama and verify. An Ollama
    failure after the files are written is returned (``ollama_error``), not raised. ``adapter_only``:
    the adapter GGUF on the shared base GGUF instead (core.export.adapter)."""
    from core.export import ollama as ol
    from core.export.pipeline import export, write_export_record

    gguf, modelfile = export_paths(run_dir, quant)
    if adapter_only:
        gguf = gguf.with_name(f"adapter-{quant}.gguf")
        modelfile = gguf.with_name(f"adapter-{quant}.Modelfile")
    msgs = verify_messages(run_dir) if register else None
    t0 = time.time()
    try:
        if adapter_only:
            from core.export.adapter import export_adapter

            res = export_adapter(run_dir, gguf=gguf, quant=quant, ollama=name if register else None,
                                 system=system or None, force=force, modelfile=modelfile, temperature=temperature,
                                 verify_messages=msgs, verify_options=VERIFY_OPTIONS, events=events, cancel=cancel,
                                 final=final)
        else:
            res = export(run_dir, gguf=gguf, quant=quant, ollama=name if register else None, system=system or None,
                         force=force, modelfile=modelfile, temperature=temperature, verify_messages=msgs,
                         verify_options=VERIFY_OPTIONS, events=events, cancel=cancel, final=final)
    except ol.OllamaError as exc:
        if isinstance(exc, ol.OllamaNameInvalid) or not gguf.is_file() or gguf.stat().st_mtime < t0 - 1:
            raise
        res = {"gguf": str(gguf), "modelfile": str(modelfile), "quant": quant, "ollama_error": exc,
               "ollama_command": ol.ollama_create_command(modelfile, name)}
    if register and res.get("ollama"):
        res["verify_messages"] = msgs
        if msgs:
            res["tuneloom_answer"] = tuneloom_answer(run_dir, msgs, cancel)
    elif "ollama_error" not in res:
        res["ollama_command"] = ol.ollama_create_command(modelfile, name or "my-model")
    write_export_record(run_dir, res)
    return res


def register_run(run_dir, quant, name, system, temperature, force, events=None, cancel=None):
    """Retry: register the GGUF an earlier export wrote (and verify), without writing it again."""
    from core.export import ollama as ol
    from core.export.pipeline import plan_export, write_export_record

    gguf, modelfile = export_paths(run_dir, quant)
    if not gguf.is_file():
        from core.events import TuneloomError

        raise TuneloomError(f"{gguf} is not there any more.", "Export again.")
    plan = plan_export(run_dir, gguf=gguf, quant=quant, ollama=name, system=system or None, modelfile=modelfile,
                       temperature=temperature)
    msgs = verify_messages(run_dir)
    from core.export.pipeline import tool_verify_case

    tool_case = tool_verify_case(run_dir) if plan.tools and plan.embedded_template.kind == "tools" else None
    reg = ol.register_model(gguf, name, template=plan.chat_format.template, stops=plan.chat_format.stops,
                            system=system or None, force=force, parameters=plan.parameters, modelfile_path=modelfile,
                            verify_messages=msgs, verify_options=VERIFY_OPTIONS, events=events, cancel=cancel,
                            verify_tools=tool_case)
    res = {"gguf": str(gguf), "modelfile": str(modelfile), "quant": quant, "ollama": reg, "verify_messages": msgs,
           "base": str(plan.base), "adapter": str(plan.adapter) if plan.adapter else None,
           "chat_template_source": plan.template_source}
    if msgs:
        res["tuneloom_answer"] = tuneloom_answer(run_dir, msgs, cancel)
    write_export_record(run_dir, res)
    return res


def answer_check(res: dict) -> dict | None:
    """The verify step's comparison: {"question", "ollama", "tuneloom", "same"} (None: nothing was asked)."""
    reg = res.get("ollama")
    msgs = res.get("verify_messages")
    if not isinstance(reg, dict) or not msgs:
        return None
    question = next((m["content"] for m in reversed(msgs) if m.get("role") == "user"), "")
    ollama, tuneloom = str(reg.get("answer") or ""), str(res.get("tuneloom_answer") or "")
    return {"question": question, "ollama": ollama, "tuneloom": tuneloom, "same": ollama.strip() == tuneloom.strip()}
