"""Datasets: read what users drop, detect the format, validate, normalise to chat records.

Files: JSONL (``.jsonl``/``.ndjson``), JSON (an array of examples, an object holding one
such array, or JSONL saved as ``.json``), CSV/TSV (header row; quoted fields may hold
newlines; ``;``-separated CSV as Excel writes it in some locales), plain text (``.txt``:
documents separated by blank lines, or one per line when it has none and its lines are long;
``.md``: one document), Parquet (with the optional
``pyarrow``). Several files at once, and folders; a folder (or a set of files) with
``train``/``valid``(/``test``) files is the split mlx-lm uses.

Encodings: UTF-8 with or without BOM, UTF-16 with BOM; LF, CRLF or CR line ends.
Anything else is refused with the byte offset of the first bad byte. Files are
streamed: rejecting a multi-GB file reads at most a few MB of it.

Files other tools ship are read the way their authors meant them: Alpaca with the question in
``input``; preference data (TRL, LLaMA-Factory, whole transcripts, KTO labels) as
:class:`PreferenceRecord`; LLaMA-Factory's ``dataset_info.json`` folders; text corpora of one
document per line. Examples with images, video or audio and prompt-only (RL) sets are refused
with their reason; placeholders in answers are counted and can be filled.

Every problem with one example is a :class:`DatasetIssue` naming file, line (1-based;
the CSV row counts its header as line 1, a JSON array element the line it starts on),
field, what is wrong and what to do. A file that cannot be used at all raises
:class:`DatasetError`. Nothing else in the project parses dataset files.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from core.events import NULL_EVENTS, CancelToken, Events, Throttle, TuneloomError
from core.tools import ToolDataError, check_calls, normalise_calls, normalise_tools

TEXT_SUFFIXES = {".txt", ".md"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
KNOWN_SUFFIXES = JSONL_SUFFIXES | {".json", ".csv", ".tsv", ".parquet"} | TEXT_SUFFIXES
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                  "bot": "assistant", "system": "system", "tool": "tool", "function": "tool", "observation": "tool"}
SPLIT_NAMES = {"train": "train", "valid": "valid", "validation": "valid", "test": "test"}

# Limits that keep memory bounded and rejection fast (module constants so tests can lower them).
MAX_FILE_BYTES = 1 << 30  # "several GB" is not a fine-tuning set for a desktop LoRA run
MAX_JSON_BYTES = 512 << 20  # a .json document is parsed whole
MAX_RECORD_CHARS = 16 << 20  # one line / row / text document longer than this is not an example
MAX_ISSUES = 1000  # problems kept per file; the rest are counted
JUNK_ROWS = 1000  # this many rows without one recognisable example: the file is not a dataset
CHUNK_BYTES = 1 << 20
SNIFF_BYTES = 64 * 1024


class DatasetError(TuneloomError):
    """The file (or folder) cannot be used at all."""

    def __init__(self, message: str, hint: str = "", file: str | None = None):
        super().__init__(message, hint)
        self.file = file


@dataclass
class DatasetIssue:
    file: str
    line: int | None
    field: str | None
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}" + (f", line {self.line}" if self.line else "")
        fld = f" [{self.field}]" if self.field else ""
        tail = f" - {self.hint}" if self.hint else ""
        return f"{where}{fld}: {self.message}{tail}"

    def to_json(self) -> dict:
        return {"file": self.file, "line": self.line, "field": self.field, "message": self.message}


@dataclass
class DatasetNote:
    """Something normalisation changed or left out, counted over the valid examples."""
    kind: str  # extra_fields, message_fields, json_answer, think_blocks, untrained_turns, ...
    count: int  # examples it applies to
    message: str
    fields: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message

    lines: list[tuple[str, int | None]] = field(default_factory=list)  # where, for notes about single examples

    def to_json(self) -> dict:
        out = {"kind": self.kind, "count": self.count, "message": self.message, "fields": self.fields}
        if self.lines:
            out["lines"] = [{"file": f, "line": n} for f, n in self.lines]
        return out


@dataclass
class ChatRecord:
    messages: list[dict]
    file: str = ""
    line: int | None = None
    # the functions the conversation may call, in OpenAI's form (core.tools): rendered by the chat
    # template as the model's tool prompt; None for a record without tools
    tools: list[dict] | None = None

    def key(self) -> str:
        blob = json.dumps(self.messages if not self.tools else [self.messages, self.tools], sort_keys=True,
                          ensure_ascii=False, default=str)
        return hashlib.sha1(blob.encode("utf-8", "surrogatepass")).hexdigest()

    @property
    def has_calls(self) -> bool:
        return any(m.get("role") == "assistant" and m.get("tool_calls") for m in self.messages)


@dataclass
class PreferenceRecord:
    """One preference example, normalised whatever shape it came in; what preference tuning reads.

    ``prompt``: the conversation up to the answer, chat messages ({"role", "content"}; an optional
    system message first, then user / assistant / tool turns) that end with a user (or tool) turn.
    ``chosen`` / ``rejected``: the preferred and the dispreferred answer to that prompt, each a list
    of assistant messages (usually one; ``reasoning_content`` as on chat records).

    A pair (DPO / ORPO data) has both. KTO data is unpaired: exactly one of the two is set,
    ``chosen`` for an answer labelled desirable (``label`` / ``kto_tag`` true), ``rejected`` for one
    labelled undesirable. ``prompt + chosen`` is the chat record supervised training learns
    (``--use chosen``); it never learns ``rejected``.

    Written out (``data export``) in TRL's conversational form: ``{"prompt": [...], "chosen":
    [...], "rejected": [...]}``, which reads back as the same record."""
    prompt: list[dict]
    chosen: list[dict] | None
    rejected: list[dict] | None
    file: str = ""
    line: int | None = None

    @property
    def paired(self) -> bool:
        return self.chosen is not None and self.rejected is not None

    def chosen_record(self) -> ChatRecord:
        return ChatRecord([dict(m) for m in self.prompt] + [dict(m) for m in self.chosen or []], self.file, self.line)

    def key(self) -> str:
        blob = json.dumps([self.prompt, self.chosen, self.rejected], sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha1(blob.encode("utf-8", "surrogatepass")).hexdigest()

    def to_json(self) -> dict:
        out: dict = {"prompt": [dict(m) for m in self.prompt]}
        if self.paired:
            out.update(chosen=[dict(m) for m in self.chosen], rejected=[dict(m) for m in self.rejected])
        else:  # TRL's unpaired (KTO) form
            out.update(completion=[dict(m) for m in (self.chosen or self.rejected)], label=self.chosen is not None)
        return out


@dataclass
class Dataset:
    records: list[ChatRecord]
    issues: list[DatasetIssue]
    formats: dict[str, str]  # file -> detected format
    total: int  # records seen, valid or not
    # from train/valid(/test) files; files given beside them count as training data
    splits: dict[str, list[ChatRecord]] = field(default_factory=dict)
    notes: list[DatasetNote] = field(default_factory=list)  # what normalisation changed or left out
    # every valid preference / KTO example read (paired or not), in file order; ``records`` holds the
    # chosen (desirable) conversations only where supervised training takes them
    preference: list[PreferenceRecord] = field(default_factory=list)
    left_out: int = 0  # valid examples not in ``records``: pairs not used, KTO answers labelled undesirable
    use: str | None = None  # "chosen": pairs give their chosen answers to supervised training

    @property
    def pairs(self) -> int:
        return sum(1 for p in self.preference if p.paired)

    @property
    def unused_pairs(self) -> int:
        """Pairs supervised training cannot take as they are (no ``use``)."""
        return 0 if self.use == "chosen" else self.pairs

    @property
    def valid(self) -> int:
        """Valid examples read, training data or not (test split aside)."""
        return len(self.records) + self.left_out

    @property
    def tool_calls(self) -> int:
        """Examples whose assistant turns call functions (``tool_calls``)."""
        return sum(1 for r in self.records if r.has_calls)

    @property
    def tools(self) -> int:
        """Examples that declare the functions they may call (``tools``)."""
        return sum(1 for r in self.records if r.tools)

    @property
    def reasoning(self) -> int:
        """Examples whose answers carry reasoning (``reasoning_content`` or ``<think>`` blocks)."""
        return sum(1 for r in self.records if has_reasoning(r.messages))

    @property
    def format(self) -> str:
        kinds = sorted(set(self.formats.values()))
        return kinds[0] if len(kinds) == 1 else ("mixed: " + ", ".join(kinds) if kinds else "none")

    @property
    def invalid(self) -> int:
        return self.total - self.valid - sum(len(v) for k, v in self.splits.items() if k == "test")

    def duplicates(self) -> int:
        counts = Counter(r.key() for r in self.records)
        return sum(c - 1 for c in counts.values() if c > 1)


# ---------------------------------------------------------------------------
# Reading text: encoding, binary detection, bounded line splitting
# ---------------------------------------------------------------------------

_MAGIC = (
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx or .docx file?)", "Export the sheet as 'CSV UTF-8', or unzip it."),
    (b"\x1f\x8b", "gzip-compressed", "Decompress it first (gunzip)."),
    (b"PAR1", "a Parquet file", "Give it the .parquet extension."),
    (b"%PDF", "a PDF document", "Export the examples as JSONL or CSV."),
    (b"SQLite format 3\x00", "an SQLite database", "Export the table as CSV or JSONL."),
    (b"\xd0\xcf\x11\xe0", "an old Office file (.xls/.doc)", "Save it as 'CSV UTF-8'."),
)
_SAVE_UTF8 = "Re-save the file as UTF-8 (Excel: 'CSV UTF-8'; a text editor: encoding UTF-8)."


def _sniff(head: bytes, file: str) -> tuple[str, int]:
    """(codec, BOM length) for a file starting with ``head``, or DatasetError."""
    if head.startswith(codecs.BOM_UTF32_LE) or head.startswith(codecs.BOM_UTF32_BE):
        raise DatasetError(f"{file} is UTF-32 text (byte-order mark at byte offset 0); Tuneloom reads UTF-8 and UTF-16.",
                           _SAVE_UTF8, file)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8", 3
    if head.startswith(codecs.BOM_UTF16_LE):
        return "utf-16-le", 2
    if head.startswith(codecs.BOM_UTF16_BE):
        return "utf-16-be", 2
    for magic, what, hint in _MAGIC:
        if head.startswith(magic):
            raise DatasetError(f"{file} is {what}, not a text dataset (signature at byte offset 0).", hint, file)
    nul = head.find(b"\x00")
    if nul >= 0:
        even, odd = head[0::2], head[1::2]
        if len(head) >= 4 and max(even.count(0) / len(even), odd.count(0) / max(1, len(odd))) > 0.4 \
                and min(even.count(0), odd.count(0)) < 0.05 * len(even):
            raise DatasetError(f"{file} looks like UTF-16 text without a byte-order mark (NUL byte at byte offset {nul}).",
                               _SAVE_UTF8, file)
        raise DatasetError(f"{file} looks like a binary file, not text (it has a NUL byte at byte offset {nul}).",
                           "Drop a JSONL, JSON, CSV, TSV or TXT file saved as UTF-8.", file)
    return "utf-8", 0


def _decode_error(file: str, codec: str, abs_offset: int, bad: bytes, line: int) -> DatasetError:
    name = "UTF-8" if codec == "utf-8" else "UTF-16"
    return DatasetError(f"{file} is not valid {name}: bad byte{'s' if len(bad) > 1 else ''} {bad.hex(' ')} "
                        f"at byte offset {abs_offset} (line {line}).", _SAVE_UTF8, file)


def _iter_text_lines(path: Path, cancel: CancelToken | None = None, *, name: str | None = None,
                     max_line: int | None = None, on_bytes: Callable[[int], None] | None = None
                     ) -> Iterator[tuple[int, str]]:
    """Stream (line_no, line) from a text file: encoding checked, memory bounded by ``max_line``."""
    file = name or path.name
    max_line = MAX_RECORD_CHARS if max_line is None else max_line
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
        codec, bom = _sniff(head, file)
        fh.seek(bom)
        decoder = codecs.getincrementaldecoder(codec)("strict")
        offset = bom  # bytes read so far
        parts: list[str] = []  # the line being read
        part_len = 0
        no = 0
        newline = None
        while True:
            chunk = fh.read(CHUNK_BYTES)
            final = not chunk
            try:
                text = decoder.decode(chunk, final)
            except UnicodeDecodeError as exc:
                # exc.object is the decoder's buffered bytes + this chunk
                at = offset + len(chunk) - len(exc.object) + exc.start
                line = no + 1 + exc.object[:exc.start].decode(codec, "replace").count(newline or "\n")
                raise _decode_error(file, codec, at, exc.object[exc.start:exc.end], line) from None
            nul = text.find("\x00")
            if nul >= 0:
                buffered = len(decoder.getstate()[0])
                at = offset + len(chunk) - buffered - len(text[nul:].encode(codec, "surrogatepass"))
                raise DatasetError(f"{file} looks like a binary file, not text (it has a NUL byte at byte offset {at}).",
                                   "Drop a JSONL, JSON, CSV, TSV or TXT file saved as UTF-8.", file)
            offset += len(chunk)
            if newline is None and text:
                # classic Mac files end lines with CR alone
                newline = "\r" if ("\n" not in text and "\r" in text[:-1]) else "\n"
            if text:
                pieces = text.split(newline)
                if len(pieces) == 1:
                    parts.append(text)
                    part_len += len(text)
                else:
                    parts.append(pieces[0])
                    lines = ["".join(parts)] + pieces[1:-1]
                    parts, part_len = [pieces[-1]], len(pieces[-1])
                    for line in lines:
                        no += 1
                        if len(line) > max_line:
                            raise _too_long(file, no, max_line)
                        yield no, line[:-1] if line.endswith("\r") else line
                if part_len > max_line:
                    raise _too_long(file, no + 1, max_line)
            if cancel is not None:
                cancel.raise_if_cancelled()
            if on_bytes is not None:
                on_bytes(offset)
            if final:
                rest = "".join(parts)
                if rest:
                    yield no + 1, rest[:-1] if rest.endswith("\r") else rest
                return


def _too_long(file: str, line: int, limit: int) -> DatasetError:
    return DatasetError(f"{file}: line {line} is longer than {limit / 2**20:.0f} MB; this does not look like a dataset "
                        "(one example per line, row or text block).",
                        "Check that this is the right file; split very long documents into smaller examples.", file)


# ---------------------------------------------------------------------------
# Reading raw rows: (line, object or None, parse error or None)
# ---------------------------------------------------------------------------

def _json_loads(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    except RecursionError:
        return None, "not usable JSON (nested too deeply)"
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        return None, f"not usable JSON ({exc})"


def _read_jsonl(path: Path, cancel, name: str, on_bytes=None) -> Iterator[tuple[int, Any, str | None]]:
    seen_text = parsed = 0
    for no, line in _iter_text_lines(path, cancel, name=name, on_bytes=on_bytes):
        if not line.strip():
            continue
        seen_text += 1
        obj, err = _json_loads(line)
        if err is None:
            parsed += 1
        elif parsed == 0 and seen_text >= JUNK_ROWS:
            raise DatasetError(f"{name} is not JSON Lines: none of its first {seen_text} lines is valid JSON.",
                               "Each line must hold one JSON object, e.g. {\"messages\": [...]}.", name)
        yield no, obj, err
    if not seen_text:
        raise DatasetError(f"{name} is empty (only blank lines).", "Add one example per line.", name)
    if not parsed:
        raise DatasetError(f"{name} is not JSON Lines: no line in it is valid JSON.",
                           "Each line must hold one JSON object, e.g. {\"messages\": [...]}.", name)


def _read_json(path: Path, cancel, name: str, on_bytes=None) -> Iterator[tuple[int, Any, str | None]]:
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise DatasetError(f"{name} is {size / 2**20:.0f} MB: too large to read as one JSON document "
                           f"(the limit is {MAX_JSON_BYTES / 2**20:.0f} MB).",
                           "Convert it to JSONL (one example per line); large files are streamed then.", name)
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    codec, bom = _sniff(head, name)
    first = head[bom:].decode(codec, "ignore").lstrip()[:1]
    if first and first not in "[{":  # say so now rather than after reading 500 MB
        raise DatasetError(f"{name} is not JSON: it starts with {first!r} rather than '[' or '{{'.",
                           "Save the examples as a JSON array, or as JSONL with the .jsonl extension.", name)
    lines = [line for _, line in _iter_text_lines(path, cancel, name=name, max_line=MAX_JSON_BYTES, on_bytes=on_bytes)]
    if not any(line.strip() for line in lines):
        raise DatasetError(f"{name} is empty.", "Add a JSON array of examples.", name)
    text = "\n".join(lines)
    del lines
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        # JSONL saved as .json is common: read it as that before giving up.
        if exc.msg.startswith("Extra data"):
            del text
            yield from _read_jsonl(path, cancel, name)
            return
        raise DatasetError(f"{name}, line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}).",
                           "Fix the JSON at that place, or save as JSONL.", name) from None
    except RecursionError:
        raise DatasetError(f"{name}: the JSON is nested too deeply to be a dataset.", "", name) from None
    except ValueError as exc:
        raise DatasetError(f"{name}: not usable JSON ({exc}).", "", name) from None
    start: int | None = None  # where the array of examples starts in the text
    if isinstance(doc, dict):
        arrays = [(k, v) for k, v in doc.items() if isinstance(v, list)]
        if _looks_like_record(doc):
            doc = [doc]
            start = -1
        elif len(arrays) == 1:
            start = _value_start(text, arrays[0][0])
            doc = arrays[0][1]
        else:
            raise DatasetError(f"{name}: expected a list of examples (or an object holding one list), "
                               f"found an object with keys {sorted(doc)[:8]}.",
                               "Put the examples in a JSON array.", name)
    if not isinstance(doc, list):
        raise DatasetError(f"{name}: expected a list of examples, found {type(doc).__name__}.",
                           "Put the examples in a JSON array.", name)
    if not doc:
        raise DatasetError(f"{name} holds an empty list: no examples.", "Add at least one example.", name)
    if start == -1:  # one example as the whole document: it starts where its '{' is
        brace = text.find("{")
        starts = [text.count("\n", 0, max(brace, 0)) + 1]
    else:
        starts = _element_lines(text, len(doc), start)
    for i, item in enumerate(doc):
        yield starts[i] if i < len(starts) else None, item, None


def _value_start(text: str, key: str) -> int | None:
    """Offset of the value of top-level ``key`` in the JSON object ``text``, or None."""
    dec = json.JSONDecoder()
    i = text.find("{") + 1
    try:
        while 0 < i < len(text):
            while i < len(text) and text[i] in " \t\r\n,":
                i += 1
            if i >= len(text) or text[i] == "}":
                return None
            k, i = dec.raw_decode(text, i)
            while i < len(text) and text[i] in " \t\r\n:":
                i += 1
            if k == key:
                return i
            _, i = dec.raw_decode(text, i)
    except (ValueError, RecursionError):
        return None
    return None


def _element_lines(text: str, n: int, start: int | None = None) -> list[int]:
    """Line numbers of the array elements (for messages); the array starts at ``start``
    (default: the first '[')."""
    dec = json.JSONDecoder()
    out: list[int] = []
    start = text.find("[") if start is None else start
    if start < 0 or start >= len(text) or text[start] != "[":
        return out
    i = start + 1
    line = text.count("\n", 0, i) + 1
    while len(out) < n:
        while i < len(text) and text[i] in " \t\r\n,":
            if text[i] == "\n":
                line += 1
            i += 1
        if i >= len(text) or text[i] == "]":
            break
        out.append(line)
        try:
            _, end = dec.raw_decode(text, i)
        except (ValueError, RecursionError):
            break
        line += text.count("\n", i, end)
        i = end
    return out


def _read_delimited(path: Path, delimiter: str, cancel, name: str, mapping=None, on_bytes=None, template=None
                    ) -> Iterator[tuple[int, Any, str | None]]:
    lines = _iter_text_lines(path, cancel, name=name, on_bytes=on_bytes)
    line_counter = {"no": 0}
    first: list[tuple[int, str]] = []
    for no, line in lines:  # the header line decides the delimiter
        first.append((no, line))
        if line.strip():
            if delimiter == "," and "," not in line and ";" in line:
                delimiter = ";"  # Excel's CSV in locales with a decimal comma
            break

    def feed():
        for no, line in first:
            line_counter["no"] = no
            yield line + "\n"
        for no, line in lines:
            line_counter["no"] = no
            yield line + "\n"

    # quoted fields may hold long text: the record limit applies instead of csv's 128 KB
    if csv.field_size_limit() < MAX_RECORD_CHARS:
        csv.field_size_limit(MAX_RECORD_CHARS)
    reader = csv.reader(feed(), delimiter=delimiter, strict=True)
    header: list[str] = []
    try:
        while not any(h.strip() for h in header):
            header = next(reader)
    except StopIteration:
        raise DatasetError(f"{name} is empty.", "Add a header row and one example per row.", name) from None
    except csv.Error as exc:
        raise DatasetError(f"{name}: cannot read the header row ({exc}).",
                           "The first row must name the columns, e.g. prompt,completion.", name) from None
    header = [h.strip() for h in header]
    if template is not None:
        missing = template.missing(header)
        if missing:
            raise _missing_columns_error(name, template, missing, header)
    else:
        fmt = detect_format(dict.fromkeys(header, ""), mapping)
        if fmt is None:
            raise DatasetError(f"{name}: the columns {header[:12]} do not name a known format.",
                               "Name the columns messages, instruction/input/output, input/output, prompt/completion, "
                               "question/answer or text (any letter case), map your columns to these names, or "
                               "write user and assistant templates such as 'Pokemon name: {name}'.", name)
        have = {_norm_key(h) for h in header}
        for key in dict(FORMATS)[fmt]:
            col = mapping.get(key, key) if mapping else key
            if _norm_key(col) not in have:
                raise DatasetError(f"{name} has no column '{col}' (mapped to '{key}'); its columns are {header[:12]}.",
                                   "Fix the column mapping.", name)
    row_start = line_counter["no"] + 1
    rows = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield row_start, None, f"cannot parse this row ({exc})"
            row_start = line_counter["no"] + 1
            continue
        if any(cell.strip() for cell in row):
            rows += 1
            if len(row) != len(header):
                yield row_start, None, (f"has {len(row)} columns but the header has {len(header)} "
                                        f"(a missing or extra '{delimiter}', or an unclosed quote?)")
            else:
                yield row_start, dict(zip(header, row)), None
        row_start = line_counter["no"] + 1
    if rows == 0:
        raise DatasetError(f"{name} has a header row but no examples.", "Add one example per row.", name)


DOC_LINE_CHARS = 200  # a .txt without blank lines whose lines average this long holds one document per line


def _text_layout(path: Path, cancel, name: str) -> tuple[bool, int, int]:
    """(has a blank line between text, lines of text, characters) of a text file: one streamed pass,
    stopped at the first blank line that separates text."""
    blank_after_text = False
    lines = chars = 0
    for _, line in _iter_text_lines(path, cancel, name=name):
        if line.strip():
            if blank_after_text:
                return True, lines, chars
            lines += 1
            chars += len(line)
        elif lines:
            blank_after_text = True
    return False, lines, chars


def _read_text(path: Path, cancel, name: str, on_bytes=None, info: dict | None = None
               ) -> Iterator[tuple[int, Any, str | None]]:
    whole = path.suffix.lower() == ".md"  # a Markdown file is one document; .txt: blank-line separated
    info = {} if info is None else info
    if not whole:
        separated, lines, chars = _text_layout(path, cancel, name)
        if not separated and lines >= 2 and chars / lines >= DOC_LINE_CHARS:
            info["text_rule"] = (f"{name}: read one document per line ({lines:,} documents): it has no blank lines "
                                 f"and its lines are long (on average {chars // lines:,} characters)")
            for no, line in _iter_text_lines(path, cancel, name=name, on_bytes=on_bytes):
                if line.strip():
                    yield no, {"text": line.rstrip()}, None
            return
        info["text_rule"] = (f"{name}: read as documents separated by blank lines" if separated or lines < 2 else
                             f"{name}: read as one document: it has no blank lines and its {lines:,} lines are short "
                             f"(on average {chars // lines:,} characters; lines of {DOC_LINE_CHARS}+ characters "
                             "would be read one document per line)")
    else:
        info["text_rule"] = f"{name}: read as one document (a Markdown file)"
    block: list[str] = []
    size = 0
    start = None
    for no, line in _iter_text_lines(path, cancel, name=name, on_bytes=on_bytes):
        if line.strip() or (whole and block):
            if start is None:
                start = no
            block.append(line)
            size += len(line) + 1
            if size > MAX_RECORD_CHARS:
                raise DatasetError(f"{name}: the text starting at line {start} is longer than "
                                   f"{MAX_RECORD_CHARS / 2**20:.0f} MB.",
                                   "Split it into smaller documents separated by blank lines (.txt).", name)
        elif block:
            yield start, {"text": "\n".join(block)}, None
            block, start, size = [], None, 0
    if block:
        yield start, {"text": "\n".join(block).rstrip()}, None


def _read_parquet(path: Path, cancel, name: str, on_bytes=None) -> Iterator[tuple[int, Any, str | None]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(f"{name}: reading Parquet needs the optional 'pyarrow' package.",
                           "Install it with: pip install 'tuneloom[parquet]', or export the data as JSONL.",
                           name) from None
    try:
        pf = pq.ParquetFile(path)
        size, rows = path.stat().st_size, max(1, pf.metadata.num_rows)
        row = 0
        # streamed batch by batch, every row checked (memory: one row group's columns and one batch of rows)
        for batch in pf.iter_batches(batch_size=1024):
            for item in batch.to_pylist():
                row += 1
                yield row, item, None
            if cancel is not None:
                cancel.raise_if_cancelled()
            if on_bytes is not None:
                on_bytes(size * row // rows)
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        if isinstance(exc, TuneloomError):
            raise
        raise DatasetError(f"{name} cannot be read as Parquet ({exc}).", "Export the data again, or as JSONL.",
                           name) from None


def read_rows(path: Path, cancel: CancelToken | None = None, *, name: str | None = None, mapping=None,
              on_bytes=None, template: "RecordTemplate | None" = None, info: dict | None = None
              ) -> Iterator[tuple[int | None, Any, str | None]]:
    """Yield (line, raw object or None, parse error or None) for one file. ``info`` (a dict)
    receives how the file was read where there was a choice (``text_rule`` for text files)."""
    path = Path(path)
    name = name or path.name
    suffix = path.suffix.lower()
    if not path.exists():
        raise DatasetError(f"{path} does not exist.", "Check the path.", name)
    if not path.is_file():
        raise DatasetError(f"{name} is not a file.", "Drop a dataset file or a folder of them.", name)
    if suffix not in KNOWN_SUFFIXES:
        hint = "Use JSONL, JSON, CSV, TSV, TXT/MD or Parquet."
        if suffix in (".xlsx", ".xls", ".ods", ".numbers"):
            hint = "Export the sheet as 'CSV UTF-8' first."
        elif suffix in (".gz", ".zip", ".bz2", ".xz", ".zst", ".7z"):
            hint = "Decompress it first."
        raise DatasetError(f"{name}: '{suffix or 'no extension'}' is not a dataset type Tuneloom reads.", hint, name)
    size = path.stat().st_size
    if size == 0:
        raise DatasetError(f"{name} is empty (0 bytes).", "Choose the file that holds your examples.", name)
    if suffix != ".parquet":  # binary / wrong encoding: say that, whatever the size
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
        codec, bom = _sniff(head, name)
        try:
            codecs.getincrementaldecoder(codec)("strict").decode(head[bom:], False)
        except UnicodeDecodeError as exc:
            line = 1 + exc.object[:exc.start].decode(codec, "replace").count("\n")
            raise _decode_error(name, codec, bom + exc.start, exc.object[exc.start:exc.end], line) from None
    if size > MAX_FILE_BYTES:
        raise DatasetError(f"{name} is {size / 2**30:.1f} GB; Tuneloom reads dataset files up to "
                           f"{MAX_FILE_BYTES / 2**30:.0f} GB.",
                           "LoRA fine-tuning needs far less data: take a sample of a few thousand examples "
                           "(e.g. head -n 20000 file.jsonl > sample.jsonl).", name)
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path, cancel, name, on_bytes)
    if suffix == ".json":
        return _read_json(path, cancel, name, on_bytes)
    if suffix == ".csv":
        return _read_delimited(path, ",", cancel, name, mapping, on_bytes, template)
    if suffix == ".tsv":
        return _read_delimited(path, "\t", cancel, name, mapping, on_bytes, template)
    if suffix in TEXT_SUFFIXES:
        return _read_text(path, cancel, name, on_bytes, info)
    return _read_parquet(path, cancel, name, on_bytes)


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

# message fields the loader reads; anything else on a message is counted as ignored
_ROLE_KEYS = ("role", "from")
_CONTENT_KEYS = ("content", "value")
# (an empty tool_calls / function_call: a turn without calls, as OpenAI's exports write it)
_MESSAGE_KEYS = set(_ROLE_KEYS + _CONTENT_KEYS + ("weight", "reasoning_content", "tool_calls", "function_call"))
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def _norm_key(k: Any) -> str:
    return str(k).strip().lower()


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


def _find(obj: dict, key: str, mapping: dict[str, str] | None) -> tuple[str, Any]:
    """Case-insensitive field lookup honouring a user mapping: (the field's name in the file, value)."""
    wanted = _norm_key(mapping[key]) if mapping and key in mapping else key
    for k, v in obj.items():
        if _norm_key(k) == wanted:
            return str(k), v
    return (mapping[key] if mapping and key in mapping else key), None


def _get(obj: dict, key: str, mapping: dict[str, str] | None) -> Any:
    return _find(obj, key, mapping)[1]


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


def _check_messages(msgs: Any, fld: str, sharegpt: bool = False, notes: dict | None = None) -> list[dict]:
    out, wheres = _convert_messages(msgs, fld, sharegpt=sharegpt, notes=notes)
    _check_order(out, fld, wheres)
    return out


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
    if fmt == "kto":
        lname, label = _pick(obj, low, *_KTO_KEYS)
        if not isinstance(label, bool):
            raise _Invalid(lname, f"must be true (a desirable answer) or false (an undesirable one), found {label!r}",
                           "write true or false without quotes")
        if "completion" in low and "prompt" in low:
            pname, pval = _pick(obj, low, "prompt")
            cname, cval = _pick(obj, low, "completion")
            prompt = _prompt_messages(pval, pname, notes)[0] if _is_message_list(pval) else \
                [{"role": "user", "content": _text_field(obj, pname, None, notes=notes)}]
            answer = _answer_messages(cval, cname, notes)
            used = {"prompt", "completion", "system", _norm_key(lname)}
        else:
            mname, msgs = _pick(obj, low, "messages", "conversations")
            conv, _ = _convert_messages(msgs, mname, sharegpt=_norm_key(mname) == "conversations", notes=notes)
            prompt, answer = _split_answer(conv, mname)
            used = {_norm_key(mname), "system", _norm_key(lname)}
        prompt = _with_system(prompt, system, sname or "system")
        _check_order(prompt + answer, "prompt")
        _note_extra(obj, used, notes)
        return PreferenceRecord(prompt, answer if label else None, None if label else answer)
    cname, chosen = _pick(obj, low, "chosen")
    rname, rejected = _pick(obj, low, "rejected")
    used = {"chosen", "rejected", "system"}
    if fmt == "preference-transcript":
        whole = []
        for name, val in ((cname, chosen), (rname, rejected)):
            if isinstance(val, str):
                msgs = _hh_messages(val, name)
            else:
                msgs = _convert_messages(val, name, notes=notes)[0]
            whole.append(_split_answer(msgs, name))
        (prompt, good), (prompt_r, bad) = whole
        if prompt != prompt_r:
            raise _Invalid(rname, "starts from a different conversation than chosen",
                           "chosen and rejected must hold the same conversation up to the last answer")
    else:
        if fmt == "preference-prompt":
            pname, pval = _pick(obj, low, "prompt")
            prompt = _prompt_messages(pval, pname, notes)[0] if _is_message_list(pval) else \
                [{"role": "user", "content": _text_field(obj, pname, None, notes=notes)}]
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
            used |= {"instruction", "input"}
        else:
            mname, msgs = _pick(obj, low, "conversations" if fmt == "preference-sharegpt" else "messages")
            prompt = _convert_messages(msgs, mname, sharegpt=fmt == "preference-sharegpt", notes=notes)[0]
            used.add(_norm_key(mname))
        good = _answer_messages(chosen, cname, notes)
        bad = _answer_messages(rejected, rname, notes)
    prompt = _with_system(prompt, system, sname or "system")
    _check_order(prompt + good, cname)
    _check_order(prompt + bad, rname)
    _note_extra(obj, used, notes)
    return PreferenceRecord(prompt, good, bad)


_FORMAT_HINT = ("Use the fields messages, conversations, instruction/output, input/output, prompt/completion, "
                "question/answer or text (or map your field names to these, or give user and assistant templates).")


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
# One file
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
    file = name or path.name
    # (line, format or None, record, issue, raw object kept for an unrecognised example)
    rows: list[tuple[int | None, str | None, ChatRecord | None, DatasetIssue | None, Any]] = []
    fmt_count: Counter = Counter()
    first_fmt: dict[str, int] = {}
    kept = 0  # problems kept while reading: memory stays bounded, the rest are only counted
    total = recognised = media_count = prompt_only = 0
    rl_first: tuple[int | None, tuple[str, str]] | None = None
    media_first: tuple[int | None, _Media] | None = None
    fields_seen: Counter = Counter()
    columns: dict[str, None] = {}  # every field name seen, in order (for template errors)
    info: dict = {}
    for line, obj, err in read_rows(path, cancel, name=file, mapping=mapping, on_bytes=on_bytes, template=template,
                                    info=info):
        total += 1
        if adapter is not None and err is None:
            obj = adapter(obj)
        if template is not None and isinstance(obj, dict) and err is None:
            this = TEMPLATE_FORMAT
            if len(columns) < 1000:
                columns.update(dict.fromkeys(map(str, obj)))
        else:
            this = None if err else detect_format(obj, mapping)
        media = _media_field(obj) if err is None else None
        if media is not None:  # refused whatever its format: the model would learn answers without the picture
            recognised += 1
            media_count += 1
            media_first = media_first or (line, media)
            keep = kept < 2 * MAX_ISSUES
            kept += keep
            rows.append((line, None, None, DatasetIssue(file, line, media.field, media.message, media.hint)
                         if keep else None, None))
            continue
        if this is None:
            rl = _prompt_only(obj) if err is None else None
            if rl is not None:
                prompt_only += 1
                rl_first = rl_first or (line, rl)
            if isinstance(obj, dict):
                fields_seen.update(map(str, obj))
            if recognised == 0 and total >= JUNK_ROWS:
                if prompt_only == total:
                    raise _rl_error(file, f"none of its first {total} examples", rl_first)
                seen = [k for k, _ in fields_seen.most_common(8)]
                raise DatasetError(f"{file}: none of its first {total} examples has a known format"
                                   + (f" (fields seen: {seen})." if seen else "."), _FORMAT_HINT, file)
            if rl is not None:
                keep = kept < 2 * MAX_ISSUES
                kept += keep
                rows.append((line, None, None, DatasetIssue(file, line, rl[0], rl[1], _RL_HINT) if keep else None,
                             obj if keep else None))
                continue
            if err:
                issue = DatasetIssue(file, line, None, err, "fix this line or remove it")
            elif isinstance(obj, dict):
                issue = DatasetIssue(file, line, None, f"unrecognised example (fields: {sorted(map(str, obj))[:8]})",
                                     _FORMAT_HINT)
            else:
                issue = DatasetIssue(file, line, None, f"an example must be an object with named fields, "
                                                       f"found {_type_name(obj)}", _FORMAT_HINT)
            keep = kept < 2 * MAX_ISSUES
            kept += keep
            rows.append((line, None, None, issue if keep else None, obj if keep and isinstance(obj, dict) else None))
            continue
        recognised += 1
        fmt_count[this] += 1
        first_fmt.setdefault(this, total)
        rec_notes: dict = {}
        try:
            if this in PREFERENCE_FORMATS:
                rec: ChatRecord | PreferenceRecord = normalise_preference(obj, this, notes=rec_notes)
                rec.file, rec.line = file, line
                rec.prompt = _apply_system(rec.prompt, system, rec_notes)
            else:
                msgs = _apply_system(normalise(obj, this, mapping, template=template, notes=rec_notes), system,
                                     rec_notes)
                rec = ChatRecord(msgs, file, line, record_tools(obj, this, mapping))
            if _media_token(rec.messages if isinstance(rec, ChatRecord) else rec.prompt + (rec.chosen or rec.rejected)):
                raise _media_in(obj) or _Media(None, "holds an <image>, <video> or <audio> token", MEDIA_HINT)
            _placeholders(rec, fill, rec_notes)
            rows.append((line, this, rec, None, rec_notes))  # notes count once valid
        except _Invalid as inv:
            keep = kept < 2 * MAX_ISSUES
            kept += keep
            if isinstance(inv, _Media):  # said as it is, whatever the file's format turns out to be
                media_count += 1
                media_first = media_first or (line, inv)
                fmt_count[this] -= 1
                this = None
            rows.append((line, this, None, DatasetIssue(file, line, inv.field, inv.message, inv.hint) if keep else None,
                         None))
    if total == 0:
        raise DatasetError(f"{file} holds no examples.", "Add at least one example.", file)
    if template is not None and columns:
        missing = template.missing(columns)
        if missing:  # no example has the column: the template is wrong, not the examples
            raise _missing_columns_error(file, template, missing, list(columns))
    if media_first is not None and not any(r[2] is not None for r in rows):
        every = media_count == total
        mline, media = media_first
        raise DatasetError(f"{file}: {'every example' if every else f'{media_count} of its {total} examples'} "
                           f"carr{'ies' if every else 'y'} images, video or audio (line {mline}, "
                           f"'{media.field}' {media.message}).",
                           "Tuneloom fine-tunes text-only chat models, which cannot see or hear them; drop a file of "
                           "text conversations instead.", file)
    if recognised == 0 and prompt_only == total:
        raise _rl_error(file, f"all {total} of its examples" if total > 1 else "its one example", rl_first)
    if recognised == 0:
        first = next((r[3] for r in rows if r[3] is not None), None)
        if first is not None and first.message.startswith("not valid JSON"):
            raise DatasetError(f"{file}: no example in it can be read ({first.message} at line {first.line}).",
                               "Fix the file, or check that it is the right one.", file)
        seen = [k for k, _ in fields_seen.most_common(8)]
        raise DatasetError(f"{file}: no example in it has a known format" + (f" (fields seen: {seen})." if seen else "."),
                           _FORMAT_HINT, file)
    fmt_count = +fmt_count  # formats of media examples are not counted
    fmt = max(fmt_count, key=lambda f: (fmt_count[f], -first_fmt[f])) if fmt_count else "none"
    records: list[ChatRecord] = []
    issues: list[DatasetIssue] = []
    dropped = 0
    for line, this, rec, issue, obj in rows:
        if this is not None and this != fmt:
            issues.append(DatasetIssue(file, line, None,
                                       f"this example is in the '{this}' format but the file's other "
                                       f"{fmt_count[fmt]} examples are '{fmt}' (mixed formats in one file)",
                                       "keep one format per file: convert or remove this example"))
        elif rec is not None:
            records.append(rec)
            if notes is not None:
                notes.add(obj, (file, line))
        elif issue is None:
            dropped += 1
        else:
            rl_row = issue.message.startswith("prompts without answers")
            if obj is not None and (not rl_row or _norm_key(issue.field) in dict(FORMATS).get(fmt, ())):
                # say what this example lacks to be in the file's format (a prompt / completion file's line
                # without its completion is a missing completion, not RL data)
                try:
                    normalise(obj, fmt, mapping, template=template)
                except _Invalid as inv:
                    issue = DatasetIssue(file, line, inv.field, inv.message, inv.hint)
            issues.append(issue)
    if notes is not None and info.get("text_rule"):
        notes.file_notes.append(DatasetNote("text_rule", total, info["text_rule"], [file]))
    issues.sort(key=lambda i: (i.line is None, i.line or 0))
    if len(issues) > MAX_ISSUES:
        dropped += len(issues) - MAX_ISSUES
        issues = issues[:MAX_ISSUES]
    if dropped:
        issues.append(DatasetIssue(file, None, None, f"... and {dropped} more problems in this file, not listed",
                                   "fix the ones above first; the rest are often the same mistake"))
    return records, issues, fmt, total


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


# ---------------------------------------------------------------------------
# Several files, folders, splits
# ---------------------------------------------------------------------------

_NOT_DATA = {"readme", "license", "licence", "changelog", "notice", "citation", "dataset_info"}

# ---------------------------------------------------------------------------
# LLaMA-Factory's data folder: dataset_info.json says how each file is read
# ---------------------------------------------------------------------------

DATASET_INFO = "dataset_info.json"
_LF_ALPACA = {"prompt": "instruction", "query": "input", "response": "output", "history": None, "system": None}
_LF_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
            "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
_LF_MEDIA = ("images", "videos", "audios")


def _lf_adapter(spec: dict) -> Callable[[Any], Any]:
    """A function that rewrites one row of a file described by a dataset_info.json entry into the
    field names Tuneloom reads, following the entry's ``formatting``, ``columns``, ``tags`` and
    ``ranking`` the way LLaMA-Factory's converters read them. It never raises: a row that does not
    fit is passed on as it is and checked (and reported) like any other."""
    cols = spec.get("columns") if isinstance(spec.get("columns"), dict) else {}
    tags = {**_LF_TAGS, **(spec.get("tags") if isinstance(spec.get("tags"), dict) else {})}
    sharegpt = spec.get("formatting") == "sharegpt"
    ranking = bool(spec.get("ranking"))

    def media(row: dict, out: dict) -> None:
        for key in _LF_MEDIA:
            col = cols.get(key)
            if col and row.get(col) not in (None, [], ""):
                out[key] = row[col]

    def message(m: Any) -> Any:
        if not isinstance(m, dict):
            return m
        who = m.get(tags["role_tag"])
        role = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["observation_tag"]: "tool",
                tags["function_tag"]: "function_call", tags["system_tag"]: "system"}.get(who, who)
        return {"role": role, "content": m.get(tags["content_tag"])}

    def alpaca(row: dict) -> Any:
        c = {**_LF_ALPACA, **cols}
        if c.get("prompt") and not cols.get("response") and "response" not in cols and \
                c["prompt"] in row and c["response"] not in row and not ranking and "kto_tag" not in cols:
            return {"text": row.get(c["prompt"])}  # a pre-training corpus: the prompt column is the text
        out: dict = {}
        for ours, key in (("instruction", "prompt"), ("input", "query"), ("system", "system")):
            if c.get(key) and c[key] in row:
                out[ours] = row[c[key]]
        if ranking:
            for key in ("chosen", "rejected"):
                if cols.get(key) in row:
                    out[key] = row[cols[key]]
            if "chosen" not in out and isinstance(row.get(c["response"]), list) and len(row[c["response"]]) == 2:
                out["chosen"], out["rejected"] = row[c["response"]]  # the older form: [chosen, rejected]
            out.setdefault("instruction", "")
        else:
            out["output"] = row.get(c["response"])
        history = row.get(c["history"]) if c.get("history") else None
        if isinstance(history, list) and history and not ranking:
            msgs = []
            for turn in history:
                if isinstance(turn, (list, tuple)) and len(turn) == 2:
                    msgs += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
            q = out.get("instruction") or ""
            q = f"{q}\n\n{out['input']}" if q and out.get("input") else (q or out.get("input"))
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": out.get("output")}]
            out = {"messages": msgs, **({"system": out["system"]} if out.get("system") else {})}
        if cols.get("kto_tag") in row:
            out = {"prompt": out.get("instruction"), "completion": out.get("output"), "label": row[cols["kto_tag"]]}
        media(row, out)
        return out

    def share(row: dict) -> Any:
        msgs = row.get(cols.get("messages", "conversations"))
        out: dict = {"conversations": [message(m) for m in msgs] if isinstance(msgs, list) else msgs}
        if cols.get("system") and row.get(cols["system"]):
            out["system"] = row[cols["system"]]
        if ranking:
            for key in ("chosen", "rejected"):
                val = row.get(cols.get(key, key))
                out[key] = message(val) if isinstance(val, dict) else val
        if cols.get("kto_tag") in row:
            out["label"] = row[cols["kto_tag"]]
        if cols.get("tools") and row.get(cols["tools"]):
            out["tools"] = row[cols["tools"]]
        media(row, out)
        return out

    def adapt(row: Any) -> Any:
        if not isinstance(row, dict):
            return row
        try:
            return share(row) if sharegpt else alpaca(row)
        except (TypeError, KeyError, AttributeError, ValueError):  # an odd row: checked as it is
            return row
    return adapt


