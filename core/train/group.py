"""A training run on several Macs, as a job like :func:`core.train.train`.

``core.distributed`` starts the group (``mlx.launch``, one ``tuneloom train`` per host) and rank 0
writes the run folder exactly as a one-process run does. This module turns that into the job
protocol a front end already speaks: the hosts' checks and rank 0's messages become
``events.log``, and a follower thread reads ``metrics.jsonl`` as rank 0 appends to it and reports
each record through ``events.step`` / ``events.metric`` as the in-process trainer would, so the
window's curve, figures and log fill the same way. Stop works (every rank stops after its step and
rank 0 keeps a checkpoint); pause does not, because the ranks wait on each other in every step and
one parked Mac would hold the others in the middle of a collective.
"""
from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import fields, replace
from pathlib import Path

from core import distributed as dist
from core import runs
from core.events import NULL_EVENTS, CancelToken, Cancelled, Events, Progress, StepReport, TuneloomError
from core.options import OPTIONS
from core.train.config import DEFAULT_PRESET, TrainConfig, preset_config
from core.train.preference import METRIC_KEYS

# How each option goes on the command line is its core.options record's ``flag``; the options whose flag the
# CLI writes itself (flag "") go by their kind: a text as a value, a bool as a switch, a dict as NAME=VALUE
# pairs, one flag each. Their flags' names, where they differ from the field's:
_OWN_FLAG = {"system_prompt": "system", "mapping": "map"}
_OWN_HOW = {"str": "value", "bool": "switch", "dict": "pairs"}
# not passed as options: the model, the data and the run folder come first; `thinking` is set from the data by
# the trainer itself; the column mapping (--map) comes last
_NOT_OPTIONS = {"model", "data", "out", "thinking", "mapping"}

PAUSE_TEXT = ("A run on several Macs cannot be paused (the Macs wait on each other in every step). "
              "Stop it instead: a checkpoint is kept and Resume continues the same curve.")


def train_args(cfg: TrainConfig) -> list[str]:
    """The ``tuneloom train`` arguments that make ``cfg``: every option that differs from the default
    preset's value (the command starts from that preset when no --preset is given).

    Values go as ``--flag=value`` so that one starting with a dash (a template, a negative layer
    count) is not read as a flag. With ``iters`` given, ``epochs`` is left out: the parser takes one
    of the two, and the step count alone decides the run's length. The preset is the one of the
    run's method, as the command takes it (a preference method changes the batch and learning rate)."""
    default = preset_config(DEFAULT_PRESET, cfg.method)
    out = ["--model", str(cfg.model), "--data", *[str(p) for p in cfg.data]]
    if cfg.out:
        out.append(f"--out={cfg.out}")
    for f in fields(TrainConfig):
        name = f.name
        value = getattr(cfg, name)
        if name in _NOT_OPTIONS or value == default[name] or value is None:
            continue  # an option left out is the preset's (None: the CLI's default when not given)
        if name == "epochs" and cfg.iters:
            continue
        out += _flag(name, value)
    if cfg.mapping:
        out += _flag("mapping", cfg.mapping)
    return out


def _flag(name: str, value) -> list[str]:
    """The `tuneloom train` arguments that give option ``name`` the value ``value`` (core.options.OPTIONS)."""
    o = OPTIONS[name]
    flag = "--" + _OWN_FLAG.get(name, name).replace("_", "-")
    how = o.flag or _OWN_HOW[o.kind]
    if how == "toggle":  # --x / --no-x
        return [flag if value else "--no-" + flag[2:]]
    if how == "switch":  # --x; off is its default
        return [flag] if value else []
    if how == "pairs":
        return [f"{flag}={k}={v}" for k, v in value.items()]
    return [f"{flag}={value!r}" if isinstance(value, float) else f"{flag}={value}"]


