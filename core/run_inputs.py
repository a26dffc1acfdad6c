"""What a run was trained from, read back from its folder: its training config, base model, chat
encoder, data splits (drawn again exactly as training drew them) and trained system prompt.

Evaluation (:mod:`core.evaluate`) and chat (:mod:`core.generate`) both need these; they live here,
below both, so that neither imports the other for them (:mod:`core.evaluate` and
:mod:`core.generate` re-export the names their callers use).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from core import runs
from core.events import NULL_EVENTS, CancelToken, Events, TuneloomError


def _train_config(run_dir: str | Path):
    from core.train import run_config

    run = Path(run_dir)
    saved = runs.RunFolder(run).config
    if not saved:
        raise TuneloomError(f"{run} is not a run folder (no config.json).", "Pick a folder under runs/.")
    return run_config(saved)


def _load(paths, cfg, mapping, cancel, events, skip_splits=()):
    """load_dataset as training calls it (the run's field mapping, templates and system prompt)."""
    from core.data import load_dataset

    extra = {"user_template": getattr(cfg, "user_template", None),
             "assistant_template": getattr(cfg, "assistant_template", None),
             "system": getattr(cfg, "system_prompt", None), "use": getattr(cfg, "use", None),
             "fill": getattr(cfg, "fill", None)}
    return load_dataset(paths, mapping=mapping, events=events, cancel=cancel, skip_splits=skip_splits,
                        **{k: v for k, v in extra.items() if v is not None})


def run_encoder(run_dir: str | Path, model_dir: str | Path | None = None):
    """The run's ChatEncoder: its base model's template, in the thinking mode it was trained in."""
    from core.tokens import ChatEncoder

    cfg = _train_config(run_dir)
    model_dir = model_dir or cfg.model
    if getattr(cfg, "thinking", False):
        return ChatEncoder(model_dir, thinking=True)
    return ChatEncoder(model_dir)


def _warn_if_changed(run_dir: Path, paths, events: Events) -> None:
    """The split is redrawn from the files: say so when they changed after the run started."""
    started = (run_dir / "config.json").stat().st_mtime
    files = []
    for p in map(Path, paths):
        files += [x for x in p.iterdir() if x.is_file()] if p.is_dir() else [p]
    changed = [f.name for f in files if f.stat().st_mtime > started + 1]
    if changed:
        events.log("warning", f"{', '.join(changed)} changed after this run was trained: the validation "
                              "examples may not be the ones training held out.")


def run_split(run_dir: str | Path, *, events: Events | None = None, cancel: CancelToken | None = None):
    """(training records, validation records) of a run, drawn as its training drew them."""
    splits = run_splits(run_dir, events=events, cancel=cancel)
    return splits["train"], splits["validation"]


def run_splits(run_dir: str | Path, *, events: Events | None = None, cancel: CancelToken | None = None
               ) -> dict[str, list]:
    """{"train", "validation", "test"}: a run's records, drawn as its training drew them (the test
    split: the data's test file, else the share set aside; empty for runs without one)."""
    from core.data import DatasetError, test_files, train_valid_test

    cfg = _train_config(run_dir)
    missing = [p for p in cfg.data if not Path(p).exists()]
    if missing:
        raise TuneloomError(f"The run's dataset {missing[0]} is not there any more.",
                            "Give the examples to evaluate on instead (tuneloom eval RUN --data FILE).")
    _warn_if_changed(Path(run_dir), cfg.data, events or NULL_EVENTS)
    try:
        ds = _load(cfg.data, cfg, cfg.mapping, cancel, events or NULL_EVENTS)
        tr, va, te = train_valid_test(ds, cfg.valid_fraction, cfg.test_fraction, cfg.seed,
                                      has_test_file=bool(test_files(cfg.data)))
        return {"train": tr, "validation": va, "test": te}
    except DatasetError as exc:
        raise TuneloomError(f"The run's dataset cannot be read any more: {exc}", exc.hint) from exc


def run_pair_splits(run_dir: str | Path, *, events: Events | None = None, cancel: CancelToken | None = None
                    ) -> dict[str, list]:
    """{"train", "validation", "test"}: the preference pairs of a run trained with DPO / ORPO, drawn as
    its training drew them (the test pairs: the data's test file's, else the share set aside); empty
    lists for data without pairs."""
    from core.data import DatasetError, test_files
    from core.train.preference import split_pairs

    cfg = _train_config(run_dir)
    events = events or NULL_EVENTS
    tests = test_files(cfg.data)
    try:
        ds = _load(cfg.data, cfg, cfg.mapping, cancel, events, skip_splits={"test"})  # as training read it
        tr, va, te = split_pairs(ds, cfg.valid_fraction, cfg.seed, True, cfg.test_fraction, bool(tests))
        if tests:
            te = [p for p in _load(tests, cfg, cfg.mapping, cancel, events).preference if p.paired]
    except DatasetError:
        return {"train": [], "validation": [], "test": []}
    return {"train": tr, "validation": va, "test": te}


def run_pairs(run_dir: str | Path, data: list[str | Path] | None = None, *, events: Events | None = None,
              cancel: CancelToken | None = None, split: str | None = None) -> list:
    """The held-out preference pairs of a run trained with DPO / ORPO (every pair of the given files,
    else the run's ``split``: by default its test pairs, its validation pairs when it has none);
    [] for chat data."""
    from core.data import DatasetError

    if data:
        cfg = _train_config(run_dir)
        try:
            ds = _load([str(p) for p in data], cfg, cfg.mapping, cancel, events or NULL_EVENTS)
        except DatasetError:
            return []
        return [p for p in ds.preference if p.paired]
    splits = run_pair_splits(run_dir, events=events, cancel=cancel)
    return splits[split or ("test" if splits["test"] else "validation")]


def file_examples(paths: list[str | Path], cfg=None, *, events: Events | None = None,
                  cancel: CancelToken | None = None):
    """The records of the given files (read with the run's mapping and templates where they fit):
    a dataset folder's test (else validation) split, else all of them."""
    events = events or NULL_EVENTS
    mapping = getattr(cfg, "mapping", None)
    ds = _load(paths, cfg, mapping, cancel, events)
    if not ds.records and not ds.splits.get("test") and cfg is not None:  # the run's layout may not fit
        ds = _load(paths, None, None, cancel, events)
    if ds.issues:
        events.log("warning", f"{len(ds.issues)} example(s) cannot be read and are left out; first: {ds.issues[0]}")
    recs = ds.splits.get("test") or ds.splits.get("valid") or ds.records
    if not recs:
        raise TuneloomError(f"No usable example in {', '.join(map(str, paths))}.",
                            "Run `tuneloom data check` on the file to see its problems.")
    return recs


def run_base_model(run_dir: str | Path) -> Path:
    """The base model folder a run was trained on."""
    run = runs.RunFolder(run_dir)
    if not run.is_run:
        raise TuneloomError(f"{run.path} is not a run folder (no config.json).", "Pick a folder under runs/.")
    base = run.base_model
    if not base:
        raise TuneloomError(f"{run.path} does not say which base model it was trained on.")
    if not (Path(base) / "config.json").is_file():
        raise TuneloomError(f"The run's base model {base} is not there any more.",
                            "Download it again (Model step), then come back to this run.")
    return Path(base)


def trained_system_prompt(run_dir: str | Path, records=None) -> str | None:
    """The system prompt the run was trained with: the run's own setting where it has one, else
    the system message most of its training examples start with (None if there is none)."""
    own = runs.RunFolder(run_dir).system_prompt()
    if own is not None:
        return own
    if records is None:
        try:
            records = run_split(run_dir)[0]
        except TuneloomError:
            return None
    firsts = Counter()
    for r in records:
        msgs = r.messages if hasattr(r, "messages") else r
        if msgs and msgs[0].get("role") == "system" and isinstance(msgs[0].get("content"), str):
            firsts[msgs[0]["content"]] += 1
    if not firsts:
        return None
    text, n = firsts.most_common(1)[0]
    return text if n * 2 >= len(records) else None
