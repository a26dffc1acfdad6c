"""The chat formats Tuneloom writes by hand: a Go TEMPLATE for Ollama, a Python mirror of it, the
Jinja template embedded in the GGUF, and the probe conversations every format must render exactly.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Callable

from core.chat_templates.jinja import Messages, TemplateNotSupported, special_tokens


# --------------------------------------------------------------------------------------
# Go side: the formats
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatFormat:
    """A chat format Ollama can reproduce.

    ``template`` is the Go template for the Modelfile; ``render(messages)`` is a
    Python mirror of what that Go template renders (generation prompt included) for
    the messages Ollama hands it, used to check the format against the Jinja
    template at export time, where no Go toolchain is around.
    """

    kind: str  # "chatml" | "qwen3" | "qwen3-thinking" | "qwen3.5" | "qwen3.5-thinking" | "zephyr" | "derived"
    template: str
    stops: tuple[str, ...]
    render: Callable[[Messages], str] = field(compare=False, repr=False)
    notes: tuple[str, ...] = ()
    # the same format as a Jinja chat template (what the GGUF embeds, see embedded_chat_template)
    jinja: str = field(default="", compare=False, repr=False)
    # False: the model's template trims every message, which a Go template cannot do, so the Go
    # TEMPLATE is exact only for contents without leading or trailing whitespace (Qwen3.5)
    exact_untrimmed: bool = True

    def probes(self, conversations=None) -> list:
        """The conversations this format promises to render exactly."""
        convs = PROBE_CONVERSATIONS if conversations is None else conversations
        if self.exact_untrimmed:
            return list(convs)
        return [c for c in convs if all(m["content"] == m["content"].strip() for m in c)]


# Conversations every format must render exactly like the Jinja template before it
# is used: with and without system, 1 to 4 turns, unicode, empty strings, newlines,
# braces of both template languages, ending on a user or an assistant turn.
_PROBES = (
    (("user", "Hello"),),
    (("system", "You are terse."), ("user", "Hi there")),
    (("user", "What is 2+2?"), ("assistant", "4"), ("user", "And 3+3?")),
    (("system", "Answer in JSON."), ("user", "name?"), ("assistant", '{"name": "Loom"}'), ("user", "age?")),
    (("user", "one"), ("assistant", "two"), ("user", "three"), ("assistant", "four"), ("user", "five"),
     ("assistant", "six"), ("user", "seven")),
    (("system", ""), ("user", "")),
    (("user", ""),),
    (("user", "Grüße, 世界! 🎉 — ça va?"), ("assistant", "Très bien ✓"), ("user", "ありがとう")),
    (("user", "line one\nline two\n\n  indented"), ("assistant", "\n\nstarts with newlines\n"), ("user", " spaced ")),
    (("user", "{{ .Content }} {% raw %}{{ x }}{% endraw %} {{- end }} }}{{"), ("assistant", "{}"), ("user", "{{")),
    (("user", "Hi"), ("assistant", "Hello!")),
    (("user", "Hi"), ("assistant", "\n\nHello!\n")),
    (("system", "S"), ("user", "u1"), ("assistant", "a1"), ("system", "mid system"), ("user", "u2")),
    (("user", "tabs\tand\r\nCRLF"), ("assistant", "<|im_end|> </s> literal markers"), ("user", 'quote " and \\ back')),
)
PROBE_CONVERSATIONS: tuple[tuple[dict, ...], ...] = tuple(
    tuple({"role": role, "content": content} for role, content in conv) for conv in _PROBES)


def _go_quote(text: str) -> str:
    """A Go interpreted string literal for ``text`` that survives a Modelfile (printable characters only)."""
    out = ['"']
    for ch in text:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif 0xD800 <= o <= 0xDFFF:
            raise TemplateNotSupported("The chat template contains a lone surrogate character.")
        elif ch == " " or (o > 0x20 and o != 0x7F and unicodedata.category(ch)[0] in "LMNPS"):
            out.append(ch)
        elif o <= 0xFFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


def _go_text(text: str) -> str:
    """``text`` as template output: raw when that is safe, else a quoted action."""
    if "{{" in text or any(not (c in "\n\t" or c.isprintable()) for c in text) or '"""' in text:
        return "{{ " + _go_quote(text) + " }}"
    return text


