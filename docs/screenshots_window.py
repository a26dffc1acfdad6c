"""Screenshots for issue 27 (the window tells the truth), in a real X window or offscreen:

    DISPLAY=:99 QT_QPA_PLATFORM=xcb .venv/bin/python docs/screenshots_window.py   # or QT_QPA_PLATFORM=offscreen

page-train-memorising.png: the Train page on a finished run whose validation loss rose while its training loss
fell (the memorising banner, the best step starred). page-history-damaged.png: the history with that run, a
stopped one, a damaged one (its status file unreadable) and one another process trains (its lock held by a
second Python process started here and ended at the end). The run folders are written here, as the trainer
leaves them (tests/test_gui_truth.fake_run); nothing is trained and nothing leaves the machine.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
HOME = Path(tempfile.mkdtemp(prefix="tuneloom-shots-"))
os.environ["TUNELOOM_HOME"] = str(HOME)
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import core  # noqa: E402,F401

from app.gui.main import TuneloomApp  # noqa: E402
from app.gui.testing import open_window  # noqa: E402
from core import runs  # noqa: E402
from tests.test_gui_truth import fake_run  # noqa: E402

OUT = ROOT / "docs"
SIZE = (1180, 800)


def main():
    valid = [(0, 5.9), (40, 2.1), (80, 1.4), (120, 1.2), (160, 1.5), (200, 1.9)]
    memo = fake_run("memorising", valid=valid, bimodal=False, title="support bot, 3 passes")
    st = json.loads((memo / "status.json").read_text())
    st["memorising"] = {"step": 200, "valid_loss": 1.9, "best_valid_loss": 1.2, "best_step": 120}
    (memo / "status.json").write_text(json.dumps(st))
    fake_run("stopped", state="cancelled", steps=196, total=600, checkpoint=150, valid=[(0, 5.9), (150, 2.4)],
             title="longer run, stopped")
    damaged = fake_run("damaged")
    (damaged / "status.json").write_text("[1, 2]")
    busy = fake_run("elsewhere", state="running", steps=20, total=100, checkpoint=10, title="trained by the CLI")
    code = "import sys, time; from core import runs; runs.RunLock(sys.argv[1]).acquire(); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(busy)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        app = TuneloomApp(sys.argv)

        w, pump = open_window(app, HOME, SIZE, timeout=120, slice_ms=30)
        pump(cond=lambda: runs.lock_holder(busy) == proc.pid, timeout=60)
        hp = w.history_page
        hp.refresh()
        pump(cond=lambda: hp.list.topLevelItemCount() == 4 and "process" in hp.item_for(busy).text(4), timeout=30)
        hp.select_run(memo)
        tp = w.train_page
        pump(cond=lambda: tp.shown_run is not None and tp.shown_run.path == memo and tp.memo_banner.isVisibleTo(tp),
             timeout=30)

        def shot(row, name):
            w.go_to(row)
            pump(0.4)
            w.grab().save(str(OUT / f"{name}.png"))
            print("wrote", OUT / f"{name}.png")

        shot(2, "page-train-memorising")
        hp.set_ticked([memo, busy])
        hp.list.setCurrentItem(hp.item_for(damaged))
        pump(0.3)
        shot(5, "page-history-damaged")
        w.close()
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