def _dataset_info(folder: Path) -> tuple[list[tuple[Path, str, dict]], list[DatasetIssue], list[DatasetNote]]:
    """The files a LLaMA-Factory data folder's dataset_info.json names, each with its entry."""
    name = f"{folder.name}/{DATASET_INFO}"
    try:
        info = json.loads((folder / DATASET_INFO).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"{name} cannot be read ({exc}).", "Fix the JSON, or drop the data files themselves.",
                           name) from None
    if not isinstance(info, dict):
        raise DatasetError(f"{name}: expected an object of dataset entries, found {_type_name(info)}.",
                           "Write it as LLaMA-Factory does: {\"name\": {\"file_name\": \"data.json\"}}.", name)
    files, issues, remote = [], [], []
    for entry, spec in info.items():
        if not isinstance(spec, dict):
            issues.append(DatasetIssue(name, None, entry, f"must be an object, found {_type_name(spec)}",
                                       "write the entry as {\"file_name\": \"...\"}"))
            continue
        fname = spec.get("file_name")
        if not fname:
            if any(k in spec for k in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")):
                remote.append(entry)
            else:
                issues.append(DatasetIssue(name, None, entry, "names no file_name", "add the file's name"))
            continue
        if spec.get("formatting", "alpaca") not in ("alpaca", "sharegpt"):
            issues.append(DatasetIssue(name, None, entry, f"has formatting {spec.get('formatting')!r}, which "
                                                          "Tuneloom does not read", "use alpaca or sharegpt"))
            continue
        path = folder / str(fname)
        if path.is_dir():
            found = sorted(x for x in path.iterdir() if x.is_file() and x.suffix.lower() in KNOWN_SUFFIXES
                           and not x.name.startswith("."))
            files += [(x, f"{folder.name}/{fname}/{x.name}", spec) for x in found]
        elif path.is_file():
            files.append((path, f"{folder.name}/{fname}", spec))
        else:
            issues.append(DatasetIssue(name, None, entry, f"names the file {fname}, which is not in {folder.name}",
                                       "put the file there, or remove the entry"))
    notes = []
    if remote:
        shown = ", ".join(remote[:8]) + (f" and {len(remote) - 8} more" if len(remote) > 8 else "")
        notes.append(DatasetNote("dataset_info_remote", len(remote),
                                 f"{name}: {len(remote)} entr{'ies' if len(remote) != 1 else 'y'} name{'' if len(remote) != 1 else 's'} "
                                 f"data on a hub, not a file here, and {'are' if len(remote) != 1 else 'is'} not "
                                 f"read: {shown}", remote[:50]))
    notes.append(DatasetNote("dataset_info", len(files), f"{name}: {len(files)} file{'s' if len(files) != 1 else ''} "
                                                         "read the way its entries say (formatting, columns, tags, "
                                                         "ranking)", [n for _, n, _ in files]))
    return files, issues, notes


def _split_of(path: Path) -> str | None:
    return SPLIT_NAMES.get(path.stem.lower())


def _expand(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, str, str | None]]:
    """(path, display name, split) for every dataset file given or found in a given folder."""
    out: list[tuple[Path, str, str | None]] = []
    loose: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(x for x in p.iterdir() if x.is_file() and x.suffix.lower() in KNOWN_SUFFIXES
                           and not x.name.startswith(".") and x.stem.lower() not in _NOT_DATA)
            if not found:
                raise DatasetError(f"The folder {p.name} holds no dataset files.",
                                   "Put JSONL/JSON/CSV/TSV/TXT files in it (train.jsonl and valid.jsonl for a split).",
                                   p.name)
            splits = {x: _split_of(x) for x in found}
            if any(s == "train" for s in splits.values()):  # mlx-lm layout: train / valid (/ test)
                out += [(x, f"{p.name}/{x.name}", s) for x, s in splits.items() if s]
                # other files beside train/valid are training data too
                out += [(x, f"{p.name}/{x.name}", None) for x, s in splits.items() if not s]
            else:  # a file named test.* is the test split wherever it is (beside other data)
                alone = all(sp == "test" for sp in splits.values())
                out += [(x, f"{p.name}/{x.name}", "test" if splits[x] == "test" and not alone else None)
                        for x in found]
        else:
            loose.append(p)
    # loose files named train.* and valid.* given together are a split as well; test.* always is one
    loose_splits = {_split_of(p) for p in loose}
    as_split = "train" in loose_splits and "valid" in loose_splits
    others = bool(out) or any(s != "test" for s in loose_splits)  # data beside a test.* file
    for p in loose:
        split = _split_of(p)
        out.append((p, p.name, split if as_split or (split == "test" and others) else None))
    return out


