"""Ollama: a Modelfile whose prompt equals the training prompt, and registration.

Two halves:

* **Templates.** Ollama builds a prompt with a Go ``text/template`` (the Modelfile
  ``TEMPLATE``); training used the model's Jinja ``chat_template``. For the chat
  formats Tuneloom knows (ChatML with or without a default system prompt as in
  Qwen2.5, Qwen3 with thinking off, Zephyr as in TinyLlama) we write the Go template
  by hand; for any other Jinja template we *derive* one from renderings with
  sentinel messages. Either way a format is only used after the Jinja template and
  a Python mirror of the Go template render the same text for every conversation in
  :data:`PROBE_CONVERSATIONS`; the tests then prove mirror == Go engine == Hugging
  Face on a larger set. No library translates Jinja to Go templates, so this part
  is hand-written.

* **Registration** through Ollama's REST API with the official ``ollama`` client:
  hash the GGUF, upload it as a blob unless the server has it, create the model
  with ``files``/``template``/``parameters``/``system``, then check that it is
  listed and answers. Every failure a user can meet is its own
  :class:`OllamaError` subclass with a next step; when the server is the problem
  the hint carries the ``ollama create`` command that registers the Modelfile left
  on disk.

What the Go templates do *not* reproduce (documented in :attr:`ChatFormat.notes`):
for a run without tool data, roles other than system/user/assistant (a run trained on
tool calls gets templates that render tools, calls and results: see "Tool calling"
below), Qwen3 assistant turns that carry
their own ``<think>...</think>`` reasoning, and consecutive messages of one role,
which Ollama merges (blank line between) before the template sees them.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

from core.atomic import write_text
from core.events import NULL_EVENTS, CancelToken, Events, StageClock, Throttle, TuneloomError
from core.tools import _ollama_property, _sorted_any, ollama_tools  # noqa: F401  (Ollama's form of tool definitions)

Messages = Sequence[dict]

# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class TemplateNotSupported(TuneloomError):
    """The model's chat template cannot be reproduced as an Ollama Go template."""


class OllamaError(TuneloomError):
    """Registration in Ollama failed; ``create_command`` registers the Modelfile by hand."""

    def __init__(self, message: str, hint: str = "", *, create_command: str | None = None):
        super().__init__(message, hint)
        self.create_command = create_command


class OllamaNotRunning(OllamaError):
    """No Ollama server answered (not running, or not installed)."""

    def __init__(self, message: str, hint: str = "", *, create_command: str | None = None, installed: bool = True):
        super().__init__(message, hint, create_command=create_command)
        self.installed = installed


class OllamaTooOld(OllamaError):
    """The server's API predates what Tuneloom needs (or cannot load this architecture)."""


class OllamaDiskFull(OllamaError):
    """The server ran out of disk space while storing the model."""


class OllamaUploadInterrupted(OllamaError):
    """The GGUF upload did not complete; running the same registration again is safe."""


class OllamaNameInvalid(OllamaError):
    """The model name breaks Ollama's naming rules; ``suggestion`` is a valid one."""

    def __init__(self, message: str, hint: str = "", *, suggestion: str | None = None, **kw):
        super().__init__(message, hint, **kw)
        self.suggestion = suggestion


class OllamaNameTaken(OllamaError):
    """A model of that name exists and ``force`` was not given."""


# --------------------------------------------------------------------------------------
# Jinja side: what training rendered
# --------------------------------------------------------------------------------------


# tokenizer_config.json with its chat template folded in: the one reader, core.model_folder's (callers here
# and core.demo use this name)
from core.model_folder import load_tokenizer_config  # noqa: E402,F401


def chat_template_of(tokenizer_config: dict) -> str:
    """The Jinja chat template of a tokenizer config (the ``default`` one when there are several)."""
    tpl = tokenizer_config.get("chat_template")
    if isinstance(tpl, list):
        named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
        tpl = named.get("default") or next(iter(named.values()), None)
    if not isinstance(tpl, str) or not tpl.strip():
        raise TemplateNotSupported(
            "This model has no chat template, so Ollama cannot be told how to build its prompt.",
            "Use a chat (instruct) model, or add a chat_template to its tokenizer_config.json.")
    return tpl


def _token_text(tok: Any) -> str | None:
    if isinstance(tok, dict):  # an AddedToken written as {"content": ...}
        tok = tok.get("content")
    return tok if isinstance(tok, str) else None


def special_tokens(tokenizer_config: dict) -> dict[str, str]:
    """The special-token strings a chat template may use (``bos_token``, ``eos_token``, ...)."""
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
        text = _token_text(tokenizer_config.get(key))
        if text is not None:
            out[key] = text
    return out


def _make_env():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        # lets templates with {% generation %} blocks (assistant masks) parse; renders the body as is
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    # The environment transformers' apply_chat_template uses.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@lru_cache(maxsize=64)
def _compiled(template: str):
    return _make_env().from_string(template)


def render_jinja(template: str, messages: Messages, *, add_generation_prompt: bool = True,
                 tokens: dict[str, str] | None = None, **kwargs) -> str:
    """Render a Hugging Face chat template the way ``apply_chat_template`` does.

    ``enable_thinking=False`` is always passed: Tuneloom trains and serves with
    thinking off (templates that do not know the flag ignore it).
    """
    ctx = dict(tokens or {})
    ctx.update(kwargs)
    ctx.setdefault("enable_thinking", False)
    return _compiled(template).render(messages=[dict(m) for m in messages],
                                      add_generation_prompt=add_generation_prompt, **ctx)


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


# ---- Derived formats -----------------------------------------------------------------


@dataclass(frozen=True)
class _Wrapped:
    """prefix (depends on whether the first message is a system one) + wrapped turns + generation prompt."""

    first_system: str
    no_system: str
    wraps: dict  # role -> (before, after)
    generation: str

    def render(self, messages: Messages) -> str:
        out = [self.first_system if messages and messages[0]["role"] == "system" else self.no_system]
        for m in messages:
            w = self.wraps.get(m["role"])
            if w is not None:
                out += [w[0], m["content"], w[1]]
        out.append(self.generation)
        return "".join(out)

    def go_template(self) -> str:
        def lit(s: str) -> str:
            return "{{ " + _go_quote(s) + " }}" if s else ""

        parts = []
        if self.first_system == self.no_system:
            if self.no_system:
                parts.append("{{- " + _go_quote(self.no_system) + " }}\n")
        else:
            parts.append('{{- if and .Messages (eq (index .Messages 0).Role "system") }}'
                         f"{lit(self.first_system)}{{{{ else }}}}{lit(self.no_system)}{{{{ end }}}}\n")
        parts.append("{{- range .Messages }}\n")
        first = True
        for role, (before, after) in self.wraps.items():
            kw = "if" if first else "else if"
            parts.append(f'{{{{- {kw} eq .Role {_go_quote(role)} }}}}{lit(before)}{{{{ .Content }}}}{lit(after)}\n')
            first = False
        if self.wraps:
            parts.append("{{- end }}\n")
        parts.append("{{- end }}" + lit(self.generation))
        return "".join(parts)


_SENTINELS = {"system": "Sx7q", "user": "Ux7q", "user2": "Vx7q", "assistant": "Ax7q", "system2": "Tx7q"}


def _split_once(text: str, needle: str, what: str) -> tuple[str, str]:
    if text.count(needle) != 1:
        raise TemplateNotSupported(f"The chat template does not show {what} exactly once in its output.")
    a, b = text.split(needle)
    return a, b


def derive_chat_format(template: str, tokens: dict[str, str] | None = None) -> ChatFormat:
    """Derive a Go template from renderings of the Jinja template with sentinel messages.

    The model: an optional prefix (one when the first message is a system message,
    one when it is not), then each system/user/assistant message wrapped in fixed
    text, then the generation prompt. Raises :class:`TemplateNotSupported` when the
    template does not fit that model or when the result differs from the Jinja
    rendering for any conversation in :data:`PROBE_CONVERSATIONS`.
    """
    try:
        return _derive(template, tokens or {})
    except TemplateNotSupported as exc:
        if exc.hint:
            raise
        why = str(exc)
        raise TemplateNotSupported(
            f"Tuneloom cannot reproduce this model's chat template for Ollama: {why[:1].lower()}{why[1:]}",
            "Export the GGUF without Ollama registration and write the Modelfile TEMPLATE by hand, or train a "
            "model with a ChatML, Qwen3 or Zephyr chat template.") from exc


def _derive(template: str, tokens: dict[str, str]) -> ChatFormat:
    S = _SENTINELS

    def r(pairs, gen=False):
        msgs = [{"role": role, "content": content} for role, content in pairs]
        try:
            return render_jinja(template, msgs, add_generation_prompt=gen, tokens=tokens)
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot derive"
            raise TemplateNotSupported(
                f"The chat template failed on a simple conversation ({exc}).",
                "Tuneloom can only hand Ollama templates it can reproduce exactly.") from exc

    def strip_prefix(text: str, prefix: str, what: str) -> str:
        if not text.startswith(prefix):
            raise TemplateNotSupported(f"The chat template renders {what} differently depending on what follows.")
        return text[len(prefix):]

    def strip_suffix(text: str, suffix: str, what: str) -> str:
        if suffix and not text.endswith(suffix):
            raise TemplateNotSupported(f"The chat template renders {what} differently depending on its position.")
        return text[: len(text) - len(suffix)] if suffix else text

    u = r([("user", S["user"])])
    before_u, after_u = _split_once(u, S["user"], "a user message")
    ua = r([("user", S["user"]), ("assistant", S["assistant"])])
    rest = strip_prefix(ua, u, "a user message")
    pre_a, post_a = _split_once(rest, S["assistant"], "an assistant message")
    uau = r([("user", S["user"]), ("assistant", S["assistant"]), ("user", S["user2"])])
    rest = strip_prefix(uau, ua, "an assistant message")
    pre_u, post_u2 = _split_once(rest, S["user2"], "a second user message")
    if post_u2 != after_u:
        raise TemplateNotSupported("The chat template ends user messages differently depending on their position.")
    no_system = strip_suffix(before_u, pre_u, "the first user message")

    su = r([("system", S["system"]), ("user", S["user"])])
    before_s, rest = _split_once(su, S["system"], "a system message")
    mid, tail = _split_once(rest, S["user"], "a user message after a system message")
    if tail != after_u:
        raise TemplateNotSupported("The chat template ends user messages differently after a system message.")
    post_s = strip_suffix(mid, pre_u, "a user message after a system message")
    first_system, pre_s = "", before_s
    try:  # a system message in the middle tells the system wrapper apart from the prefix
        uasu = r([("user", S["user"]), ("assistant", S["assistant"]), ("system", S["system2"]), ("user", S["user2"])])
        mid_sys, _ = _split_once(strip_prefix(uasu, ua, "an assistant message"), S["system2"], "a system message")
        if before_s.endswith(mid_sys):
            first_system, pre_s = before_s[: len(before_s) - len(mid_sys)], mid_sys
    except TemplateNotSupported:
        pass
    generation = strip_prefix(r([("user", S["user"])], gen=True), u, "the conversation")

    wrapped = _Wrapped(first_system=first_system, no_system=no_system,
                       wraps={"system": (pre_s, post_s), "user": (pre_u, after_u), "assistant": (pre_a, post_a)},
                       generation=generation)
    eos = tokens.get("eos_token")
    notes = ["Derived from renderings of the Jinja template with sentinel messages and checked against it."]
    bos = tokens.get("bos_token")
    if bos and (first_system.startswith(bos) or no_system.startswith(bos)):
        notes.append(f"The template writes the BOS token {bos!r} itself; the GGUF must not make llama.cpp add "
                     "a second one (tokenizer.ggml.add_bos_token false).")
    fmt = ChatFormat("derived", wrapped.go_template(),
                     _stops(eos, post_a.strip() or None, pre_u.strip() or None), wrapped.render, tuple(notes),
                     jinja=_jinja_wrapped(first_system, no_system, wrapped.wraps, generation))
    _check_against_jinja(fmt, template, tokens)
    return fmt


