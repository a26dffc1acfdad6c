"""The normalised records written out; previews of a file's rows; reasoning in words."""
from __future__ import annotations

import csv
import json
import os
from typing import Iterable

from core.data.dataset import _expand
from core.data.fields import _Invalid, _media_in
from core.data.formats import TEMPLATE_FORMAT, _FORMAT_HINT, detect_format, normalise, record_tools
from core.data.load import NoteCounter, _apply_system
from core.data.read import _iter_text_lines, read_rows
from core.data.records import ChatRecord, Dataset, DatasetError, DatasetIssue, DatasetNote, PreferenceRecord
from core.data.templates import _missing_columns_error, make_template
from core.events import CancelToken


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