def test_files(paths: Iterable[str | os.PathLike]) -> list[str]:
    """The test files (named ``test.*``) among the dataset files and folders ``paths``."""
    return [str(f) for f, _, split in _expand(paths) if split == "test"]


def load_dataset(paths: Iterable[str | os.PathLike], *, mapping: dict[str, str] | None = None,
                 user_template: str | None = None, assistant_template: str | None = None,
                 system: str | None = None, use: str | None = None, fill: dict[str, str] | None = None,
                 events: Events | None = None, cancel: CancelToken | None = None,
                 skip_splits: Iterable[str] = ()) -> Dataset:
    """Read and validate every file; invalid records are reported in ``issues``, never raised.

    ``mapping`` ({our field: their field}, e.g. {"prompt": "Frage", "completion": "Antwort"})
    overrides the automatic field matching. ``user_template`` and ``assistant_template``
    (e.g. "Pokemon name: {name}" and "{types}") write the messages from any fields instead;
    ``system`` is a system prompt for every example that has none. Files of a split named in
    ``skip_splits`` are not opened at all (training skips ``"test"``: the test set stays unseen).

    Preference data (:data:`PREFERENCE_FORMATS`) is read into ``Dataset.preference``; with
    ``use="chosen"`` the chosen answers are also chat records for supervised training. KTO
    examples give supervised training their desirable answers only (counted in a note)."""
    events = events or NULL_EVENTS
    if use not in (None, "chosen"):
        raise DatasetError(f"Unknown choice for the answers to use: {use!r}.", "Use 'chosen'.")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    template = make_template(user_template, assistant_template)
    if template is not None and mapping:
        raise DatasetError("Give either a field mapping or templates, not both.",
                           "Templates name the columns themselves: {column}.")
    if system is not None and not isinstance(system, str):
        raise DatasetError("The system prompt must be text.", "")
    system = system if system and system.strip() else None
    if mapping:
        unknown = sorted(set(mapping) - MAPPABLE_KEYS)
        if unknown:
            raise DatasetError(f"The field mapping names unknown fields {unknown}.",
                               f"Map onto these names: {', '.join(sorted(MAPPABLE_KEYS))}.")
        mapping = {_norm_key(k): str(v) for k, v in mapping.items()}
    paths = list(paths)
    lf = [Path(p) for p in paths if Path(p).is_dir() and (Path(p) / DATASET_INFO).is_file()]
    adapters: dict[str, Callable] = {}  # file name -> the row rewriting its dataset_info.json entry asks for
    lf_issues: list[DatasetIssue] = []
    lf_notes: list[DatasetNote] = []
    files = _expand([p for p in paths if Path(p) not in lf])
    for folder in lf:
        found, iss, nts = _dataset_info(folder)
        lf_issues += iss
        lf_notes += nts
        for path, name, spec in found:
            files.append((path, name, None))
            adapters[name] = _lf_adapter(spec)
    skip_splits = set(skip_splits)
    files = [f for f in files if f[2] not in skip_splits] if skip_splits else files
    if not files:
        raise DatasetError("No dataset files were given." if not lf else
                           f"{lf[0].name}/{DATASET_INFO} names no file in the folder.",
                           "Drop a JSONL, JSON, CSV, TSV or TXT file.")
    sizes = [f.stat().st_size if f.is_file() else 0 for f, _, _ in files]
    grand = sum(sizes) or 1
    throttle = Throttle(0.2)
    counter = NoteCounter()
    fill = {str(k): str(v) for k, v in (fill or {}).items()}
    bad = [k for k in fill if not _slot_re().fullmatch("{{" + k + "}}")]
    if bad:
        raise DatasetError(f"Cannot fill the placeholder {bad[0]!r}: a name is letters, digits and _ "
                           "(as in {{name}}).", "Use --fill NAME=VALUE, e.g. --fill name=Tuneloom.")
    counter.fill = fill
    records, issues, formats, total = [], [], {}, 0
    splits: dict[str, list[ChatRecord]] = {}
    loose: list[ChatRecord] = []
    preference: list[PreferenceRecord] = []
    pref_files: dict[str, list[str]] = {}  # preference format -> files
    left_out = 0
    done = 0
    for (f, name, split), size in zip(files, sizes):
        base = done

        def on_bytes(n, base=base, name=name):
            if throttle.ready():
                events.progress(base + n, grand, f"reading {name}")

        events.progress(base, grand, f"reading {name}")
        if name in adapters:  # a file of a LLaMA-Factory folder: one refused whole is a problem, not the end
            try:
                r, iss, fmt, n = load_file(f, mapping, cancel, name=name, on_bytes=on_bytes, template=template,
                                           system=system, notes=counter, fill=fill, adapter=adapters[name])
            except DatasetError as exc:
                lf_issues.append(DatasetIssue(name, None, None, str(exc), exc.hint))
                done += size
                continue
        else:
            r, iss, fmt, n = load_file(f, mapping, cancel, name=name, on_bytes=on_bytes, template=template,
                                       system=system, notes=counter, fill=fill)
        done += size
        formats[name] = fmt
        issues += iss
        total += n
        if fmt in PREFERENCE_FORMATS:
            prefs = [x for x in r if isinstance(x, PreferenceRecord)]
            r = [x for x in r if not isinstance(x, PreferenceRecord)]
            preference += prefs
            pref_files.setdefault(fmt, []).append(name)
            for x in prefs:
                if x.chosen is not None and (use == "chosen" or not x.paired):
                    r.append(x.chosen_record())
                elif split != "test":
                    left_out += 1
        if split:
            splits.setdefault(split, []).extend(r)
        else:
            loose += r
        if split != "test":
            records += r
    if splits and loose:
        splits.setdefault("train", []).extend(loose)
    events.progress(grand, grand, "read")
    ds = Dataset(records, lf_issues + issues, formats, total, splits, lf_notes
                 + _preference_notes(preference, pref_files, use) + counter.notes(), preference, left_out, use)
    events.log("info", f"{ds.total} examples, {len(ds.records)} valid, {len(ds.issues)} problems; format {ds.format}")
    for note in ds.notes:
        events.log("info", note.message)
    if splits.get("train") and splits.get("valid"):
        overlap = {r.key() for r in splits["train"]} & {r.key() for r in splits["valid"]}
        if overlap:
            events.log("warning", f"{len(overlap)} validation example(s) also appear in the training data; "
                                  "the validation loss will look better than it is.")
    return ds