def _first_difference(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"at character {i}: Jinja {a[max(0, i - 20):i + 20]!r} vs Ollama {b[max(0, i - 20):i + 20]!r}"


def _check_against_jinja(fmt: ChatFormat, template: str, tokens: dict[str, str]) -> None:
    checked = 0
    for conv in fmt.probes():
        try:
            want = render_jinja(template, conv, tokens=tokens)
        except Exception:  # noqa: BLE001 - a conversation training could not render either
            continue
        got = fmt.render(conv)
        if got != want:
            raise TemplateNotSupported(
                "Tuneloom cannot reproduce this model's chat template for Ollama exactly: for the conversation "
                f"{[(m['role'], m['content']) for m in conv]!r} the prompts differ {_first_difference(want, got)}.",
                "Export the GGUF without Ollama registration and write a TEMPLATE by hand, or train a model "
                "with a ChatML, Qwen3 or Zephyr chat template.")
        checked += 1
    if checked == 0:
        raise TemplateNotSupported("The chat template failed on every test conversation.")


def _matches(fmt: ChatFormat | None, template: str, tokens: dict[str, str]) -> bool:
    if fmt is None:
        return False
    try:
        _check_against_jinja(fmt, template, tokens)
    except TemplateNotSupported:
        return False
    return True


_DEFAULT_SYSTEM_RE = re.compile(r"\A<\|im_start\|>system\n(.*)<\|im_end\|>\n\Z", re.S)


def chat_format_for(tokenizer_config: dict, *, thinking: bool = False) -> ChatFormat:
    """The :class:`ChatFormat` reproducing this tokenizer config's chat template in Ollama.

    ``thinking``: the fine-tune was trained with thinking on (its data carried reasoning), so
    the template is rendered with ``enable_thinking=True`` as training rendered it; otherwise
    with ``enable_thinking=False``. Templates without a thinking mode ignore the flag.
    """
    template = chat_template_of(tokenizer_config)
    # the render context travels with the special tokens through derive/check (render_jinja reads it)
    tokens = {**special_tokens(tokenizer_config), "enable_thinking": bool(thinking)}
    candidates: list[ChatFormat | None] = []
    try:
        head = render_jinja(template, [{"role": "user", "content": _SENTINELS["user"]}], tokens=tokens)
        head = head.split("<|im_start|>user\n" + _SENTINELS["user"])[0] if "<|im_start|>user\n" in head else None
    except Exception:  # noqa: BLE001
        head = None
    if head == "":
        candidates.append(_chatml_format(tokenizer_config, None))
    elif head is not None and (m := _DEFAULT_SYSTEM_RE.match(head)):
        candidates.append(_chatml_format(tokenizer_config, m.group(1)))
    candidates += [_qwen3_thinking_format(tokenizer_config) if thinking else _qwen3_format(tokenizer_config),
                   _zephyr_format(tokenizer_config)]
    candidates.append(_qwen35_thinking_format(tokenizer_config) if thinking else _qwen35_format(tokenizer_config))
    for fmt in candidates:
        if _matches(fmt, template, tokens):
            return fmt
    return derive_chat_format(template, tokens)


def chat_template_kind(tokenizer_config: dict, *, thinking: bool = False) -> str:
    """``"chatml"``, ``"qwen3"``, ``"qwen3-thinking"``, ``"qwen3.5"``, ``"qwen3.5-thinking"``, ``"zephyr"`` or
    ``"derived"``; raises
    :class:`TemplateNotSupported`."""
    return chat_format_for(tokenizer_config, thinking=thinking).kind


def go_template_for(tokenizer_config: dict, *, thinking: bool = False, tools: bool = False) -> tuple[str, list[str]]:
    """(Go template for the Modelfile TEMPLATE, stop strings) for this tokenizer config (``tools``: for a run
    trained on tool calls, see :func:`export_chat_format`)."""
    fmt = export_chat_format(tokenizer_config, thinking=thinking, tools=tools)
    return fmt.template, list(fmt.stops)


# --------------------------------------------------------------------------------------
# What Ollama does with the two templates: a model written from Ollama's source
# --------------------------------------------------------------------------------------
# Ollama (snapshot of 2026-08; the native path since commit 9db4bdbad, v0.32.7) holds two
# templates for a model: the Modelfile TEMPLATE (Go text/template) and the GGUF's
# tokenizer.chat_template (Jinja). For a chat request it either renders the Go template
# itself ("go" path) or hands the messages to llama-server, which renders the Jinja
# template ("native" path). What follows mirrors the parts of that decision and of the
# request handling that change the prompt; each function names the Go function it models.

NATIVE_SINCE = (0, 32, 7)
_THINK_SPLITS = ("content.split('</think>')", 'content.split("</think>")')


def chat_template_capabilities(chat_template: str | None) -> set[str]:
    """server/images.go chatTemplateCapabilities (with chatTemplateHasToolSupport and
    chatTemplateHasThinkingSupport): plain substring tests on the Jinja source."""
    caps: set[str] = set()
    if not chat_template:
        return caps
    if "tools" in chat_template or "tool_call" in chat_template:
        caps.add("tools")
    if ("<think>" in chat_template and "</think>" in chat_template) or (
            any(x in chat_template for x in _THINK_SPLITS) and "reasoning_content" not in chat_template
            and "<SPECIAL_12>" not in chat_template):
        caps.add("thinking")
    return caps


def chat_template_has_tool_round_trip(chat_template: str) -> bool:
    """server/images.go chatTemplateHasToolRoundTrip."""
    if not {"tools"} <= chat_template_capabilities(chat_template):
        return False
    calls = "tool_calls" in chat_template or "assistant_tool_call" in chat_template
    return calls and any(x in chat_template for x in (
        "tool_response", "tool_results", "role'] == 'tool'", 'role\'] == "tool"', 'role"] == \'tool\'',
        'role"] == "tool"', "message.role == 'tool'", 'message.role == "tool"', "ipython"))


_GO_FIELD = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)")


def go_template_capabilities(go_template: str | None) -> set[str]:
    """server/images.go goTemplateCapabilities: ``tools`` when the template reads .Tools,
    ``insert`` for .Suffix (template/template.go Vars lower-cases every identifier), ``thinking``
    when thinking/template.go InferTags finds tags around .Thinking inside ``range .Messages``.

    Approximation (exact for the templates Tuneloom writes; the tests check it against Go's
    own parser in tests/go/render.go): fields are found by a regular expression, and InferTags
    by the text right around ``{{ .Thinking }}`` inside an ``{{ if .Thinking }}`` block.
    """
    caps: set[str] = set()
    if not go_template:
        return caps
    fields = {m.group(1).lower() for m in _GO_FIELD.finditer(go_template)}
    if "tools" in fields:
        caps.add("tools")
    if "suffix" in fields:
        caps.add("insert")
    if go_template_think_tags(go_template) != ("", ""):
        caps.add("thinking")
    return caps


_THINK_BLOCK = re.compile(r"\{\{-?\s*if\s+\.Thinking\s*-?\}\}(.*?)\{\{-?\s*\.Thinking\s*-?\}\}(.*?)\{\{", re.S)


def go_template_think_tags(go_template: str) -> tuple[str, str]:
    """(opening, closing) think tags thinking/template.go InferTags finds (see go_template_capabilities)."""
    if "range" not in go_template or ".Messages" not in go_template:
        return "", ""
    m = _THINK_BLOCK.search(go_template)
    if not m or not m.group(1).strip() or not m.group(2).strip():
        return "", ""
    return m.group(1).strip(), m.group(2).strip()


def should_prefer_chat_template(chat_template: str, chat_caps: set[str], go_template: str,
                                go_caps: set[str]) -> bool:
    """server/images.go shouldPreferChatTemplate (with goTemplateHasToolRoundTrip: .Tools and .ToolCalls read,
    and the text holds `eq .Role "tool"`, tool_response or TOOL_RESULTS; Tuneloom's Go templates have none)."""
    go_round_trip = ("tools" in go_caps and "toolcalls" in {m.group(1).lower() for m in _GO_FIELD.finditer(go_template)}
                     and any(x in go_template for x in ('eq .Role "tool"', "tool_response", "TOOL_RESULTS")))
    if len(chat_caps) > len(go_caps):  # hasMoreCapabilities
        return not go_round_trip or chat_template_has_tool_round_trip(chat_template)
    if chat_caps != go_caps or "tools" not in chat_caps:
        return False
    return chat_template_has_tool_round_trip(chat_template) and not go_round_trip