def _stops(*markers: str | None) -> tuple[str, ...]:
    seen: list[str] = []
    for m in markers:
        if m and m.strip() and m not in seen:
            seen.append(m)
    return tuple(seen)


def _has_token(tokenizer_config: dict, text: str) -> bool:
    added = tokenizer_config.get("added_tokens_decoder") or {}
    return any(isinstance(v, dict) and v.get("content") == text for v in added.values())


# ---- The same formats as Jinja chat templates (embedded in the GGUF) ------------------
# Written for every Jinja engine that reads GGUF templates (llama.cpp's own, LM Studio's,
# Python jinja2): only string literals, `+`, `for`/`if`/`set` with whitespace control on
# every tag, no raw text between tags, and content that is not a string (llama.cpp hands an
# empty message's content over as null) rendered as ''. They must not mention the words
# Ollama reads as abilities (server/images.go chatTemplateHasToolSupport /
# chatTemplateHasThinkingSupport): the think markers are assembled from pieces.

_CHATML_WRAPS = {"system": ("<|im_start|>system\n", "<|im_end|>\n"), "user": ("<|im_start|>user\n", "<|im_end|>\n"),
                 "assistant": ("<|im_start|>assistant\n", "<|im_end|>\n")}
_JINJA_HEADER = "{#- Written by Tuneloom: the prompt format this model was fine-tuned on. -#}\n"
_JINJA_CONTENT = "{%- set content = message['content'] if message['content'] is string else '' -%}\n"


def _jinja_str(text: str) -> str:
    """A single-quoted Jinja string literal for ``text``."""
    esc = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return "'" + esc + "'"


class _X(str):
    """A Jinja expression among the literal pieces of :func:`_jinja_out`."""


def _jinja_out(*parts: str) -> str:
    """An output tag joining literal text pieces and :class:`_X` expressions."""
    items = [p if isinstance(p, _X) else _jinja_str(p) for p in parts if p]
    return "{{- " + " + ".join(items or ["''"]) + " -}}"


def _jinja_wrapped(first_system: str, no_system: str, wraps: dict, generation: str, *, any_role: bool = False) -> str:
    """Prefix (by whether the first message is a system one) + each message wrapped + generation prompt;
    ``any_role``: every role is wrapped as ChatML does (``<|im_start|>ROLE``)."""
    out = [_JINJA_HEADER]
    if first_system == no_system:
        if no_system:
            out.append(_jinja_out(no_system) + "\n")
    else:
        out.append("{%- if messages and messages[0]['role'] == 'system' -%}" + _jinja_out(first_system)
                   + "{%- else -%}" + _jinja_out(no_system) + "{%- endif -%}\n")
    out.append("{%- for message in messages -%}\n" + _JINJA_CONTENT)
    if any_role:
        out.append(_jinja_out("<|im_start|>", _X("message['role']"), "\n", _X("content"), "<|im_end|>\n") + "\n")
    else:
        first = True
        for role, (before, after) in wraps.items():
            out.append(("{%- if " if first else "{%- elif ") + f"message['role'] == {_jinja_str(role)} -%}}"
                       + _jinja_out(before, _X("content"), after) + "\n")
            first = False
        if wraps:
            out.append("{%- endif -%}\n")
    out.append("{%- endfor -%}\n")
    if generation:
        out.append("{%- if add_generation_prompt -%}" + _jinja_out(generation) + "{%- endif -%}\n")
    return "".join(out)


