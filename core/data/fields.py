"""One example's fields: case-insensitive look-ups, text checks, notes, think blocks, media refused."""
from __future__ import annotations

import json
from typing import Any


def _json_loads(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    except RecursionError:
        return None, "not usable JSON (nested too deeply)"
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        return None, f"not usable JSON ({exc})"


# message fields the loader reads; anything else on a message is counted as ignored
_ROLE_KEYS = ("role", "from")
_CONTENT_KEYS = ("content", "value")
# (an empty tool_calls / function_call: a turn without calls, as OpenAI's exports write it)
_MESSAGE_KEYS = set(_ROLE_KEYS + _CONTENT_KEYS + ("weight", "reasoning_content", "tool_calls", "function_call"))
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def _norm_key(k: Any) -> str:
    return str(k).strip().lower()


def _find(obj: dict, key: str, mapping: dict[str, str] | None) -> tuple[str, Any]:
    """Case-insensitive field lookup honouring a user mapping: (the field's name in the file, value)."""
    wanted = _norm_key(mapping[key]) if mapping and key in mapping else key
    for k, v in obj.items():
        if _norm_key(k) == wanted:
            return str(k), v
    return (mapping[key] if mapping and key in mapping else key), None


class _Invalid(Exception):
    def __init__(self, fld: str | None, message: str, hint: str = ""):
        super().__init__(message)
        self.field, self.message, self.hint = fld, message, hint


def _check_text(val: str, fld: str) -> None:
    try:
        val.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Invalid(fld, f"holds an invalid character ({val[exc.start]!r}, an unpaired surrogate)",
                       "remove it; the text was probably cut in the middle of an emoji") from None


def _as_json_text(val: Any) -> str:
    """An object or list written the way a user's script would: ``json.dumps`` on one line."""
    try:
        return json.dumps(val, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):  # a Parquet cell may hold bytes or dates
        return json.dumps(val, ensure_ascii=False, default=str)


def _note(notes: dict | None, kind: str, value: Any = 1) -> None:
    """Record one change made to this example (counted for the dataset only if the example is valid)."""
    if notes is None:
        return
    if isinstance(value, (set, frozenset)):
        notes.setdefault(kind, set()).update(value)
    else:
        notes[kind] = notes.get(kind, 0) + value


def _text_field(obj, key, mapping, required=True, *, answer=False, notes=None) -> str | None:
    name, val = _find(obj, key, mapping)
    if val is None or (isinstance(val, float) and val != val):
        if required:
            raise _Invalid(name, "is missing", f"add a '{name}' value")
        return None
    if isinstance(val, (dict, list)):  # structured data: the model learns the JSON text
        val = _as_json_text(val)
        _note(notes, "json_answer" if answer else "json_prompt")
    if not isinstance(val, str):
        raise _Invalid(name, f"must be text, found {_type_name(val)}", "put the value in quotes")
    _check_text(val, name)
    if required and not val.strip():
        raise _Invalid(name, "is empty", f"write the {key}, or remove this example")
    return val


def _type_name(val: Any) -> str:
    return {dict: "an object", list: "a list", bool: "true/false", int: "a number", float: "a number",
            type(None): "null"}.get(type(val), type(val).__name__)


def _lowered(m: dict) -> dict[str, Any]:
    """{normalised key: the first key in ``m`` with it}: one pass, for several look-ups."""
    out: dict[str, Any] = {}
    for k in m:
        out.setdefault(k if type(k) is str and k.islower() and not k[:1].isspace() and not k[-1:].isspace()
                       else _norm_key(k), k)
    return out


def _pick(m: dict, low: dict[str, Any], *names: str) -> tuple[str | None, Any]:
    """Like :func:`_ci` over a :func:`_lowered` index."""
    for want in names:
        k = low.get(want)
        if k is not None or want in low:
            return str(k), m[k]
    return None, None


def _ci(m: dict, *names: str) -> tuple[str | None, Any]:
    """First of ``names`` present in ``m`` (case-insensitive): (key, value)."""
    for want in names:
        for k, v in m.items():
            if _norm_key(k) == want:
                return str(k), v
    return None, None


def _split_think(content: str, where: str) -> tuple[str | None, str]:
    """(reasoning, answer) of an assistant text that starts with a ``<think>`` block, else (None, content).

    The split is the one Qwen3's chat template makes: reasoning without its surrounding
    newlines, the answer without the newlines that follow ``</think>``."""
    body = content.lstrip()
    if not body.startswith(THINK_OPEN):
        return None, content
    end = body.find(THINK_CLOSE)
    if end < 0:
        raise _Invalid(where, "starts a <think> block that is never closed",
                       "end the reasoning with </think> before the answer")
    reasoning = body[len(THINK_OPEN):end].strip("\n")
    return reasoning, body[end + len(THINK_CLOSE):].lstrip("\n")


def _content_text(content: Any, where: str, role: str, notes: dict | None) -> str:
    if isinstance(content, list):
        for i, p in enumerate(content):
            t = p.get("type") if isinstance(p, dict) else None
            if isinstance(t, str) and t in _MEDIA_PARTS:
                raise _media_error(f"{where}[{i}]", _MEDIA_PARTS[t], f"has a content part of type '{t}', which is")
    if isinstance(content, list) and content and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        _note(notes, "content_parts")  # OpenAI content parts, text only
        return "".join(p["text"] for p in content)
    if isinstance(content, dict) and role == "assistant":
        _note(notes, "json_answer")
        return _as_json_text(content)
    if not isinstance(content, str):
        raise _Invalid(where, f"must be text, found {_type_name(content)}",
                       "join the text into one string" if isinstance(content, list) else "put the text in quotes")
    return content


# Images, video and audio: Tuneloom trains text-only models, so an example that carries them is refused
_MEDIA_KEYS = {"images": "images", "image": "an image", "image_url": "an image", "image_path": "an image",
               "image_paths": "images", "img": "an image", "videos": "videos", "video": "a video",
               "video_url": "a video", "video_path": "a video", "audios": "audio", "audio": "audio",
               "audio_url": "audio", "audio_path": "audio", "audio_filepath": "audio"}
_MEDIA_PARTS = {"image_url": "an image", "image": "an image", "input_image": "an image", "input_audio": "audio",
                "audio": "audio", "audio_url": "audio", "video": "a video", "video_url": "a video"}
_MEDIA_TOKENS = (("<image>", "an image"), ("<video>", "a video"), ("<audio>", "audio"))
MEDIA_HINT = "remove the examples that need them; Tuneloom fine-tunes text-only chat models"


class _Media(_Invalid):
    """An example that carries images, video or audio."""


def _media_error(fld: str, what: str, how: str) -> _Media:
    return _Media(fld, f"{how} {what}: the model reads text only, so it would learn the answer without "
                       f"{'them' if what in ('images', 'videos') else 'it'}", MEDIA_HINT)


def _media_field(obj: Any) -> _Media | None:
    """An image / video / audio field of an example (``images``, ``image``, ``videos``, ``audio``...)."""
    if not isinstance(obj, dict):
        return None
    for k, v in obj.items():
        what = _MEDIA_KEYS.get(k if type(k) is str and k.islower() else _norm_key(k))
        if what and v not in (None, "", [], {}) and not (isinstance(v, float) and v != v):
            return _media_error(str(k), what, "carries")
    return None


def _media_token(msgs: list[dict]) -> bool:
    """Whether a message holds an <image> / <video> / <audio> token (cheap: most texts have no '<')."""
    for m in msgs:
        c = m.get("content")
        if isinstance(c, str) and "<" in c and ("<image>" in c or "<video>" in c or "<audio>" in c):
            return True
    return False


def _media_in(obj: Any) -> _Media | None:
    """The first image / video / audio an example carries: a field, a content part or a token."""
    found = _media_field(obj)
    if found is not None or not isinstance(obj, dict):
        return found

    def walk(val, path, depth=0):
        if depth > 6:
            return None
        if isinstance(val, str):
            if "<" in val:
                for tok, what in _MEDIA_TOKENS:
                    if tok in val:
                        return _media_error(path, what, f"holds a {tok} token, which stands for")
            return None
        if isinstance(val, dict):
            t = val.get("type")
            if isinstance(t, str) and t in _MEDIA_PARTS:
                return _media_error(path, _MEDIA_PARTS[t], f"has a content part of type '{t}', which is")
            items = val.items()
        elif isinstance(val, list):
            items = enumerate(val)
        else:
            return None
        for k, v in items:
            found = walk(v, f"{path}[{k}]" if isinstance(k, int) else (f"{path}.{k}" if path else str(k)), depth + 1)
            if found is not None:
                return found
        return None
    return walk(obj, "")
