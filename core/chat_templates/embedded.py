"""The template embedded in the GGUF, checked under every Ollama scenario; the format an export writes."""
from __future__ import annotations

from dataclasses import dataclass

from core.chat_templates.derive import _first_difference, chat_format_for
from core.chat_templates.formats import PROBE_CONVERSATIONS, ChatFormat
from core.chat_templates.jinja import TemplateNotSupported, chat_template_of, render_jinja, special_tokens
from core.chat_templates.serving import (
    OLLAMA_SCENARIOS, OllamaSetup, _remember, chat_template_capabilities, filter_think_tags,
    go_template_capabilities, ollama_prompt, template_path,
)
from core.chat_templates.tools import check_tool_prompts, tool_parser_tag, tools_chat_format, tools_jinja


# --------------------------------------------------------------------------------------
# The template embedded in the GGUF
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedTemplate:
    """The ``tokenizer.chat_template`` an export writes: ``kind`` is ``"original"`` (the model's own
    template, kept when Ollama renders it like training) or ``"training"`` (the fine-tune's format as a
    plain Jinja template that advertises no ability the fine-tune lacks)."""

    kind: str
    template: str
    notes: tuple[str, ...] = ()


def _prompt_probes() -> list[tuple[dict, ...]]:
    # the conversations training prompts come from: they end on a user turn
    return [c for c in PROBE_CONVERSATIONS if c[-1]["role"] == "user"]


def check_ollama_prompts(fmt: ChatFormat, chat_template: str, tokenizer_config: dict, *, thinking: bool = False,
                         architecture: str = "", conversations=None) -> list[str]:
    """Differences between the training prompt and what Ollama builds, on every scenario of
    :data:`OLLAMA_SCENARIOS`, for ``conversations`` (default: the probes ending on a user turn).
    Empty when they all agree."""
    original = chat_template_of(tokenizer_config)
    tokens = special_tokens(tokenizer_config)
    _remember(fmt)
    problems = []
    for conv in fmt.probes(conversations or _prompt_probes()):
        try:
            want = render_jinja(original, conv, tokens=tokens, enable_thinking=thinking)
        except Exception:  # noqa: BLE001 - a conversation training cannot render either
            continue
        for label, kw in OLLAMA_SCENARIOS:
            setup = OllamaSetup(fmt.template, chat_template, architecture=architecture, **kw)
            if filter_think_tags(conv, setup) != [dict(m) for m in conv]:
                continue  # Ollama rewrites this history itself (documented in the README)
            try:
                got = ollama_prompt(setup, conv, tokens=tokens)
            except Exception as exc:  # noqa: BLE001 - a template that fails on a conversation
                problems.append(f"{label} ({template_path(setup)} path) fails on {[m['role'] for m in conv]}: {exc}")
                continue
            if got != want:
                problems.append(f"{label} ({template_path(setup)} path): {_first_difference(want, got)}")
    return problems


