"""Limits that keep memory bounded and rejection fast.

Module constants so tests can lower them: the readers look them up here when they run
(``limits.JUNK_ROWS``), so patch this module, not the package that re-exports them.
"""
from __future__ import annotations


MAX_FILE_BYTES = 1 << 30  # "several GB" is not a fine-tuning set for a desktop LoRA run
MAX_JSON_BYTES = 512 << 20  # a .json document is parsed whole
MAX_RECORD_CHARS = 16 << 20  # one line / row / text document longer than this is not an example
MAX_ISSUES = 1000  # problems kept per file; the rest are counted
JUNK_ROWS = 1000  # this many rows without one recognisable example: the file is not a dataset
CHUNK_BYTES = 1 << 20
SNIFF_BYTES = 64 * 1024
