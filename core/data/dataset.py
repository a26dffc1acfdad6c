"""Several files, folders and splits (LLaMA-Factory's dataset_info.json too): one :class:`Dataset`."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Iterable

from core.data.fields import _norm_key, _type_name
from core.data.formats import MAPPABLE_KEYS, PREFERENCE_FORMATS
from core.data.load import NoteCounter, load_file
from core.data.records import (
    KNOWN_SUFFIXES, SPLIT_NAMES, ChatRecord, Dataset, DatasetError, DatasetIssue, DatasetNote, PreferenceRecord,
)
from core.data.templates import _slot_re, make_template
from core.events import CancelToken, Events, NULL_EVENTS, Progress, Throttle


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
    files, adapters, lf_issues, lf_notes = _dataset_files(list(paths), set(skip_splits))
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
                events.report_progress(Progress(base + n, grand, "byte", f"reading {name}", item=name))

        events.report_progress(Progress(base, grand, "byte", f"reading {name}", item=name))
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
    events.report_progress(Progress(grand, grand, "byte", "read"))
    ds = Dataset(records, lf_issues + issues, formats, total, splits, lf_notes
                 + _preference_notes(preference, pref_files, use) + counter.notes(), preference, left_out, use)
    _log_dataset(ds, events)
    return ds


def _dataset_files(paths: list, skip_splits: set[str]
                   ) -> tuple[list[tuple[Path, str, str | None]], dict[str, Callable], list[DatasetIssue],
                              list[DatasetNote]]:
    """(files as (path, name, split), {file name: the row rewriting its dataset_info.json entry asks for},
    problems and notes of LLaMA-Factory folders) for :func:`load_dataset`; refuses no file at all."""
    lf = [Path(p) for p in paths if Path(p).is_dir() and (Path(p) / DATASET_INFO).is_file()]
    adapters: dict[str, Callable] = {}
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
    files = [f for f in files if f[2] not in skip_splits] if skip_splits else files
    if not files:
        raise DatasetError("No dataset files were given." if not lf else
                           f"{lf[0].name}/{DATASET_INFO} names no file in the folder.",
                           "Drop a JSONL, JSON, CSV, TSV or TXT file.")
    return files, adapters, lf_issues, lf_notes


def _log_dataset(ds: Dataset, events: Events) -> None:
    events.log("info", f"{ds.total} examples, {len(ds.records)} valid, {len(ds.issues)} problems; format {ds.format}")
    for note in ds.notes:
        events.log("info", note.message)
    if ds.splits.get("train") and ds.splits.get("valid"):
        overlap = {r.key() for r in ds.splits["train"]} & {r.key() for r in ds.splits["valid"]}
        if overlap:
            events.log("warning", f"{len(overlap)} validation example(s) also appear in the training data; "
                                  "the validation loss will look better than it is.")


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
