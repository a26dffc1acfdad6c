"""`tuneloom fetch` and `tuneloom models`: plain functions app/cli.py wires to argparse."""
from __future__ import annotations

import json
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from core.events import CancelToken, Events
from core.units import fmt_memory


class TqdmEvents(Events):
    """Byte progress as a tqdm bar (speed and ETA are tqdm's); logs printed above the bar."""

    def __init__(self, desc: str, stream=None):
        self.desc = desc
        self.stream = stream or sys.stderr
        self.bar = None

    def progress(self, done, total, what):
        if total is None:
            if self.bar is None:
                self.stream.write(f"{what}\n")
            return
        self._advance(done, total, "")

    def report_progress(self, p):
        """A download's typed progress: the bar counts its bytes, its label is the file (``p.item``)."""
        if p.total is None or p.done is None:
            self.progress(p.done, p.total, p.what)
            return
        self._advance(p.done, p.total, p.item)

    def _advance(self, done, total, label: str):
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1000,
                            desc=self.desc, file=self.stream, dynamic_ncols=True, leave=True)
        if total != self.bar.total:
            self.bar.total = total
        step = done - self.bar.n
        self.bar.set_postfix_str(label, refresh=False)
        if step > 0:
            self.bar.update(step)
        if done >= total:  # close now: speed and time of the transfer, not of what follows
            self.close()

    def log(self, level, text):
        from tqdm import tqdm

        line = text if level == "info" else f"[{level}] {text}"
        if self.bar is not None:
            tqdm.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextmanager
def _cancel_on_sigint():
    token = CancelToken()

    def handler(signum, frame):
        if token.cancelled:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        print("\nStopping the download (the part already fetched is kept; Ctrl-C again to abort)...",
              file=sys.stderr)
        token.cancel()

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no signal handling
        previous = None
    try:
        yield token
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _print_check(check, out) -> None:
    for note in check.notes:
        print(f"note: {note}", file=out)
    for p in check.problems:
        print(f"problem: {p.message}" + (f"\n         {p.hint}" if p.hint else ""), file=out)


def fetch_main(model_id: str, revision: str | None = None) -> int:
    """Download MODEL_ID (a hub id, a catalog key, or a local folder to check) into the HF cache.

    Exit status: 0 ready to train, 1 failed or the model is not usable, 130 cancelled.
    The last line on stdout is a JSON summary.
    """
    from core.catalog import get_entry, load_catalog
    from core.events import Cancelled, TuneloomError
    from core.hub import fetch_model, validate_model_dir

    err = sys.stderr
    local = Path(model_id).expanduser()
    if local.is_dir():
        check = validate_model_dir(local)
        print(f"{local}: {'ready to train' if check.ok else 'NOT usable'}", file=err)
        _print_check(check, err)
        print(json.dumps(check.as_dict()))
        return 0 if check.ok else 1

    try:
        entry = get_entry(model_id, load_catalog())
    except TuneloomError:
        entry = None
    if entry is not None and entry.is_local:
        check = validate_model_dir(entry.local_path)
        print(f"{entry.name} is bundled with Tuneloom: {entry.local_path}", file=err)
        _print_check(check, err)
        print(json.dumps(check.as_dict()))
        return 0 if check.ok else 1
    repo_id = entry.hub_id if entry is not None else model_id
    if revision is None and entry is not None:
        revision = entry.revision
        if entry.revision_note and not entry.revision_note.startswith("pinned"):
            print(f"note: {entry.revision_note}", file=err)

    ev = TqdmEvents(repo_id)
    try:
        with _cancel_on_sigint() as token:
            res = fetch_model(repo_id, revision, events=ev, cancel=token)
    except Cancelled as exc:
        ev.close()
        print(f"cancelled: {exc}", file=err)
        print(json.dumps({"repo_id": repo_id, "state": "cancelled", **(exc.result or {})}))
        return 130
    except TuneloomError as exc:
        ev.close()
        print(f"error: {exc.user_message()}", file=err)
        print(json.dumps({"repo_id": repo_id, "state": "failed", "error": str(exc)}))
        return 1
    ev.close()  # res.message was logged through the events already
    if res.check is not None:
        _print_check(res.check, err)
    print(f"model folder: {res.path}", file=err)
    print(json.dumps(res.as_dict()))
    return 0 if res.check is None or res.check.ok else 1


def _short(n: float, unit: str = "") -> str:
    """494M, 1.54G, 999MB: three significant digits."""
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 999.5 or suffix == "T":
            return f"{n:.3g}{suffix}{unit}"
        n /= 1000
    return f"{n:.3g}T{unit}"


def models_main() -> int:
    """Print the catalog: size, training memory, whether it fits this machine, whether it is here."""
    from core.catalog import DEFAULT_PRESET, catalog_rows, machine_memory_bytes
    from core.events import TuneloomError
    from core.hub_env import hub_cache_dir

    try:
        mem = machine_memory_bytes()
        rows = catalog_rows(mem)
    except TuneloomError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        return 1
    head = ("MODEL", "PARAMS", "DOWNLOAD", "TRAIN MEM", "FITS", "HERE", "HUB ID @ REVISION")
    table = []
    for r in rows:
        rev = r["revision"] or ""
        rev = rev[:7] if len(rev) == 40 else rev
        hub = f"{r['hub_id']}@{rev}" if r["hub_id"] else "(bundled)"
        table.append((r["key"], _short(r["params"]), _short(r["download_bytes"], "B"),
                      fmt_memory(r['train_memory_bytes']), "yes" if r["fits"] else "no",
                      "yes" if r["downloaded"] else "-", hub))
    widths = [max(len(str(x[i])) for x in [head, *table]) for i in range(len(head))]
    for row in [head, *table]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    where = "this Mac's unified memory" if sys.platform == "darwin" else "this machine's RAM"
    print(f"\nTRAIN MEM: estimated peak for the '{DEFAULT_PRESET}' preset; FITS compares it with {where} "
          f"({fmt_memory(mem)}). HERE: downloaded to {hub_cache_dir()} (or bundled).")
    for r in rows:
        if not r["fits"]:
            print(f"  {r['key']}: {r['fit_reason']}")
    print("Fetch one with: tuneloom fetch MODEL (a key above or any hub id)")
    return 0
