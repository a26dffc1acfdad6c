"""Reading files: encodings, bounded lines, and raw rows (line, object or None, parse error or None)."""
from __future__ import annotations

import codecs
import csv
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from core.data import limits
from core.data.fields import _json_loads, _norm_key
from core.data.formats import FORMATS, _looks_like_record, detect_format
from core.data.records import JSONL_SUFFIXES, KNOWN_SUFFIXES, TEXT_SUFFIXES, DatasetError
from core.data.templates import RecordTemplate, _missing_columns_error
from core.events import CancelToken, TuneloomError


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
    max_line = limits.MAX_RECORD_CHARS if max_line is None else max_line
    with open(path, "rb") as fh:
        head = fh.read(limits.SNIFF_BYTES)
        codec, bom = _sniff(head, file)
        fh.seek(bom)
        decoder = codecs.getincrementaldecoder(codec)("strict")
        offset = bom  # bytes read so far
        parts: list[str] = []  # the line being read
        part_len = 0
        no = 0
        newline = None
        while True:
            chunk = fh.read(limits.CHUNK_BYTES)
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
def _read_jsonl(path: Path, cancel, name: str, on_bytes=None) -> Iterator[tuple[int, Any, str | None]]:
    seen_text = parsed = 0
    for no, line in _iter_text_lines(path, cancel, name=name, on_bytes=on_bytes):
        if not line.strip():
            continue
        seen_text += 1
        obj, err = _json_loads(line)
        if err is None:
            parsed += 1
        elif parsed == 0 and seen_text >= limits.JUNK_ROWS:
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
    if size > limits.MAX_JSON_BYTES:
        raise DatasetError(f"{name} is {size / 2**20:.0f} MB: too large to read as one JSON document "
                           f"(the limit is {limits.MAX_JSON_BYTES / 2**20:.0f} MB).",
                           "Convert it to JSONL (one example per line); large files are streamed then.", name)
    with open(path, "rb") as fh:
        head = fh.read(limits.SNIFF_BYTES)
    codec, bom = _sniff(head, name)
    first = head[bom:].decode(codec, "ignore").lstrip()[:1]
    if first and first not in "[{":  # say so now rather than after reading 500 MB
        raise DatasetError(f"{name} is not JSON: it starts with {first!r} rather than '[' or '{{'.",
                           "Save the examples as a JSON array, or as JSONL with the .jsonl extension.", name)
    lines = [line for _, line in _iter_text_lines(path, cancel, name=name, max_line=limits.MAX_JSON_BYTES,
                                                  on_bytes=on_bytes)]
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
    if csv.field_size_limit() < limits.MAX_RECORD_CHARS:
        csv.field_size_limit(limits.MAX_RECORD_CHARS)
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
        for key in dict(FORMATS).get(fmt, ()):  # (a preference header: its columns named the format)
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
            if size > limits.MAX_RECORD_CHARS:
                raise DatasetError(f"{name}: the text starting at line {start} is longer than "
                                   f"{limits.MAX_RECORD_CHARS / 2**20:.0f} MB.",
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
            head = fh.read(limits.SNIFF_BYTES)
        codec, bom = _sniff(head, name)
        try:
            codecs.getincrementaldecoder(codec)("strict").decode(head[bom:], False)
        except UnicodeDecodeError as exc:
            line = 1 + exc.object[:exc.start].decode(codec, "replace").count("\n")
            raise _decode_error(name, codec, bom + exc.start, exc.object[exc.start:exc.end], line) from None
    if size > limits.MAX_FILE_BYTES:
        raise DatasetError(f"{name} is {size / 2**30:.1f} GB; Tuneloom reads dataset files up to "
                           f"{limits.MAX_FILE_BYTES / 2**30:.0f} GB.",
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
