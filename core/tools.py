"""Tool calling: definitions, calls and results in one form, checked; calls read back out of a
model's text; tool-call accuracy.

The form (OpenAI's, as the Qwen chat templates take it):

- a record's ``tools``: ``[{"type": "function", "function": {"name", "description", "parameters"}}]``
  (a bare ``{"name", "description", "parameters"}`` is put in that form; a JSON string holding the
  list, as ShareGPT / LLaMA-Factory files write it, is parsed);
- an assistant call turn: ``{"role": "assistant", "content": "" (or text), "tool_calls":
  [{"type": "function", "function": {"name": str, "arguments": dict}, "id": optional}]}`` with the
  arguments an object even when the file gave them as a JSON string (the templates ``tojson`` them);
- a tool result: ``{"role": "tool", "content": str, "name": optional, "tool_call_id": optional}``.

:func:`parse_tool_calls` reads the calls a model wrote (Qwen2.5 / Qwen3: ``<tool_call>`` blocks of
JSON; Qwen3.5: ``<tool_call><function=NAME><parameter=P>value</parameter></function></tool_call>``).
Nothing here imports MLX or Qt.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

__all__ = ["ToolDataError", "normalise_tools", "normalise_call", "normalise_calls", "tool_names", "check_calls",
           "has_calls", "first_call_turn", "calls_of", "parse_tool_calls", "tool_call_accuracy", "calls_equal",
           "json_equal"]


class ToolDataError(ValueError):
    """Something in a record's tools, calls or results that cannot be trained on: ``field`` names
    where (``tools[1].function.name``, ``messages[2].tool_calls[0].function.arguments``), ``hint``
    what to do."""

    def __init__(self, field: str | None, message: str, hint: str = ""):
        super().__init__(message)
        self.field, self.message, self.hint = field, message, hint


def _kind(val: Any) -> str:
    return {dict: "an object", list: "a list", bool: "true/false", int: "a number", float: "a number",
            str: "text", type(None): "null"}.get(type(val), type(val).__name__)


def _loads(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text), None
    except ValueError as exc:
        return None, f"not valid JSON ({exc.msg} at character {exc.pos})" if hasattr(exc, "msg") else "not valid JSON"


# ---------------------------------------------------------------------------
# Definitions
# ---------------------------------------------------------------------------

def normalise_tools(tools: Any, fld: str = "tools") -> list[dict] | None:
    """The tool definitions of a record in OpenAI's form, or None when there are none (null, "",
    an empty list). Raises :class:`ToolDataError` for what cannot be a list of functions."""
    if tools is None or tools == "" or tools == []:
        return None
    if isinstance(tools, str):
        parsed, err = _loads(tools)
        if err:
            raise ToolDataError(fld, f"holds text that is {err}",
                                'write the tools as a JSON list: [{"name": "...", "description": "...", '
                                '"parameters": {...}}]')
        tools = parsed
        if tools in (None, []):
            return None
    if isinstance(tools, dict):  # one function given alone
        tools = [tools]
    if not isinstance(tools, list):
        raise ToolDataError(fld, f"must be a list of functions, found {_kind(tools)}",
                            'write it as [{"type": "function", "function": {"name": "...", "parameters": {...}}}]')
    out, seen = [], set()
    for i, t in enumerate(tools):
        where = f"{fld}[{i}]"
        if not isinstance(t, dict):
            raise ToolDataError(where, f"must be a function definition (an object), found {_kind(t)}",
                                'write it as {"type": "function", "function": {"name": "...", "parameters": {...}}}')
        fn = t.get("function") if isinstance(t.get("function"), dict) else None
        if fn is None:
            if "function" in t:
                raise ToolDataError(f"{where}.function", f"must be an object, found {_kind(t['function'])}",
                                    'write it as {"name": "...", "description": "...", "parameters": {...}}')
            fn, fwhere = {k: v for k, v in t.items() if k != "type"}, where  # the bare form
        else:
            fwhere = f"{where}.function"
        typ = t.get("type", "function")
        if typ != "function":
            raise ToolDataError(f"{where}.type", f"only function tools can be trained, not {typ!r}",
                                'use "type": "function", or remove this tool')
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ToolDataError(f"{fwhere}.name",
                                "is missing" if name is None else f"must be a name, found {_kind(name)}",
                                "give every function its name")
        params = fn.get("parameters")
        if isinstance(params, str):
            params, err = _loads(params)
            if err:
                raise ToolDataError(f"{fwhere}.parameters", f"holds text that is {err}",
                                    "write the parameters as a JSON schema object")
        if params is not None and not isinstance(params, dict):
            raise ToolDataError(f"{fwhere}.parameters", f"must be a JSON schema object, found {_kind(params)}",
                                'write it as {"type": "object", "properties": {...}, "required": [...]}')
        if name in seen:
            raise ToolDataError(f"{fwhere}.name", f"the function {name!r} is declared twice",
                                "declare each function once")
        seen.add(name)
        function = dict(fn)
        if params is not None:
            function["parameters"] = params
        out.append({"type": "function", "function": function})
    return out or None


def tool_names(tools: list[dict] | None) -> list[str]:
    return [t["function"]["name"] for t in tools or []]


def _schema(tools: list[dict] | None, name: str) -> dict:
    for t in tools or []:
        fn = t.get("function", t) if isinstance(t, dict) else {}
        if isinstance(fn, dict) and fn.get("name") == name and isinstance(fn.get("parameters"), dict):
            return fn["parameters"]
    return {}


# ---------------------------------------------------------------------------
# Calls and results
# ---------------------------------------------------------------------------

def normalise_call(call: Any, fld: str = "tool_calls[0]") -> dict:
    """One call in the form {"type": "function", "function": {"name", "arguments": dict}} (+ "id" when
    given). Accepts OpenAI's form, the bare {"name", "arguments"} (LLaMA-Factory), ``parameters`` for
    ``arguments``, and arguments as a JSON string."""
    if isinstance(call, str):
        parsed, err = _loads(call)
        if err:
            raise ToolDataError(fld, f"holds text that is {err}",
                                'write the call as JSON: {"name": "...", "arguments": {...}}')
        call = parsed
    if not isinstance(call, dict):
        raise ToolDataError(fld, f"must be a call (an object), found {_kind(call)}",
                            'write it as {"type": "function", "function": {"name": "...", "arguments": {...}}}')
    if "function" in call:
        fn, fwhere = call["function"], f"{fld}.function"
        if not isinstance(fn, dict):
            raise ToolDataError(fwhere, f"must be an object, found {_kind(fn)}",
                                'write it as {"name": "...", "arguments": {...}}')
    else:
        fn, fwhere = call, fld
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ToolDataError(f"{fwhere}.name", "is missing" if name is None else f"must be a name, found {_kind(name)}",
                            "name the function called")
    akey = "arguments" if "arguments" in fn or "parameters" not in fn else "parameters"
    args = fn.get(akey)
    if isinstance(args, str):
        if not args.strip():
            args = {}
        else:
            parsed, err = _loads(args)
            if err:
                raise ToolDataError(f"{fwhere}.{akey}", f"are {err}",
                                    'write the arguments as a JSON object, e.g. "{\\"city\\": \\"Paris\\"}"')
            args = parsed
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ToolDataError(f"{fwhere}.{akey}", f"must be a JSON object of named arguments, found {_kind(args)}",
                            'write them as {"name": value, ...}')
    out = {"type": "function", "function": {"name": name, "arguments": args}}
    if call.get("id") is not None:
        out["id"] = str(call["id"])
    return out


def normalise_calls(calls: Any, fld: str = "tool_calls") -> list[dict]:
    if isinstance(calls, str):
        parsed, err = _loads(calls)
        if err:
            raise ToolDataError(fld, f"holds text that is {err}",
                                'write the calls as JSON: [{"name": "...", "arguments": {...}}]')
        calls = parsed
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list):
        raise ToolDataError(fld, f"must be a list of calls, found {_kind(calls)}",
                            'write it as [{"type": "function", "function": {"name": "...", "arguments": {...}}}]')
    return [normalise_call(c, f"{fld}[{i}]") for i, c in enumerate(calls)]


def has_calls(messages: list[dict]) -> bool:
    return any(m.get("role") == "assistant" and m.get("tool_calls") for m in messages)


def first_call_turn(messages: list[dict]) -> int | None:
    """Index of the first assistant turn that calls a function, or None."""
    return next((i for i, m in enumerate(messages) if m.get("role") == "assistant" and m.get("tool_calls")), None)


def calls_of(message: dict) -> list[dict]:
    """[{"name", "arguments"}] of an assistant message (the form :func:`parse_tool_calls` returns)."""
    out = []
    for c in message.get("tool_calls") or []:
        fn = c.get("function", c) if isinstance(c, dict) else {}
        args = fn.get("arguments")
        if isinstance(args, str):
            args = _loads(args)[0] if args.strip() else {}
        out.append({"name": fn.get("name"), "arguments": args if args is not None else {}})
    return out


def check_calls(messages: list[dict], tools: list[dict] | None, wheres: list[str] | None = None,
                fld: str = "messages") -> None:
    """Raise :class:`ToolDataError` for a call to a function the record does not declare (when it
    declares any), and for a tool result with no call before it (or whose ``tool_call_id`` names no
    call of the turn before). ``wheres[i]``: where message i's role is in the file."""
    names = set(tool_names(tools))

    def at(i: int, tail: str) -> str:
        base = wheres[i].rsplit(".", 1)[0] if wheres and i < len(wheres) else f"{fld}[{i}]"
        return f"{base}.{tail}" if tail else base

    open_ids: set[str] | None = None  # ids of the calls the tool results answer; None: no call before
    answered = 0
    pending = 0
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "assistant":
            calls = m.get("tool_calls") or []
            for k, c in enumerate(calls):
                name = c["function"]["name"]
                if names and name not in names:
                    raise ToolDataError(at(i, f"tool_calls[{k}].function.name"),
                                        f"calls {name!r}, a function the example does not declare "
                                        f"(its tools: {', '.join(sorted(names))})",
                                        "add the function to the example's tools, or fix the name")
            if calls:
                open_ids = {c["id"] for c in calls if c.get("id")}
                pending, answered = len(calls), 0
            else:
                open_ids, pending = None, 0
        elif role == "tool":
            if open_ids is None:
                raise ToolDataError(at(i, "role"), "a tool result with no call before it",
                                    "put the assistant's tool_calls before the result, or remove the result")
            answered += 1
            cid = m.get("tool_call_id")
            if cid is not None and open_ids and str(cid) not in open_ids:
                raise ToolDataError(at(i, "tool_call_id"),
                                    f"{cid!r} names no call of the assistant turn before it "
                                    f"(its calls: {', '.join(sorted(open_ids))})",
                                    "use the id of the call this result answers")
            if answered > pending:
                raise ToolDataError(at(i, "role"), f"{answered} tool results answer {pending} "
                                    f"call{'s' if pending != 1 else ''}",
                                    "give one result per call, or remove the extra result")
        elif role == "user":
            open_ids, pending = None, 0


