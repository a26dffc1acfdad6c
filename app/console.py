"""Turn core events into terminal output for the CLI."""
from __future__ import annotations

import json
import sys

from core.events import Events, Throttle


class ConsoleEvents(Events):
    def __init__(self, stream=None, quiet: bool = False, metrics: bool = False):
        self.out = stream or sys.stderr
        self.quiet = quiet
        self.metrics = metrics
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()
        self._throttle = Throttle(0.1 if self.tty else 2.0)
        self._open_line = False
        self._last_what = None

    def _end_line(self):
        if self._open_line:
            self.out.write("\n")
            self._open_line = False

    def progress(self, done, total, what):
        if self.quiet:
            return
        final = total is not None and done >= total
        changed = what.split(":")[0] != self._last_what
        if not (self._throttle.ready(final) or changed):
            return
        self._last_what = what.split(":")[0]
        if total:
            frac = min(1.0, done / total) if total else 0
            bar = "#" * int(frac * 24)
            text = f"  [{bar:<24}] {frac * 100:5.1f}%  {what}"
        else:
            text = f"  {what}"
        if self.tty:
            self.out.write("\r\033[K" + text)
            self._open_line = True
            if final:
                self._end_line()
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def metric(self, name, step, value):
        if self.metrics and not self.quiet:
            self._end_line()
            self.out.write(json.dumps({"step": step, name: value}) + "\n")
            self.out.flush()

    def log(self, level, text):
        if self.quiet and level not in ("warning", "error"):
            return
        self._end_line()
        if level == "stage":
            self.out.write(f"==> {text}\n")
        elif level == "stage-done":
            d = json.loads(text)
            mark = {True: "ok", False: "FAILED", None: "skipped"}[d.pop("ok")]
            name = d.pop("stage")
            secs = d.pop("seconds")
            brief = ", ".join(f"{k}={_fmt(v)}" for k, v in d.items() if not isinstance(v, (dict, list)))
            self.out.write(f"    {name}: {mark} ({secs:.1f}s) {brief}\n")
        else:
            self.out.write(f"[{level}] {text}\n")
        self.out.flush()


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    s = str(v)
    return s if len(s) < 90 else s[:87] + "..."
