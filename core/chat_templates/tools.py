"""Tool calling (issue 31): tools, calls and results in both templates of a run trained on tool data."""
from __future__ import annotations

import json
import re
from typing import Sequence

from core.chat_templates.derive import _DEFAULT_SYSTEM_RE, _first_difference, chat_format_for
from core.chat_templates.formats import _JINJA_HEADER, _THINK_OFF, ChatFormat, _go_text, _go_thinking
from core.chat_templates.jinja import Messages, TemplateNotSupported, chat_template_of, render_jinja, special_tokens
from core.chat_templates.serving import (
    OLLAMA_SCENARIOS, OllamaSetup, _collate, go_json, model_capabilities, ollama_prompt, template_path,
    template_tools, tool_calls_of,
)
from core.tools import _sorted_any, ollama_tools


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
