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
    n_test: int = 0  # the test split (core.data.train_valid_test): kept for the final evaluation, never trained on
    test_source: str = ""  # where the test split comes from, in words
    test_fraction: float = 0.0  # the test share the split was made with (the Train page's option)
    split_source: str = ""  # how the split was made, in words
    split_error: str | None = None
    reasoning: int = 0  # examples carrying reasoning (counting them is not for the GUI thread)
    # core.data.reasoning_summary for each answer to "does the template think?" (None: no model yet)
    reasoning_lines: dict = field(default_factory=dict)


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


def load_data_report(paths: list[Path], valid_fraction: float = 0.1, events=None, cancel=None,
                     options: dict | None = None, test_fraction: float = 0.0) -> DataReport:
    """Read and validate the files, then the split sizes and duplicates (hashing every record is
    not for the GUI thread). ``options``: load_dataset's keyword arguments (a column mapping).
    The split is the trainer's (core.data.train_valid_test): a test file, else ``test_fraction`` of the
    examples, is kept for the final test before validation is drawn."""
    from core.data import load_dataset

    events = events or NULL_EVENTS
    paths = [Path(p) for p in paths]
    ds = load_dataset(paths, **(options or {}), events=events, cancel=cancel)
    if cancel is not None:
        cancel.raise_if_cancelled()
    events.progress(None, None, "checking duplicates and the split")
    from core.data import reasoning_summary

    report = DataReport(ds, paths, dataset_files(paths), ds.duplicates())
    report.reasoning = ds.reasoning
    if ds.records:
        report.reasoning_lines = {k: reasoning_summary(ds, k) for k in (None, True, False)}
    if ds.splits.get("train") and ds.splits.get("valid"):
        report.split_source = "from the train and valid files"
    else:
        report.split_source = f"{valid_fraction:.0%} held out for validation"
    if ds.records:
        fill_split(report, valid_fraction, test_fraction)
    return report


def fill_split(report: DataReport, valid_fraction: float, test_fraction: float) -> DataReport:
    """The split sizes of ``report``'s dataset as the trainer draws them (core.data.train_valid_test)."""
    from core.data import test_files, train_valid_test

    report.test_fraction = test_fraction
    report.split_error = None
    try:
        test_named = [Path(f).name for f in test_files(report.paths)]
        tr, va, te = train_valid_test(report.dataset, valid_fraction, test_fraction, has_test_file=bool(test_named))
        report.n_train, report.n_valid, report.n_test = len(tr), len(va), len(te)
        report.test_source = (f"from {', '.join(test_named)}" if test_named else
                              f"{test_fraction:.0%} of the examples" if te else "")
    except DatasetError as exc:
        report.split_error = exc.user_message()
    return report


def resplit(report: DataReport, valid_fraction: float, test_fraction: float, events=None, cancel=None) -> DataReport:
    """The same dataset split again with another test share (hashing every record is not for the GUI thread)."""
    import dataclasses

    return fill_split(dataclasses.replace(report), valid_fraction, test_fraction)


# --------------------------------------------------------------------------- tokens

@dataclass
class TokenReport:
    model_dir: Path
    lengths: list[int]
    stats: dict
    # per previewed example: the exact training text as (text, trained) runs
    previews: list[list[tuple[str, bool]]] = field(default_factory=list)
    preview_error: str | None = None
    template_thinks: bool | None = None  # the model's chat template has a thinking mode


_encoders: dict[tuple[str, bool], object] = {}
_encoders_lock = threading.Lock()


def encoder_for(model_dir: Path, thinking: bool = False):
    """One ChatEncoder per model folder and thinking mode (loading a tokenizer takes a moment).
    ``thinking``: the dataset carries reasoning (ChatEncoder turns it on where the template can)."""
    from core.tokens import ChatEncoder

    key = (str(Path(model_dir).resolve()), bool(thinking))
    with _encoders_lock:
        enc = _encoders.get(key)
        if enc is None:
            enc = _encoders[key] = ChatEncoder(model_dir, thinking=bool(thinking))
        return enc


def training_runs(encoder, messages: list[dict], tools: list[dict] | None = None) -> list[tuple[str, bool]]:
    """The training text of ``messages`` as (text, trained) runs: ``core.tokens.training_runs``
    (with the record's ``tools``, the template's tool prompt is in it)."""
    from core.tokens import training_runs as core_runs

    return core_runs(encoder, messages, tools=tools)


