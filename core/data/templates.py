"""Templates: any table or field layout read as chat records; placeholders in answers."""
from __future__ import annotations

from typing import Any, Iterable

from core.data.fields import _Invalid, _as_json_text, _check_text, _ci, _norm_key, _note, _type_name
from core.data.records import ChatRecord, DatasetError, PreferenceRecord


# ---------------------------------------------------------------------------
# Templates: any table or field layout -> chat records
# ---------------------------------------------------------------------------

class RecordTemplate:
    """User and assistant messages written from an example's fields: ``"Pokemon name: {name}"``.

    ``{column}`` is replaced by that field's value (text as is; objects and lists as JSON;
    numbers as written); ``{{`` and ``}}`` are literal braces. Column names match exactly,
    else ignoring letter case. Nothing else of Python's format syntax is allowed, so a
    template cannot reach attributes or run code."""

    def __init__(self, user: str, assistant: str):
        self.user, self.assistant = user, assistant
        self._parts = {"user": self._parse(user, "user"), "assistant": self._parse(assistant, "assistant")}

    @staticmethod
    def _parse(text: str, which: str) -> list[tuple[str, str | None]]:
        import string

        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f"The {which} template is empty.",
                               f"Write the {which} message with column names in braces, e.g. 'Pokemon name: {{name}}'.")
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise DatasetError(f"The {which} template {text!r} cannot be read ({exc}).",
                               "Put column names in braces, e.g. {name}; write {{ and }} for literal braces.") from None
        out = []
        for literal, fld, spec, conv in parsed:
            if literal:
                out.append((literal, None))
            if fld is None:
                continue
            if not fld.strip() or spec or conv:
                shown = "{" + fld + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
                raise DatasetError(f"The {which} template has {shown}, which is not a column name.",
                                   "Write {column} with the column's name only; {{ and }} for literal braces.")
            out.append(("", fld))
        return out

    def fields(self) -> list[str]:
        seen: dict[str, None] = {}
        for parts in self._parts.values():
            for _, fld in parts:
                if fld is not None:
                    seen.setdefault(fld)
        return list(seen)

    def missing(self, columns: Iterable[str]) -> list[str]:
        cols = list(map(str, columns))
        exact, folded = set(cols), {_norm_key(c) for c in cols}
        return [f for f in self.fields() if f not in exact and _norm_key(f) not in folded]

    def _render(self, which: str, obj: dict, notes: dict | None) -> str:
        out = []
        for literal, fld in self._parts[which]:
            if fld is None:
                out.append(literal)
                continue
            if fld in obj:
                val = obj[fld]
            else:
                key, val = _ci(obj, _norm_key(fld))
                if key is None:
                    raise _Invalid(fld, f"has no field '{fld}' (the {which} template uses it); its fields are "
                                        f"{sorted(map(str, obj))[:12]}", "add the field, or fix the template")
            if val is None or (isinstance(val, float) and val != val):
                val = ""
            elif isinstance(val, (dict, list)):
                _note(notes, "json_answer" if which == "assistant" else "json_prompt")
                val = _as_json_text(val)
            elif not isinstance(val, str):
                val = _as_json_text(val)  # numbers and true/false as JSON writes them
            _check_text(val, fld)
            out.append(val)
        return "".join(out)

    def apply(self, obj: Any, notes: dict | None = None) -> list[dict]:
        if not isinstance(obj, dict):
            raise _Invalid(None, f"an example must be an object with named fields, found {_type_name(obj)}",
                           "templates read named fields (CSV columns or JSON object keys)")
        msgs = []
        for which in ("user", "assistant"):
            text = self._render(which, obj, notes)
            if not text.strip():
                cols = [f for _, f in self._parts[which] if f is not None]
                raise _Invalid(cols[0] if cols else None, f"the {which} template gives an empty text "
                                                         f"(the field{'s' if len(cols) > 1 else ''} "
                                                         f"{', '.join(cols)} {'are' if len(cols) > 1 else 'is'} empty)",
                               "fill the field, or remove this example")
            msgs.append({"role": which, "content": text})
        return msgs

    def __repr__(self) -> str:
        return f"RecordTemplate(user={self.user!r}, assistant={self.assistant!r})"


def make_template(user_template: str | None, assistant_template: str | None) -> RecordTemplate | None:
    """The templates given, checked; None when neither is."""
    if user_template is None and assistant_template is None:
        return None
    if not user_template or not assistant_template:
        which = "assistant" if user_template else "user"
        raise DatasetError(f"A user template needs an assistant template and the other way round: the {which} "
                           "template is missing.",
                           "Give both, e.g. --user-template 'Pokemon name: {name}' --assistant-template '{types}'.")
    return RecordTemplate(user_template, assistant_template)


def _missing_columns_error(file: str, template: RecordTemplate, missing: list[str], columns: list[str]
                           ) -> DatasetError:
    which = [w for w in ("user", "assistant") if any(f in missing for _, f in template._parts[w])]
    names = ", ".join(f"'{m}'" for m in missing)
    return DatasetError(f"{file}: the {' and '.join(which)} template{'s' if len(which) > 1 else ''} name"
                        f"{'' if len(which) > 1 else 's'} the column{'s' if len(missing) > 1 else ''} {names}, "
                        f"which {'do' if len(missing) > 1 else 'does'} not exist; the columns are {columns[:30]}.",
                        "Use one of these column names in braces, e.g. {" + (columns[0] if columns else "name") + "}.",
                        file)


# ---------------------------------------------------------------------------
# Placeholders ({{name}}) in answers: counted, filled on request
# ---------------------------------------------------------------------------

_SLOT = None


def _slot_re():
    import re

    global _SLOT
    if _SLOT is None:  # {{name}} / {{ name }} (LLaMA-Factory's identity set) and {name}; not LaTeX's \frac{a}{b},
        # x^{n} or \text{name}, nor ${var}: a single-brace slot follows a space, punctuation or the start
        _SLOT = re.compile(r"\{\{\s*([A-Za-z_][\w.\-]*)\s*\}\}|(?<![\\\w}^_{$])\{([A-Za-z_]\w*)\}(?!\})")
    return _SLOT


def _fill_text(text: str, fill: dict[str, str] | None, filled: set[str], found: set[str], answer: bool) -> str:
    if "{" not in text:
        return text
    slot = _slot_re()

    def sub(m):
        name = m.group(1) or m.group(2)
        if fill and name in fill:
            filled.add(name)
            return fill[name]
        if answer:
            found.add("{{" + name + "}}" if m.group(1) else "{" + name + "}")
        return m.group(0)
    return slot.sub(sub, text)


def _placeholders(rec: "ChatRecord | PreferenceRecord", fill: dict[str, str] | None, notes: dict) -> None:
    """Fill the ``fill`` slots in every message, and note the slots left in the answers."""
    filled: set[str] = set()
    found: set[str] = set()
    groups = [rec.messages] if isinstance(rec, ChatRecord) else [rec.prompt, rec.chosen or [], rec.rejected or []]
    for msgs in groups:
        for m in msgs:
            c = m.get("content")
            if isinstance(c, str) and "{" in c:
                m["content"] = _fill_text(c, fill, filled, found, m.get("role") == "assistant")
    if filled:
        _note(notes, "placeholders_filled", filled)
    if found:
        _note(notes, "placeholders", found)
