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

The package, cut along the steps a file goes through (each module imports only those above it):

* :mod:`~core.data.limits`: memory and rejection limits (patch these here in tests);
* :mod:`~core.data.records`: what a dataset becomes (:class:`ChatRecord`, :class:`PreferenceRecord`,
  :class:`Dataset`, :class:`DatasetIssue`, :class:`DatasetNote`, :class:`DatasetError`);
* :mod:`~core.data.fields`: one example's fields (look-ups, text checks, notes, media refused);
* :mod:`~core.data.formats`: format detection and normalisation to chat / preference records;
* :mod:`~core.data.templates`: any table read through user / assistant templates; placeholders;
* :mod:`~core.data.read`: encodings, bounded lines, raw rows of every file type;
* :mod:`~core.data.load`: one file read as a dataset, notes counted;
* :mod:`~core.data.dataset`: several files, folders, splits, LLaMA-Factory folders;
* :mod:`~core.data.export`: records written out, row previews, reasoning in words.

Every public name (and those the rest of the project uses) is re-exported here: ``from core.data
import X`` reads as it did when this was one module.
"""
from __future__ import annotations

from dataclasses import asdict  # noqa: F401  (in __all__ since the single-module days)

from core.data.limits import (  # noqa: F401
    CHUNK_BYTES, JUNK_ROWS, MAX_FILE_BYTES, MAX_ISSUES, MAX_JSON_BYTES, MAX_RECORD_CHARS, SNIFF_BYTES,
)
from core.data.records import (  # noqa: F401
    JSONL_SUFFIXES, KNOWN_SUFFIXES, ROLES, SHAREGPT_ROLES, SPLIT_NAMES, TEXT_SUFFIXES, ChatRecord, Dataset,
    DatasetError, DatasetIssue, DatasetNote, PreferenceRecord, has_reasoning,
)
from core.data.fields import (  # noqa: F401
    MEDIA_HINT, THINK_CLOSE, THINK_OPEN,
)
from core.data.formats import (  # noqa: F401
    FORMATS, MAPPABLE_KEYS, OPTIONAL_KEYS, PREFERENCE_FORMATS, TEMPLATE_FORMAT, detect_format, is_plain_text,
    normalise, normalise_preference, record_tools,
)
from core.data.templates import (  # noqa: F401
    RecordTemplate, make_template,
)
from core.data.read import (  # noqa: F401
    DOC_LINE_CHARS, read_rows,
)
from core.data.load import (  # noqa: F401
    NoteCounter, load_file,
)
from core.data.dataset import (  # noqa: F401
    DATASET_INFO, TEST_SEED, load_dataset, preference_summary, require_clean, split_records, test_files,
    train_valid, train_valid_test,
)
from core.data.export import (  # noqa: F401
    export_jsonl, export_record, issue_dicts, preview_records, reasoning_summary, sample_rows, write_jsonl,
)

__all__ = ["DatasetError", "DatasetIssue", "DatasetNote", "ChatRecord", "PreferenceRecord", "PREFERENCE_FORMATS",
           "normalise_preference", "preference_summary", "Dataset", "load_dataset", "load_file",
           "read_rows", "split_records", "train_valid", "train_valid_test", "test_files", "require_clean",
           "detect_format", "normalise", "record_tools", "write_jsonl",
           "export_jsonl", "export_record", "issue_dicts", "is_plain_text", "has_reasoning", "reasoning_summary",
           "RecordTemplate", "make_template", "sample_rows", "preview_records", "KNOWN_SUFFIXES", "asdict"]
