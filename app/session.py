"""The state the steps share, without Qt: the chosen model, the dataset, the current run, the jobs.

Widgets read it and drive it; tests drive it without widgets. Every change is announced through
:attr:`Session.changed` (callbacks get the names of the fields that changed), and the sidebar's
step states are a pure function of it (:func:`step_states`). Like napari's ``components`` models:
the Qt views sit on top and never the other way round.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

STEPS = ["Model", "Data", "Train", "Try", "Export"]
MODEL, DATA, TRAIN, TRY, EXPORT = range(5)
DEMO_NAME = "Tuneloom demo model (bundled)"


class Emitter:
    """A list of callbacks: ``connect(fn)``, ``disconnect(fn)``, ``emit(*args)``."""

    def __init__(self):
        self._subs: list[Callable] = []

    def connect(self, fn: Callable) -> Callable:
        if fn not in self._subs:
            self._subs.append(fn)
        return fn

    def disconnect(self, fn: Callable) -> None:
        if fn in self._subs:
            self._subs.remove(fn)

    def emit(self, *args) -> None:
        for fn in list(self._subs):
            fn(*args)


@dataclass(eq=False)
class Session:
    """What the window knows. Change it with :meth:`update` (or attribute assignment): listeners
    connected to :attr:`changed` are called with the set of field names that changed."""

    model_dir: Path | None = None
    model_name: str | None = None
    model_check: Any = None  # core.hub.ModelCheck of model_dir
    model_checking: Path | None = None  # a folder being checked right now
    downloading: tuple[str, ...] = ()  # catalog keys / hub ids being downloaded
    data_paths: list[Path] = field(default_factory=list)
    data_loading: bool = False
    # how the Data step reads the files, as TrainConfig fields (mapping, user_template, system_prompt, ...)
    data_options: dict = field(default_factory=dict)
    dataset: Any = None  # core.data.Dataset
    data_report: Any = None  # app.gui.jobs.DataReport
    token_report: Any = None  # app.gui.jobs.TokenReport
    run_dir: Path | None = None  # the current run: what Train shows and Try / Export act on
    # job kind -> "running" / "pausing" / "paused" / "stopping" (absent: idle); see app.gui.workers.JobSlot
    jobs: dict[str, str] = field(default_factory=dict)
    run_version: int = 0  # bumped when something on disk about the current run changed (trained, exported)

    def __post_init__(self):
        object.__setattr__(self, "changed", Emitter())
        object.__setattr__(self, "_quiet", False)

    def __setattr__(self, name, value):
        if name in _FIELDS and "changed" in self.__dict__:
            self.update(**{name: value})
        else:
            object.__setattr__(self, name, value)

    def update(self, **values) -> set[str]:
        """Set fields; announce those whose value changed. Returns their names."""
        changed = set()
        for k, v in values.items():
            if k not in _FIELDS:
                raise AttributeError(f"Session has no field {k!r}")
            if k in ("model_dir", "model_checking", "run_dir") and v is not None:
                v = Path(v)
            if k == "data_paths":
                v = [Path(p) for p in v]
            old = getattr(self, k, None)
            if old is v or (type(old) is type(v) and _same(old, v)):
                continue
            object.__setattr__(self, k, v)
            changed.add(k)
        if changed:
            self.changed.emit(changed)
        return changed

    # -- jobs
    def set_job(self, kind: str, state: str | None) -> None:
        jobs = dict(self.jobs)
        if state is None:
            jobs.pop(kind, None)
        else:
            jobs[kind] = state
        self.update(jobs=jobs)

    def job(self, kind: str) -> str | None:
        return self.jobs.get(kind)

    def busy(self, kind: str) -> bool:
        return kind in self.jobs

    def touch_run(self) -> None:
        """Something of the current run changed on disk (it was trained, exported)."""
        self.update(run_version=self.run_version + 1)

    # -- derived
    @property
    def trained(self) -> bool:
        from core.runs import RunFolder

        return self.run_dir is not None and RunFolder(self.run_dir).final_adapter is not None

    @property
    def usable_dataset(self) -> bool:
        # chat records, or preference pairs (trained with a preference method, or on their chosen answers)
        return self.dataset is not None and bool(getattr(self.dataset, "records", None)
                                                 or getattr(self.dataset, "pairs", 0))

    def train_blocker(self) -> str | None:
        """Why training cannot start now, in words (None: it can)."""
        if self.model_checking is not None and self.model_dir is None:
            return "The model is being checked; a moment."
        if self.model_dir is None:
            return "Choose a model first (step 1)."
        if self.data_loading:
            return "The dataset is still being read; a moment."
        if self.dataset is None:
            return "Add a dataset first (step 2), or use the sample dataset."
        if not self.usable_dataset:
            return "None of the examples can be used: fix the problems shown in step 2, or add other files."
        if self.busy("train"):
            return "A run is in progress."
        return None


_FIELDS = {f.name for f in fields(Session)}


_PLAIN = (Path, str, int, float, bool, tuple, list, dict)


def _same(a, b) -> bool:
    """Equal values for plain fields; the same object for the rest (a dataset is compared by identity:
    comparing every record would take as long as reading them)."""
    return isinstance(a, _PLAIN) and a == b


def step_states(s: Session) -> dict[str, tuple[str, str, str]]:
    """{step: (state, one-line detail, tooltip)}; state is done / ready / busy / blocked."""
    out: dict[str, tuple[str, str, str]] = {}
    downloading = list(s.downloading)
    if s.model_checking is not None:
        out["Model"] = ("busy", "checking the model...", "Checking the model folder")
    elif s.model_dir is not None:
        name = s.model_name or s.model_dir.name
        out["Model"] = ("done", name, f"Done: {name}" + (f"\nDownloading: {', '.join(downloading)}"
                                                        if downloading else ""))
    elif downloading:
        out["Model"] = ("busy", "downloading...", "Downloading " + ", ".join(downloading))
    else:
        out["Model"] = ("ready", "choose a model", "Ready: choose a model")

    ds = s.dataset
    if s.data_loading:
        out["Data"] = ("busy", "checking the files...", "Reading and checking the dataset")
    elif ds is not None and ds.records:
        probs = f", {ds.invalid:,} with problems" if ds.invalid else ""
        n = len(ds.records)
        noun = "example" if n == 1 else "examples"
        out["Data"] = ("done", f"{n:,} {noun}{probs}", f"Done: {n:,} usable {noun}{probs}")
    elif ds is not None and getattr(ds, "unused_pairs", 0):  # preference data: which answers to learn
        out["Data"] = ("ready", f"{ds.unused_pairs:,} preference pairs", "Ready: preference pairs; tick 'Train on the "
                       "chosen answers' to train on them")
    elif ds is not None:
        out["Data"] = ("ready", "no usable examples", "Ready: none of the examples can be used; fix the "
                       "problems or drop other files")
    else:
        out["Data"] = ("ready", "add your examples", "Ready: drop a dataset or use the sample dataset")

    trained = s.trained
    train_job = s.job("train")
    if train_job == "paused":
        out["Train"] = ("busy", "paused", "Training is paused: Resume continues it")
    elif train_job:
        out["Train"] = ("busy", "training...", "Training")
    elif s.model_dir is None:
        out["Train"] = ("blocked", "needs a model", "Blocked: choose a model first")
    elif ds is None or not ds.records:
        out["Train"] = ("blocked", "needs examples", "Blocked: add a dataset with usable examples first")
    elif trained:
        out["Train"] = ("done", s.run_dir.name, f"Done: run {s.run_dir.name}; you can train again")
    else:
        out["Train"] = ("ready", "ready to train", "Ready: start training")

    if trained:
        out["Try"] = ("ready", "ask both models", "Ready: compare the original and the fine-tuned model")
        from core.runs import RunFolder

        exports = RunFolder(s.run_dir).exports_dir
        exported = exports.is_dir() and any(exports.glob("*.gguf"))
        if s.busy("export"):
            out["Export"] = ("busy", "exporting...", "Exporting")
        elif exported:
            out["Export"] = ("done", "GGUF written", "Done: a GGUF file was written for this run")
        else:
            out["Export"] = ("ready", "write a GGUF", "Ready: export the fine-tuned model")
    else:
        out["Try"] = ("blocked", "needs a trained model", "Blocked: train a model first")
        out["Export"] = ("blocked", "needs a trained model", "Blocked: train a model first")
    return out