# ---------------------------------------------------------------------------
# Reading calls out of generated text
# ---------------------------------------------------------------------------

_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)(?:</function>|\Z)", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?(?:</parameter>|\Z)", re.S)


def _template_text(model_dir_or_template: Any) -> str:
    if model_dir_or_template is None:
        return ""
    if isinstance(model_dir_or_template, Path) or (
            isinstance(model_dir_or_template, str) and "{%" not in model_dir_or_template
            and "{{" not in model_dir_or_template and len(model_dir_or_template) < 4096):
        d = Path(model_dir_or_template)
        if d.is_dir():
            jinja = d / "chat_template.jinja"
            if jinja.is_file():
                return jinja.read_text(encoding="utf-8")
            cfg = d / "tokenizer_config.json"
            if cfg.is_file():
                t = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template") or ""
                if isinstance(t, list):
                    t = next((x.get("template", "") for x in t if x.get("name") == "tool_use"), "") or \
                        next((x.get("template", "") for x in t if x.get("name") == "default"), "")
                return t
            return ""
    tmpl = getattr(model_dir_or_template, "chat_template", model_dir_or_template)
    return tmpl if isinstance(tmpl, str) else ""


def _param_value(raw: str, prop_type: Any) -> Any:
    types = prop_type if isinstance(prop_type, list) else [prop_type] if prop_type else []
    if types and all(t == "string" for t in types):
        return raw
    val, err = _loads(raw)
    if err is None:
        return val
    if raw in ("True", "False"):  # Jinja writes Python booleans this way
        return raw == "True"
    if raw == "None":
        return None
    return raw