def embedded_chat_template(tokenizer_config: dict, *, thinking: bool = False, architecture: str | None = None,
                           tools: bool = False) -> EmbeddedTemplate:
    """The chat template to embed in the GGUF so that Ollama's native path (and llama.cpp, LM Studio)
    builds the training prompt: the model's own template when Ollama already renders it like training
    (a thinking-on Qwen3), else the fine-tune's format as a plain Jinja template (a thinking-off Qwen3
    must not advertise thinking, or Ollama turns it on by default). Raises :class:`TemplateNotSupported`
    when neither agrees with training on every scenario.

    ``tools``: the run trained on tool records; the template then renders tools, calls and results as
    training did (:func:`tools_jinja`, kind ``"tools"``) when that checks out on every scenario, plain
    conversations included; otherwise the plain template, with a note that tool calling was not kept."""
    from core.export.gguf import ARCHITECTURES

    fmt = chat_format_for(tokenizer_config, thinking=thinking)
    arch = ""
    if architecture:
        spec = ARCHITECTURES.get(architecture)
        arch = _gguf_arch_name(spec) if spec is not None else ""
    original = chat_template_of(tokenizer_config)
    tool_note: tuple[str, ...] = ()
    if tools:
        emb, why = _tools_embedded(tokenizer_config, thinking, arch)
        if emb is not None:
            return emb
        tool_note = (f"Tool calling is not kept in this export: {why}",)
    tried = []
    for kind, template in (("original", original), ("training", fmt.jinja)):
        if not template:
            continue
        problems = check_ollama_prompts(fmt, template, tokenizer_config, thinking=thinking, architecture=arch)
        if not problems:
            caps = sorted(chat_template_capabilities(template)) or ["none"]
            note = (f"GGUF chat template: the model's own (Ollama abilities: {', '.join(caps)})" if kind == "original"
                    else "GGUF chat template: the fine-tune's prompt format, without tool or thinking markers, so "
                         "Ollama keeps the Modelfile TEMPLATE and llama.cpp renders the same prompt")
            return EmbeddedTemplate(kind, template, (note,) + tool_note)
        tried.append(f"{kind}: {problems[0]}")
    raise TemplateNotSupported(
        "Tuneloom cannot embed a chat template that gives Ollama's native path the training prompt (" +
        "; ".join(tried) + ").", "Export without Ollama registration, or train a model with a ChatML, Qwen3 or "
        "Zephyr chat template.")


def go_template_for(tokenizer_config: dict, *, thinking: bool = False, tools: bool = False) -> tuple[str, list[str]]:
    """(Go template for the Modelfile TEMPLATE, stop strings) for this tokenizer config (``tools``: for a run
    trained on tool calls, see :func:`export_chat_format`)."""
    fmt = export_chat_format(tokenizer_config, thinking=thinking, tools=tools)
    return fmt.template, list(fmt.stops)

def export_chat_format(tokenizer_config: dict, *, thinking: bool = False, tools: bool = False) -> ChatFormat:
    """The Modelfile format an export writes: with ``tools`` (the run trained on tool records) the tools
    format where Tuneloom reproduces it (:func:`tools_chat_format`), else the plain one."""
    fmt = tools_chat_format(tokenizer_config, thinking=thinking) if tools else None
    return _remember(fmt or chat_format_for(tokenizer_config, thinking=thinking))


def _tools_embedded(tokenizer_config: dict, thinking: bool, arch: str) -> tuple[EmbeddedTemplate | None, str]:
    original = chat_template_of(tokenizer_config)
    if "tool_call" not in original:
        return None, "the model's chat template has no place for tool calls."
    fmt = export_chat_format(tokenizer_config, thinking=thinking, tools=True)
    template = tools_jinja(tokenizer_config, thinking=thinking)
    try:
        problems = check_ollama_prompts(fmt, template, tokenizer_config, thinking=thinking, architecture=arch)
        problems += check_tool_prompts(fmt, template, tokenizer_config, thinking=thinking, architecture=arch)
    except Exception as exc:  # noqa: BLE001 - a template that cannot render the probes
        problems = [str(exc)]
    if problems:
        return None, f"Ollama would not build the training prompt ({problems[0]})."
    setup = OllamaSetup(fmt.template, template, architecture=arch)
    notes = [f"GGUF chat template: the model's own with its tool section (Ollama abilities: "
             f"{', '.join(sorted(chat_template_capabilities(template)))}); current Ollama renders it with tools "
             f"({template_path(setup)} path)"]
    if "tools" in go_template_capabilities(fmt.template):
        notes.append("Modelfile TEMPLATE: renders tools, calls and results too (Ollama before v0.32.7), calls "
                     f"parsed between {tool_parser_tag(fmt.template)} tags")
    else:
        notes.append("Modelfile TEMPLATE: without tools (this model writes calls Ollama's Go path cannot "
                     "parse); tool requests need Ollama 0.32.7 or newer")
    return EmbeddedTemplate("tools", template, tuple(notes)), ""


def _gguf_arch_name(spec) -> str:
    import gguf

    return gguf.MODEL_ARCH_NAMES[spec.arch]