@dataclass(frozen=True)
class OllamaSetup:
    """What decides Ollama's prompt for a registered model: its two templates and the server."""

    go_template: str | None  # the Modelfile TEMPLATE (None: not given)
    chat_template: str | None  # the GGUF's tokenizer.chat_template
    architecture: str = ""  # general.architecture; Ollama's ModelFamily (server/create.go)
    name: str = "model:latest"
    system: str | None = None  # the Modelfile SYSTEM
    version: tuple[int, ...] = NATIVE_SINCE
    go_template_env: bool | None = None  # OLLAMA_GO_TEMPLATE: unset, true, false


def template_path(setup: OllamaSetup) -> str:
    """``"go"`` or ``"native"``: server/images.go GetModel (PreferChatTemplate) and server/routes.go
    shouldUseGoTemplate / chatModeForModel. Before v0.32.7 a Go TEMPLATE was always used."""
    has_go = setup.go_template is not None
    if setup.version < NATIVE_SINCE:
        return "go" if has_go else "native"
    if not has_go:
        return "native"
    if setup.go_template_env is not None:  # goTemplateEnvSet: the variable decides
        return "go" if setup.go_template_env else "native"
    prefer = bool(setup.chat_template) and should_prefer_chat_template(
        setup.chat_template, chat_template_capabilities(setup.chat_template), setup.go_template,
        go_template_capabilities(setup.go_template))
    return "native" if prefer else "go"


def model_capabilities(setup: OllamaSetup) -> set[str]:
    """server/images.go Capabilities for the selected template: the GGUF template's abilities on the
    native path, the Go template's on the go path (plus completion)."""
    path = template_path(setup)
    caps = {"completion"}
    caps |= go_template_capabilities(setup.go_template) if path == "go" else \
        chat_template_capabilities(setup.chat_template)
    return caps


def default_think(setup: OllamaSetup) -> bool | None:
    """server/routes.go ChatHandler: a model with the thinking ability thinks unless the request says
    otherwise (``req.Think`` defaults to true); otherwise ``think`` stays unset (None)."""
    return True if "thinking" in model_capabilities(setup) else None


def filter_think_tags(messages: Messages, setup: OllamaSetup) -> list[dict]:
    """server/routes.go filterThinkTags: for the qwen3 family (and models named deepseek-r1), every
    assistant message before the last user message goes through thinking.Parser
    (thinking/parser.go) and keeps only what it calls content. For one complete message that is:
    whitespace-only or a prefix of ``<think>`` (after leading whitespace) -> ""; starting with
    ``<think>`` -> what follows ``</think>`` with leading whitespace trimmed ("" if never closed);
    anything else unchanged."""
    model = setup.name.split("/")[-1].split(":")[0]
    msgs = [dict(m) for m in messages]
    if setup.architecture != "qwen3" and model != "deepseek-r1":
        return msgs
    last_user = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=-1)
    for i, m in enumerate(msgs):
        if m.get("role") == "assistant" and i < last_user:
            m["content"] = _think_parser_content(m.get("content") or "")
    return msgs


def _think_parser_content(content: str, opening: str = "<think>", closing: str = "</think>") -> str:
    trimmed = content.lstrip()  # strings.TrimLeftFunc(unicode.IsSpace)
    if not trimmed or opening.startswith(trimmed):
        return ""  # still waiting to see whether a think block opens
    if not trimmed.startswith(opening):
        return content  # no think block: untrimmed
    after = opening.join(trimmed.split(opening)[1:])
    if closing not in after:
        return ""  # all thinking
    return closing.join(after.split(closing)[1:]).lstrip()


def _collate(messages: Messages) -> list[dict]:
    """template/template.go collate: consecutive messages of one role (tool excepted) are joined with a blank line."""
    out: list[dict] = []
    for m in messages:
        if out and out[-1]["role"] == m["role"] and m["role"] != "tool":
            out[-1] = {**out[-1], "content": out[-1]["content"] + "\n\n" + m["content"]}
        else:
            out.append(dict(m))
    return out


def llama_server_messages(messages: Messages) -> list[dict]:
    """What llama-server's Jinja template sees (llm/llama_server.go llamaServerChatMessage, then llama.cpp
    common/chat.cpp common_chat_msgs_to_json_oaicompat): an empty content arrives as null."""
    return [{**m, "content": m.get("content") or None} for m in messages]


def ollama_prompt(setup: OllamaSetup, messages: Messages, *, think: bool | None = "default",
                  go_render: Callable[[str, list[dict]], str] | None = None, tokens: dict | None = None,
                  tools: Sequence[dict] | None = None) -> str:
    """The prompt Ollama builds for a chat request with ``messages`` (server/routes.go ChatHandler).

    The Modelfile SYSTEM goes first when the conversation has no system message, then
    filterThinkTags; the go path renders the Go template (``go_render(template, messages)``: the real
    engine in the tests; by default the :class:`ChatFormat` mirror of a Tuneloom template, after
    collate), the native path the GGUF's Jinja template as llama-server does with
    ``chat_template_kwargs`` {enable_thinking: think} when ``think`` is set (llm/llama_server.go
    llamaServerChatTemplateKwargs) and llama.cpp's default enable_thinking=true when it is not.
    ``think="default"``: what Ollama does when the request does not say (:func:`default_think`).
    ``tools``: the request's tool definitions as Ollama holds them (:func:`ollama_tools`); on the go path
    ``go_render`` must render them (the default mirror is given them), on the native path llama-server's
    template gets them with each call's arguments as Go's JSON string (:func:`ollama_tool_messages`).
    """
    msgs = [dict(m) for m in messages]
    if setup.system and (not msgs or msgs[0].get("role") != "system"):
        msgs.insert(0, {"role": "system", "content": setup.system})
    msgs = filter_think_tags(msgs, setup)
    if think == "default":
        think = default_think(setup)
    if template_path(setup) == "go":
        if go_render is None:
            fmt = _mirror_for(setup.go_template)
            return fmt.render(_collate(msgs), tools) if tools else fmt.render(_collate(msgs))
        return go_render(setup.go_template, msgs)
    ctx = dict(tokens or {})
    ctx["enable_thinking"] = True if think is None else bool(think)
    if tools or any(m.get("tool_calls") for m in msgs):
        messages_in = ollama_tool_messages(msgs, object_arguments=_needs_object_arguments(setup.chat_template))
        return _compiled(setup.chat_template).render(messages=messages_in, add_generation_prompt=True,
                                                     tools=list(tools) if tools else None, **ctx)
    return _compiled(setup.chat_template).render(messages=llama_server_messages(msgs), add_generation_prompt=True,
                                                 **ctx)


_MIRRORS: dict[str, ChatFormat] = {}


def _mirror_for(go_template: str) -> ChatFormat:
    fmt = _MIRRORS.get(go_template)
    if fmt is None:
        raise ValueError("no Python mirror of this Go template; pass go_render")
    return fmt


def _remember(fmt: ChatFormat) -> ChatFormat:
    _MIRRORS.setdefault(fmt.template, fmt)
    return fmt


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


# Scenarios every embedded template is checked under: Ollama before the native path, current
# Ollama with its defaults, and current Ollama told to skip the Go template.
OLLAMA_SCENARIOS = (("ollama<0.32.7", {"version": (0, 32, 6)}), ("ollama", {}),
                    ("ollama OLLAMA_GO_TEMPLATE=0", {"go_template_env": False}))


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
    from core.gguf_export import ARCHITECTURES

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


# --------------------------------------------------------------------------------------
# Tool calling (issue 31): tools, calls and results in both templates
# --------------------------------------------------------------------------------------
# A run trained on tool records (config.json "tools": true) rendered them with the model's own
# template and `tools=` (Qwen2.5, Qwen3, Qwen3.5). Its export then carries:
#
# * an embedded Jinja template: the model's own, with the thinking markers hidden and thinking
#   pinned off when the run trained without it (as the plain formats above do), and tool-call
#   arguments that arrive as a JSON *string* re-spaced as Python's json.dumps writes them
#   (Ollama hands llama-server each call's arguments as Go's compact JSON). It shows Ollama the
#   tools ability and a tool round trip (server/images.go chatTemplateHasToolRoundTrip);
# * a Go TEMPLATE that renders .Tools, .ToolCalls and tool messages as training did (Qwen2.5 and
#   Qwen3; Qwen3.5 writes calls as XML and keeps its plain TEMPLATE). Go's `json` is compact, so
#   the template re-spaces it byte by byte ("pyjson"). It is written so that Ollama does not see a
#   Go *round trip* (goTemplateHasToolRoundTrip looks for `eq .Role "tool"` and the word
#   tool_response): both templates show {tools}, only the Jinja one a round trip, so current Ollama
#   prefers the embedded template (shouldPreferChatTemplate) and llama-server renders it; Ollama
#   before v0.32.7 renders the TEMPLATE and parses calls with tools.Parser, whose tag
#   (tools/template.go parseTag: the first text inside `{{ if .ToolCalls }}`) is "<tool_call>".
#
# Exact, on the native path, for tool definitions as Ollama holds them (api.Tool: :func:`ollama_tools`
# gives that order and those keys) and call arguments whose nested objects list their keys sorted
# (Ollama keeps the top level's order only). On the Go path the template sees copies whose parameter
# properties and call arguments are plain Go maps (template/template.go convertToolsForTemplate): exact
# when those keys are sorted too, and when every tool has a description (:func:`template_tools`).
# Numbers like 1.0 reach either template as 1.

_TL_ARGS_MACRO = (
    "{%- macro _tl_args(a) -%}{%- if a is string -%}"
    "{%- set s = namespace(out='', q=false, e=false) -%}{%- for c in a -%}"
    "{%- if s.e -%}{%- set s.e = false -%}{%- set s.out = s.out + c -%}"
    "{%- elif s.q -%}{%- if c == '\\\\' -%}{%- set s.e = true -%}{%- elif c == '\"' -%}{%- set s.q = false -%}"
    "{%- endif -%}{%- set s.out = s.out + c -%}"
    "{%- elif c == '\"' -%}{%- set s.q = true -%}{%- set s.out = s.out + c -%}"
    "{%- elif c == ':' -%}{%- set s.out = s.out + ': ' -%}"
    "{%- elif c == ',' -%}{%- set s.out = s.out + ', ' -%}"
    "{%- else -%}{%- set s.out = s.out + c -%}{%- endif -%}{%- endfor -%}"
    "{{- s.out | replace('\\\\u003c', '<') | replace('\\\\u003e', '>') | replace('\\\\u0026', '&') -}}"
    "{%- else -%}{{- a | tojson -}}{%- endif -%}{%- endmacro -%}\n")

