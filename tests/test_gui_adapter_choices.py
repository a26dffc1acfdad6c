"""Issue 24: the Try and Export pages offer a run's adapters from one function (core.runs.adapter_choices),
labelled with their steps, and keep the choice made when the run changes on disk (pytest-qt)."""
import json
import os
import shutil

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import QSettings  # noqa: E402

from app.gui.main_window import MainWindow  # noqa: E402
from core import runs  # noqa: E402
from core.paths import demo_model_dir  # noqa: E402
from tests.fixtures.eval_run import tiny_run  # noqa: E402


@pytest.fixture
def run_dir(tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(tiny_run(), dst)
    shutil.rmtree(dst / "exports", ignore_errors=True)
    _set_best_step(dst, 20)  # a best step other than the last (30), so the two labels differ
    return dst


def _set_best_step(run_dir, step):
    st = json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    st["best_step"] = step
    (run_dir / "status.json").write_text(json.dumps(st), encoding="utf-8")


def _items(combo):
    return [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count())]


def test_try_and_export_offer_the_same_adapter_choices_with_their_steps(qtbot, tmp_path, run_dir):
    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.session.model_dir is not None, timeout=30000)
    try_combo, export_combo = w.try_page.eval_adapter, w.export_page.adapter_choice
    assert try_combo.objectName() == "try.adapter" and export_combo.objectName() == "export.adapter"

    w.session.update(model_dir=demo_model_dir(), run_dir=run_dir)
    want = [("Best adapter (lowest validation loss, step 20)", "best"), ("Final adapter (the last step, step 30)", "final")]
    assert [(c.label, c.which) for c in runs.adapter_choices(run_dir)] == want
    qtbot.waitUntil(lambda: _items(try_combo) == want and _items(export_combo) == want, timeout=30000)
    assert try_combo.currentData() == "best" and export_combo.currentData() == "best"

    # the choice made stays when the run changes on disk (a new best step): only the labels follow
    try_combo.setCurrentIndex(try_combo.findData("final"))
    assert w.try_page.holder.adapter == "final"
    _set_best_step(run_dir, 25)
    w.session.touch_run()
    qtbot.waitUntil(lambda: try_combo.itemText(0) == "Best adapter (lowest validation loss, step 25)"
                    and export_combo.itemText(0) == "Best adapter (lowest validation loss, step 25)", timeout=30000)
    assert try_combo.currentData() == "final" and w.try_page.holder.adapter == "final"
    assert export_combo.currentData() == "best"

    # no run: the two choices without steps
    w.session.update(run_dir=None)
    plain = [("Best adapter (lowest validation loss)", "best"), ("Final adapter (the last step)", "final")]
    qtbot.waitUntil(lambda: _items(try_combo) == plain and _items(export_combo) == plain, timeout=30000)