def _preference_notes(prefs: list[PreferenceRecord], files: dict[str, list[str]], use: str | None
                      ) -> list[DatasetNote]:
    if not prefs:
        return []
    out = []
    pairs = sum(1 for p in prefs if p.paired)
    shapes = "; ".join(f"{PREFERENCE_FORMATS[f]} in {', '.join(n)}" for f, n in files.items() if f != "kto")
    if pairs:
        if use == "chosen":
            tail = (f"supervised training learns the chosen answers (--use chosen); the {pairs} rejected "
                    f"answer{'s are' if pairs != 1 else ' is'} left out")
        else:
            tail = ("supervised training needs one answer per example: use the chosen answers (--use chosen), "
                    "or tune on the preferences")
        out.append(DatasetNote("preference_pairs", pairs, f"preference pairs: {pairs} ({shapes}): {tail}"))
    kto = [p for p in prefs if not p.paired]
    if kto:
        bad = sum(1 for p in kto if p.chosen is None)
        good = len(kto) - bad
        out.append(DatasetNote("kto_labels", len(kto),
                               f"KTO labels: {len(kto)} example{'s' if len(kto) != 1 else ''}, {good} desirable and "
                               f"{bad} undesirable ({', '.join(files.get('kto', []))}); supervised training "
                               f"learns every answer it sees, so the {bad} answer{'s' if bad != 1 else ''} labelled "
                               f"undesirable (label false) {'are' if bad != 1 else 'is'} left out and the {good} "
                               "desirable ones trained"))
    return out


