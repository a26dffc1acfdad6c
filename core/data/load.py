"""One file read as a dataset, and what normalisation changed or left out, counted."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable

from core.data import limits
from core.data.fields import (
    MEDIA_HINT, _ROLE_KEYS, _Invalid, _Media, _ci, _lowered, _media_field, _media_in, _media_token, _norm_key,
    _note, _type_name,
)
from core.data.formats import (
    FORMATS, PREFERENCE_FORMATS, TEMPLATE_FORMAT, _FORMAT_HINT, _is_message_list, detect_format, is_plain_text,
    normalise, normalise_preference, record_tools,
)
from core.data.read import read_rows
from core.data.records import ChatRecord, DatasetError, DatasetIssue, DatasetNote, PreferenceRecord
from core.data.templates import RecordTemplate, _missing_columns_error, _placeholders


def _apply_system(msgs: list[dict], system: str | None, notes: dict | None) -> list[dict]:
    """A system prompt given for the whole dataset: added where the example has none."""
    if not system:
        return msgs
    if is_plain_text(msgs):
        _note(notes, "system_not_text")
        return msgs
    if msgs[0]["role"] == "system":
        if msgs[0]["content"] != system:
            _note(notes, "system_kept")
        return msgs
    _note(notes, "system_added")
    return [{"role": "system", "content": system}] + msgs


_PROMPT_KEYS = ("prompt", "query", "problem", "question", "instruction")
_ANSWER_KEYS = ("ground_truth", "answer", "solution", "target", "reference", "label")
_RL_HINT = ("supervised fine-tuning learns the answer the model should give: add it (e.g. a completion field), "
            "or drop a file of conversations; prompt sets like this one are for reinforcement learning")


def _prompt_only(obj: Any) -> tuple[str, str] | None:
    """(field, message) for an example that holds a prompt and no answer (an RL prompt set), else None."""
    if not isinstance(obj, dict):
        return None
    low = _lowered(obj)
    pkey = next((low[k] for k in _PROMPT_KEYS if k in low), None)
    if pkey is None:
        return None
    val = obj[pkey]
    if not (isinstance(val, str) and val.strip()) and not _is_message_list(val):
        return None
    if _is_message_list(val) and any(_ci(m, *_ROLE_KEYS)[1] in ("assistant", "gpt") for m in val):
        return None
    nested = ""
    for k, v in obj.items():  # verl / GRPO sets keep a reference answer for the reward function
        if isinstance(v, dict):
            sub = next((str(s) for s in v if _norm_key(s) in _ANSWER_KEYS), None)
            if sub is not None:
                nested = f"; the reference answer in '{k}.{sub}' is for a reward function, not an answer to learn"
                break
    return str(pkey), f"prompts without answers: this looks like RL data (a prompt and no answer to learn{nested})"


def _rl_error(file: str, which: str, first) -> DatasetError:
    line, (_fld, message) = first
    return DatasetError(f"{file}: {message} - {which} {'has' if which.startswith('its one') else 'have'} a prompt "
                        f"and no answer (first at line {line}).", _RL_HINT[0].upper() + _RL_HINT[1:] + ".", file)


def load_file(path: Path, mapping=None, cancel=None, *, name: str | None = None, on_bytes=None,
              template: RecordTemplate | None = None, system: str | None = None,
              notes: "NoteCounter | None" = None, fill: dict[str, str] | None = None,
              adapter: Callable[[Any], Any] | None = None) -> tuple[list[ChatRecord], list[DatasetIssue], str, int]:
    """Read and validate one file: (records, issues, format, examples seen).

    The file's format is the one most of its examples have; an example in another format
    is a problem (mixed formats), and one in no known format is checked against the
    file's format so that the problem names the missing field. With a ``template`` every
    example is read through it. ``notes`` counts what was changed or left out."""
    path = Path(path)
    scan = _FileScan(name or path.name, mapping, template, system, fill)
    for line, obj, err in read_rows(path, cancel, name=scan.file, mapping=mapping, on_bytes=on_bytes,
                                    template=template, info=scan.info):
        scan.total += 1
        if adapter is not None and err is None:
            obj = adapter(obj)
        scan.add(line, obj, err)
    scan.refuse_unusable()
    fmt = scan.file_format()
    records, issues = scan.settle(fmt, notes)
    return records, issues, fmt, scan.total


class _FileScan:
    """One pass over a file's rows (:func:`load_file`): every row kept as (line, format or None, record,
    issue, raw object kept for an unrecognised example, or the record's notes), counts on the side."""

    def __init__(self, file: str, mapping, template: RecordTemplate | None, system: str | None,
                 fill: dict[str, str] | None):
        self.file, self.mapping, self.template, self.system, self.fill = file, mapping, template, system, fill
        self.rows: list[tuple[int | None, str | None, ChatRecord | None, DatasetIssue | None, Any]] = []
        self.fmt_count: Counter = Counter()
        self.first_fmt: dict[str, int] = {}
        self.kept = 0  # problems kept while reading: memory stays bounded, the rest are only counted
        self.total = self.recognised = self.media_count = self.prompt_only = 0
        self.rl_first: tuple[int | None, tuple[str, str]] | None = None
        self.media_first: tuple[int | None, _Media] | None = None
        self.fields_seen: Counter = Counter()
        self.columns: dict[str, None] = {}  # every field name seen, in order (for template errors)
        self.info: dict = {}

    def _keep(self) -> bool:
        keep = self.kept < 2 * limits.MAX_ISSUES
        self.kept += keep
        return keep

    def add(self, line: int | None, obj: Any, err: str | None) -> None:
        """One row as read_rows gave it (``total`` already counts it)."""
        if self.template is not None and isinstance(obj, dict) and err is None:
            this = TEMPLATE_FORMAT
            if len(self.columns) < 1000:
                self.columns.update(dict.fromkeys(map(str, obj)))
        else:
            this = None if err else detect_format(obj, self.mapping)
        media = _media_field(obj) if err is None else None
        if media is not None:  # refused whatever its format: the model would learn answers without the picture
            self.recognised += 1
            self.media_count += 1
            self.media_first = self.media_first or (line, media)
            keep = self._keep()
            self.rows.append((line, None, None, DatasetIssue(self.file, line, media.field, media.message, media.hint)
                              if keep else None, None))
        elif this is None:
            self._unrecognised(line, obj, err)
        else:
            self._recognised(line, obj, this)

    def _unrecognised(self, line: int | None, obj: Any, err: str | None) -> None:
        file = self.file
        rl = _prompt_only(obj) if err is None else None
        if rl is not None:
            self.prompt_only += 1
            self.rl_first = self.rl_first or (line, rl)
        if isinstance(obj, dict):
            self.fields_seen.update(map(str, obj))
        if self.recognised == 0 and self.total >= limits.JUNK_ROWS:
            if self.prompt_only == self.total:
                raise _rl_error(file, f"none of its first {self.total} examples", self.rl_first)
            seen = [k for k, _ in self.fields_seen.most_common(8)]
            raise DatasetError(f"{file}: none of its first {self.total} examples has a known format"
                               + (f" (fields seen: {seen})." if seen else "."), _FORMAT_HINT, file)
        if rl is not None:
            keep = self._keep()
            self.rows.append((line, None, None, DatasetIssue(file, line, rl[0], rl[1], _RL_HINT) if keep else None,
                              obj if keep else None))
            return
        if err:
            issue = DatasetIssue(file, line, None, err, "fix this line or remove it")
        elif isinstance(obj, dict):
            issue = DatasetIssue(file, line, None, f"unrecognised example (fields: {sorted(map(str, obj))[:8]})",
                                 _FORMAT_HINT)
        else:
            issue = DatasetIssue(file, line, None, f"an example must be an object with named fields, "
                                                   f"found {_type_name(obj)}", _FORMAT_HINT)
        keep = self._keep()
        self.rows.append((line, None, None, issue if keep else None, obj if keep and isinstance(obj, dict) else None))

    def _recognised(self, line: int | None, obj: Any, this: str) -> None:
        file, system = self.file, self.system
        self.recognised += 1
        self.fmt_count[this] += 1
        self.first_fmt.setdefault(this, self.total)
        rec_notes: dict = {}
        try:
            if this in PREFERENCE_FORMATS:
                rec: ChatRecord | PreferenceRecord = normalise_preference(obj, this, notes=rec_notes)
                rec.file, rec.line = file, line
                rec.prompt = _apply_system(rec.prompt, system, rec_notes)
            else:
                msgs = _apply_system(normalise(obj, this, self.mapping, template=self.template, notes=rec_notes),
                                     system, rec_notes)
                rec = ChatRecord(msgs, file, line, record_tools(obj, this, self.mapping))
            if _media_token(rec.messages if isinstance(rec, ChatRecord) else rec.prompt + (rec.chosen or rec.rejected)):
                raise _media_in(obj) or _Media(None, "holds an <image>, <video> or <audio> token", MEDIA_HINT)
            _placeholders(rec, self.fill, rec_notes)
            self.rows.append((line, this, rec, None, rec_notes))  # notes count once valid
        except _Invalid as inv:
            keep = self._keep()
            if isinstance(inv, _Media):  # said as it is, whatever the file's format turns out to be
                self.media_count += 1
                self.media_first = self.media_first or (line, inv)
                self.fmt_count[this] -= 1
                this = None
            self.rows.append((line, this, None, DatasetIssue(file, line, inv.field, inv.message, inv.hint)
                              if keep else None, None))

    def refuse_unusable(self) -> None:
        """Raise :class:`DatasetError` for a file that cannot be used at all."""
        file, total = self.file, self.total
        if total == 0:
            raise DatasetError(f"{file} holds no examples.", "Add at least one example.", file)
        if self.template is not None and self.columns:
            missing = self.template.missing(self.columns)
            if missing:  # no example has the column: the template is wrong, not the examples
                raise _missing_columns_error(file, self.template, missing, list(self.columns))
        if self.media_first is not None and not any(r[2] is not None for r in self.rows):
            every = self.media_count == total
            mline, media = self.media_first
            raise DatasetError(f"{file}: {'every example' if every else f'{self.media_count} of its {total} examples'} "
                               f"carr{'ies' if every else 'y'} images, video or audio (line {mline}, "
                               f"'{media.field}' {media.message}).",
                               "Tuneloom fine-tunes text-only chat models, which cannot see or hear them; drop a file "
                               "of text conversations instead.", file)
        if self.recognised == 0 and self.prompt_only == total:
            raise _rl_error(file, f"all {total} of its examples" if total > 1 else "its one example", self.rl_first)
        if self.recognised == 0:
            first = next((r[3] for r in self.rows if r[3] is not None), None)
            if first is not None and first.message.startswith("not valid JSON"):
                raise DatasetError(f"{file}: no example in it can be read ({first.message} at line {first.line}).",
                                   "Fix the file, or check that it is the right one.", file)
            seen = [k for k, _ in self.fields_seen.most_common(8)]
            raise DatasetError(f"{file}: no example in it has a known format"
                               + (f" (fields seen: {seen})." if seen else "."), _FORMAT_HINT, file)

    def file_format(self) -> str:
        """The format most examples have (the first seen on a tie); formats of media examples not counted."""
        self.fmt_count = +self.fmt_count
        fmt_count, first_fmt = self.fmt_count, self.first_fmt
        return max(fmt_count, key=lambda f: (fmt_count[f], -first_fmt[f])) if fmt_count else "none"

    def settle(self, fmt: str, notes: "NoteCounter | None") -> tuple[list[ChatRecord], list[DatasetIssue]]:
        """(records, issues) once the file's format is known: other formats are problems, and an
        unrecognised example says what it lacks to be in the file's format."""
        file = self.file
        records: list[ChatRecord] = []
        issues: list[DatasetIssue] = []
        dropped = 0
        for line, this, rec, issue, obj in self.rows:
            if this is not None and this != fmt:
                issues.append(DatasetIssue(file, line, None,
                                           f"this example is in the '{this}' format but the file's other "
                                           f"{self.fmt_count[fmt]} examples are '{fmt}' (mixed formats in one file)",
                                           "keep one format per file: convert or remove this example"))
            elif rec is not None:
                records.append(rec)
                if notes is not None:
                    notes.add(obj, (file, line))
            elif issue is None:
                dropped += 1
            else:
                issues.append(self._explained(issue, obj, fmt, line))
        if notes is not None and self.info.get("text_rule"):
            notes.file_notes.append(DatasetNote("text_rule", self.total, self.info["text_rule"], [file]))
        issues.sort(key=lambda i: (i.line is None, i.line or 0))
        if len(issues) > limits.MAX_ISSUES:
            dropped += len(issues) - limits.MAX_ISSUES
            issues = issues[:limits.MAX_ISSUES]
        if dropped:
            issues.append(DatasetIssue(file, None, None, f"... and {dropped} more problems in this file, not listed",
                                       "fix the ones above first; the rest are often the same mistake"))
        return records, issues

    def _explained(self, issue: DatasetIssue, obj: Any, fmt: str, line: int | None) -> DatasetIssue:
        rl_row = issue.message.startswith("prompts without answers")
        if obj is not None and (not rl_row or _norm_key(issue.field) in dict(FORMATS).get(fmt, ())):
            # say what this example lacks to be in the file's format (a prompt / completion file's line
            # without its completion is a missing completion, not RL data)
            try:
                normalise(obj, fmt, self.mapping, template=self.template)
            except _Invalid as inv:
                return DatasetIssue(self.file, line, inv.field, inv.message, inv.hint)
        return issue


