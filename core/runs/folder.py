"""The one reader of a run folder (:class:`RunFolder`) and the adapter choices it offers."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from core.runs.files import (ADAPTER_CONFIG, BEST_ADAPTERS, CONFIG, DRIFT, EVALUATION, EXPORTS, FINAL_ADAPTERS, META,
                              REPORT_JSON, REPORT_MD, STATUS, _json_object, adapter_file, latest_checkpoint, read_json)
from core.runs.metrics import _number, read_metrics


@dataclass
class ExportInfo:
    """One file made from the run (a GGUF, a Modelfile), with its record when the exporter wrote one."""

    path: Path
    kind: str  # "gguf" / "modelfile"
    size: int = 0
    time: float = 0.0
    record: dict = field(default_factory=dict)  # exports/*.json: quant, Ollama name, ...


@dataclass(frozen=True)
class AdapterChoice:
    """One of a run's adapters, as the Try and Export pages offer it (:func:`adapter_choices`)."""

    which: str  # "best" / "final": what adapter_file(run_dir, which) takes
    label: str  # what a person reads in the list
    step: int | None  # the optimizer step it is from, when known
    path: Path | None  # the weights file it loads (None: the run has none yet)


class RunFolder:
    """The one reader of a run folder (the layout is in the docstring of :mod:`core.runs`).

    Each part is read once, when first asked for, and forgiving: a missing or damaged JSON file reads as
    {} and a damaged metrics line is skipped, so callers decide what a missing part means to them (their
    own errors). :class:`RunInfo` (the history's view, which also says what is damaged) builds on it.
    Nothing here writes."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- the files ---------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def exports_dir(self) -> Path:
        return self.path / EXPORTS

    @property
    def report_json_path(self) -> Path:
        return self.path / REPORT_JSON

    @property
    def report_md_path(self) -> Path:
        return self.path / REPORT_MD

    @property
    def is_run(self) -> bool:
        """Whether the folder has a config.json (what makes it a run's, for history and the readers)."""
        return self.config_path.is_file()

    # -- the JSON parts ------------------------------------------------------------------------------
    @functools.cached_property
    def config(self) -> dict:
        """config.json (the TrainConfig the run was made with); {} when missing or damaged."""
        return _json_object(self.config_path)

    @functools.cached_property
    def status(self) -> dict:
        """status.json (state, step, summary); {} when missing or damaged."""
        return _json_object(self.path / STATUS)

    @functools.cached_property
    def adapter_config(self) -> dict:
        """adapter_config.json (what mlx_lm.load reads); {} when missing or damaged."""
        return _json_object(self.path / ADAPTER_CONFIG)

    @functools.cached_property
    def meta(self) -> dict:
        """run.json (what people gave the run: its title); {} when missing or damaged."""
        m = _json_object(self.path / META)
        return m if isinstance(m.get("title", ""), str) else {}

    @functools.cached_property
    def metrics(self) -> list[dict]:
        """Every complete line of metrics.jsonl (see :func:`read_metrics`)."""
        return read_metrics(self.path)

    @functools.cached_property
    def report(self) -> dict:
        """report.json (core.report's report card); {} when it was not written."""
        return _json_object(self.report_json_path)

    @functools.cached_property
    def evaluation(self) -> dict | None:
        """evaluation.json (the last evaluation's summary, for the report card); None when there is none."""
        v = read_json(self.path / EVALUATION)
        return v if isinstance(v, dict) else None

    @functools.cached_property
    def forgetting(self) -> dict | None:
        """drift.json (the last forgetting check's result); None when there is none."""
        v = read_json(self.path / DRIFT)
        return v if isinstance(v, dict) else None

    def report_text(self) -> str | None:
        """report.md (the report card in words); None when it was not written or cannot be read."""
        try:
            return self.report_md_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    @property
    def base_model(self) -> str:
        """The base model folder the run was trained on ('' when the folder does not say)."""
        base = self.adapter_config.get("base_model") or self.config.get("model")
        return base if isinstance(base, str) else ""

    def system_prompt(self) -> str | None:
        """The run's own system prompt setting (config "system" or "system_prompt"), when it has one."""
        for k in ("system", "system_prompt"):
            if isinstance(self.config.get(k), str) and self.config[k].strip():
                return self.config[k]
        return None

    # -- steps and adapters ------------------------------------------------------------------------
    @property
    def best_step(self) -> int | None:
        """The step of the best adapter (lowest validation loss), when the run kept one."""
        return _best_step(self.status, self.config)

    @property
    def last_step(self) -> int | None:
        """The last optimizer step done: from the status, or else from the metrics (None: no step known)."""
        s = int(_number(self.status.get("step") or self.status.get("steps") or 0) or 0)
        if not s:
            s = max((int(_number(m.get("step", 0)) or 0) for m in self.metrics if "train_loss" in m), default=0)
        return s or None

    @property
    def final_adapter(self) -> Path | None:
        """adapters.safetensors (the latest weights; the final ones once the run is done), when there."""
        p = self.path / FINAL_ADAPTERS
        return p if p.exists() else None

    @property
    def best_adapter(self) -> Path | None:
        """adapters_best.safetensors (the weights at the lowest validation loss), when the run kept it."""
        p = self.path / BEST_ADAPTERS
        return p if p.exists() else None

    @property
    def has_adapter(self) -> bool:
        """Whether an adapter can be loaded from the folder (adapters.safetensors + adapter_config.json)."""
        return (self.path / FINAL_ADAPTERS).is_file() and (self.path / ADAPTER_CONFIG).is_file()

    def adapter(self, which: str = "best") -> Path:
        """The weights file for ``which`` ("best" or "final"): see :func:`adapter_file`."""
        return adapter_file(self.path, which)

    def adapter_choices(self) -> list[AdapterChoice]:
        """The best and the final adapter, with their labels and steps (:func:`adapter_choices`)."""
        final = self.final_adapter
        # the final adapter's step is known once the run is done; a stopped run's is the latest it saved
        final_step = self.last_step if final is not None and self.status.get("state") == "done" else None
        best, best_step = self.best_adapter, self.best_step
        if best is not None:
            best_choice = AdapterChoice("best", "Best adapter (lowest validation loss"
                                        + (f", step {best_step})" if best_step is not None else ")"), best_step, best)
        elif final is not None:  # no best kept (never validated, or an older run): "best" loads the final one
            best_choice = AdapterChoice("best", "Best adapter (none kept: the final one)", final_step, final)
        else:
            best_choice = AdapterChoice("best", "Best adapter (lowest validation loss)", None, None)
        if final is None:
            final_label = "Final adapter (the last step)"
        elif final_step is not None:
            final_label = f"Final adapter (the last step, step {final_step})"
        else:
            final_label = "Final adapter (the latest saved)"
        return [best_choice, AdapterChoice("final", final_label, final_step, final)]

    # -- checkpoints and exports ---------------------------------------------------------------------
    @property
    def checkpoints(self) -> list[Path]:
        """The complete checkpoints (checkpoints/step-N/ with a state.json), oldest first."""
        ck = self.path / "checkpoints"
        try:
            done = [d for d in ck.iterdir()
                    if d.is_dir() and d.name.startswith("step-") and (d / "state.json").exists()]
        except OSError:
            return []
        return sorted(done, key=lambda d: int(d.name.split("-")[1]) if d.name.split("-")[1].isdigit() else -1)

    @property
    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.path)

    def checkpoint_state(self, ck: Path) -> dict:
        """A checkpoint's state.json (core.checkpoints wrote it: the step, each file's size and checksum,
        the config's fingerprint); {} when missing or damaged. core.checkpoints verifies it."""
        return _json_object(Path(ck) / "state.json")

    def export_record(self, name: str) -> dict:
        """exports/NAME (a JSON record an exporter wrote there); {} when missing or damaged."""
        return _json_object(self.exports_dir / name)

    def export_records(self) -> list[dict]:
        """Every JSON record in exports/ (one per export, and quant_price.json), by file name; a damaged
        one is left out (the file it named is still listed by :attr:`exports`, without it)."""
        try:
            files = sorted(self.exports_dir.glob("*.json"))
        except OSError:
            return []
        return [rec for rec in (read_json(j) for j in files) if isinstance(rec, dict)]

    @functools.cached_property
    def exports(self) -> list[ExportInfo]:
        """The exported files, read once (app.gui.jobs.load_run reads them off the GUI thread)."""
        d = self.exports_dir
        if not d.is_dir():
            return []
        records = {}
        for rec in self.export_records():
            for key in ("gguf", "path", "file"):
                if isinstance(rec.get(key), str) and rec.get(key):
                    records[Path(rec[key]).name] = rec
        out = []
        for p in sorted(d.iterdir()):
            kind = "gguf" if p.suffix == ".gguf" else (
                "modelfile" if p.name.startswith("Modelfile") or p.name.endswith(".Modelfile") else "")
            if not kind or not p.is_file():
                continue
            st = p.stat()
            out.append(ExportInfo(p, kind, st.st_size, st.st_mtime, records.pop(p.name, {})))
        # GGUFs written elsewhere (`tuneloom export RUN --gguf ANYWHERE`), while they are still there
        listed = {e.path for e in out}
        for rec in records.values():
            p = Path(str(rec.get("gguf") or ""))
            if p.suffix == ".gguf" and p not in listed and p.is_file():
                listed.add(p)
                st = p.stat()
                out.append(ExportInfo(p, "gguf", st.st_size, st.st_mtime, rec))
        return out


def _best_step(status: dict, config: dict) -> int | None:
    for d in (status, config):
        v = d.get("best_step")
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def adapter_choices(run_dir: Path | None) -> list[AdapterChoice]:
    """The adapters a person picks between on the Try and Export pages: "best" (lowest validation loss;
    the final one when the run kept none) and "final" (the last step), in that order, labelled with their
    steps. ``run_dir`` None (no run yet): the same two choices without steps."""
    if run_dir is None:
        return [AdapterChoice("best", "Best adapter (lowest validation loss)", None, None),
                AdapterChoice("final", "Final adapter (the last step)", None, None)]
    return RunFolder(run_dir).adapter_choices()
