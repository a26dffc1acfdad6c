"""What Ollama does with a model's two templates, written from Ollama's source: which one renders
a chat request, its think default, the abilities it reads, how it hands tool calls to llama-server.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from core.chat_templates.formats import ChatFormat
from core.chat_templates.jinja import Messages, _compiled
from core.tools import ollama_tools


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


# Scenarios every embedded template is checked under: Ollama before the native path, current
# Ollama with its defaults, and current Ollama told to skip the Go template.
OLLAMA_SCENARIOS = (("ollama<0.32.7", {"version": (0, 32, 6)}), ("ollama", {}),
                    ("ollama OLLAMA_GO_TEMPLATE=0", {"go_template_env": False}))


def go_json(value: Any) -> str:
    """Go's ``json.Marshal`` text of a JSON value: compact, ``<`` ``>`` ``&`` U+2028 U+2029 escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


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