# Go: Python's json.dumps spacing from Go's compact json, one byte at a time; inside strings Go's
# HTML escapes (\u003c \u003e \u0026) become the characters Python writes.
_GO_PYJSON = (
    '{{- define "pyjson" }}{{ if . }}{{ $c := index . 0 }}'
    '{{ if eq $c 34 }}"{{ template "pyjson_str" (slice . 1) }}'
    '{{ else if eq $c 58 }}: {{ template "pyjson" (slice . 1) }}'
    '{{ else if eq $c 44 }}, {{ template "pyjson" (slice . 1) }}'
    '{{ else }}{{ slice . 0 1 }}{{ template "pyjson" (slice . 1) }}{{ end }}{{ end }}{{ end }}\n'
    '{{- define "pyjson_str" }}{{ if . }}{{ $c := index . 0 }}'
    '{{ if eq $c 34 }}"{{ template "pyjson" (slice . 1) }}'
    '{{ else if and (eq $c 92) (ge (len .) 6) (eq (slice . 0 6) "\\\\u003c") }}<{{ template "pyjson_str" (slice . 6) }}'
    '{{ else if and (eq $c 92) (ge (len .) 6) (eq (slice . 0 6) "\\\\u003e") }}>{{ template "pyjson_str" (slice . 6) }}'
    '{{ else if and (eq $c 92) (ge (len .) 6) (eq (slice . 0 6) "\\\\u0026") }}&{{ template "pyjson_str" (slice . 6) }}'
    '{{ else if eq $c 92 }}{{ slice . 0 2 }}{{ template "pyjson_str" (slice . 2) }}'
    '{{ else }}{{ slice . 0 1 }}{{ template "pyjson_str" (slice . 1) }}{{ end }}{{ end }}{{ end }}\n'
)

_GO_LSTRIP = ('{{- define "lstrip_newlines" }}{{ if and . (eq (index . 0) 10) }}'
              '{{ template "lstrip_newlines" (slice . 1) }}{{ else }}{{ . }}{{ end }}{{ end }}\n')

# tool results: the word tool_response split by an empty action, and `eq "tool" .Role` rather than
# `eq .Role "tool"`, so that Ollama sees no Go round trip (see above)
_GO_TOOL_RESULT = (
    '{{ else if eq "tool" .Role }}{{ if not $prevTool }}<|im_start|>user{{ end }}\n'
    '<tool_{{ "" }}response>\n'
    "{{ .Content }}\n"
    '</tool_{{ "" }}response>\n'
    '{{- if or $last (ne (index (slice $.Messages $i) 1).Role "tool") }}<|im_end|>\n'
    "{{ end }}\n"
)
_GO_CALL = '{"name": "{{ .Function.Name }}", "arguments": {{ template "pyjson" (json .Function.Arguments) }}}\n</tool_call>'

_GO_LOOP_HEAD = (
    "{{- $prevTool := false }}\n"
    "{{- range $i, $m := .Messages }}\n"
    "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
    "{{- $calls := .ToolCalls }}\n"
    '{{- if eq .Role "user" }}<|im_start|>user\n'
    "{{ .Content }}<|im_end|>\n"
    '{{ else if eq .Role "system" }}{{ if or (not $.Tools) $i }}<|im_start|>system\n'
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}\n"
)
_GO_LOOP_TAIL = ("{{- end }}\n"
                 '{{- $prevTool = eq "tool" .Role }}\n'
                 "{{- end }}<|im_start|>assistant\n")

# Qwen2.5: an answer without calls is a plain turn; with calls, "\n" + content only when there is some,
# then "\n<tool_call>..." for each call
_GO_ASSISTANT_QWEN25 = (
    '{{- else if and (eq .Role "assistant") (not $calls) }}<|im_start|>assistant\n'
    "{{ .Content }}<|im_end|>\n"
    '{{ else if eq .Role "assistant" }}<|im_start|>assistant{{ if .Content }}\n'
    "{{ .Content }}{{ end }}\n"
    "{{- if .ToolCalls }}{{ range .ToolCalls }}\n"
    "<tool_call>\n" + _GO_CALL + "{{ end }}{{ end }}<|im_end|>\n"
)

# Qwen3: the answer after the last user message, when it is the last message, carries the empty think
# block; calls follow the content, separated by "\n" (none before a first call without content)
_GO_ASSISTANT_QWEN3 = (
    '{{- else if eq .Role "assistant" }}\n'
    "{{- $afterLastUser := $hasUser }}\n"
    '{{- range slice $.Messages $i }}{{ if eq .Role "user" }}{{ $afterLastUser = false }}{{ end }}{{ end }}\n'
    "{{- if and $afterLastUser $last }}<|im_start|>assistant\n"
    + _THINK_OFF + '{{ template "lstrip_newlines" .Content }}\n'
    "{{- else }}<|im_start|>assistant\n"
    "{{ .Content }}\n"
    "{{- end }}\n"
    "{{- if and $calls .Content }}\n"
    "{{ end }}\n"
    "{{- if .ToolCalls }}{{ range $j, $c := .ToolCalls }}<tool_call>\n" + _GO_CALL
    + "{{ if ne (len (slice $calls $j)) 1 }}\n"
    "{{ end }}{{ end }}{{ end }}<|im_end|>\n"
)


def go_json(value: Any) -> str:
    """Go's ``json.Marshal`` text of a JSON value: compact, ``<`` ``>`` ``&`` U+2028 U+2029 escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _pyjson(go_text: str) -> str:
    """What the Go template's "pyjson" (and the Jinja macro) writes for Go's compact JSON."""
    out, i, in_str = [], 0, False
    while i < len(go_text):
        c = go_text[i]
        if in_str:
            if c == "\\":
                esc = go_text[i:i + 6]
                if esc in ("\\u003c", "\\u003e", "\\u0026"):
                    out.append({"\\u003c": "<", "\\u003e": ">", "\\u0026": "&"}[esc])
                    i += 6
                    continue
                out.append(go_text[i:i + 2])
                i += 2
                continue
            in_str = c != '"'
            out.append(c)
        elif c == '"':
            in_str = True
            out.append(c)
        else:
            out.append({":": ": ", ",": ", "}.get(c, c))
        i += 1
    return "".join(out)


def template_tools(tools: Sequence[dict] | None) -> list[dict]:
    """Tool definitions as a Go TEMPLATE sees them (template/template.go convertToolsForTemplate): Ollama's
    form (:func:`ollama_tools`), with the parameters' properties in a plain map (keys sorted) and the
    description always written."""
    out = []
    for t in ollama_tools(tools):
        f = t["function"]
        params = dict(f["parameters"])
        if params.get("properties") is not None:
            params["properties"] = dict(sorted(params["properties"].items()))
        out.append({**t, "function": {"name": f["name"], "description": f.get("description", ""),
                                      "parameters": params}})
    return out


def tools_as_ollama_holds_them(tools: Sequence[dict] | None) -> bool:
    """Whether these definitions (OpenAI form) render the same as Ollama's re-serialised ones."""
    return json.dumps(list(tools or []), ensure_ascii=False) == json.dumps(ollama_tools(tools), ensure_ascii=False)


def tool_calls_of(message: dict) -> list[dict]:
    """[{"name", "arguments": dict}] of an OpenAI-form assistant message (arguments parsed from a string)."""
    calls = []
    for c in message.get("tool_calls") or []:
        fn = c.get("function", c)
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                pass
        calls.append({"name": fn.get("name"), "arguments": args if args is not None else {}})
    return calls


# Tool conversations every tool format must render exactly (the probes of the plain formats stay): a
# first question, a call and its result, parallel calls, prose before a call, a system message, unicode
# and the characters Go's JSON escapes. Definitions read as Ollama hands them on (ollama_tools), with
# properties and arguments in sorted key order, as a Go TEMPLATE sees them (template_tools).
_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "description": "celsius or fahrenheit", "enum": ["celsius", "fahrenheit"]}}}}}
_DESCRIBE = {"type": "function", "function": {
    "name": "describe", "description": "Describe a thing <of a category> & say why.",
    "parameters": {"type": "object", "required": ["name", "category"], "properties": {
        "category": {"type": "string"},
        "name": {"type": "string", "description": "What to describe"}}}}}


def _call(function: str, **arguments) -> dict:
    return {"type": "function", "function": {"name": function, "arguments": arguments}}


TOOL_PROBES: tuple[tuple[list, tuple[dict, ...]], ...] = (
    ([_WEATHER], ({"role": "user", "content": "Weather in Paris?"},)),
    ([_WEATHER, _DESCRIBE], ({"role": "system", "content": "You are terse."},
                             {"role": "user", "content": "Weather in Paris?"},
                             {"role": "assistant", "content": "", "tool_calls": [_call("get_weather", city="Paris")]},
                             {"role": "tool", "content": '{"temp": 21}', "name": "get_weather"})),
    ([_WEATHER], ({"role": "user", "content": "Paris and Oslo, in celsius?"},
                  {"role": "assistant", "content": "",
                   "tool_calls": [_call("get_weather", city="Paris", unit="celsius"),
                                  _call("get_weather", city="Oslo", unit="celsius")]},
                  {"role": "tool", "content": "21"}, {"role": "tool", "content": "9"},
                  {"role": "assistant", "content": "Paris 21 °C, Oslo 9 °C."},
                  {"role": "user", "content": "Thanks! And Köln?"})),
    ([_DESCRIBE, _WEATHER], ({"role": "user", "content": "Describe the fox."},
                             {"role": "assistant", "content": "Let me look.",
                              "tool_calls": [_call("describe", category="animal 🦊", name="red fox <Vulpes> & co")]},
                             {"role": "tool", "content": "A small orange canid."},
                             {"role": "user", "content": "Now the whale, with \"quotes\" and \\ backslash."})),
)


