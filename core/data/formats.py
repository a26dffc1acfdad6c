"""Formats: detect a record's shape and normalise it to chat messages (or a preference record)."""
from __future__ import annotations

from typing import Any

from core.data.fields import (
    _CONTENT_KEYS, _MESSAGE_KEYS, _ROLE_KEYS, _Invalid, _as_json_text, _check_text, _ci, _content_text, _find,
    _json_loads, _lowered, _norm_key, _note, _pick, _split_think, _text_field, _type_name,
)
from core.data.records import ROLES, SHAREGPT_ROLES, PreferenceRecord
from core.data.templates import RecordTemplate
from core.tools import ToolDataError, check_calls, normalise_calls, normalise_tools


# ---------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------

# format name -> required keys (first match wins); keys are matched case-insensitively
FORMATS = (
    ("chat", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction", "output")),
    ("input-output", ("input", "output")),
    ("prompt-completion", ("prompt", "completion")),
    ("question-answer", ("question", "answer")),
    ("text", ("text",)),
)
OPTIONAL_KEYS = {"chat": ("system",), "sharegpt": ("system",), "alpaca": ("input", "system"),
                 "input-output": ("system",), "prompt-completion": ("system",), "question-answer": ("system",)}
MAPPABLE_KEYS = {k for _, req in FORMATS for k in req} | {k for opt in OPTIONAL_KEYS.values() for k in opt}
TEMPLATE_FORMAT = "template"  # the format of a file read through user/assistant templates
def _looks_like_record(obj: dict) -> bool:
    keys = {_norm_key(k) for k in obj}
    return any(all(k in keys for k in req) for _, req in FORMATS)


def detect_format(obj: Any, mapping: dict[str, str] | None = None) -> str | None:
    """The record format of one raw example; a user ``mapping`` {our_key: their_column} counts
    their columns as ours, and names the format outright when it covers all its required keys."""
    if not isinstance(obj, dict):
        return None
    keys = {_norm_key(k) for k in obj}
    pref = _preference_format(obj, keys)
    if pref is not None:
        return pref
    if mapping:
        keys |= {ours for ours, theirs in mapping.items() if _norm_key(theirs) in keys}
    for name, required in FORMATS:
        if all(k in keys for k in required):
            return name
    if mapping:
        for name, required in FORMATS:
            if all(k in mapping for k in required):
                return name
    return None


# Preference data: format name -> the shape, in words (``data check`` says "preference pairs: N (shape)")
PREFERENCE_FORMATS = {
    "preference-prompt": "prompt / chosen / rejected, as TRL writes them",
    "preference-sharegpt": "conversations + chosen / rejected messages, as LLaMA-Factory writes them",
    "preference-chat": "messages + chosen / rejected answers",
    "preference-alpaca": "instruction / input + chosen / rejected answers",
    "preference-transcript": "chosen / rejected as whole conversations",
    "kto": "one answer per example labelled desirable or undesirable (KTO: label / kto_tag)",
}
_KTO_KEYS = ("label", "kto_tag")


def _preference_format(obj: dict, keys: set[str]) -> str | None:
    if "chosen" in keys and "rejected" in keys:
        for key, fmt in (("conversations", "preference-sharegpt"), ("messages", "preference-chat"),
                         ("prompt", "preference-prompt"), ("instruction", "preference-alpaca")):
            if key in keys:
                return fmt
        return "preference-transcript"
    if any(k in keys for k in _KTO_KEYS) and ("messages" in keys or "conversations" in keys
                                              or ("prompt" in keys and "completion" in keys)):
        _, label = _ci(obj, *_KTO_KEYS)
        if isinstance(label, bool):  # a number or a class name is a classification label, not KTO's
            return "kto"
    return None

def _convert_messages(msgs: Any, fld: str, *, sharegpt: bool = False, notes: dict | None = None
                      ) -> tuple[list[dict], list[str]]:
    """Messages in our form, and where each one's role is in the file (for problems about order)."""
    if msgs is None:
        raise _Invalid(fld, "is missing", "add the list of messages")
    if not isinstance(msgs, list):
        raise _Invalid(fld, f"must be a list of messages, found {_type_name(msgs)}",
                       'write it as [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]')
    if not msgs:
        raise _Invalid(fld, "has no messages", "add the user's message and the assistant's answer")
    out, wheres = [], []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _Invalid(f"{fld}[{i}]", f"must be an object with role and content, found {_type_name(m)}",
                           'write each message as {"role": "user", "content": "..."}')
        low = _lowered(m)
        rkey, who = _pick(m, low, *_ROLE_KEYS)
        ckey, content = _pick(m, low, *_CONTENT_KEYS)
        rkey, ckey = rkey or "role", ckey or "content"
        wheres.append(f"{fld}[{i}].{rkey}")
        if who is None:
            raise _Invalid(f"{fld}[{i}].{rkey}", "is missing", "give every message a role: system, user or assistant")
        role = SHAREGPT_ROLES.get(_norm_key(who)) if isinstance(who, str) else None
        if isinstance(who, str) and _norm_key(who) == "function_call":  # ShareGPT / LLaMA-Factory: the call turn
            if content is None or (isinstance(content, str) and not content.strip()):
                raise _Invalid(f"{fld}[{i}].{ckey}", "the function_call turn holds no call",
                               'write the call as JSON: {"name": "...", "arguments": {...}}')
            try:
                calls = normalise_calls(content, f"{fld}[{i}].{ckey}")
            except ToolDataError as exc:
                raise _Invalid(exc.field, exc.message, exc.hint) from None
            wheres.append(f"{fld}[{i}].{rkey}")
            out.append({"role": "assistant", "content": "", "tool_calls": calls})
            continue
        if role not in ROLES:
            raise _Invalid(f"{fld}[{i}].{rkey}", f"unknown role {who!r}",
                           "use human, gpt or system" if sharegpt else "use one of: system, user, assistant, tool")
        wkey, weight = _pick(m, low, "weight")
        if wkey is not None:
            if role != "assistant":
                raise _Invalid(f"{fld}[{i}].{wkey}", f"only assistant messages have a weight, not {role} messages",
                               "remove the weight, or move it to the assistant's answer")
            if isinstance(weight, bool) or weight not in (0, 1):
                raise _Invalid(f"{fld}[{i}].{wkey}", f"must be 0 (not trained) or 1 (trained), found {weight!r}",
                               "use 0 to show this answer without training on it, 1 (or nothing) to train on it")
        fkey, legacy = _pick(m, low, "function_call")
        if role == "assistant" and legacy and not m.get("tool_calls"):  # OpenAI's older single call
            m = {**{k: v for k, v in m.items() if k != fkey}, "tool_calls": [legacy]}
        if role == "tool" or (role == "assistant" and m.get("tool_calls")):
            msg = {k: v for k, v in m.items() if k not in (rkey, ckey) and k != wkey  # passed through
                   and not (k == fkey and v is None)}
            if role == "assistant":
                try:
                    msg["tool_calls"] = normalise_calls(m["tool_calls"], f"{fld}[{i}].tool_calls")
                except ToolDataError as exc:
                    raise _Invalid(exc.field, exc.message, exc.hint) from None
                if content is None:
                    content = ""
            elif content is None:
                raise _Invalid(f"{fld}[{i}].{ckey}", "is missing", "write the tool's result as text")
            if role == "tool" and (isinstance(content, dict) or (isinstance(content, list) and not all(
                    isinstance(p, dict) and p.get("type") == "text" for p in content))):
                content = _as_json_text(content)  # a structured result: shown as the JSON text it is
            if content != "":
                content = _content_text(content, f"{fld}[{i}].{ckey}", role, notes)
                _check_text(content, f"{fld}[{i}].{ckey}")
            msg.update(role=role, content=content)
            if wkey is not None and weight == 0:
                msg["weight"] = 0
                _note(notes, "untrained_turns")
            out.append(msg)
            continue
        extra = {str(k) for nk, k in low.items() if nk not in _MESSAGE_KEYS} if len(low) > 2 else None
        if extra:
            _note(notes, "message_fields", extra)
        if content is None:
            raise _Invalid(f"{fld}[{i}].{ckey}", "is missing", f"write the {role} message's text")
        content = _content_text(content, f"{fld}[{i}].{ckey}", role, notes)
        _check_text(content, f"{fld}[{i}].{ckey}")
        msg = {"role": role, "content": content}
        if role == "assistant":
            qkey, reasoning = _pick(m, low, "reasoning_content")
            if qkey is not None and reasoning is not None and not isinstance(reasoning, str):
                raise _Invalid(f"{fld}[{i}].{qkey}", f"must be text, found {_type_name(reasoning)}",
                               "write the reasoning as one string")
            think, answer = _split_think(content, f"{fld}[{i}].{ckey}")
            if think is not None:
                if reasoning:
                    raise _Invalid(f"{fld}[{i}].{ckey}", "has both reasoning_content and a <think> block",
                                   "keep the reasoning in one place")
                _note(notes, "think_blocks")
                reasoning, content = think, answer
                msg["content"] = content
            if reasoning:
                _check_text(reasoning, f"{fld}[{i}].{qkey or ckey}")
                msg["reasoning_content"] = reasoning
            if wkey is not None and weight == 0:
                msg["weight"] = 0
                _note(notes, "untrained_turns")
        if role != "system" and not content.strip():
            raise _Invalid(f"{fld}[{i}].{ckey}", f"the {role} message is empty", "write it, or remove the message")
        out.append(msg)
    return out, wheres


def _check_order(msgs: list[dict], fld: str, wheres: list[str] | None = None) -> None:
    roles = [m["role"] for m in msgs]

    def where(i):
        return wheres[i] if wheres else f"{fld}[{i}].role"

    for i, r in enumerate(roles):
        if r == "system" and i != 0:
            raise _Invalid(where(i), "a system message may only come first", "move it to the start, or remove it")
    convo = [(i, r) for i, r in enumerate(roles) if r != "system"]
    if not convo:
        raise _Invalid(fld, "has only a system message", "add the user's message and the assistant's answer")
    if convo[0][1] != "user":
        raise _Invalid(where(convo[0][0]), f"the conversation starts with an {convo[0][1]} message, not a user message",
                       "start with what the user says")
    allowed = {"user": {"assistant"}, "assistant": {"user", "tool"}, "tool": {"tool", "assistant", "user"}}
    for (_, a), (j, b) in zip(convo, convo[1:]):
        if b not in allowed[a]:
            if b == "tool":
                raise _Invalid(where(j), "a tool result with no call before it",
                               "put the assistant's tool_calls before the result, or remove the result")
            raise _Invalid(where(j), f"{'two ' + b + ' messages in a row' if a == b else f'a {b} message after a {a} message'}",
                           "user and assistant turns must alternate")
    if "assistant" not in roles:
        raise _Invalid(fld, "has no assistant message to learn from", "add the answer the model should give")
    if convo[-1][1] == "user":
        raise _Invalid(where(convo[-1][0]), "the conversation ends with a user message that has no answer",
                       "add the assistant's answer, or remove the last message")
    if all(m.get("weight") == 0 for m in msgs if m["role"] == "assistant"):
        raise _Invalid(fld, "every assistant message has weight 0: nothing to learn from",
                       "give the answer the model should learn weight 1 (or no weight)")


def _with_system(msgs: list[dict], system: Any, fld: str) -> list[dict]:
    """Put a record's top-level system prompt (LLaMA-Factory's ShareGPT ``system``) in front."""
    if system is None or (isinstance(system, str) and not system.strip()):
        return msgs
    if not isinstance(system, str):
        raise _Invalid(fld, f"must be text, found {_type_name(system)}", "write the system prompt as text")
    _check_text(system, fld)
    if msgs and msgs[0]["role"] == "system":
        if msgs[0]["content"] == system:
            return msgs
        raise _Invalid(fld, "the example has a system field and a different system message",
                       "keep one system prompt: remove the field or the message")
    return [{"role": "system", "content": system}] + msgs


def _prompt_messages(val: Any, fld: str, notes: dict | None) -> tuple[list[dict], list[str]]:
    """TRL's conversational prompt: the messages before the answer; assistant turns in it are
    context, never trained (weight 0), as TRL trains on the completion only."""
    msgs, wheres = _convert_messages(val, fld, notes=notes)
    for m in msgs:
        if m["role"] == "assistant" and m.get("weight") != 0:
            m["weight"] = 0
            _note(notes, "prompt_context")
    return msgs, wheres


def _completion_messages(val: Any, fld: str, notes: dict | None, what: str = "the completion"
                         ) -> tuple[list[dict], list[str]]:
    msgs, wheres = _convert_messages(val, fld, notes=notes)
    for m, w in zip(msgs, wheres):
        if m["role"] not in ("assistant", "tool"):
            raise _Invalid(w, f"{what} holds a {m['role']} message; it may hold only the assistant's answer",
                           "move the other messages into the prompt")
    return msgs, wheres


def _system_msgs(system: str | None) -> list[dict]:
    return [{"role": "system", "content": system}] if system else []


def normalise(obj: Any, fmt: str, mapping: dict[str, str] | None = None, *,
              template: "RecordTemplate | None" = None, notes: dict | None = None) -> list[dict]:
    """Turn one raw record of format ``fmt`` into chat messages, or raise _Invalid.

    ``notes`` (a dict) collects what was changed or left out on the way, for the dataset's
    summary: nothing a user wrote is dropped without being counted."""
    if fmt in PREFERENCE_FORMATS:  # the conversation supervised training would see: prompt + the answer
        pr = normalise_preference(obj, fmt, notes=notes)
        return pr.prompt + (pr.chosen or pr.rejected)
    if fmt == TEMPLATE_FORMAT:
        if template is None:
            raise _Invalid(None, "no templates given", "give a user and an assistant template")
        used = template.apply(obj, notes)
        _note_extra(obj, {_norm_key(f) for f in template.fields()}, notes)
        return used
    if not isinstance(obj, dict):
        raise _Invalid(None, f"an example must be an object with named fields, found {_type_name(obj)}", _FORMAT_HINT)
    used_keys = {_norm_key(mapping.get(k, k)) if mapping else k
                 for k in dict(FORMATS).get(fmt, ()) + OPTIONAL_KEYS.get(fmt, ())
                 + (_TOOL_KEYS if fmt in _TOOL_FORMATS else ())}
    _note_extra(obj, used_keys, notes)
    if fmt in ("chat", "sharegpt"):
        name, msgs = _find(obj, "messages" if fmt == "chat" else "conversations", mapping)
        if isinstance(msgs, str) and msgs.lstrip().startswith("["):  # a CSV cell holding the JSON list
            parsed, err = _json_loads(msgs)
            if err:
                raise _Invalid(name, f"holds text that is {err}", "write the list of messages as valid JSON")
            msgs = parsed
        out, wheres = _convert_messages(msgs, name, sharegpt=fmt == "sharegpt", notes=notes)
        sname, system = _find(obj, "system", mapping)
        if is_plain_text(out) and "weight" not in out[0] and "reasoning_content" not in out[0] and \
                "tool_calls" not in out[0] and (
                system is None or system == ""):
            return out  # one assistant message and nothing else: plain text, as `data export` writes it
        with_sys = _with_system(out, system, sname)
        if len(with_sys) > len(out):
            wheres = [sname] + wheres
        _check_order(with_sys, name, wheres)
        _check_tools(with_sys, _tools_of(obj, mapping), wheres, name, notes)
        return with_sys
    system = _text_field(obj, "system", mapping, required=False, notes=notes)
    if fmt == "alpaca":
        # LLaMA-Factory and Unsloth read an empty instruction with a filled input as the input alone
        instr = _text_field(obj, "instruction", mapping, required=False, notes=notes)
        extra = _text_field(obj, "input", mapping, required=False, notes=notes)
        if not (instr and instr.strip()):
            if not (extra and extra.strip()):
                iname = _find(obj, "instruction", mapping)[0]
                if instr is None:
                    raise _Invalid(iname, "is missing", f"add a '{iname}' value")
                raise _Invalid(iname, "is empty", "write the instruction (or the input), or remove this example")
            instr, extra = extra, None
            _note(notes, "input_as_instruction")
        out = _text_field(obj, "output", mapping, answer=True, notes=notes)
        user = instr if not (extra and extra.strip()) else f"{instr}\n\n{extra}"
        return _system_msgs(system) + [{"role": "user", "content": user}, {"role": "assistant", "content": out}]
    if fmt in ("input-output", "prompt-completion", "question-answer"):
        a, b = {"input-output": ("input", "output"), "prompt-completion": ("prompt", "completion"),
                "question-answer": ("question", "answer")}[fmt]
        pname, pval = _find(obj, a, mapping)
        cname, cval = _find(obj, b, mapping)
        if _is_message_list(pval) or _is_message_list(cval):  # TRL's conversational prompt/completion
            head, hw = _prompt_messages(pval, pname, notes) if _is_message_list(pval) else \
                ([{"role": "user", "content": _text_field(obj, a, mapping, notes=notes)}], [pname])
            tail, tw = _completion_messages(cval, cname, notes) if _is_message_list(cval) else \
                ([{"role": "assistant", "content": _text_field(obj, b, mapping, answer=True, notes=notes)}], [cname])
            msgs = _with_system(head + tail, system, "system")
            wheres = (["system"] if len(msgs) > len(head) + len(tail) else []) + hw + tw
            _check_order(msgs, pname, wheres)
            _check_tools(msgs, _tools_of(obj, mapping), wheres, pname, notes)
            return msgs
        p = _text_field(obj, a, mapping, notes=notes)
        c = _text_field(obj, b, mapping, answer=True, notes=notes)
        return _system_msgs(system) + [{"role": "user", "content": p}, {"role": "assistant", "content": c}]
    if fmt == "text":
        t = _text_field(obj, "text", mapping, answer=True, notes=notes)
        # Plain text has no prompt: the whole document is trained on.
        return [{"role": "assistant", "content": t}]
    raise _Invalid(None, f"unknown format {fmt}", _FORMAT_HINT)


_TOOL_KEYS = ("tools", "parallel_tool_calls")  # record fields of tool data (OpenAI, ShareGPT, TRL)
_TOOL_FORMATS = ("chat", "sharegpt", "prompt-completion")


def _tools_of(obj: Any, mapping: dict[str, str] | None = None) -> list[dict] | None:
    """The record's tool definitions (``tools``) in OpenAI's form, or None; raises _Invalid."""
    if not isinstance(obj, dict):
        return None
    name, val = _find(obj, "tools", mapping)
    try:
        return normalise_tools(val, name)
    except ToolDataError as exc:
        raise _Invalid(exc.field, exc.message, exc.hint) from None


def record_tools(obj: Any, fmt: str | None, mapping: dict[str, str] | None = None) -> list[dict] | None:
    """The tools a raw example of format ``fmt`` declares (None: none, or a format without tools)."""
    if fmt in _TOOL_FORMATS:
        try:
            return _tools_of(obj, mapping)
        except _Invalid:
            return None
    return None


def _check_tools(msgs: list[dict], tools: list[dict] | None, wheres: list[str], fld: str, notes: dict | None) -> None:
    """Calls against the declared tools, results against the calls before them (core.tools.check_calls)."""
    calls = any(m.get("role") == "assistant" and m.get("tool_calls") for m in msgs)
    if not calls and not tools and not any(m.get("role") == "tool" for m in msgs):
        return
    try:
        check_calls(msgs, tools, wheres, fld)
    except ToolDataError as exc:
        raise _Invalid(exc.field, exc.message, exc.hint) from None
    if calls and not tools:
        _note(notes, "calls_without_tools")


def _is_message_list(val: Any) -> bool:
    return isinstance(val, list) and bool(val) and all(isinstance(m, dict) for m in val) and \
        any(_ci(m, *_ROLE_KEYS)[0] is not None for m in val)


def _note_extra(obj: Any, used: set[str], notes: dict | None) -> None:
    if isinstance(obj, dict):
        extra = {str(k) for k in obj if _norm_key(k) not in used}
        if extra:
            _note(notes, "extra_fields", extra)


def is_plain_text(messages: list[dict]) -> bool:
    return len(messages) == 1 and messages[0]["role"] == "assistant"


def _answer_messages(val: Any, fld: str, notes: dict | None) -> list[dict]:
    """A chosen / rejected / completion value: text, one message object (LLaMA-Factory) or a list of them."""
    if isinstance(val, str) or val is None:
        if val is None:
            raise _Invalid(fld, "is missing", f"add the {fld} answer")
        _check_text(val, fld)
        if not val.strip():
            raise _Invalid(fld, "is empty", f"write the {fld} answer, or remove this example")
        return [{"role": "assistant", "content": val}]
    if isinstance(val, dict):
        val = [val]
    if not isinstance(val, list):
        raise _Invalid(fld, f"must be text or assistant messages, found {_type_name(val)}",
                       'write the answer as text, or as [{"role": "assistant", "content": "..."}]')
    msgs, _ = _completion_messages(val, fld, notes, f"the {_norm_key(fld)} answer")
    return msgs


_HH_TURN = None


def _hh_messages(text: str, fld: str) -> list[dict]:
    """Anthropic's HH transcript text ("\n\nHuman: ...\n\nAssistant: ...") as messages."""
    import re

    global _HH_TURN
    if _HH_TURN is None:
        _HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise _Invalid(fld, "is text without turns: expected a whole conversation, "
                            "\"\\n\\nHuman: ...\\n\\nAssistant: ...\"",
                       "write the conversation with Human: and Assistant: turns, or add a prompt field "
                       "(TRL's prompt / chosen / rejected)")
    out = []
    for who, body in zip(parts[1::2], parts[2::2]):
        role = "user" if who == "Human" else "assistant"
        if out and out[-1]["role"] == role:
            out[-1]["content"] += "\n\n" + body
        else:
            out.append({"role": role, "content": body})
    return out


def _split_answer(msgs: list[dict], fld: str) -> tuple[list[dict], list[dict]]:
    """(prompt, answer) of a whole conversation: the answer is its trailing assistant messages."""
    end = len(msgs)
    while end > 0 and msgs[end - 1]["role"] == "assistant":
        end -= 1
    if end == len(msgs):
        raise _Invalid(fld, "does not end with an assistant answer", "end the conversation with the answer")
    return msgs[:end], msgs[end:]


def normalise_preference(obj: Any, fmt: str, *, notes: dict | None = None) -> PreferenceRecord:
    """One raw preference / KTO example of format ``fmt`` (a key of PREFERENCE_FORMATS) as a
    :class:`PreferenceRecord` (without file and line), or raise _Invalid."""
    if not isinstance(obj, dict):
        raise _Invalid(None, f"an example must be an object with named fields, found {_type_name(obj)}", _FORMAT_HINT)
    low = _lowered(obj)
    sname, system = _pick(obj, low, "system")
    # pw / aw: where each prompt / answer message is in the file (problems with tools name it)
    if fmt == "kto":
        lname, label = _pick(obj, low, *_KTO_KEYS)
        if not isinstance(label, bool):
            raise _Invalid(lname, f"must be true (a desirable answer) or false (an undesirable one), found {label!r}",
                           "write true or false without quotes")
        if "completion" in low and "prompt" in low:
            pname, pval = _pick(obj, low, "prompt")
            cname, cval = _pick(obj, low, "completion")
            prompt, pw = _prompt_messages(pval, pname, notes) if _is_message_list(pval) else \
                ([{"role": "user", "content": _text_field(obj, pname, None, notes=notes)}], [pname])
            answer = _answer_messages(cval, cname, notes)
            aw = _answer_wheres(cval, cname, answer)
            used = {"prompt", "completion", "system", _norm_key(lname)}
        else:
            mname, msgs = _pick(obj, low, "messages", "conversations")
            conv, cw = _convert_messages(msgs, mname, sharegpt=_norm_key(mname) == "conversations", notes=notes)
            prompt, answer = _split_answer(conv, mname)
            pw, aw = cw[:len(prompt)], cw[len(prompt):]
            used = {_norm_key(mname), "system", _norm_key(lname)}
        prompt, pw = _with_system(prompt, system, sname or "system"), _system_where(prompt, pw, system, sname)
        _check_order(prompt + answer, "prompt", pw + aw)
        tools = _preference_tools(obj, [(prompt + answer, pw + aw)], notes)
        _note_extra(obj, used | set(_TOOL_KEYS), notes)
        return PreferenceRecord(prompt, answer if label else None, None if label else answer, tools=tools)
    cname, chosen = _pick(obj, low, "chosen")
    rname, rejected = _pick(obj, low, "rejected")
    used = {"chosen", "rejected", "system"}
    if fmt == "preference-transcript":
        whole = []
        for name, val in ((cname, chosen), (rname, rejected)):
            if isinstance(val, str):
                msgs, where = _hh_messages(val, name), None
            else:
                msgs, where = _convert_messages(val, name, notes=notes)
            p, a = _split_answer(msgs, name)
            whole.append((p, a, where[:len(p)] if where else [name] * len(p), where[len(p):] if where else
                          [name] * len(a)))
        (prompt, good, pw, gw), (prompt_r, bad, _pw, bw) = whole
        if prompt != prompt_r:
            raise _Invalid(rname, "starts from a different conversation than chosen",
                           "chosen and rejected must hold the same conversation up to the last answer")
    else:
        if fmt == "preference-prompt":
            pname, pval = _pick(obj, low, "prompt")
            prompt, pw = _prompt_messages(pval, pname, notes) if _is_message_list(pval) else \
                ([{"role": "user", "content": _text_field(obj, pname, None, notes=notes)}], [pname])
            used.add("prompt")
        elif fmt == "preference-alpaca":
            instr = _text_field(obj, "instruction", None, required=False, notes=notes)
            extra = _text_field(obj, "input", None, required=False, notes=notes)
            if not (instr and instr.strip()):
                if not (extra and extra.strip()):
                    raise _Invalid("instruction", "is empty", "write the instruction (or the input), or remove "
                                                              "this example")
                instr, extra = extra, None
            prompt = [{"role": "user", "content": instr if not (extra and extra.strip()) else f"{instr}\n\n{extra}"}]
            pw = ["instruction"]
            used |= {"instruction", "input"}
        else:
            mname, msgs = _pick(obj, low, "conversations" if fmt == "preference-sharegpt" else "messages")
            prompt, pw = _convert_messages(msgs, mname, sharegpt=fmt == "preference-sharegpt", notes=notes)
            used.add(_norm_key(mname))
        good = _answer_messages(chosen, cname, notes)
        bad = _answer_messages(rejected, rname, notes)
        gw, bw = _answer_wheres(chosen, cname, good), _answer_wheres(rejected, rname, bad)
    prompt, pw = _with_system(prompt, system, sname or "system"), _system_where(prompt, pw, system, sname)
    _check_order(prompt + good, cname, pw + gw)
    _check_order(prompt + bad, rname, pw + bw)
    tools = _preference_tools(obj, [(prompt + good, pw + gw), (prompt + bad, pw + bw)], notes)
    _note_extra(obj, used | set(_TOOL_KEYS), notes)
    return PreferenceRecord(prompt, good, bad, tools=tools)


def _answer_wheres(val: Any, fld: str, answer: list[dict]) -> list[str]:
    """Where each message of an answer read by :func:`_answer_messages` is in the file."""
    if isinstance(val, list):
        return [f"{fld}[{j}].role" for j in range(len(answer))]
    return [fld] * len(answer)


def _system_where(prompt: list[dict], pw: list[str], system: Any, sname: str | None) -> list[str]:
    """``pw`` for the prompt as :func:`_with_system` returns it (a system message put in front)."""
    if system is None or (isinstance(system, str) and not system.strip()) or (prompt and prompt[0]["role"] == "system"):
        return pw
    return [sname or "system"] + pw


def _preference_tools(obj: dict, sides: list[tuple[list[dict], list[str]]], notes: dict | None
                      ) -> list[dict] | None:
    """The functions a preference example offers (``tools``, as on chat records). Each side, the prompt
    and one answer with where each message is in the file, has its calls checked against them and its
    tool results against the calls before them; the example counts once among those that call
    functions they do not declare."""
    tools = _tools_of(obj)
    side_notes: dict = {}
    for msgs, wheres in sides:
        _check_tools(msgs, tools, wheres, "prompt", side_notes)
    if side_notes.get("calls_without_tools"):
        _note(notes, "calls_without_tools")
    return tools


_FORMAT_HINT = ("Use the fields messages, conversations, instruction/output, input/output, prompt/completion, "
                "question/answer or text (or map your field names to these, or give user and assistant templates).")