def preference_summary(ds: Dataset) -> dict | None:
    """The preference data in a dataset, for ``data check --json`` (key ``preference``); None without any."""
    if not ds.preference:
        return None
    kto = [p for p in ds.preference if not p.paired]
    shapes = {}
    for f, fmt in ds.formats.items():
        if fmt in PREFERENCE_FORMATS:
            shapes[f] = PREFERENCE_FORMATS[fmt]
    return {"pairs": ds.pairs, "kto_desirable": sum(1 for p in kto if p.chosen is not None),
            "kto_undesirable": sum(1 for p in kto if p.chosen is None), "shapes": shapes, "use": ds.use,
            "supervised_examples": sum(1 for p in ds.preference if p.chosen is not None
                                       and (ds.use == "chosen" or not p.paired))}


def require_clean(ds: Dataset, skip_invalid: bool) -> None:
    """The default policy: refuse to train on a dataset with errors unless the user accepted skipping,
    and refuse preference pairs unless the user said which answers supervised training learns."""
    if ds.unused_pairs:
        files = [f for f, fmt in ds.formats.items() if fmt in PREFERENCE_FORMATS and fmt != "kto"]
        raise DatasetError(f"{', '.join(files)} hold{'s' if len(files) == 1 else ''} {ds.unused_pairs} preference "
                           "pairs (a chosen and a rejected answer to each prompt), not examples with one answer: "
                           "supervised training would not know which answer to learn.",
                           "Train on the chosen answers with --use chosen (the Data page: 'Preference pairs: train "
                           "on the chosen answers'), or tune on the preferences (preference tuning: DPO or ORPO).",
                           files[0] if files else None)
    shown = "\n".join(str(i) for i in ds.issues[:10])
    more = f"\n... and {len(ds.issues) - 10} more" if len(ds.issues) > 10 else ""
    if not ds.records:
        raise DatasetError(f"Nothing to train on: none of the {ds.total} examples is valid.\n{shown}{more}",
                           "Fix the problems listed, or check that these are the right files.")
    if ds.issues and not skip_invalid:
        raise DatasetError(f"{len(ds.issues)} problem(s) in the dataset:\n{shown}{more}",
                           "Fix them, or choose to skip invalid examples (--skip-invalid).")