def _tools_header(original: str, tokens: dict, thinking: bool) -> tuple[str, str, str, str]:
    """(before the system content, after it, the block without a system message, after the tools) of the
    system block the template writes when given tools: ``before + SYSTEM + after + TOOLS + tail`` or
    ``no_system + TOOLS + tail``, TOOLS being "\\n" + json.dumps(tool) for each tool."""
    sys_text, user_text = "Sx7q system", "Ux7q"

    def head(msgs, tools):
        text = render_jinja(original, msgs, add_generation_prompt=False, tokens=tokens, tools=tools,
                            enable_thinking=thinking)
        marker = "<|im_start|>user\n" + user_text
        if text.count(marker) != 1:
            raise TemplateNotSupported("The chat template does not render tools before the first user message.")
        return text.split(marker)[0]

    parts = []
    for msgs in ([{"role": "system", "content": sys_text}, {"role": "user", "content": user_text}],
                 [{"role": "user", "content": user_text}]):
        seen = set()
        for tools in ([_WEATHER], [_WEATHER, _DESCRIBE]):
            text = head(msgs, tools)
            listing = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
            if text.count(listing) != 1:
                raise TemplateNotSupported("The chat template does not list tools one JSON object a line.")
            seen.add(tuple(text.split(listing)))
        if len(seen) != 1:
            raise TemplateNotSupported("The chat template's tool block depends on the tools it lists.")
        parts.append(seen.pop())
    (with_sys, tail), (no_sys, tail2) = parts
    if tail != tail2 or with_sys.count(sys_text) != 1:
        raise TemplateNotSupported("The chat template's tool block depends on the system message.")
    before, after = with_sys.split(sys_text)
    return before, after, no_sys, tail


def _go_tools_template(fmt: ChatFormat, header: tuple[str, str, str, str], thinking: bool) -> str:
    before, after, no_sys, tail = header
    first_sys = '{{ if and .Messages (eq (index .Messages 0).Role "system") }}'
    tools_block = ("{{- if .Tools }}" + first_sys + _go_text(before) + "{{ (index .Messages 0).Content }}"
                   + _go_text(after) + "{{ else }}" + _go_text(no_sys) + "{{ end }}\n"
                   "{{- range .Tools }}\n{{ template \"pyjson\" (json .) }}{{ end }}" + _go_text(tail))
    if fmt.kind == "chatml":
        m = _DEFAULT_SYSTEM_RE.match(fmt.render([{"role": "user", "content": ""}]).split("<|im_start|>user\n")[0])
        default = ("{{ else if or (not .Messages) (ne (index .Messages 0).Role \"system\") }}<|im_start|>system\n"
                   + _go_text(m.group(1)) + "<|im_end|>\n") if m else ""
        return (_GO_PYJSON + tools_block + default + "{{ end }}\n" + _GO_LOOP_HEAD + _GO_ASSISTANT_QWEN25
                + _GO_TOOL_RESULT + _GO_LOOP_TAIL)
    body = (_GO_PYJSON + _GO_LSTRIP + tools_block + "{{ end }}\n" + "{{- $hasUser := false }}\n"
            '{{- range .Messages }}{{ if eq .Role "user" }}{{ $hasUser = true }}{{ end }}{{ end }}\n'
            + _GO_LOOP_HEAD + _GO_ASSISTANT_QWEN3 + _GO_TOOL_RESULT + _GO_LOOP_TAIL + _THINK_OFF)
    if thinking:
        body = _go_thinking(body, '{{ template "lstrip_newlines" .Content }}\n')
    return body


def _tools_render_factory(kind: str, header: tuple[str, str, str, str], base: ChatFormat, thinking: bool):
    """A Python mirror of :func:`_go_tools_template` (``tools``: as Ollama holds them)."""
    before, after, no_sys, tail = header

    def render(messages: Messages, tools: Sequence[dict] | None = None) -> str:
        if not tools:
            return base.render(messages)
        msgs = list(messages)
        first_sys = bool(msgs) and msgs[0]["role"] == "system"
        out = [before + msgs[0]["content"] + after if first_sys else no_sys]
        out += ["\n" + _pyjson(go_json(t)) for t in template_tools(tools)]
        out.append(tail)
        has_user = any(m["role"] == "user" for m in msgs)
        for i, m in enumerate(msgs):
            role, content = m["role"], m.get("content") or ""
            last = i == len(msgs) - 1
            calls = tool_calls_of(m) if role == "assistant" else []
            call_text = ['<tool_call>\n{"name": "' + c["name"] + '", "arguments": '
                         + _pyjson(go_json(_sorted_any(c["arguments"])))
                         + "}\n</tool_call>" for c in calls]
            if role == "user":
                out.append(f"<|im_start|>user\n{content}<|im_end|>\n")
            elif role == "system":
                if i:
                    out.append(f"<|im_start|>system\n{content}<|im_end|>\n")
            elif role == "assistant" and kind == "chatml":
                if not calls:
                    out.append(f"<|im_start|>assistant\n{content}<|im_end|>\n")
                else:
                    out.append("<|im_start|>assistant" + ("\n" + content if content else "")
                               + "".join("\n" + c for c in call_text) + "<|im_end|>\n")
            elif role == "assistant":
                after_last_user = has_user and not any(x["role"] == "user" for x in msgs[i:])
                if after_last_user and last:
                    out.append("<|im_start|>assistant\n" + _THINK_OFF + content.lstrip("\n"))
                else:
                    out.append("<|im_start|>assistant\n" + content)
                out.append(("\n" if calls and content else "") + "\n".join(call_text) + "<|im_end|>\n")
            elif role == "tool":
                if i == 0 or msgs[i - 1]["role"] != "tool":
                    out.append("<|im_start|>user")
                out.append(f"\n<tool_response>\n{content}\n</tool_response>")
                if last or msgs[i + 1]["role"] != "tool":
                    out.append("<|im_end|>\n")
        out.append("<|im_start|>assistant\n")
        if kind != "chatml":
            out.append("" if thinking else _THINK_OFF)
        return "".join(out)

    return render


def tools_chat_format(tokenizer_config: dict, *, thinking: bool = False) -> ChatFormat | None:
    """The Modelfile format of a run trained on tools: the plain format (:func:`chat_format_for`) with
    .Tools, .ToolCalls and tool results rendered as the model's template renders them. None when the
    model's template has no such rendering Tuneloom reproduces (Qwen3.5's XML calls, templates without
    tools): the plain format then stays."""
    base = chat_format_for(tokenizer_config, thinking=thinking)
    if base.kind not in ("chatml", "qwen3", "qwen3-thinking"):
        return None
    original = chat_template_of(tokenizer_config)
    tokens = special_tokens(tokenizer_config)
    try:
        header = _tools_header(original, tokens, thinking)
    except Exception:  # noqa: BLE001 - TemplateNotSupported, or a template that fails on tools
        return None
    template = _go_tools_template(base, header, thinking)
    render = _tools_render_factory("chatml" if base.kind == "chatml" else "qwen3", header, base, thinking)
    fmt = ChatFormat(base.kind, template, base.stops, render, notes=tuple(
        n for n in base.notes if "Tool messages" not in n) + (
        "Tools, tool calls and tool results are rendered as training rendered them (definitions as Ollama "
        "holds them; Ollama before v0.32.7 parses calls between <tool_call> tags).",), jinja=base.jinja,
        exact_untrimmed=base.exact_untrimmed)
    for tools, conv in TOOL_PROBES:
        want = render_jinja(original, conv, tokens=tokens, tools=tools, enable_thinking=thinking)
        got = render(conv, ollama_tools(tools))
        if got != want:
            return None
    return fmt


def tools_jinja(tokenizer_config: dict, *, thinking: bool = False) -> str:
    """The embedded template of a run trained on tools: the model's own, arguments given as a JSON string
    re-spaced like json.dumps, and, trained without thinking, thinking pinned off and its markers hidden
    from Ollama's ability check."""
    t = chat_template_of(tokenizer_config)
    t = t.replace("tool_call.arguments | tojson", "_tl_args(tool_call.arguments)").replace(
        "{{- tool_call.arguments }}", "{{- _tl_args(tool_call.arguments) }}")
    if not thinking:
        t = t.replace("</think>", "</' + 'think>").replace("<think>", "<' + 'think>")
        t = "{%- set enable_thinking = false -%}\n" + t
    # llama-server hands an empty content over as null, which the model's own template may concatenate:
    # every read of a message's content falls back to '' (plain Jinja every engine has)
    t = _CONTENT_READ.sub(lambda m: f"({m.group(0)} or '')", t)
    return _JINJA_HEADER + _TL_ARGS_MACRO + t


_CONTENT_READ = re.compile(r"\b(?:message|messages\[\d+\])(?:\.content\b|\['content'\]|\[\"content\"\])")


def ollama_tool_messages(messages: Messages, *, object_arguments: bool = False) -> list[dict]:
    """Messages as llama-server receives them from Ollama (llm/llama_server.go): an empty content as null,
    each call's arguments as Go's compact JSON string, a tool message's ``name`` kept. ``object_arguments``:
    parsed back into an object, as llama.cpp does for a template that needs one (Qwen3.5 iterates them)."""
    out = []
    for m in messages:
        d = {k: v for k, v in m.items() if k != "tool_calls"}
        d["content"] = m.get("content") or None
        if m.get("tool_calls"):
            d["tool_calls"] = [{"type": "function", "function": {
                "name": c["name"], "arguments": json.loads(go_json(c["arguments"])) if object_arguments
                else go_json(c["arguments"])}} for c in tool_calls_of(m)]
        out.append(d)
    return out


def _needs_object_arguments(chat_template: str) -> bool:
    return bool(re.search(r"arguments\s*\|\s*items", chat_template))


def check_tool_prompts(fmt: ChatFormat, chat_template: str, tokenizer_config: dict, *, thinking: bool = False,
                       architecture: str = "") -> list[str]:
    """Differences between the training prompt of :data:`TOOL_PROBES` and what Ollama builds with tools, on
    every scenario of :data:`OLLAMA_SCENARIOS` (the go path through the format's mirror)."""
    original = chat_template_of(tokenizer_config)
    tokens = special_tokens(tokenizer_config)
    problems = []
    for tools, conv in TOOL_PROBES:
        want = render_jinja(original, conv, tokens=tokens, tools=tools, enable_thinking=thinking)
        for label, kw in OLLAMA_SCENARIOS:
            setup = OllamaSetup(fmt.template, chat_template, architecture=architecture, **kw)
            if "tools" not in model_capabilities(setup):
                continue  # Ollama refuses a request with tools on this path ("does not support tools")
            try:
                got = ollama_prompt(setup, conv, tokens=tokens, tools=ollama_tools(tools), go_render=(
                    lambda _t, msgs, _tools=tools: fmt.render(_collate(msgs), ollama_tools(_tools))))
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{label} ({template_path(setup)} path) fails with tools: {exc}")
                continue
            if got != want:
                problems.append(f"{label} ({template_path(setup)} path) with tools: {_first_difference(want, got)}")
    return problems


