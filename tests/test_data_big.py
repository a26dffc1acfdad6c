"""Multi-GB junk files are refused fast and with little memory: the reader streams and
stops at the first sign that a file is not a dataset. The 2 GB files are sparse (or
mostly sparse), so the tests cost little disk and no time to write."""
from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from core import data
from core.data import limits  # the readers look the limits up there
from core.data import DatasetError, load_dataset

GB2 = 2 * 1024**3
SECONDS = 3.0  # "under a few seconds": CPU seconds of this process, which other jobs on the machine do not stretch
PEAK_BYTES = 96 * 2**20  # far below the file size; the record limit (16 MB of text) dominates


def sparse(path: Path, head: bytes = b"", size: int = GB2) -> Path:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)  # the rest reads as NUL bytes and takes no disk
    return path


def refuse(path: Path) -> tuple[DatasetError, float, int]:
    tracemalloc.start()
    t0 = time.process_time()
    try:
        with pytest.raises(DatasetError) as err:
            load_dataset([path])
        seconds = time.process_time() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert path.stat().st_size >= GB2
    return err.value, seconds, peak


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".txt"])
def test_2gb_of_nul_bytes_is_binary(tmp_path, suffix):
    err, seconds, peak = refuse(sparse(tmp_path / f"zeros{suffix}"))
    assert "binary file" in str(err) and "byte offset 0" in str(err)
    assert seconds < SECONDS and peak < 4 * 2**20


def test_2gb_of_non_utf8_names_the_offset(tmp_path):
    # non-UTF-8 text beyond the first 64 KB sniffed, then sparse
    err, seconds, peak = refuse(sparse(tmp_path / "latin.jsonl", b'{"text": "caf\xe9 au lait"}\n' * 5000))
    assert "not valid UTF-8" in str(err) and "byte offset 13" in str(err) and "line 1" in str(err)
    assert seconds < SECONDS and peak < 4 * 2**20


def test_2gb_text_file_is_too_large(tmp_path):
    # valid text throughout the first MBs: the size alone refuses it, before reading on
    err, seconds, peak = refuse(sparse(tmp_path / "big.jsonl", b'{"text": "hello"}\n' * 100000))
    assert "2.0 GB" in str(err) and "up to 1 GB" in str(err) and "sample" in err.hint
    assert seconds < SECONDS and peak < 4 * 2**20
    err, _, _ = refuse(sparse(tmp_path / "big.json", b"[" + b'{"text": "hello"},' * 5000))
    assert "too large" in str(err) or "up to 1 GB" in str(err)


@pytest.fixture
def no_size_limit(monkeypatch):
    """Make the reader meet the content of a 2 GB file, not its size."""
    monkeypatch.setattr(limits, "MAX_FILE_BYTES", 1 << 40)
    monkeypatch.setattr(limits, "MAX_JSON_BYTES", 1 << 40)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".txt"])
def test_2gb_single_giant_line_stops_at_the_record_limit(tmp_path, no_size_limit, suffix):
    # 24 MB of one JSON string (written), then sparse: the reader must give up after 16 MB
    head = (b"text\n" if suffix == ".csv" else b"") + b'{"text": "' + b"a" * (24 * 2**20)
    err, seconds, peak = refuse(sparse(tmp_path / f"line{suffix}", head))
    assert "longer than 16 MB" in str(err) and ("line 1" in str(err) or "line 2" in str(err))
    assert seconds < SECONDS and peak < PEAK_BYTES


def test_2gb_json_document_without_size_limit_stops_early(tmp_path, no_size_limit):
    err, seconds, peak = refuse(sparse(tmp_path / "doc.json", b"a" * (4 * 2**20)))
    assert "is not JSON" in str(err)
    assert seconds < SECONDS and peak < PEAK_BYTES


def test_2gb_of_junk_lines_stops_after_the_first_thousand(tmp_path, no_size_limit):
    err, seconds, peak = refuse(sparse(tmp_path / "junk.jsonl", b"this is not json\n" * 500000))
    assert f"none of its first {data.JUNK_ROWS} lines is valid JSON" in str(err)
    assert seconds < SECONDS and peak < PEAK_BYTES
    err, seconds, peak = refuse(sparse(tmp_path / "objs.jsonl", b'{"id": 1, "body": "x"}\n' * 500000))
    assert "none of its first" in str(err) and "'body'" in str(err)
    assert seconds < SECONDS and peak < PEAK_BYTES


def test_nul_after_good_lines_is_caught_without_reading_on(tmp_path, no_size_limit):
    err, seconds, peak = refuse(sparse(tmp_path / "tail.jsonl", b'{"text": "hello"}\n' * 10000))
    assert "binary file" in str(err) and "byte offset 180000" in str(err)
    assert seconds < SECONDS and peak < PEAK_BYTES