def split_records(records: list[ChatRecord], valid_fraction: float = 0.1, seed: int = 0
                  ) -> tuple[list[ChatRecord], list[ChatRecord]]:
    """Deterministic train/valid split; duplicates of one example stay on one side.

    The split depends only on the examples and the seed (not on their order), holds out
    ``valid_fraction`` of the distinct examples (at least one), and trains on the rest."""
    if not 0 <= valid_fraction < 1:
        raise DatasetError(f"The validation share must be between 0 and 1, not {valid_fraction}.",
                           "Use e.g. 0.1 for 10%.")
    if len(records) < 2:
        raise DatasetError("At least 2 examples are needed (one to train on, one to validate).",
                           "Add more examples.")
    groups: dict[str, list[ChatRecord]] = {}
    for r in records:
        groups.setdefault(r.key(), []).append(r)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n_valid = min(max(1, round(len(keys) * valid_fraction)), len(keys) - 1)
    if n_valid < 1:
        raise DatasetError("All examples are identical, so none can be held out for validation.",
                           "Add different examples.")
    held = set(keys[:n_valid])
    valid = [r for r in records if r.key() in held]
    train = [r for r in records if r.key() not in held]
    return train, valid


TEST_SEED = 0x7E57  # the test draw's own seed offset: a different shuffle from the validation draw