def tool_parser_tag(go_template: str) -> str:
    """The tag Ollama's tools.Parser waits for on the go path (tools/template.go parseTag), for the templates
    Tuneloom writes: the first text inside ``{{ if .ToolCalls }}``; "{" when there is none."""
    m = re.search(r"\{\{-?\s*if\s+\.ToolCalls\s*-?\}\}(?:\{\{[^}]*\}\})*([^{]*)", go_template)
    tag = m.group(1).strip() if m else ""
    return tag or "{"


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


# --------------------------------------------------------------------------------------
# Modelfile
# --------------------------------------------------------------------------------------

DEFAULT_TEMPERATURE = 0.7
DEFAULT_NUM_CTX = 4096
MAX_DEFAULT_NUM_CTX = 8192  # a model's full context (Qwen: 131072) would make Ollama reserve gigabytes


def default_num_ctx(tokenizer_config: dict) -> int:
    """The model's context length, capped so that Ollama does not reserve a huge KV cache."""
    n = tokenizer_config.get("model_max_length")
    if isinstance(n, (int, float)) and 0 < n < 10**7:
        return int(min(n, MAX_DEFAULT_NUM_CTX))
    return DEFAULT_NUM_CTX


def _check_modelfile_value(value: str, what: str) -> None:
    """Refuse what Ollama's Modelfile parser would change: triple quotes end the value, non-printables vanish."""
    if '"""' in value:
        raise TuneloomError(f"The {what} contains three double quotes in a row, which a Modelfile cannot hold.",
                            f"Remove the triple quotes from the {what}.")
    bad = [c for c in value if not (c in "\n\r\t" or c.isprintable())]
    if bad:
        raise TuneloomError(f"The {what} contains non-printable characters ({bad[0]!r}) that Ollama's Modelfile "
                            "parser drops.", f"Remove them from the {what}.")


def _modelfile_quoted(value: str, what: str) -> str:
    """``value`` in triple quotes (Ollama's parser keeps everything between them verbatim, no escapes)."""
    _check_modelfile_value(value, what)
    return f'"""{value}"""'


def _modelfile_value(value: str, what: str) -> str:
    """A one-word value bare, one with spaces in double quotes, anything else in triple quotes."""
    _check_modelfile_value(value, what)
    if value and not any(c.isspace() for c in value) and not value.startswith('"'):
        return value
    if '"' not in value and "\n" not in value and "\r" not in value:
        return f'"{value}"'
    return f'"""{value}"""'


def _param_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return _modelfile_value(v, "parameter value")
    return str(v)


def modelfile_text(gguf_path: str | os.PathLike, modelfile_dir: str | os.PathLike, template: str,
                   stops: Sequence[str], *, parameters: dict | None = None, system: str | None = None,
                   license_text: str | None = None, modelfile_name: str = "Modelfile") -> str:
    """The text of a Modelfile; FROM is relative to ``modelfile_dir``; ``modelfile_name``: its file name,
    for the ``ollama create`` line in its header."""
    gguf_path = Path(gguf_path).resolve()
    rel = os.path.relpath(gguf_path, Path(modelfile_dir).resolve())
    if not rel.startswith(".."):
        rel = "./" + rel
    frm = _modelfile_value(rel, "GGUF path")
    lines = ["# Written by Tuneloom. Register it with:  ollama create NAME -f "
             + (modelfile_name if re.fullmatch(r"[A-Za-z0-9._-]+", modelfile_name) else "Modelfile"),
             f"FROM {frm}",
             f"TEMPLATE {_modelfile_quoted(template, 'chat template')}"]
    for stop in stops:  # always quoted, as Ollama's examples write them
        value = _modelfile_value(stop, "stop string")
        lines.append(f'PARAMETER stop "{stop}"' if value == stop else f"PARAMETER stop {value}")
    for k, v in (parameters or {}).items():
        if k == "stop":
            continue
        for item in v if isinstance(v, (list, tuple)) else [v]:
            lines.append(f"PARAMETER {k} {_param_value(item)}")
    if system:
        lines.append(f"SYSTEM {_modelfile_quoted(system, 'system prompt')}")
    if license_text:
        lines.append(f"LICENSE {_modelfile_quoted(license_text, 'licence text')}")
    return "\n".join(lines) + "\n"


def modelfile_parameters(tokenizer_config: dict, *, num_ctx: int | None = None,
                         temperature: float | None = DEFAULT_TEMPERATURE) -> dict:
    """The PARAMETERs besides ``stop`` that Tuneloom writes: ``num_ctx`` (default: the model's context capped at
    8192; pass the training maximum length) and ``temperature``. Pass the same dict to :func:`register_model`."""
    params: dict = {"num_ctx": int(num_ctx) if num_ctx else default_num_ctx(tokenizer_config)}
    if temperature is not None:
        params["temperature"] = temperature
    return params


def write_modelfile(out_path: str | os.PathLike, gguf_path: str | os.PathLike, tokenizer_config: dict, *,
                    system: str | None = None, num_ctx: int | None = None,
                    temperature: float | None = DEFAULT_TEMPERATURE, license_text: str | None = None,
                    parameters: dict | None = None, thinking: bool = False, tools: bool = False) -> str:
    """Write (atomically) a Modelfile for ``gguf_path`` next to ``out_path``; return its text.

    ``num_ctx`` defaults to the model's context capped at 8192 (pass the training
    maximum length); ``parameters`` adds further ``PARAMETER`` lines; ``thinking``: the
    fine-tune was trained with thinking on; ``tools``: on tool calls.
    """
    fmt = export_chat_format(tokenizer_config, thinking=thinking, tools=tools)
    params = modelfile_parameters(tokenizer_config, num_ctx=num_ctx, temperature=temperature)
    params.update(parameters or {})
    out_path = Path(out_path)
    text = modelfile_text(gguf_path, out_path.parent, fmt.template, fmt.stops, parameters=params,
                          system=system, license_text=license_text)
    write_text(out_path, text)
    return text


def ollama_create_command(modelfile_path: str | os.PathLike, name: str) -> str:
    """The shell command that registers a Modelfile by hand (absolute path: works from any folder)."""
    return f"ollama create {shlex.quote(name)} -f {shlex.quote(str(Path(modelfile_path).resolve()))}"


# --------------------------------------------------------------------------------------
# Model names
# --------------------------------------------------------------------------------------

_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"
_NAMESPACE = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"  # no dots: with two parts the first is the namespace
_NAME_RE = re.compile(rf"\A(?:{_PART}/{_NAMESPACE}/|{_NAMESPACE}/)?(?P<model>{_PART})(?::(?P<tag>{_PART}))?\Z")
NAME_RULES = ("letters, digits, '_', '-' and '.', starting with a letter, digit or '_'; an optional ':tag' "
              "and 'namespace/' prefix; at most 128 characters")


def suggest_model_name(text: str) -> str:
    """A valid Ollama model name close to ``text``."""
    base, _, tag = text.strip().lower().partition(":")
    slug = re.sub(r"[^a-z0-9_.-]+", "-", base).strip("-.") or "tuneloom-model"
    slug = re.sub(r"\.{2,}", ".", slug)[:80]
    tag = re.sub(r"[^a-z0-9_.-]+", "-", tag).strip("-.")[:80]
    return f"{slug}:{tag}" if tag else slug


def validate_model_name(name: str) -> str:
    """Check ``name`` against Ollama's naming rules; return it with an explicit tag (``name:latest``)."""
    m = _NAME_RE.match(name or "")
    if not name or len(name) > 128 or not m or ".." in name:
        suggestion = suggest_model_name(name or "")
        raise OllamaNameInvalid(
            f"{name!r} is not a valid Ollama model name.",
            f"Use {NAME_RULES}, for example {suggestion!r}.", suggestion=suggestion)
    return name if m.group("tag") else name + ":latest"


def _canonical(name: str) -> str:
    n = name.lower()
    for prefix in ("http://", "https://", "registry.ollama.ai/", "library/"):
        if n.startswith(prefix):
            n = n[len(prefix):]
    return n if ":" in n.rsplit("/", 1)[-1] else n + ":latest"


# --------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------

MIN_OLLAMA_VERSION = (0, 5, 5)  # /api/create with "files" (the JSON create API) arrived in 0.5.5
QUANTIZE_TYPES = ("q4_K_M", "q4_K_S", "q8_0")
CHUNK = 1 << 20
_DISK_FULL = re.compile(r"no space left on device|not enough space|disk (is )?full|insufficient (disk )?space", re.I)
_OLD_API = re.compile(r"path or modelfile are required|neither 'from' or 'files'", re.I)
_UNKNOWN_ARCH = re.compile(r"unknown model architecture|unsupported (model )?architecture", re.I)


def default_host() -> str:
    return _base_url(os.environ.get("OLLAMA_HOST") or "")


def _base_url(host: str) -> str:
    """``host`` (as OLLAMA_HOST accepts it) as a base URL; 0.0.0.0 (a listen address) becomes 127.0.0.1."""
    from urllib.parse import urlsplit

    host = (host or "").strip()
    scheme, sep, rest = host.partition("://")
    if not sep:
        scheme, rest = "http", host
    default_port = {"http": 11434 if not sep else 80, "https": 443}.get(scheme, 11434)
    parts = urlsplit(f"{scheme}://{rest}")
    hostname = parts.hostname or "127.0.0.1"
    if hostname in ("0.0.0.0", "::"):
        hostname = "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    path = parts.path.strip("/")
    return f"{scheme}://{hostname}:{parts.port or default_port}" + (f"/{path}" if path else "")


def _http_options(base: str) -> dict:
    # plain http needs no CA bundle; loading one costs ~0.1 s per client
    return {"verify": False} if base.startswith("http://") else {}


