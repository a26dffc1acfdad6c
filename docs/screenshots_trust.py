"""Screenshots for issue 28 (offscreen) on a tiny trained demo run: Try's Evaluate tab with the split and
the forgetting check, the Export sizes with the measured agreement, the History's report card.

    QT_QPA_PLATFORM=offscreen .venv/bin/python docs/screenshots_trust.py
"""
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
HOME = Path(tempfile.mkdtemp(prefix="tuneloom-shots-"))
os.environ.setdefault("TUNELOOM_HOME", str(HOME))
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import core  # noqa: E402,F401

from app.gui.main import TuneloomApp  # noqa: E402
from app.gui.testing import open_window  # noqa: E402
from core.paths import demo_model_dir  # noqa: E402

OUT = Path(os.environ.get("SHOTS_OUT") or ROOT / "docs")
SIZE = (1180, 800)


def main():
    from tests.fixtures.eval_run import tiny_run

    run = tiny_run()
    app = TuneloomApp(sys.argv)

    w, pump = open_window(app, HOME, SIZE, timeout=900, slice_ms=10)
    w.session.update(model_dir=demo_model_dir(), run_dir=run)

    def shot(row, name, settle=0.3):
        w.go_to(row)
        pump(settle)
        w.grab().save(str(OUT / f"{name}.png"))
        print("wrote", OUT / f"{name}.png")

    tp = w.try_page
    w.go_to(3)
    tp.tabs.setCurrentIndex(1)
    tp.eval_limit.setValue(8)
    tp.eval_drift.setChecked(True)
    tp.evaluate()
    pump(cond=lambda: not tp.slots.running("eval"))
    shot(3, "page-try-eval-drift")

    ep = w.export_page
    w.go_to(4)
    ep.measure()
    pump(cond=lambda: not ep.slots.running("export-measure"))
    ep.quant.showPopup()
    pump(0.3)
    shot(4, "page-export-price")
    ep.quant.hidePopup()

    hp = w.history_page
    w.go_to(5)
    hp.refresh()
    pump(1.0)
    hp.select_run(run)
    pump(cond=lambda: hp.opened is not None and str(hp.opened.path) == str(run), timeout=60)
    shot(5, "page-history-report")


if __name__ == "__main__":
    main()