def measure_tokens(records: list[ChatRecord], model_dir: Path, max_seq_len: int = 512,
                   n_preview: int = PREVIEW_EXAMPLES, events=None, cancel=None, thinking: bool = False) -> TokenReport:
    """Token lengths of every record with the model's tokenizer, and the training text of the first few.
    ``thinking``: the dataset carries reasoning (``bool(dataset.reasoning)``)."""
    from core.tokens import token_stats

    events = events or NULL_EVENTS
    events.progress(0, len(records), "loading the tokenizer")
    encoder = encoder_for(model_dir, thinking)
    previews: list[list[tuple[str, bool]]] = []
    preview_error = None
    for r in records[:n_preview]:
        try:
            previews.append(training_runs(encoder, r.messages, getattr(r, "tools", None)))
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
    return TokenReport(Path(model_dir), stats.pop("lengths"), stats, previews, preview_error,
                       bool(getattr(encoder, "supports_thinking", False)))


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


# --------------------------------------------------------------------------- run history

@dataclass
class RunSummary:
    """A run as the history lists it: its record, and its curves thinned for drawing."""

    info: object  # core.runs.RunInfo (metrics dropped after summarising)
    train: tuple[list, list]  # (steps, losses), at most CURVE_POINTS
    valid: tuple[list, list]
    steps: int = 0
    final_train: float | None = None
    final_valid: float | None = None


CURVE_POINTS = 600


def thin(xs: list, ys: list, n: int = CURVE_POINTS) -> tuple[list, list]:
    if len(xs) <= n:
        return list(xs), list(ys)
    k = (len(xs) + n - 1) // n
    return list(xs[::k]) + [xs[-1]], list(ys[::k]) + [ys[-1]]


def summarize_run(info) -> RunSummary:
    tx, ty = info.series("train_loss")
    vx, vy = info.series("valid_loss")
    s = RunSummary(info, thin(tx, ty), (vx, vy), max(info.steps, tx[-1] if tx else 0),
                   ty[-1] if ty else None, info.final_valid_loss)
    info.metrics = None  # the full list stays on disk; History reads it again for the run it opens
    return s


def load_history(root: Path | None = None, events=None, cancel=None) -> list[RunSummary]:
    """Every run folder, newest first, read from disk (CLI runs included)."""
    from core import runs

    out = []
    for d in runs.run_dirs(root):
        if cancel is not None:
            cancel.raise_if_cancelled()
        try:
            info = runs.RunInfo.load(d, metrics=True)
            if info is not None:
                out.append(summarize_run(info))
        except Exception as exc:  # noqa: BLE001 - damage to one run costs that run only: it is listed as damaged
            info = runs.RunInfo(Path(d), {}, {}, problem=f"cannot be read ({type(exc).__name__}: {exc})")
            out.append(RunSummary(info, ([], []), ([], [])))
        time.sleep(0)  # hand the GIL to the window between runs
    return out


def load_run(path: Path, events=None, cancel=None):
    """One run with all its metrics (History opens it; Train resumes it)."""
    from core import runs

    info = runs.RunInfo.load(Path(path), metrics=True)
    if info is not None:
        info.exports  # noqa: B018 - read here, on the job's thread: the History lists them (cached)
        info.report_md = info.folder.report_text()  # the report card (core.report), shown by the History
    return info


# --------------------------------------------------------------------------- several Macs

def check_hosts(hostfile: Path, paths: list, events=None, cancel=None) -> list:
    """The host file's Macs, each checked (core.distributed.HostCheck): ssh to every one waits on the
    network, seconds per Mac, so not on the GUI thread. ``paths``: the model and data every Mac needs."""
    from core import distributed as dist

    return dist.check_hosts(dist.read_hostfile(hostfile), paths)


def copy_missing_and_check(hostfile: Path, paths: list, bad: list, events=None, cancel=None) -> list:
    """Copy what the Macs of ``bad`` (HostChecks) lack to the same paths there, then check every Mac again."""
    from core import distributed as dist

    dist.copy_missing(bad, events=events)
    return dist.check_hosts(dist.read_hostfile(hostfile), paths)