def _json_call(body: str) -> dict | None:
    obj, err = _loads(body.strip())
    if err or not isinstance(obj, dict):
        return None
    name = obj.get("name")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        args = _loads(args)[0] if args.strip() else {}
    if not isinstance(name, str) or not isinstance(args, dict):
        return None
    return {"name": name, "arguments": args}


def parse_tool_calls(text: str, model_dir_or_template: Any = None, tools: list[dict] | None = None) -> list[dict]:
    """The calls in a model's generated ``text``: [{"name": str, "arguments": dict}], in order.

    ``model_dir_or_template``: a model folder, its chat template text, or a tokenizer; it tells a
    template that writes ``<tool_call>`` blocks (the Qwen families) from one that writes the bare
    JSON call. Inside a block both forms are read: JSON (Qwen2.5, Qwen3) and Qwen3.5's
    ``<function=NAME><parameter=P>value</parameter></function>``, whose values are text: read as
    JSON where they are JSON, as text where the ``tools`` schema says the parameter is a string.
    A block that cannot be read (cut off, not JSON) is left out, so the count of calls shows it."""
    if not isinstance(text, str) or not text:
        return []
    template = _template_text(model_dir_or_template)
    blocks = _BLOCK.findall(text)
    if not blocks and template and "<tool_call>" not in template:
        call = _json_call(text)
        return [call] if call else []
    out = []
    for body in blocks:
        fns = _FUNCTION.findall(body)
        if fns:
            for name, inner in fns:
                name = name.strip()
                props = _schema(tools, name).get("properties") or {}
                args = {}
                for pname, raw in _PARAMETER.findall(inner):
                    pname = pname.strip()
                    ptype = props.get(pname, {}).get("type") if isinstance(props.get(pname), dict) else None
                    args[pname] = _param_value(raw, ptype)
                out.append({"name": name, "arguments": args})
            continue
        call = _json_call(body)
        if call is not None:
            out.append(call)
    return out