# ---------------------------------------------------------------------------
# What normalisation changed or left out, counted
# ---------------------------------------------------------------------------

class NoteCounter:
    """Adds up the per-example notes of :func:`normalise` into the dataset's notes."""

    def __init__(self):
        self.examples: Counter = Counter()  # kind -> examples it applies to
        self.items: Counter = Counter()  # kind -> occurrences (messages, turns)
        self.names: dict[str, Counter] = {}  # kind -> field name -> examples
        self.where: dict[str, list] = {}  # kind -> the first (file, line) it applies to
        self.fill: dict[str, str] = {}  # the placeholders the user asked to fill
        self.file_notes: list[DatasetNote] = []  # about a whole file (how a text file was read)

    LINES_KEPT = 20

    def add(self, rec_notes: dict | None, where: tuple[str, int | None] | None = None) -> None:
        for kind, val in (rec_notes or {}).items():
            self.examples[kind] += 1
            if where is not None and kind == "placeholders":
                kept = self.where.setdefault(kind, [])
                if len(kept) < self.LINES_KEPT:
                    kept.append(where)
            if isinstance(val, set):
                self.names.setdefault(kind, Counter()).update(val)
            else:
                self.items[kind] += int(val)

    def notes(self) -> list["DatasetNote"]:
        out = list(self.file_notes)

        def ex(kind):
            n = self.examples[kind]
            return f"{n} example{'s' if n != 1 else ''}"

        def verb(kind, one, many):
            return one if self.examples[kind] == 1 else many

        def turns(kind):
            n = self.items[kind]
            return f"{n} assistant turn{'s' if n != 1 else ''}"

        for kind, what in (("extra_fields", "extra field"), ("message_fields", "extra message field")):
            names = self.names.get(kind)
            if names:
                shown = sorted(names)
                listed = ", ".join(f"`{k}`" for k in shown[:12]) + (f" and {len(shown) - 12} more" if len(shown) > 12 else "")
                out.append(DatasetNote(kind, self.examples[kind],
                                       f"{len(shown)} {what}{'s' if len(shown) != 1 else ''} ignored: {listed} "
                                       f"(in {ex(kind)})", shown))
        slots = self.names.get("placeholders")
        if slots:
            where = self.where.get("placeholders", [])
            by_file: dict[str, list[str]] = {}
            for f, n in where:
                by_file.setdefault(f, []).append(str(n))
            more = self.examples["placeholders"] - len(where)
            at = "; ".join(f"{f} line{'s' if len(ns) > 1 else ''} {', '.join(ns)}" for f, ns in by_file.items()) + \
                (f" and {more} more" if more > 0 else "")
            listed = ", ".join(f"{k} ({slots[k]})" for k in sorted(slots))
            out.append(DatasetNote("placeholders", self.examples["placeholders"],
                                   f"unfilled placeholders in the answers of {ex('placeholders')}: {listed} ({at}): "
                                   "the model would learn them as written; fill them with --fill NAME=VALUE (the "
                                   "Data page: Fill placeholders), or edit the file",
                                   sorted(slots), list(where)))
        filled = self.names.get("placeholders_filled")
        if filled:
            out.append(DatasetNote("placeholders_filled", self.examples["placeholders_filled"],
                                   f"placeholders filled in {ex('placeholders_filled')}: "
                                   + ", ".join(f"{k} = {self.fill.get(k, '')!r}" for k in sorted(filled)),
                                   sorted(filled)))
        unused = sorted(set(self.fill) - set(filled or ()))
        if unused:
            out.append(DatasetNote("fill_unused", 0, "nothing to fill for "
                                   + ", ".join(f"--fill {k}" for k in unused) + ": no {{" + unused[0] + "}} or {"
                                   + unused[0] + "} in the data" + (" (nor the others)" if len(unused) > 1 else ""),
                                   unused))
        texts = {
            "json_answer": lambda: f"answers are JSON objects: the model will learn to write JSON ({ex('json_answer')}; "
                                   "objects and lists are written as compact JSON text)",
            "json_prompt": lambda: f"prompts hold JSON objects or lists in {ex('json_prompt')}: written as compact "
                                   "JSON text",
            "think_blocks": lambda: f"{ex('think_blocks')} {verb('think_blocks', 'starts', 'start')} an answer with a "
                                    "<think> block: kept as the answer's reasoning",
            "content_parts": lambda: f"message content given as a list of text parts in {ex('content_parts')}: "
                                     "the parts are joined into one text",
            "prompt_context": lambda: f"{turns('prompt_context')} in the prompts of {ex('prompt_context')} "
                                      f"{'is' if self.items['prompt_context'] == 1 else 'are'} context: shown to "
                                      "the model, not trained (weight 0)",
            "untrained_turns": lambda: f"{turns('untrained_turns')} in {ex('untrained_turns')} "
                                       f"{'has' if self.items['untrained_turns'] == 1 else 'have'} weight 0: shown to "
                                       "the model, not trained",
            "input_as_instruction": lambda: f"{ex('input_as_instruction')} {verb('input_as_instruction', 'has', 'have')} "
                                            "an empty instruction: the input is the user's message (as LLaMA-Factory "
                                            "and Unsloth read it)",
            "calls_without_tools": lambda: f"{ex('calls_without_tools')} call{verb('calls_without_tools', 's', '')} "
                                           f"functions but declare{verb('calls_without_tools', 's', '')} no tools: the "
                                           "model learns the calls without seeing the function list (add a `tools` "
                                           "list to each example)",
            "system_added": lambda: f"the system prompt was added to {ex('system_added')}",
            "system_kept": lambda: f"{ex('system_kept')} {verb('system_kept', 'has its', 'have their')} own system "
                                   "message: kept instead of the dataset's system prompt",
            "system_not_text": lambda: f"{ex('system_not_text')} {verb('system_not_text', 'is', 'are')} plain text "
                                       "(no chat turns): no system prompt added",
        }
        for kind, text in texts.items():
            if self.examples[kind]:
                out.append(DatasetNote(kind, self.examples[kind], text()))
        return out