def train_valid_test(ds: Dataset, valid_fraction: float = 0.1, test_fraction: float = 0.0, seed: int = 0,
                     has_test_file: bool = False) -> tuple[list[ChatRecord], list[ChatRecord], list[ChatRecord]]:
    """(train, validation, test) records. The test split is the data's test file (``test.*``) when it
    has one (``has_test_file``: it exists but was not read, as in training), else ``test_fraction`` of
    the distinct training examples drawn before validation (deterministic, duplicates on one side,
    none equal to a validation example); with ``test_fraction`` 0 or fewer than 3 distinct examples
    there is none. Validation is then drawn from the rest exactly as :func:`train_valid` draws it."""
    if not 0 <= test_fraction < 1:
        raise DatasetError(f"The test share must be between 0 and 1, not {test_fraction}.", "Use e.g. 0.1 for 10%.")
    if ds.splits.get("test") or has_test_file:
        train, valid = train_valid(ds, valid_fraction, seed)
        return train, valid, list(ds.splits.get("test") or [])
    pool = ds.splits["train"] if ds.splits.get("train") else ds.records
    if test_fraction <= 0 or len({r.key() for r in pool}) < 3:
        train, valid = train_valid(ds, valid_fraction, seed)
        return train, valid, []
    rest, test = split_records(pool, test_fraction, seed + TEST_SEED)
    if ds.splits.get("valid"):
        valid = ds.splits["valid"]
        held = {r.key() for r in valid}
        return rest, valid, [r for r in test if r.key() not in held]
    train, valid = split_records(rest, valid_fraction, seed)
    return train, valid, test