def _jinja_qwen3(thinking: bool) -> str:
    """Qwen3's format as its template renders plain chats: thinking off (the empty think block, always),
    or thinking on (a bare generation prompt unless enable_thinking is false)."""
    open_tag, close_tag = ("'<think>'", "'</think>'") if thinking else ("'<' + 'think>'", "'</' + 'think>'")
    lines = [
        _JINJA_HEADER,
        "{%- set empty_block = " + open_tag + " + '\\n\\n' + " + close_tag + " + '\\n\\n' -%}\n",
        "{%- set ns = namespace(last_user=-1) -%}\n",
        "{%- for message in messages -%}{%- if message['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}"
        "{%- endif -%}{%- endfor -%}\n",
        "{%- for message in messages -%}\n",
        _JINJA_CONTENT,
        "{%- if message['role'] == 'system' or message['role'] == 'user' -%}"
        + _jinja_out("<|im_start|>", _X("message['role']"), "\n", _X("content"), "<|im_end|>\n") + "\n",
        "{%- elif message['role'] == 'assistant' -%}\n",
        "{%- if ns.last_user >= 0 and loop.index0 > ns.last_user and loop.last -%}"
        + _jinja_out("<|im_start|>assistant\n", _X("empty_block"), _X("content.lstrip('\\n')"), "<|im_end|>\n"),
        "{%- else -%}" + _jinja_out("<|im_start|>assistant\n", _X("content"), "<|im_end|>\n") + "{%- endif -%}\n",
        "{%- endif -%}\n",
        "{%- endfor -%}\n",
    ]
    if thinking:
        lines.append("{%- if add_generation_prompt -%}" + _jinja_out("<|im_start|>assistant\n")
                     + "{%- if enable_thinking is defined and enable_thinking is false -%}"
                     + _jinja_out(_X("empty_block")) + "{%- endif -%}{%- endif -%}\n")
    else:
        lines.append("{%- if add_generation_prompt -%}" + _jinja_out("<|im_start|>assistant\n", _X("empty_block"))
                     + "{%- endif -%}\n")
    return "".join(lines)


# ---- ChatML (Qwen2.5, and the demo model's plain ChatML) ----------------------------

_CHATML_PLAIN = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)

_CHATML_DEFAULT_SYSTEM = (
    '{{- if or (not .Messages) (ne (index .Messages 0).Role "system") }}<|im_start|>system\n'
    "%s<|im_end|>\n"
    "{{ end }}\n"
    "{{- range .Messages }}\n"
    '{{- if or (eq .Role "system") (eq .Role "user") (eq .Role "assistant") }}<|im_start|>{{ .Role }}\n'
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}\n"
    "{{- end }}<|im_start|>assistant\n"
)


def _chatml_format(tokenizer_config: dict, default_system: str | None) -> ChatFormat:
    eos = special_tokens(tokenizer_config).get("eos_token")
    stops = _stops("<|im_start|>", "<|im_end|>", eos,
                   "<|endoftext|>" if _has_token(tokenizer_config, "<|endoftext|>") else None)
    if default_system is None:
        def render(messages: Messages) -> str:
            body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            return body + "<|im_start|>assistant\n"

        return ChatFormat("chatml", _CHATML_PLAIN, stops, render,
                          notes=("ChatML without a default system prompt.",),
                          jinja=_jinja_wrapped("", "", _CHATML_WRAPS, "<|im_start|>assistant\n", any_role=True))

    def render(messages: Messages) -> str:
        out = []
        if not messages or messages[0]["role"] != "system":
            out.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
        for m in messages:
            if m["role"] in ("system", "user", "assistant"):
                out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
        return "".join(out) + "<|im_start|>assistant\n"

    return ChatFormat("chatml", _CHATML_DEFAULT_SYSTEM % _go_text(default_system), stops, render,
                      notes=(f"ChatML; without a system message the template adds the default system prompt "
                             f"{default_system!r}, as the Jinja template does.",
                             "Tool messages and tool calls are not reproduced."),
                      jinja=_jinja_wrapped("", f"<|im_start|>system\n{default_system}<|im_end|>\n", _CHATML_WRAPS,
                                           "<|im_start|>assistant\n"))