class _Follower(threading.Thread):
    """Reads rank 0's metrics.jsonl as it grows and reports each new record once, in order."""

    def __init__(self, run_dir: Path, events: Events, cancel: CancelToken, after_step: int, total: int | None):
        super().__init__(daemon=True, name="tuneloom-group-metrics")
        self.path = Path(run_dir) / "metrics.jsonl"
        self.run_dir = Path(run_dir)
        self.events, self.cancel = events, cancel
        self.after_step = after_step  # a resumed run's records up to its checkpoint are already shown
        self.total = total
        self.stop_event = threading.Event()
        self.seen: set[tuple] = set()
        self._inode = None
        self._offset = 0
        self._told_pause = False
        self._first_step: int | None = None
        self._first_elapsed = 0.0

    def run(self):
        while not self.stop_event.wait(0.2):
            self.poll()

    def poll(self) -> None:
        if self.cancel.paused and not self._told_pause:
            self._told_pause = True
            self.events.log("warning", PAUSE_TEXT)
        for rec in self._new_records():
            self._report(rec)

    def _new_records(self) -> list[dict]:
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        if st.st_ino != self._inode or st.st_size < self._offset:
            # rank 0 rewrote the file (a resume keeps the records up to its checkpoint): read it again;
            # what was reported already is skipped by its (kind, step)
            self._inode, self._offset = st.st_ino, 0
        if st.st_size == self._offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read(st.st_size - self._offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return []  # a line still being written
        self._offset += end + 1
        out = []
        for line in chunk[:end].decode("utf-8", "replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                out.append(rec)
        return out

    def _total(self) -> int:
        if self.total is None:
            st = runs.RunFolder(self.run_dir).status  # a new reader each time: rank 0 rewrites it
            if isinstance(st.get("total"), int):
                self.total = st["total"]
        return self.total or 0

    def _report(self, rec: dict) -> None:
        step = rec["step"]
        if self.after_step and step <= self.after_step:
            return
        if "train_loss" in rec:  # one optimizer step: the trainer's StepReport, as it wrote it
            if ("step", step) in self.seen:
                return
            self.seen.add(("step", step))
            total = self._total()
            names = {f.name for f in fields(StepReport)} - {"step", "total"}
            vals = {k: rec.get(k, 0) for k in names}
            report = StepReport(step=step, total=total, **vals)
            self.events.step(report)
            for k in METRIC_KEYS:  # a preference run's figures of the step, as the trainer reports them
                v = rec.get(k)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and (k, step) not in self.seen:
                    self.seen.add((k, step))
                    self.events.metric(k, step, float(v))
            if self._first_step is None:
                self._first_step, self._first_elapsed = step - 1, float(rec.get("elapsed", 0.0))
            here = float(rec.get("elapsed", 0.0)) - self._first_elapsed
            done_here = step - self._first_step
            eta = float(rec.get("eta_seconds", 0.0))
            self.events.report_progress(Progress(step, total, "step", f"step {step}/{total}, loss "
                                                 f"{report.train_loss:.3f}, ETA {eta:.0f}s",
                                                 rate=done_here / here if here > 0 else None, eta=eta))
            return
        for k, v in rec.items():  # a validation loss (or another figure of one step)
            if k == "step" or not isinstance(v, (int, float)) or isinstance(v, bool) or (k, step) in self.seen:
                continue
            self.seen.add((k, step))
            self.events.metric(k, step, float(v))


_LEVEL = re.compile(r"^\[(info|warning|error)\] (.*)$")
_BAR = re.compile(r"^\s*\[[# ]*\]\s+[\d.]+%")


class _Lines:
    """Rank 0's output: its messages go to the log, its closing JSON line is the run's result."""

    def __init__(self, events: Events):
        self.events = events
        self.result: dict | None = None
        self.errors: list[str] = []

    def __call__(self, line: str) -> None:
        text = line.strip()
        if not text:
            return
        if text.startswith("{"):
            try:
                d = json.loads(text)
            except ValueError:
                d = None
            if isinstance(d, dict):
                if "state" in d:
                    self.result = d
                return  # a metric line: the follower reports metrics from the run folder
        if _BAR.match(line):
            return  # the console's progress bar; the follower reports progress
        if "PyTorch was not found" in text:
            return  # transformers' advice to each rank; Tuneloom never uses PyTorch
        if text.startswith("error: "):
            self.errors.append(text[len("error: "):])
            self.events.log("error", text[len("error: "):])
            return
        m = _LEVEL.match(text)
        if m:
            self.events.log(m.group(1), m.group(2))
        elif line.startswith("  ") and not text.startswith(("[", "Traceback")):
            self.events.report_progress(Progress(0, None, what=text))  # "loading data", "loading model"
        else:
            self.events.log("info", text)


def group_train(cfg: TrainConfig, hostfile: str | os.PathLike, *, resume: str | Path | None = None,
                copy_missing: bool = False, events: Events | None = None, cancel: CancelToken | None = None,
                backend: str = "ring") -> dict:
    """Run (or resume) a LoRA fine-tune on the Macs of ``hostfile``; the job protocol of core.train.train.

    Returns the run's summary (``run_dir``, ``total_steps``, ``steps``, ``valid_loss``, ...); raises
    Cancelled when stopped (the checkpoint is kept), GroupError when a host is not ready, and
    TuneloomError with the group's message and how to resume when a rank fails."""
    events = events or NULL_EVENTS
    cancel = cancel or CancelToken()
    hosts = dist.read_hostfile(hostfile)
    after_step, total = 0, None
    if resume:
        run_dir = Path(resume)
        folder = runs.RunFolder(run_dir)
        saved = folder.config
        if not saved:
            raise TuneloomError(f"{run_dir} is not a run folder (no config.json).", "Pick a folder under runs/.")
        paths = [saved["model"], *saved.get("data", [])]
        args = ["--resume", str(run_dir)]
        ck = folder.latest_checkpoint
        if ck is not None:
            after_step = int(folder.checkpoint_state(ck).get("step", 0))
        total = folder.status.get("total")
    else:
        if not cfg.model or not cfg.data:
            raise TuneloomError("A run needs a model and data.", "Choose the model (step 1) and the data (step 2).")
        if not cfg.out:
            cfg = replace(cfg, out=str(runs.new_run_dir(cfg.name)))
        run_dir = Path(cfg.out)
        paths = [cfg.model, *cfg.data]
        args = train_args(cfg)
    events.report_progress(Progress(0, None, what="checking the Macs"))
    checks = dist.check_hosts(hosts, paths)
    for c in checks:
        events.log("info" if c.ok else "warning", c.line())
    bad = [c for c in checks if not c.ok]
    if bad and copy_missing and all(c.missing and c.versions for c in bad):
        dist.copy_missing(bad, events)
        bad = [c for c in dist.check_hosts(hosts, paths) if not c.ok]
    if bad:
        raise dist.GroupError(f"{len(bad)} of {len(hosts)} hosts are not ready: " + bad[0].line(), bad[0].hint)
    if cancel.cancelled:  # stopped while the Macs were checked: nothing was started
        raise Cancelled("cancelled before the group started", result={
            "run_dir": str(run_dir), "state": "cancelled", "steps": after_step,
            "total_steps": total if isinstance(total, int) else cfg.iters})
    events.log("info", f"training on {len(hosts)} Macs: " + ", ".join(h.ssh for h in hosts))

    follower = _Follower(run_dir, events, cancel, after_step, total if isinstance(total, int) else None)
    lines = _Lines(events)
    follower.start()
    try:
        res = dist.launch(hosts, args, run_dir=run_dir, backend=backend, on_line=lines, cancel=cancel)
    finally:
        follower.stop_event.set()
        follower.join()
    follower.poll()  # what rank 0 wrote last (the final validation loss)
    status = runs.RunFolder(run_dir).status  # read now: rank 0 has written its last status
    total_steps = status.get("total") or follower.total or (lines.result or {}).get("total_steps")
    result = {"run_dir": str(run_dir), "total_steps": total_steps}
    if res.returncode == 0 and status.get("state") == "done":
        result.update({k: v for k, v in status.items() if k not in ("state", "time", "pid", "total")})
        result.update(lines.result or {})
        result["run_dir"] = str(run_dir)
        result["state"] = "done"
        result.setdefault("total_steps", status.get("steps"))
        return result
    if status.get("state") == "cancelled" or cancel.cancelled:
        steps = status.get("step", (lines.result or {}).get("steps"))
        total_steps = status.get("total", total_steps)
        result.update(state="cancelled", steps=steps, total_steps=total_steps)
        raise Cancelled(f"cancelled at step {steps} of {total_steps}; adapters saved",
                        "Resume it later from the run list (on the same Macs).", result=result)
    why = res.message or "The group stopped."
    if lines.errors:
        why += f" {lines.errors[-1]}"
    if status.get("state") == "done":
        raise TuneloomError(why, runs.finished_before_failure(status))
    raise TuneloomError(why, f"{runs.checkpoint_kept(run_dir)}: Resume continues it on the same Macs (or `tuneloom train --resume "
                             f"{run_dir} --hosts {hostfile}`).")
