"""Turn core events into terminal output for the CLI.

In a terminal every stage (or, outside staged jobs, every job) gets one live tqdm bar that is
replaced by the stage's closing line when it ends. When the output is not a terminal (CI, a log
file, ``| cat``) nothing is redrawn: a staged job prints a line when a stage starts and one when
it ends, and an unstaged job prints a progress line at most every ``line_interval`` seconds and at
the end of each task.
"""
from __future__ import annotations

import json
import sys

from core.events import Events, Throttle
from core.units import fmt_bytes


class ConsoleEvents(Events):
    def __init__(self, stream=None, quiet: bool = False, metrics: bool = False, live: bool | None = None,
                 line_interval: float = 10.0):
        self.out = stream or sys.stderr
        self.quiet = quiet
        self.metrics = metrics
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()
        self.live = self.tty if live is None else live  # redraw a bar in place
        self._throttle = Throttle(line_interval)
        self._bar = None
        self._stage: str | None = None

    # -- output helpers -------------------------------------------------------------------------
    def _write(self, line: str) -> None:
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(line, file=self.out)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _live_progress(self, done, total, what) -> None:
        from tqdm import tqdm

        bar = self._bar
        if bar is None:
            bar = self._bar = tqdm(total=total, desc=f"    {self._stage or ''}", file=self.out,
                                   leave=False, dynamic_ncols=True, mininterval=0.1,
                                   bar_format="{desc}: {percentage:3.0f}%|{bar:24}| {n_fmt}/{total_fmt} "
                                              "[{elapsed}<{remaining}] {postfix}" if total else None)
        elif total != bar.total or done < bar.n:  # the stage moved on to its next task
            bar.reset(total=total)
        bar.set_postfix_str(str(what)[:60], refresh=False)
        step = done - bar.n
        if step > 0:
            bar.update(step)
        if total is not None and done >= total:
            bar.refresh()
            if self._stage is None:  # an unstaged task is over: its bar goes
                self._close_bar()

    # -- Events ---------------------------------------------------------------------------------
    def progress(self, done, total, what):
        if self.quiet:
            return
        if self.live:
            self._live_progress(done, total, what)
            return
        if self._stage is not None:  # the stage's closing line reports it
            return
        final = bool(total) and done >= total
        if not self._throttle.ready(final):
            return
        if total:
            frac = min(1.0, done / total)
            self._write(f"  [{'#' * int(frac * 24):<24}] {frac * 100:5.1f}%  {what}")
        else:
            self._write(f"  {what}")

    def metric(self, name, step, value):
        if self.metrics and not self.quiet:
            self._write(json.dumps({"step": step, name: value}))

    def log(self, level, text):
        if self.quiet and level not in ("warning", "error"):
            return
        if level == "stage":  # a sink-only sender (Events.stage's fallback) names the stage
            self.stage(text)
        elif level == "stage-done":
            self.stage_done(text)
        elif level == "info" and self._stage is not None and not self.live:
            return  # a stage's chatter stays out of logs; its closing line has the figures
        else:
            self._write(text if level == "info" and self._stage is not None else f"[{level}] {text}")

    def stage(self, name):
        if self.quiet:
            return
        self._close_bar()
        self._stage = name
        self._write(f"==> {name}")

    def stage_done(self, name, ok=True, seconds=None, detail=None):
        if self.quiet:
            return
        self._close_bar()
        self._stage = None
        mark = {True: "ok", False: "FAILED", None: "skipped"}.get(ok, "done")
        brief = ", ".join(f"{k}={_fmt(v)}" for k, v in (detail or {}).items() if not isinstance(v, (dict, list)))
        took = f" ({seconds:.1f}s)" if isinstance(seconds, (int, float)) else ""
        self._write(f"    {name}: {mark}{took} {brief}".rstrip())

    def close(self) -> None:
        self._close_bar()


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    s = str(v)
    return s if len(s) < 90 else s[:87] + "..."


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def _short(text: str, width: int = 100) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 3] + "..."


def demo_summary_lines(summary: dict) -> list[str]:
    """The demo's closing summary: every figure of summary.json, in words, then one JSON line."""
    stages = {s["stage"]: s for s in summary.get("stages", [])}
    base, tuned = stages.get("evaluate base", {}), stages.get("evaluate fine-tuned", {})
    train = stages.get("train", {})
    n = base.get("topics")
    lines = ["", f"Summary: {n or 'the'} held-out topics, never in the training data, asked two ways"]
    if base.get("question"):
        lines.append(f"  asked:        {_short(base['question'])}")
    if base.get("example") is not None:
        lines.append(f"  before:       {_short(base['example'])}")
    if tuned.get("example") is not None:
        lines.append(f"  after:        {_short(tuned['example'])}")
    if train:
        lines.append(f"  fine-tune:    {train.get('steps')} LoRA steps in {train.get('seconds_training', 0):.0f}s, "
                     f"validation loss {_fmt(train.get('valid_loss'))}")
    lines += [
        f"  answers in the JSON schema (valid):       before {_pct(summary.get('base_json_valid_rate')):>4}"
        f"   after {_pct(summary.get('tuned_json_valid_rate')):>4}   (base_json_valid_rate, tuned_json_valid_rate)",
        f"  answers exactly right (whole object):     before {_pct(summary.get('base_json_exact_rate')):>4}"
        f"   after {_pct(summary.get('tuned_json_exact_rate')):>4}   (base_json_exact_rate, tuned_json_exact_rate)",
        f"  JSON names the thing that was asked:                  {_pct(summary.get('tuned_json_name_correct_rate')):>4}"
        f"   (tuned_json_name_correct_rate)",
        f"  plain questions still answered in prose:              {_pct(summary.get('prose_survival')):>4}"
        f"   (prose_survival)",
        f"  llama.cpp gives the same answers as MLX:   F16 {_pct(summary.get('f16_agreement')):>4}"
        f"   Q8_0 {_pct(summary.get('q8_0_agreement')):>4}   (f16_agreement, q8_0_agreement)",
    ]
    # one line (the log stays short): the forgetting verdict and the price of each quantization
    trust = []
    if summary.get("forgetting_verdict"):
        trust.append(f"forgetting check: {summary['forgetting_verdict']} (KL "
                     f"{summary.get('forgetting_kl_per_token', 0):.3f}/token)")
    if summary.get("quantization"):
        trust.append("same next token as MLX: " + ", ".join(
            f"{q.upper()} {row['top1_agreement']:.1%} ({fmt_bytes(row['bytes'])})"
            for q, row in summary["quantization"].items()))
    if trust:
        lines.append("  " + "; ".join(trust))
    for q, p in summary.get("gguf", {}).items():
        lines.append(f"  GGUF {q + ':':<8} {p}")
    lines.append(f"  Modelfile:    {summary.get('modelfile')}")
    ol = stages.get("ollama", {})
    if ol:
        lines.append("  Ollama:       " + (f"registered as {ol['model']}" if ol.get("registered")
                                         else str(ol.get("message") or ol.get("error"))))
    verdict = "every stage passed" if summary.get("ok") else "SOME STAGE FAILED (see above)"
    lines.append(f"  result:       {verdict} in {summary.get('seconds', 0):.0f}s; details in "
                 f"{summary.get('out', '.')}/summary.json")
    keys = ("ok", "base_json_valid_rate", "tuned_json_valid_rate", "base_json_exact_rate", "tuned_json_exact_rate",
            "tuned_json_name_correct_rate", "prose_survival", "f16_agreement", "q8_0_agreement", "forgetting_verdict",
            "seconds")
    lines.append(json.dumps({k: summary.get(k) for k in keys}))
    return lines