def _answers_like_ollama(base: str, http) -> bool:
    """Whether the server answers GET /api/tags as every Ollama does (a JSON object with "models")."""
    import httpx

    try:
        r = http.get(f"{base}/api/tags", timeout=2.0)
        return r.status_code == 200 and isinstance(r.json(), dict) and "models" in r.json()
    except (httpx.HTTPError, ValueError):
        return False


def plain_http_warning(base: str) -> str | None:
    """A warning when the GGUF would go over plain HTTP to a host that is not this machine."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    if parts.scheme != "http":
        return None
    host = (parts.hostname or "").lower()
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = host in ("localhost", "") or host.endswith(".localhost")
    if local:
        return None
    return (f"Uploading the model to {base} over plain HTTP: anyone on the way can read it or change it. "
            f"Use https:// in OLLAMA_HOST, or an SSH tunnel to the Ollama machine.")


def server_version(host: str, timeout: float = 2.0, *, http=None) -> str | None:
    """The server's version string, or None if it has no /api/version; raises httpx errors if unreachable."""
    import httpx

    url = f"{host}/api/version"
    r = http.get(url, timeout=timeout) if http is not None else httpx.get(url, timeout=timeout,
                                                                           **_http_options(host))
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return str(r.json().get("version", "")) or None


def find_server(host: str | None = None, timeout: float = 1.5) -> str | None:
    """Base URL of a running Ollama server (``host``, else OLLAMA_HOST, else 127.0.0.1:11434), or None."""
    import httpx

    base = _base_url(host) if host else default_host()
    try:
        server_version(base, timeout=timeout)
    except (httpx.HTTPError, ValueError):
        return None
    return base


def _parse_version(v: str | None) -> tuple[int, ...] | None:
    m = re.match(r"v?(\d+)\.(\d+)\.(\d+)", v or "")
    return tuple(int(x) for x in m.groups()) if m else None


def ollama_installed() -> bool:
    return bool(shutil.which("ollama")) or Path("/Applications/Ollama.app").exists()


def file_sha256(path: str | os.PathLike, *, events: Events | None = None, cancel: CancelToken | None = None) -> str:
    """``sha256:<hex>`` of a file, reporting progress."""
    events = events or NULL_EVENTS
    path = Path(path)
    total = path.stat().st_size
    h = hashlib.sha256()
    done = 0
    throttle = Throttle(0.1)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            if cancel is not None:
                cancel.checkpoint()
            h.update(chunk)
            done += len(chunk)
            if throttle.ready(final=done == total):
                events.progress(done, total, f"checking {path.name}")
    if total == 0:
        events.progress(0, 0, f"checking {path.name}")
    return "sha256:" + h.hexdigest()


def _blob_exists(http, host: str, digest: str) -> bool:
    r = http.head(f"{host}/api/blobs/{digest}")
    if r.status_code == 200:
        return True
    if r.status_code == 404:
        return False
    raise OllamaError(f"Ollama answered {r.status_code} when asked for blob {digest}: {_error_text(r)}")


def _error_text(response) -> str:
    try:
        return str(response.json().get("error") or response.text)
    except Exception:  # noqa: BLE001
        return response.text