# ---- Qwen3, thinking off -------------------------------------------------------------
# The Jinja template renders every assistant turn that comes after the last user
# message and is the last message with an empty think block and its content
# stripped of leading newlines; the generation prompt always carries the empty think
# block when enable_thinking=False. Go templates have no string functions, so the
# newline strip is a recursive template on byte slices.

_QWEN3 = (
    '{{- define "lstrip_newlines" }}{{ if and . (eq (index . 0) 10) }}'
    '{{ template "lstrip_newlines" (slice . 1) }}{{ else }}{{ . }}{{ end }}{{ end }}\n'
    "{{- $hasUser := false }}\n"
    '{{- range .Messages }}{{ if eq .Role "user" }}{{ $hasUser = true }}{{ end }}{{ end }}\n'
    "{{- range $i, $m := .Messages }}\n"
    '{{- if or (eq .Role "system") (eq .Role "user") }}<|im_start|>{{ .Role }}\n'
    "{{ .Content }}<|im_end|>\n"
    '{{ else if eq .Role "assistant" }}\n'
    "{{- $afterLastUser := $hasUser }}\n"
    '{{- range slice $.Messages $i }}{{ if eq .Role "user" }}{{ $afterLastUser = false }}{{ end }}{{ end }}\n'
    "{{- if and $afterLastUser (eq (len (slice $.Messages $i)) 1) }}<|im_start|>assistant\n"
    "<think>\n"
    "\n"
    "</think>\n"
    "\n"
    '{{ template "lstrip_newlines" .Content }}\n'
    "{{- else }}<|im_start|>assistant\n"
    "{{ .Content }}\n"
    "{{- end }}<|im_end|>\n"
    "{{ end }}\n"
    "{{- end }}<|im_start|>assistant\n"
    "<think>\n"
    "\n"
    "</think>\n"
    "\n"
)

_THINK_OFF = "<think>\n\n</think>\n\n"


def _qwen3_render(messages: Messages) -> str:
    has_user = any(m["role"] == "user" for m in messages)
    out = []
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role in ("system", "user"):
            out.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
        elif role == "assistant":
            after_last_user = has_user and not any(x["role"] == "user" for x in messages[i:])
            if after_last_user and i == len(messages) - 1:
                out.append("<|im_start|>assistant\n" + _THINK_OFF + content.lstrip("\n"))
            else:
                out.append("<|im_start|>assistant\n" + content)
            out.append("<|im_end|>\n")
    return "".join(out) + "<|im_start|>assistant\n" + _THINK_OFF


def _qwen3_format(tokenizer_config: dict) -> ChatFormat:
    eos = special_tokens(tokenizer_config).get("eos_token")
    stops = _stops("<|im_start|>", "<|im_end|>", eos,
                   "<|endoftext|>" if _has_token(tokenizer_config, "<|endoftext|>") else None)
    return ChatFormat("qwen3", _QWEN3, stops, _qwen3_render, notes=(
        "Qwen3 with thinking off: the generation prompt carries an empty <think></think> block, as the Jinja "
        "template renders it with enable_thinking=False.",
        "Assistant turns whose content holds '</think>' (reasoning traces) and user turns wrapped in "
        "<tool_response> are not reproduced: the Jinja template rewrites them with string operations Go "
        "templates lack.",
        "Tool messages and tool calls are not reproduced."), jinja=_jinja_qwen3(thinking=False))


# ---- Qwen3, thinking on ---------------------------------------------------------------
# A fine-tune trained on reasoning (run config "thinking": true) renders as the Jinja
# template does with enable_thinking left on: the generation prompt is a bare
# "<|im_start|>assistant\n" and the model opens its own think block. The template reads
# .Thinking inside the range over .Messages, in a list that starts with the opening tag and
# ends with the closing one, which is how Ollama finds the tags and the thinking ability of a
# Go template (thinking/template.go InferTags, server/images.go goTemplateCapabilities):
# Ollama then defaults `think` to true and separates the reasoning from the answer.
# `ollama run --think=false` (.IsThinkSet and not .Think) gives the empty block, as
# enable_thinking=False does. .Think / .IsThinkSet exist since Ollama 0.9.

