"""The jobs the window runs on worker threads: ``core`` calls put together for what a page shows.

No Qt here. Each function has the job signature ``fn(*args, events=None, cancel=None)`` so
:class:`app.gui.workers.Job` can run it, and returns a plain object the page displays. The
work itself (reading, validating, tokenizing, downloading) is ``core``'s; these functions
only choose what to ask it for the screen (the first few examples, the split sizes) and
report progress while they do.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.data import KNOWN_SUFFIXES, ChatRecord, Dataset, DatasetError
from core.events import NULL_EVENTS, Throttle, TuneloomError

PREVIEW_EXAMPLES = 10  # examples rendered on the Data page (as chat and as training text)


# --------------------------------------------------------------------------- datasets

@dataclass
class DataReport:
    dataset: Dataset
    paths: list[Path]
    files: dict[str, Path]  # the file names issues and records use -> the file on disk
    duplicates: int
    n_train: int = 0
    n_valid: int = 0
    split_source: str = ""  # how the split was made, in words
    split_error: str | None = None


def dataset_files(paths: list[Path]) -> dict[str, Path]:
    """The names ``core.data`` gives the files it reads (a folder's files as folder/name) -> their paths."""
    out: dict[str, Path] = {}
    for p in map(Path, paths):
        if p.is_dir():
            for x in sorted(p.iterdir()):
                if x.is_file() and x.suffix.lower() in KNOWN_SUFFIXES:
                    out[f"{p.name}/{x.name}"] = x
        else:
            out[p.name] = p
    return out


def load_data_report(paths: list[Path], valid_fraction: float = 0.1, events=None, cancel=None) -> DataReport:
    """Read and validate the files, then the split sizes and duplicates (hashing every record is
    not for the GUI thread)."""
    from core.data import load_dataset, train_valid

    events = events or NULL_EVENTS
    paths = [Path(p) for p in paths]
    ds = load_dataset(paths, events=events, cancel=cancel)
    if cancel is not None:
        cancel.raise_if_cancelled()
    events.progress(None, None, "checking duplicates and the split")
    report = DataReport(ds, paths, dataset_files(paths), ds.duplicates())
    if ds.splits.get("train") and ds.splits.get("valid"):
        report.split_source = "from the train and valid files"
    else:
        report.split_source = f"{valid_fraction:.0%} held out for validation"
    if ds.records:
        try:
            tr, va = train_valid(ds, valid_fraction)
            report.n_train, report.n_valid = len(tr), len(va)
        except DatasetError as exc:
            report.split_error = exc.user_message()
    return report


# --------------------------------------------------------------------------- tokens

@dataclass
class TokenReport:
    model_dir: Path
    lengths: list[int]
    stats: dict
    # per previewed example: the exact training text as (text, trained) runs
    previews: list[list[tuple[str, bool]]] = field(default_factory=list)
    preview_error: str | None = None


_encoders: dict[str, object] = {}
_encoders_lock = threading.Lock()


def encoder_for(model_dir: Path):
    """One ChatEncoder per model folder (loading a tokenizer takes a moment)."""
    from core.tokens import ChatEncoder

    key = str(Path(model_dir).resolve())
    with _encoders_lock:
        enc = _encoders.get(key)
        if enc is None:
            enc = _encoders[key] = ChatEncoder(model_dir)
        return enc


def training_runs(encoder, messages: list[dict]) -> list[tuple[str, bool]]:
    """The text the model is trained on for ``messages`` (chat template applied, as tokenized),
    split into runs the loss is (True) or is not (False) computed on.

    Each run is cut out of the decoded prefix, so a character made of several tokens, or
    a tokenizer that drops a leading space when decoding a lone piece, never garbles it."""
    enc = encoder.encode(messages, mask_prompt=True)
    bounds: list[tuple[int, bool]] = []  # (end index, trained) of each run
    for i, m in enumerate(enc.mask):
        if bounds and bounds[-1][1] == m:
            bounds[-1] = (i + 1, m)
        else:
            bounds.append((i + 1, m))
    out, prev = [], ""
    for end, trained in bounds:
        text = encoder.tok.decode(enc.ids[:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        piece = text[len(prev):] if text.startswith(prev) else text
        prev = text
        if piece:
            out.append((piece, trained))
    return out


def measure_tokens(records: list[ChatRecord], model_dir: Path, max_seq_len: int = 512,
                   n_preview: int = PREVIEW_EXAMPLES, events=None, cancel=None) -> TokenReport:
    """Token lengths of every record with the model's tokenizer, and the training text of the first few."""
    from core.tokens import token_stats

    events = events or NULL_EVENTS
    events.progress(0, len(records), "loading the tokenizer")
    encoder = encoder_for(model_dir)
    previews: list[list[tuple[str, bool]]] = []
    preview_error = None
    for r in records[:n_preview]:
        try:
            previews.append(training_runs(encoder, r.messages))
        except TuneloomError as exc:
            preview_error = exc.user_message()
            break
    throttle = Throttle(0.1)
    total = len(records)

    def counted():
        for i, r in enumerate(records):
            if throttle.ready():
                events.progress(i, total, f"measuring token lengths: {i:,} of {total:,} examples")
            # hand the GIL over between examples: a GUI thread waiting for it gets it now rather
            # than after the interpreter's switch interval (each repaint asks for it many times)
            time.sleep(0)
            yield r

    stats = token_stats(encoder, counted(), max_seq_len, cancel=cancel)
    events.progress(total, total, "measured")
    return TokenReport(Path(model_dir), stats.pop("lengths"), stats, previews, preview_error)


# --------------------------------------------------------------------------- raw records

@dataclass
class RawRecord:
    file: str
    first_line: int
    lines: list[str]
    pretty: str | None = None  # the record re-indented, when it is one JSON object


MAX_RAW_CHARS = 200_000


def read_raw_record(path: Path, line: int, events=None, cancel=None) -> RawRecord:
    """The text of the record that starts at ``line`` (1-based) of ``path``, as it is in the file.

    JSON Lines: that line. JSON: up to 40 lines from there. CSV/TSV: up to 10 lines (a quoted
    field may hold newlines). Text: the block up to the next blank line."""
    path = Path(path)
    suffix = path.suffix.lower()
    span = {".json": 40, ".csv": 10, ".tsv": 10}.get(suffix, 1)
    paragraph = suffix in (".txt", ".md")
    lines: list[str] = []
    size = 0
    with open(path, "r", encoding="utf-8-sig", errors="replace", newline=None) as fh:
        for no, text in enumerate(fh, 1):
            if cancel is not None and no % 10000 == 0:
                cancel.raise_if_cancelled()
            if no < line:
                continue
            text = text.rstrip("\n")
            if paragraph and lines and not text.strip():
                break
            lines.append(text[:MAX_RAW_CHARS])
            size += len(lines[-1])
            if (not paragraph and len(lines) >= span) or size >= MAX_RAW_CHARS or len(lines) >= 200:
                break
    pretty = None
    if len(lines) == 1 and lines[0].lstrip().startswith("{"):
        try:
            pretty = json.dumps(json.loads(lines[0]), indent=2, ensure_ascii=False)
        except ValueError:
            pass
    return RawRecord(path.name, line, lines, pretty)


# --------------------------------------------------------------------------- models

@dataclass
class CardInfo:
    """What a model card shows (from the catalog, or a hub id the user typed)."""

    key: str
    name: str
    hub_id: str | None
    revision: str | None = None
    params: int | None = None
    download_bytes: int | None = None
    licence: str = ""
    chat_format: str = ""
    quantized: bool = False
    bundled: bool = False
    fits: bool | None = None
    fit_reason: str = ""
    train_memory_bytes: int | None = None
    path: Path | None = None  # the model folder, when it is here
    partial_bytes: int = 0  # bytes of an interrupted download kept in the cache
    notes: str = ""
    entry: object = None  # the CatalogEntry, for core.catalog.fetch_entry


def partial_download_bytes(hub_id: str | None) -> int:
    """Bytes of unfinished files ``core.hub`` keeps for resuming (``blobs/*.incomplete``)."""
    if not hub_id:
        return 0
    from core.hub import repo_cache_dir

    blobs = repo_cache_dir(hub_id) / "blobs"
    try:
        return sum(p.stat().st_size for p in blobs.glob("*.incomplete"))
    except OSError:
        return 0


def card_for_entry(entry, memory_bytes: int | None = None) -> CardInfo:
    from core import catalog

    ok, why = catalog.fits(entry, memory_bytes)
    path = catalog.model_dir(entry)
    return CardInfo(entry.key, entry.name, entry.hub_id, entry.revision, entry.params, entry.download_bytes,
                    entry.licence, entry.chat_format, entry.quantized, entry.is_local, ok, why,
                    entry.train_memory_bytes, path, 0 if path else partial_download_bytes(entry.hub_id),
                    entry.notes, entry)


def card_for_hub_id(hub_id: str) -> CardInfo:
    """A card for a model outside the catalog: only what the cache tells is known before downloading."""
    from core.hub import cached_snapshot

    path = cached_snapshot(hub_id)
    return CardInfo(f"hub:{hub_id}", hub_id, hub_id, None, path=path,
                    partial_bytes=0 if path else partial_download_bytes(hub_id),
                    notes="Added by Hugging Face id; size, licence and memory are known once it is downloaded.")


def catalog_cards(custom_ids: list[str] = (), events=None, cancel=None) -> list[CardInfo]:
    from core import catalog

    mem = catalog.machine_memory_bytes()
    cards = [card_for_entry(e, mem) for e in catalog.load_catalog()]
    # the bundled demo first: it is always there and works offline
    cards.sort(key=lambda c: not c.bundled)
    known = {c.hub_id.lower() for c in cards if c.hub_id}
    cards += [card_for_hub_id(h) for h in custom_ids if h.lower() not in known]
    return cards


def fetch_card(card: CardInfo, events=None, cancel=None):
    """Download (or resume, or find in the cache) the card's model; returns core.hub.FetchResult."""
    from core import catalog, hub

    if card.entry is not None:
        return catalog.fetch_entry(card.entry, events=events, cancel=cancel)
    return hub.fetch_model(card.hub_id, card.revision, events=events, cancel=cancel)


def check_model(path: Path, events=None, cancel=None):
    """``core.hub.validate_model_dir`` (it loads the tokenizer: a second or two)."""
    from core.hub import validate_model_dir

    events = events or NULL_EVENTS
    events.progress(None, None, f"checking {Path(path).name}")
    return validate_model_dir(path)


def is_model_folder(path: Path) -> bool:
    """A dropped folder is a model (not a dataset folder) when it holds a config.json."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()