def _upload_blob(http, host: str, path: Path, digest: str, events: Events, cancel: CancelToken | None,
                 create_command: str) -> None:
    import httpx

    size = path.stat().st_size
    throttle = Throttle(0.1)

    def body():
        sent = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                if cancel is not None:
                    cancel.checkpoint()
                sent += len(chunk)
                yield chunk
                if throttle.ready(final=sent == size):
                    events.progress(sent, size, f"uploading {path.name}")

    try:
        r = http.post(f"{host}/api/blobs/{digest}", content=body(),
                      headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
    except httpx.TransportError as exc:
        raise OllamaUploadInterrupted(
            f"The upload of {path.name} to Ollama was interrupted ({exc.__class__.__name__}: {exc}).",
            "Run the registration again: it checks which data Ollama already has and uploads again only what "
            f"is missing. Or register by hand:\n  {create_command}", create_command=create_command) from exc
    if r.status_code in (200, 201):
        return
    text = _error_text(r)
    if _DISK_FULL.search(text):
        raise _disk_full(text, create_command)
    if r.status_code == 400 and "digest" in text.lower():
        raise OllamaUploadInterrupted(
            f"Ollama received a damaged copy of {path.name} ({text}).",
            "Run the registration again; if it keeps failing, export the GGUF again.",
            create_command=create_command)
    raise OllamaError(f"Ollama refused the upload of {path.name}: {text} (HTTP {r.status_code}).",
                      f"Register by hand:\n  {create_command}", create_command=create_command)


def _disk_full(text: str, create_command: str) -> OllamaDiskFull:
    return OllamaDiskFull(
        f"The Ollama server ran out of disk space: {text}",
        "Free space where Ollama keeps its models (~/.ollama/models, or OLLAMA_MODELS), for example with "
        "`ollama rm` on models you no longer need, then run the registration again. By hand:\n  "
        f"{create_command}", create_command=create_command)


def _map_response_error(exc, create_command: str, what: str) -> OllamaError:
    text = str(getattr(exc, "error", exc))
    if _DISK_FULL.search(text):
        return _disk_full(text, create_command)
    if _OLD_API.search(text):
        return OllamaTooOld(f"This Ollama server does not understand Tuneloom's {what} request: {text}",
                            "Update Ollama (https://ollama.com/download) and run the registration again.",
                            create_command=create_command)
    if _UNKNOWN_ARCH.search(text):
        return OllamaTooOld(f"This Ollama version cannot run the model's architecture: {text}",
                            "Update Ollama (https://ollama.com/download) and try again.",
                            create_command=create_command)
    return OllamaError(f"Ollama failed to {what}: {text}", f"Register by hand:\n  {create_command}",
                       create_command=create_command)


def _files_key(gguf_path: Path) -> str:
    name = gguf_path.name
    return name if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.gguf", name) else "model.gguf"


def register_model(gguf_path: str | os.PathLike, name: str, *, template: str, stops: Sequence[str],
                   system: str | None = None, parameters: dict | None = None, quantize: str | None = None,
                   force: bool = False, host: str | None = None, license_text: str | list | None = None,
                   modelfile_path: str | os.PathLike | None = None, verify: bool = True,
                   verify_prompt: str = "Say hello.", verify_messages: list | None = None,
                   verify_options: dict | None = None, events: Events | None = None,
                   cancel: CancelToken | None = None, adapter_path: str | os.PathLike | None = None,
                   verify_tools: dict | None = None) -> dict:
    """Register ``gguf_path`` in Ollama as ``name`` through its REST API.

    ``adapter_path``: a GGUF LoRA adapter (core.export_adapter) uploaded too and passed as
    ``adapters`` in ``/api/create``, so the model is ``gguf_path`` (the base) with the adapter.

    Steps: validate the name, find the server and check its version, refuse an
    existing name unless ``force``, hash the GGUF, upload it as a blob unless the
    server has that digest already, create the model (``files``, ``template``,
    ``parameters`` with ``stop``, ``system``, optional ``quantize`` to q4_K_M /
    q4_K_S / q8_0 from an F16 GGUF), then check it is listed and answers
    ``verify_prompt``. ``modelfile_path`` (default: ``Modelfile`` next to the GGUF)
    only feeds the ``ollama create`` command in error hints. ``verify_messages`` (default: one user
    message, ``verify_prompt``) and ``verify_options`` (default ``{"num_predict": 16}``) are what the
    verify step sends to ``/api/chat``. Named stages are reported as they start and end
    (``events.stage(name)`` / ``events.stage_done(name, ok, seconds)``): "upload", "create", "verify".

    ``verify_tools`` (a run trained on tool calls, see :func:`check_tool_answer`): the verify step also
    asks ``{"messages", "tools", "expected"}`` with its tools and compares the calls Ollama parses with
    those; the result's ``"tool_check"`` says how it went (a mismatch is a warning, not an error).

    Returns ``{"model" (= "name"): "name:tag", "host", "version", "digest", "uploaded", "replaced",
    "quantize", "answer"}``.
    """
    import httpx
    import ollama

    events = events or NULL_EVENTS
    gguf_path = Path(gguf_path)
    full_name = validate_model_name(name)
    modelfile_path = Path(modelfile_path) if modelfile_path else gguf_path.with_name("Modelfile")
    create_command = ollama_create_command(modelfile_path, name)
    if quantize is not None:
        match = {q.lower(): q for q in QUANTIZE_TYPES}.get(quantize.lower())
        if match is None:
            raise OllamaError(f"Ollama cannot quantize to {quantize!r}.", f"Use one of {', '.join(QUANTIZE_TYPES)}.")
        quantize = match
    if not gguf_path.is_file():
        raise OllamaError(f"{gguf_path} does not exist.", "Export the GGUF first.")
    if adapter_path is not None and not Path(adapter_path).is_file():
        raise OllamaError(f"{adapter_path} does not exist.", "Export the adapter GGUF first.")

    base = _base_url(host) if host else default_host()
    # blob traffic goes through httpx directly (HEAD, and a streamed POST with progress); the rest through
    # the official client
    http = httpx.Client(timeout=httpx.Timeout(30.0, read=600.0, write=600.0), **_http_options(base))
    client = ollama.Client(host=base, timeout=httpx.Timeout(30.0, read=600.0), **_http_options(base))
    try:
        return _register(http, client, base, gguf_path, full_name, create_command, template=template,
                         stops=stops, system=system, parameters=parameters, quantize=quantize, force=force,
                         license_text=license_text, verify=verify, verify_prompt=verify_prompt, events=events,
                         cancel=cancel, verify_messages=verify_messages, verify_options=verify_options,
                         adapter_path=Path(adapter_path) if adapter_path is not None else None,
                         verify_tools=verify_tools)
    finally:
        client.close()
        http.close()


def _not_running(base: str, create_command: str) -> OllamaNotRunning:
    if ollama_installed():
        return OllamaNotRunning(
            f"Ollama is not running (nothing answered at {base}).",
            "Start it (open the Ollama app, or run `ollama serve` in a terminal) and try again. The GGUF and "
            f"Modelfile stay on disk; once Ollama runs you can also register by hand:\n  {create_command}",
            create_command=create_command, installed=True)
    return OllamaNotRunning(
        f"Ollama does not seem to be installed (nothing answered at {base}).",
        "Install it from https://ollama.com/download and start it, then try again. The GGUF and Modelfile "
        f"stay on disk; you can also register by hand:\n  {create_command}",
        create_command=create_command, installed=False)


def _register(http, client, base: str, gguf_path: Path, full_name: str, create_command: str, *, template, stops, system,
              parameters, quantize, force, license_text, verify, verify_prompt, events: Events,
              cancel: CancelToken | None, verify_messages=None, verify_options=None, adapter_path=None,
              verify_tools=None) -> dict:
    import httpx
    import ollama

    stages = StageClock(events)
    try:
        version = server_version(base, timeout=2.0, http=http)
    except (httpx.HTTPError, ValueError) as exc:
        raise _not_running(base, create_command) from exc
    if not version and not _answers_like_ollama(base, http):
        raise OllamaNotRunning(
            f"The server at {base} answered, but it is not Ollama (it has no /api/version or /api/tags).",
            f"Point OLLAMA_HOST at Ollama (default 127.0.0.1:11434), or register by hand:\n  {create_command}",
            create_command=create_command, installed=True)
    parsed = _parse_version(version)
    need = ".".join(map(str, MIN_OLLAMA_VERSION))
    if parsed is None or (parsed < MIN_OLLAMA_VERSION and parsed != (0, 0, 0)):  # 0.0.0: a source build
        raise OllamaTooOld(
            f"Ollama {version or '(version unknown)'} is too old: Tuneloom needs {need} or newer.",
            f"Update Ollama from https://ollama.com/download, then try again or run:\n  {create_command}",
            create_command=create_command)
    events.log("info", f"Ollama {version} at {base}")
    plain = plain_http_warning(base)
    if plain:
        events.log("warning", plain)

    try:
        existing = {_canonical(m.model or "") for m in client.list().models}
    except (ollama.ResponseError, ConnectionError, httpx.HTTPError) as exc:
        raise _map_response_error(exc, create_command, "list its models") from exc
    taken = _canonical(full_name) in existing
    if taken and not force:
        raise OllamaNameTaken(
            f"Ollama already has a model named {full_name}.",
            "Choose another name, or replace it (--force on the command line).", create_command=create_command)
    if cancel is not None:
        cancel.checkpoint()

    stages.start("upload")
    digest = file_sha256(gguf_path, events=events, cancel=cancel)
    try:
        have = _blob_exists(http, base, digest)
    except httpx.HTTPError as exc:
        raise OllamaNotRunning(f"Ollama at {base} stopped answering ({exc}).",
                               f"Restart Ollama and try again, or register by hand:\n  {create_command}",
                               create_command=create_command) from exc
    if have:
        events.log("info", f"Ollama already has {gguf_path.name} ({digest[:19]}); not uploading it again")
    else:
        events.log("info", f"uploading {gguf_path.name} to Ollama")
        _upload_blob(http, base, gguf_path, digest, events, cancel, create_command)
        try:
            ok = _blob_exists(http, base, digest)
        except httpx.HTTPError:
            ok = False
        if not ok:
            raise OllamaUploadInterrupted(
                f"Ollama does not list {gguf_path.name} after the upload.",
                f"Run the registration again, or register by hand:\n  {create_command}",
                create_command=create_command)

    adapters = None
    if adapter_path is not None:
        adapter_digest = file_sha256(adapter_path, events=events, cancel=cancel)
        try:
            have_adapter = _blob_exists(http, base, adapter_digest)
        except httpx.HTTPError as exc:
            raise OllamaNotRunning(f"Ollama at {base} stopped answering ({exc}).",
                                   f"Restart Ollama and try again, or register by hand:\n  {create_command}",
                                   create_command=create_command) from exc
        if not have_adapter:
            events.log("info", f"uploading {adapter_path.name} to Ollama")
            _upload_blob(http, base, adapter_path, adapter_digest, events, cancel, create_command)
        adapters = {_files_key(adapter_path): adapter_digest}
    stages.done("upload")
    params = dict(parameters) if parameters is not None else {"temperature": DEFAULT_TEMPERATURE}
    params["stop"] = list(stops)
    stages.start("create")
    events.log("info", f"creating {full_name}" + (f" (quantizing to {quantize})" if quantize else ""))
    try:
        last = None
        for part in client.create(model=full_name, files={_files_key(gguf_path): digest}, template=template,
                                  parameters=params, system=system or None, license=license_text,
                                  quantize=quantize, stream=True, **({"adapters": adapters} if adapters else {})):
            last = part.status
            if part.total and part.completed is not None:
                events.progress(part.completed, part.total, part.status or f"creating {full_name}")
            elif part.status:
                events.log("info", part.status)
            if cancel is not None:
                cancel.checkpoint()
    except (ollama.ResponseError, ConnectionError, httpx.HTTPError) as exc:
        raise _map_response_error(exc, create_command, "create the model") from exc
    if last != "success":
        raise OllamaError(f"Ollama stopped creating {full_name} before it reported success (last: {last!r}).",
                          f"Try again, or register by hand:\n  {create_command}", create_command=create_command)

    stages.done("create")
    result: dict = {"model": full_name, "name": full_name, "host": base, "version": version, "digest": digest,
                    "uploaded": not have, "replaced": taken, "quantize": quantize, "answer": None}
    if adapters:
        result["adapters"] = adapters
    if not verify:
        return result
    stages.start("verify")
    try:
        listed = {_canonical(m.model or "") for m in client.list().models}
        if _canonical(full_name) not in listed:
            raise OllamaError(f"Ollama created {full_name} but does not list it.",
                              f"Check `ollama list`; register by hand with:\n  {create_command}",
                              create_command=create_command)
        shown = client.show(full_name)
        if shown.template is not None and shown.template != template:
            events.log("warning", f"Ollama stored a different template for {full_name} than the one sent")
        events.log("info", f"asking {full_name} a short question")
        reply = client.chat(model=full_name, messages=verify_messages or [{"role": "user", "content": verify_prompt}],
                            options=verify_options or {"num_predict": 16}, keep_alive=0, stream=False)
    except (ollama.ResponseError, ConnectionError, httpx.HTTPError) as exc:
        raise _map_response_error(exc, create_command, f"run {full_name}") from exc
    if not reply.done:
        raise OllamaError(f"{full_name} did not finish answering a short prompt.",
                          f"Try `ollama run {full_name}`.", create_command=create_command)
    result["answer"] = reply.message.content if reply.message else ""
    if verify_tools:
        result["tool_check"] = check_tool_answer(client, full_name, verify_tools, events=events,
                                                 create_command=create_command)
    stages.done("verify")
    return result


def _tuneloom_parse(text: str, model: Any) -> list[dict] | None:
    """Tuneloom's own parse of a model's text (core.tools.parse_tool_calls); None while that module is absent."""
    try:
        from core.tools import parse_tool_calls
    except ImportError:
        return None
    if not text or model is None:
        return []
    return [{"name": c.get("name"), "arguments": c.get("arguments")} for c in parse_tool_calls(text, model)]


def check_tool_answer(client, full_name: str, case: dict, *, events: Events | None = None,
                      create_command: str = "") -> dict:
    """Ask the registered model ``case["messages"]`` with ``case["tools"]`` (a held-out record) and compare the
    calls Ollama parses out of its answer with ``case["expected"]`` (the record's calls, [{"name",
    "arguments"}]). ``case["model"]`` (a model folder) lets Tuneloom parse what Ollama passes on as text
    (core.tools.parse_tool_calls): a call there that Ollama did not parse is named in the result.

    Returns ``{"question", "expected", "ollama", "tuneloom", "content", "match"}``."""
    import httpx
    import ollama

    events = events or NULL_EVENTS
    messages = []
    for m in case["messages"]:  # in the client's form: arguments as objects, a tool result's name as tool_name
        msg = {"role": m["role"], "content": m.get("content") or ""}
        if m.get("tool_calls"):
            msg["tool_calls"] = [{"function": c} for c in tool_calls_of(m)]
        if m["role"] == "tool" and m.get("name"):
            msg["tool_name"] = m["name"]
        messages.append(msg)
    question = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
    events.log("info", f"asking {full_name} a held-out question with its tools")
    try:
        reply = client.chat(model=full_name, messages=messages, tools=ollama_tools(case.get("tools")),
                            options=case.get("options") or {"num_predict": 256, "temperature": 0}, keep_alive=0,
                            stream=False)
    except (ollama.ResponseError, ConnectionError, httpx.HTTPError) as exc:
        raise _map_response_error(exc, create_command, f"run {full_name} with tools") from exc
    msg = reply.message
    got = [{"name": tc.function.name, "arguments": dict(tc.function.arguments or {})}
           for tc in (getattr(msg, "tool_calls", None) or [])]
    content = (msg.content or "") if msg else ""
    expected = [{"name": c["name"], "arguments": c["arguments"]} for c in case.get("expected") or []]
    check = {"question": question, "expected": expected, "ollama": got, "tuneloom": _tuneloom_parse(content, case.get(
        "model")), "content": content, "match": got == expected,
             "tools_as_trained": True}  # training rendered them in Ollama's form (core.tools.ollama_tools)
    if check["match"]:
        events.log("info", f"tool check: Ollama parsed the expected call(s): {_calls_text(got)}")
    else:
        events.log("warning", f"tool check: Ollama parsed {_calls_text(got) or 'no call'}, the held-out answer has "
                              f"{_calls_text(expected) or 'no call'}" + (
                                  f"; the text Ollama passed on holds {_calls_text(check['tuneloom'])}, which "
                                  "Ollama did not parse" if check["tuneloom"] else ""))
    return check


def _calls_text(calls) -> str:
    return ", ".join(f"{c['name']}({json.dumps(c['arguments'], ensure_ascii=False)})" for c in calls or [])


def model_exists(name: str, host: str | None = None, timeout: float = 2.0) -> bool | None:
    """Whether Ollama already has a model called ``name`` (tag ``latest`` when none is given);
    None when no server answers. For asking "replace it?" before anything is written."""
    import httpx

    full = _canonical(validate_model_name(name))
    base = _base_url(host) if host else default_host()
    try:
        r = httpx.get(f"{base}/api/tags", timeout=timeout, **_http_options(base))
        r.raise_for_status()
        models = r.json().get("models") or []
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return any(_canonical(str(m.get("model") or m.get("name") or "")) == full for m in models)