_GO_THINK_BLOCK = ("{{ if .Thinking }}<think>\n{{ .Thinking }}\n</think>\n\n"
                   "{{ else }}<think>\n\n</think>\n\n{{ end }}")


def _go_thinking(template: str, content: str, prefill: str = "") -> str:
    """A thinking-off Qwen Go template made thinking-on: the answer after the last user message shows its
    ``.Thinking`` (else the empty block) before ``content``, and the generation prompt is ``prefill``, or the
    empty block when the request says think=false."""
    out = template.replace(_THINK_OFF + content, _GO_THINK_BLOCK + content, 1)
    tail = "{{- end }}<|im_start|>assistant\n"
    out = out[: out.rindex(tail)] + tail + "{{ if and $.IsThinkSet (not $.Think) }}" + _THINK_OFF + (
        "{{ else }}" + prefill if prefill else "") + "{{ end }}"
    assert out.count(".Thinking") == 2
    return out


_QWEN3_THINKING = _go_thinking(_QWEN3, '{{ template "lstrip_newlines" .Content }}\n')


def _qwen3_thinking_render(messages: Messages) -> str:
    """The Go template with Ollama's default for a thinking model (think on), for messages without reasoning."""
    return _qwen3_render(messages)[: -len(_THINK_OFF)]


def _qwen3_thinking_format(tokenizer_config: dict) -> ChatFormat:
    base = _qwen3_format(tokenizer_config)
    return ChatFormat("qwen3-thinking", _QWEN3_THINKING, base.stops, _qwen3_thinking_render, notes=(
        "Qwen3 with thinking on (the fine-tune was trained on reasoning): the generation prompt is a bare "
        "'<|im_start|>assistant\\n' and the model writes its own <think> block; Ollama shows it as thinking. "
        "Needs Ollama 0.9 or newer.",) + base.notes[1:], jinja=_jinja_qwen3(thinking=True))


# ---- Qwen3.5, thinking off -------------------------------------------------------------
# Qwen3.5's template (chat_template.jinja) differs from Qwen3's in two ways that matter here:
# every assistant turn after the last user message (not only the last message) carries the
# empty think block, and every message's content is trimmed. Go templates cannot trim, so the
# TEMPLATE is exact for contents without leading or trailing whitespace (exact_untrimmed=False);
# the embedded Jinja twin trims as the original does, so llama.cpp is exact for all.

_QWEN35 = _QWEN3.replace('{{- if and $afterLastUser (eq (len (slice $.Messages $i)) 1) }}', '{{- if $afterLastUser }}', 1
                         ).replace('{{ template "lstrip_newlines" .Content }}', "{{ .Content }}", 1)
assert _QWEN35 != _QWEN3


def _qwen35_render(messages: Messages) -> str:
    has_user = any(m["role"] == "user" for m in messages)
    out = []
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role in ("system", "user"):
            out.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
        elif role == "assistant":
            after_last_user = has_user and not any(x["role"] == "user" for x in messages[i:])
            out.append("<|im_start|>assistant\n" + (_THINK_OFF if after_last_user else "") + content + "<|im_end|>\n")
    return "".join(out) + "<|im_start|>assistant\n" + _THINK_OFF


def _qwen35_format(tokenizer_config: dict) -> ChatFormat:
    base = _qwen3_format(tokenizer_config)
    jinja = _qwen35_jinja(thinking=False)
    return ChatFormat("qwen3.5", _QWEN35, base.stops, _qwen35_render, notes=(
        "Qwen3.5 with thinking off: the generation prompt and every answer after the last user message carry "
        "the empty think block.",
        "Qwen3.5's template trims each message; Ollama's Go TEMPLATE cannot, so a message that starts or ends "
        "with whitespace reaches the model untrimmed on Ollama's Go path (the embedded template trims).",
        "Tool messages and tool calls are not reproduced."), jinja=jinja, exact_untrimmed=False)


