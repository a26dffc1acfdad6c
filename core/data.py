"""Datasets: read what users drop, detect the format, validate, normalise to chat records.

Files: JSONL (``.jsonl``/``.ndjson``), JSON (an array of examples, an object holding one
such array, or JSONL saved as ``.json``), CSV/TSV (header row; quoted fields may hold
newlines; ``;``-separated CSV as Excel writes it in some locales), plain text (``.txt``:
documents separated by blank lines; ``.md``: one document), Parquet (with the optional
``pyarrow``). Several files at once, and folders; a folder (or a set of files) with
``train``/``valid``(/``test``) files is the split mlx-lm uses.

Encodings: UTF-8 with or without BOM, UTF-16 with BOM; LF, CRLF or CR line ends.
Anything else is refused with the byte offset of the first bad byte. Files are
streamed: rejecting a multi-GB file reads at most a few MB of it.

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

    def to_json(self) -> dict:
        return {"kind": self.kind, "count": self.count, "message": self.message, "fields": self.fields}


@dataclass
class ChatRecord:
    messages: list[dict]
    file: str = ""
    line: int | None = None

    def key(self) -> str:
        blob = json.dumps(self.messages, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha1(blob.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class Dataset:
    records: list[ChatRecord]
    issues: list[DatasetIssue]
    formats: dict[str, str]  # file -> detected format
    total: int  # records seen, valid or not
    # from train/valid(/test) files; files given beside them count as training data
    splits: dict[str, list[ChatRecord]] = field(default_factory=dict)
    notes: list[DatasetNote] = field(default_factory=list)  # what normalisation changed or left out

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
        return self.total - len(self.records) - sum(len(v) for k, v in self.splits.items() if k == "test")

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


def _read_text(path: Path, cancel, name: str, on_bytes=None) -> Iterator[tuple[int, Any, str | None]]:
    whole = path.suffix.lower() == ".md"  # a Markdown file is one document; .txt: blank-line separated
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
        row = 0
        for batch in pf.iter_batches(batch_size=1024):
            for item in batch.to_pylist():
                row += 1
                yield row, item, None
            if cancel is not None:
                cancel.raise_if_cancelled()
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        if isinstance(exc, TuneloomError):
            raise
        raise DatasetError(f"{name} cannot be read as Parquet ({exc}).", "Export the data again, or as JSONL.",
                           name) from None


def read_rows(path: Path, cancel: CancelToken | None = None, *, name: str | None = None, mapping=None,
              on_bytes=None, template: "RecordTemplate | None" = None) -> Iterator[tuple[int | None, Any, str | None]]:
    """Yield (line, raw object or None, parse error or None) for one file."""
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
        return _read_text(path, cancel, name, on_bytes)
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
_MESSAGE_KEYS = set(_ROLE_KEYS + _CONTENT_KEYS + ("weight", "reasoning_content"))
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
        if role == "tool" or (role == "assistant" and m.get("tool_calls")):
            msg = {k: v for k, v in m.items() if k not in (rkey, ckey) and k != wkey}  # passed through
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


def _completion_messages(val: Any, fld: str, notes: dict | None) -> tuple[list[dict], list[str]]:
    msgs, wheres = _convert_messages(val, fld, notes=notes)
    for m, w in zip(msgs, wheres):
        if m["role"] not in ("assistant", "tool"):
            raise _Invalid(w, f"the completion holds a {m['role']} message; it may hold only the assistant's answer",
                           "move the other messages into the prompt")
    return msgs, wheres


def _system_msgs(system: str | None) -> list[dict]:
    return [{"role": "system", "content": system}] if system else []


def normalise(obj: Any, fmt: str, mapping: dict[str, str] | None = None, *,
              template: "RecordTemplate | None" = None, notes: dict | None = None) -> list[dict]:
    """Turn one raw record of format ``fmt`` into chat messages, or raise _Invalid.

    ``notes`` (a dict) collects what was changed or left out on the way, for the dataset's
    summary: nothing a user wrote is dropped without being counted."""
    if fmt == TEMPLATE_FORMAT:
        if template is None:
            raise _Invalid(None, "no templates given", "give a user and an assistant template")
        used = template.apply(obj, notes)
        _note_extra(obj, {_norm_key(f) for f in template.fields()}, notes)
        return used
    if not isinstance(obj, dict):
        raise _Invalid(None, f"an example must be an object with named fields, found {_type_name(obj)}", _FORMAT_HINT)
    used_keys = {_norm_key(mapping.get(k, k)) if mapping else k
                 for k in dict(FORMATS).get(fmt, ()) + OPTIONAL_KEYS.get(fmt, ())}
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
        if is_plain_text(out) and "weight" not in out[0] and "reasoning_content" not in out[0] and (
                system is None or system == ""):
            return out  # one assistant message and nothing else: plain text, as `data export` writes it
        with_sys = _with_system(out, system, sname)
        if len(with_sys) > len(out):
            wheres = [sname] + wheres
        _check_order(with_sys, name, wheres)
        return with_sys
    system = _text_field(obj, "system", mapping, required=False, notes=notes)
    if fmt == "alpaca":
        instr = _text_field(obj, "instruction", mapping, notes=notes)
        extra = _text_field(obj, "input", mapping, required=False, notes=notes)
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
            return msgs
        p = _text_field(obj, a, mapping, notes=notes)
        c = _text_field(obj, b, mapping, answer=True, notes=notes)
        return _system_msgs(system) + [{"role": "user", "content": p}, {"role": "assistant", "content": c}]
    if fmt == "text":
        t = _text_field(obj, "text", mapping, answer=True, notes=notes)
        # Plain text has no prompt: the whole document is trained on.
        return [{"role": "assistant", "content": t}]
    raise _Invalid(None, f"unknown format {fmt}", _FORMAT_HINT)


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


def load_file(path: Path, mapping=None, cancel=None, *, name: str | None = None, on_bytes=None,
              template: RecordTemplate | None = None, system: str | None = None,
              notes: "NoteCounter | None" = None) -> tuple[list[ChatRecord], list[DatasetIssue], str, int]:
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
    total = recognised = 0
    fields_seen: Counter = Counter()
    columns: dict[str, None] = {}  # every field name seen, in order (for template errors)
    for line, obj, err in read_rows(path, cancel, name=file, mapping=mapping, on_bytes=on_bytes, template=template):
        total += 1
        if template is not None and isinstance(obj, dict) and err is None:
            this = TEMPLATE_FORMAT
            if len(columns) < 1000:
                columns.update(dict.fromkeys(map(str, obj)))
        else:
            this = None if err else detect_format(obj, mapping)
        if this is None:
            if isinstance(obj, dict):
                fields_seen.update(map(str, obj))
            if recognised == 0 and total >= JUNK_ROWS:
                seen = [k for k, _ in fields_seen.most_common(8)]
                raise DatasetError(f"{file}: none of its first {total} examples has a known format"
                                   + (f" (fields seen: {seen})." if seen else "."), _FORMAT_HINT, file)
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
            msgs = _apply_system(normalise(obj, this, mapping, template=template, notes=rec_notes), system, rec_notes)
            rows.append((line, this, ChatRecord(msgs, file, line), None, rec_notes))  # notes count once valid
        except _Invalid as inv:
            keep = kept < 2 * MAX_ISSUES
            kept += keep
            rows.append((line, this, None, DatasetIssue(file, line, inv.field, inv.message, inv.hint) if keep else None,
                         None))
    if total == 0:
        raise DatasetError(f"{file} holds no examples.", "Add at least one example.", file)
    if template is not None and columns:
        missing = template.missing(columns)
        if missing:  # no example has the column: the template is wrong, not the examples
            raise _missing_columns_error(file, template, missing, list(columns))
    if recognised == 0:
        first = next((r[3] for r in rows if r[3] is not None), None)
        if first is not None and first.message.startswith("not valid JSON"):
            raise DatasetError(f"{file}: no example in it can be read ({first.message} at line {first.line}).",
                               "Fix the file, or check that it is the right one.", file)
        seen = [k for k, _ in fields_seen.most_common(8)]
        raise DatasetError(f"{file}: no example in it has a known format" + (f" (fields seen: {seen})." if seen else "."),
                           _FORMAT_HINT, file)
    fmt = max(fmt_count, key=lambda f: (fmt_count[f], -first_fmt[f]))
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
                notes.add(obj)
        elif issue is None:
            dropped += 1
        else:
            if obj is not None:  # say what this example lacks to be in the file's format
                try:
                    normalise(obj, fmt, mapping, template=template)
                except _Invalid as inv:
                    issue = DatasetIssue(file, line, inv.field, inv.message, inv.hint)
            issues.append(issue)
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

    def add(self, rec_notes: dict | None) -> None:
        for kind, val in (rec_notes or {}).items():
            self.examples[kind] += 1
            if isinstance(val, set):
                self.names.setdefault(kind, Counter()).update(val)
            else:
                self.items[kind] += int(val)

    def notes(self) -> list["DatasetNote"]:
        out = []

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

_NOT_DATA = {"readme", "license", "licence", "changelog", "notice", "citation"}


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
                 system: str | None = None, events: Events | None = None,
                 cancel: CancelToken | None = None, skip_splits: Iterable[str] = ()) -> Dataset:
    """Read and validate every file; invalid records are reported in ``issues``, never raised.

    ``mapping`` ({our field: their field}, e.g. {"prompt": "Frage", "completion": "Antwort"})
    overrides the automatic field matching. ``user_template`` and ``assistant_template``
    (e.g. "Pokemon name: {name}" and "{types}") write the messages from any fields instead;
    ``system`` is a system prompt for every example that has none. Files of a split named in
    ``skip_splits`` are not opened at all (training skips ``"test"``: the test set stays unseen)."""
    events = events or NULL_EVENTS
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
    files = _expand(paths)
    skip_splits = set(skip_splits)
    files = [f for f in files if f[2] not in skip_splits] if skip_splits else files
    if not files:
        raise DatasetError("No dataset files were given.", "Drop a JSONL, JSON, CSV, TSV or TXT file.")
    sizes = [f.stat().st_size if f.is_file() else 0 for f, _, _ in files]
    grand = sum(sizes) or 1
    throttle = Throttle(0.2)
    counter = NoteCounter()
    records, issues, formats, total = [], [], {}, 0
    splits: dict[str, list[ChatRecord]] = {}
    loose: list[ChatRecord] = []
    done = 0
    for (f, name, split), size in zip(files, sizes):
        base = done

        def on_bytes(n, base=base, name=name):
            if throttle.ready():
                events.progress(base + n, grand, f"reading {name}")

        events.progress(base, grand, f"reading {name}")
        r, iss, fmt, n = load_file(f, mapping, cancel, name=name, on_bytes=on_bytes, template=template, system=system,
                                   notes=counter)
        done += size
        formats[name] = fmt
        issues += iss
        total += n
        if split:
            splits.setdefault(split, []).extend(r)
        else:
            loose += r
        if split != "test":
            records += r
    if splits and loose:
        splits.setdefault("train", []).extend(loose)
    events.progress(grand, grand, "read")
    ds = Dataset(records, issues, formats, total, splits, counter.notes())
    events.log("info", f"{ds.total} examples, {len(ds.records)} valid, {len(ds.issues)} problems; format {ds.format}")
    for note in ds.notes:
        events.log("info", note.message)
    if splits.get("train") and splits.get("valid"):
        overlap = {r.key() for r in splits["train"]} & {r.key() for r in splits["valid"]}
        if overlap:
            events.log("warning", f"{len(overlap)} validation example(s) also appear in the training data; "
                                  "the validation loss will look better than it is.")
    return ds


def require_clean(ds: Dataset, skip_invalid: bool) -> None:
    """The default policy: refuse to train on a dataset with errors unless the user accepted skipping."""
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

    lines = [json.dumps({"messages": r.messages} if isinstance(r, ChatRecord) else r, ensure_ascii=False)
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
    Plain text (trained whole, no prompt) is one assistant message, which reads back the same."""
    return {"messages": [dict(m) for m in r.messages]}


def export_jsonl(records: Iterable[ChatRecord], dest: str | os.PathLike) -> int:
    """Write the records (atomically) one per line; returns how many were written."""
    from core.atomic import write_text

    lines = [json.dumps(export_record(r), ensure_ascii=False) for r in records]
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
            msgs = _apply_system(normalise(obj, fmt, mapping, template=template, notes=rec_notes), system, rec_notes)
        except _Invalid as inv:
            issues.append(DatasetIssue(file, line, inv.field, inv.message, inv.hint))
            continue
        records.append(ChatRecord(msgs, file, line))
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


__all__ = ["DatasetError", "DatasetIssue", "DatasetNote", "ChatRecord", "Dataset", "load_dataset", "load_file",
           "read_rows", "split_records", "train_valid", "train_valid_test", "test_files", "require_clean", "detect_format", "normalise", "write_jsonl",
           "export_jsonl", "export_record", "issue_dicts", "is_plain_text", "has_reasoning", "reasoning_summary",
           "RecordTemplate", "make_template", "sample_rows", "preview_records", "KNOWN_SUFFIXES", "asdict"]