# ---------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------

def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values in JSON's own terms: true is not 1, "1" is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _plain(call: Any) -> tuple[Any, Any]:
    if not isinstance(call, dict):
        return None, None
    fn = call.get("function", call) if isinstance(call.get("function"), dict) else call
    args = fn.get("arguments", {})
    if isinstance(args, str):
        args = _loads(args)[0] if args.strip() else {}
    return fn.get("name"), args


def calls_equal(expected: list[dict], predicted: list[dict]) -> bool:
    """Same number of calls, in the order given, each with the same name and arguments equal as JSON."""
    if len(expected or []) != len(predicted or []):
        return False
    for e, p in zip(expected, predicted):
        (en, ea), (pn, pa) = _plain(e), _plain(p)
        if en != pn or not json_equal(ea, pa):
            return False
    return True


def tool_call_accuracy(expected_calls_per_record: list, predicted_calls_per_record: list) -> float | None:
    """Share of the records with expected calls whose predicted calls are all right
    (:func:`calls_equal`); None when no record has calls. Records that expect no call are not counted."""
    n = right = 0
    for exp, got in zip(expected_calls_per_record, predicted_calls_per_record):
        if not exp:
            continue
        n += 1
        right += calls_equal(exp, got or [])
    return right / n if n else None


# -- tool definitions typed or loaded (the Try page, `tuneloom chat --tools`) and calls shown ---------