# ---- Qwen3.5, thinking on --------------------------------------------------------------
# A Qwen3.5 fine-tune trained on reasoning renders as its template does with enable_thinking=True:
# the generation prompt opens the think block ("<|im_start|>assistant\n<think>\n", where Qwen3's
# is bare) and the model writes its reasoning and the closing tag. Ollama finds the tags as for
# Qwen3 (.Thinking between them inside the range over .Messages), turns thinking on by default,
# and, since the prompt ends with the opening tag, starts its parser inside the block
# (server/routes.go: strings.HasSuffix(prompt, openingTag)). think=false gives the empty block.

_QWEN35_THINKING = _go_thinking(_QWEN35, "{{ .Content }}\n", prefill="<think>\n")


def _qwen35_thinking_render(messages: Messages) -> str:
    """The Go template with Ollama's default for a thinking model (think on), for messages without reasoning."""
    return _qwen35_render(messages)[: -len(_THINK_OFF)] + "<think>\n"


def _qwen35_jinja(thinking: bool) -> str:
    """Qwen3.5's format as a plain Jinja template: Qwen3's, with every message trimmed and the think block on
    every answer after the last user message; thinking on opens the block in the generation prompt."""
    jinja = _jinja_qwen3(thinking=thinking).replace(
        "{%- set content = message['content'] if message['content'] is string else '' -%}",
        "{%- set content = (message['content'] if message['content'] is string else '') | trim -%}").replace(
        "loop.index0 > ns.last_user and loop.last -%}", "loop.index0 > ns.last_user -%}").replace(
        "content.lstrip('\\n')", "content")
    if thinking:
        tail = "{%- endif -%}{%- endif -%}\n"
        assert jinja.endswith(tail)
        jinja = jinja[: -len(tail)] + "{%- else -%}" + _jinja_out("<think>\n") + tail
    return jinja


def _qwen35_thinking_format(tokenizer_config: dict) -> ChatFormat:
    base = _qwen35_format(tokenizer_config)
    return ChatFormat("qwen3.5-thinking", _QWEN35_THINKING, base.stops, _qwen35_thinking_render, notes=(
        "Qwen3.5 with thinking on (the fine-tune was trained on reasoning): the generation prompt opens the "
        "<think> block and the model writes its reasoning, then the answer; Ollama shows the reasoning as "
        "thinking. Needs Ollama 0.9 or newer.",) + base.notes[1:], jinja=_qwen35_jinja(thinking=True),
        exact_untrimmed=False)


# ---- Zephyr (TinyLlama) --------------------------------------------------------------

_ZEPHYR = (
    "{{- range .Messages }}\n"
    '{{- if eq .Role "user" }}<|user|>\n'
    "{{ .Content }}%(eos)s\n"
    '{{ else if eq .Role "system" }}<|system|>\n'
    "{{ .Content }}%(eos)s\n"
    '{{ else if eq .Role "assistant" }}<|assistant|>\n'
    "{{ .Content }}%(eos)s\n"
    "{{ end }}\n"
    "{{- end }}<|assistant|>\n"
)


def _zephyr_format(tokenizer_config: dict) -> ChatFormat | None:
    eos = special_tokens(tokenizer_config).get("eos_token")
    if not eos:
        return None

    def render(messages: Messages) -> str:
        out = [f"<|{m['role']}|>\n{m['content']}{eos}\n" for m in messages
               if m["role"] in ("system", "user", "assistant")]
        return "".join(out) + "<|assistant|>\n"

    return ChatFormat("zephyr", _ZEPHYR % {"eos": _go_text(eos)},
                      _stops(eos, "<|user|>", "<|system|>", "<|assistant|>"), render,
                      notes=("Zephyr: <|system|>, <|user|>, <|assistant|>, each turn closed by "
                             f"{eos!r}.",),
                      jinja=_jinja_wrapped("", "", {r: (f"<|{r}|>\n", f"{eos}\n") for r in ("user", "system", "assistant")},
                                           "<|assistant|>\n"))