def train_valid(ds: Dataset, valid_fraction: float = 0.1, seed: int = 0) -> tuple[list[ChatRecord], list[ChatRecord]]:
    if ds.splits.get("train") and ds.splits.get("valid"):
        return ds.splits["train"], ds.splits["valid"]
    if ds.splits.get("train"):
        return split_records(ds.splits["train"], valid_fraction, seed)
    return split_records(ds.records, valid_fraction, seed)


def write_jsonl(records: Iterable[ChatRecord | dict], dest: str | os.PathLike) -> None:
    from core.atomic import write_text

    lines = [json.dumps(export_record(r) if isinstance(r, ChatRecord) else r, ensure_ascii=False)
             for r in records]
    write_text(dest, "\n".join(lines) + "\n")


def issue_dicts(issues: list[DatasetIssue]) -> list[dict]:
    return [i.to_json() for i in issues]


# ---------------------------------------------------------------------------
# The normalised records, written out; reasoning
# ---------------------------------------------------------------------------

def export_record(r: ChatRecord) -> dict:
    """One record in OpenAI's fine-tuning chat format ({"messages": [{"role", "content"}, ...]};
    ``"weight": 0`` on assistant messages not trained; reasoning as ``reasoning_content``).
    Plain text (trained whole, no prompt) is one assistant message, which reads back the same.
    A record with tools keeps them (``tools``), its calls as ``tool_calls`` with object arguments."""
    out: dict = {"messages": [dict(m) for m in r.messages]}
    if getattr(r, "tools", None):
        out["tools"] = r.tools
    return out


def export_jsonl(records: Iterable[ChatRecord | PreferenceRecord], dest: str | os.PathLike) -> int:
    """Write the records (atomically) one per line; returns how many were written. Preference
    records are written in TRL's conversational form (:meth:`PreferenceRecord.to_json`)."""
    from core.atomic import write_text

    lines = [json.dumps(r.to_json() if isinstance(r, PreferenceRecord) else export_record(r), ensure_ascii=False)
             for r in records]
    write_text(dest, "".join(line + "\n" for line in lines))
    return len(lines)


class _AnyColumns:
    """Stands in for a template when reading a table's rows without checking its columns."""

    @staticmethod
    def missing(columns) -> list[str]:
        return []


_ANY_COLUMNS = _AnyColumns()


def sample_rows(paths: Iterable[str | os.PathLike], n: int = 5, cancel: CancelToken | None = None
                ) -> tuple[list[str], list[tuple[int | None, dict]]]:
    """The field names (in order) and the first ``n`` rows, as (line, fields), of the first
    dataset file: what a mapping panel shows. Reads little of a JSONL/CSV file, but a .json
    document is parsed whole: call it off the GUI thread."""
    files = _expand([paths] if isinstance(paths, (str, os.PathLike)) else paths)
    if not files:
        raise DatasetError("No dataset files were given.", "Drop a JSONL, JSON, CSV, TSV or TXT file.")
    path, name, _ = files[0]
    columns: dict[str, None] = {}
    rows: list[tuple[int | None, dict]] = []
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):  # the header names the columns even when no format is recognised
        delimiter = "\t" if suffix == ".tsv" else ","
        for _, line in _iter_text_lines(path, cancel, name=name):
            if line.strip():
                if delimiter == "," and "," not in line and ";" in line:
                    delimiter = ";"
                columns.update(dict.fromkeys(h.strip() for h in next(csv.reader([line], delimiter=delimiter))))
                break
        source = read_rows(path, cancel, name=name, template=_ANY_COLUMNS)  # rows whatever the columns
    else:
        source = read_rows(path, cancel, name=name)
    for line, obj, err in source:
        if isinstance(obj, dict):
            columns.update(dict.fromkeys(map(str, obj)))
            rows.append((line, obj))
            if len(rows) >= n:
                break
    return list(columns), rows


def preview_records(rows: list[tuple[int | None, dict]], *, file: str = "", mapping: dict | None = None,
                    user_template: str | None = None, assistant_template: str | None = None,
                    system: str | None = None) -> tuple[list[ChatRecord], list[DatasetIssue], list[DatasetNote]]:
    """What :func:`load_dataset` makes of these rows with these options: (records, problems, notes).

    Raises DatasetError for options that cannot work at all (a template naming a column no row
    has, unreadable templates), as loading the files would."""
    template = make_template(user_template, assistant_template)
    system = system if system and system.strip() else None
    if template is not None:
        columns: dict[str, None] = {}
        for _, obj in rows:
            columns.update(dict.fromkeys(map(str, obj)))
        missing = template.missing(columns)
        if missing and rows:
            raise _missing_columns_error(file or "the file", template, missing, list(columns))
    counter = NoteCounter()
    records, issues = [], []
    for line, obj in rows:
        fmt = TEMPLATE_FORMAT if template is not None else detect_format(obj, mapping)
        if fmt is None:
            issues.append(DatasetIssue(file, line, None, f"unrecognised example (fields: {sorted(map(str, obj))[:8]})",
                                       _FORMAT_HINT))
            continue
        rec_notes: dict = {}
        try:
            media = _media_in(obj)
            if media is not None:
                raise media
            msgs = _apply_system(normalise(obj, fmt, mapping, template=template, notes=rec_notes), system, rec_notes)
        except _Invalid as inv:
            issues.append(DatasetIssue(file, line, inv.field, inv.message, inv.hint))
            continue
        records.append(ChatRecord(msgs, file, line, record_tools(obj, fmt, mapping)))
        counter.add(rec_notes)
    return records, issues, counter.notes()


def has_reasoning(messages: list[dict]) -> bool:
    return any(m.get("role") == "assistant" and m.get("reasoning_content") for m in messages)


def reasoning_summary(ds: Dataset, template_thinks: bool | None = None) -> str:
    """One sentence for the Data step: does the data carry reasoning, and so is thinking on?

    ``template_thinks``: whether the chosen model's chat template has a thinking mode
    (:attr:`core.tokens.ChatEncoder.supports_thinking`); None when no model is chosen yet."""
    n, total = ds.reasoning, len(ds.records)
    if not n:
        return "No reasoning in the answers: the model is trained with thinking off and answers directly."
    share = f"{n} of {total} examples carry reasoning (<think> blocks or reasoning_content)"
    if template_thinks is None:
        return f"{share}: a model with a thinking mode (Qwen3) is trained with thinking on."
    if template_thinks:
        return f"{share}: thinking is on; the model learns to reason in its <think> block before answering."
    return (f"{share}, but this model's chat template has no thinking mode: the reasoning is trained as part of the "
            "answer text, inside <think> tags.")


__all__ = ["DatasetError", "DatasetIssue", "DatasetNote", "ChatRecord", "PreferenceRecord", "PREFERENCE_FORMATS",
           "normalise_preference", "preference_summary", "Dataset", "load_dataset", "load_file",
           "read_rows", "split_records", "train_valid", "train_valid_test", "test_files", "require_clean",
           "detect_format", "normalise", "record_tools", "write_jsonl",
           "export_jsonl", "export_record", "issue_dicts", "is_plain_text", "has_reasoning", "reasoning_summary",
           "RecordTemplate", "make_template", "sample_rows", "preview_records", "KNOWN_SUFFIXES", "asdict"]