def read_tools_text(text: str) -> tuple[list[dict] | None, str | None]:
    """Tool definitions typed, pasted or loaded: a JSON list (or one function), or one function per
    line. Returns (the tools in OpenAI's form or None when there are none, the reason they cannot be
    used or None)."""
    if not text.strip():
        return None, None
    try:
        parsed = json.loads(text)
    except ValueError as whole:
        lines = [(i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
        parsed = []
        for k, (i, ln) in enumerate(lines):
            try:
                item = json.loads(ln)
            except ValueError as exc:
                if k == 0 or len(lines) == 1:  # not one per line either: say where the JSON breaks
                    return None, (f"Not valid JSON: {whole.msg} at line {whole.lineno}, column {whole.colno}. "
                                  "Write a JSON list of functions, or one function per line.")
                return None, (f"Line {i} is not valid JSON: {exc.msg} at column {exc.colno}. "
                              "Write one function per line.")
            parsed.extend(item if isinstance(item, list) else [item])
    try:
        return normalise_tools(parsed), None
    except ToolDataError as exc:
        where = f"{exc.field} " if exc.field else ""
        return None, f"{where}{exc.message}" + (f": {exc.hint}." if exc.hint else ".")


def call_text(call: dict) -> str:
    """A call as it reads in code: ``describe(name="Olla", category="kettle")``."""

    args = call.get("arguments") or {}
    if not isinstance(args, dict):
        return f"{call.get('name')}({json.dumps(args, ensure_ascii=False)})"
    inner = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
    return f"{call.get('name')}({inner})"

# -- tool definitions as Ollama holds them ---------------------------------------------------------
# Training renders a record's tools in this form (core.tokens.ChatEncoder.render), because a client's
# /api/chat request reaches the template in it: Ollama parses `tools` into its api types (fixed key order,
# unknown keys such as a property's `default` dropped) and hands those on.

def _sorted_any(v: Any) -> Any:
    """A JSON value as Go holds it in an ``any``: every object a map, written with its keys sorted."""
    return json.loads(json.dumps(v, sort_keys=True))


def _ollama_property(p: Any) -> Any:
    if not isinstance(p, dict):
        return p
    out: dict = {}
    if p.get("anyOf"):
        out["anyOf"] = [_ollama_property(x) for x in p["anyOf"]]
    t = p.get("type")
    if t:
        out["type"] = t[0] if isinstance(t, list) and len(t) == 1 else t
    for key in ("items", "description", "enum"):
        if p.get(key):
            out[key] = p[key] if key == "description" else _sorted_any(p[key])
    if p.get("properties") is not None:
        out["properties"] = {k: _ollama_property(v) for k, v in p["properties"].items()}
    if p.get("required"):
        out["required"] = p["required"]
    return out


def ollama_tools(tools: Sequence[dict] | None) -> list[dict]:
    """Tool definitions as Ollama holds and hands them on (api.Tool, api.ToolFunction,
    api.ToolFunctionParameters, api.ToolProperty: fixed key order, unknown keys dropped). A record whose
    tools already read like this is rendered by Ollama exactly as training rendered it."""
    out = []
    for t in tools or []:
        fn = t.get("function") if isinstance(t.get("function"), dict) else t
        f: dict = {"name": fn.get("name", "")}
        if fn.get("description"):
            f["description"] = fn["description"]
        p = fn.get("parameters") or {}
        params: dict = {"type": p.get("type", "")}
        for key in ("$defs", "items", "required"):
            if p.get(key):
                params[key] = p[key] if key == "required" else _sorted_any(p[key])
        props = p.get("properties")
        params["properties"] = None if props is None else {k: _ollama_property(v) for k, v in props.items()}
        f["parameters"] = params
        tool: dict = {"type": t.get("type", "function") if "function" in t else "function"}
        if t.get("items"):
            tool["items"] = _sorted_any(t["items"])
        tool["function"] = f
        out.append(tool)
    return out
