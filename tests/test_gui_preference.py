"""The Train page with preference pairs (offscreen, pytest-qt): the method is offered when the data
holds pairs, a DPO run trains from the window, and its reward figures are on the plot's right axis."""
import json
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import QSettings, Qt  # noqa: E402
from PySide6.QtWidgets import QComboBox, QPushButton, QWidget  # noqa: E402

from app.gui.main import TuneloomApp  # noqa: E402
from core import runs  # noqa: E402
from core.demo import world as demo_world
from core.paths import demo_data_dir  # noqa: E402


@pytest.fixture(scope="session")
def qapp_cls():
    return TuneloomApp


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch):
    from app.gui.main_window import MainWindow

    monkeypatch.setenv("TUNELOOM_HOME", str(tmp_path / "home"))
    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.model_dir is not None, timeout=30000)
    return w


def test_pairs_offer_the_method_and_a_dpo_run_plots_its_rewards(window, qtbot, tmp_path):
    w = window
    tp = w.train_page
    method = w.findChild(QComboBox, "train.method")
    row = tp.method_row
    start = w.findChild(QPushButton, "train.start")
    # chat data: no method to choose
    qtbot.mouseClick(w.findChild(QPushButton, "data.sample"), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: start.isEnabled(), timeout=60000)
    assert row.isHidden()

    pairs, _, _ = demo_world.preference_dataset(n_train=40, n_valid=0)
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    w.load_data([f])
    qtbot.waitUntil(lambda: w.data_report is not None and getattr(w.session.dataset, "pairs", 0) == 40,
                    timeout=60000)
    qtbot.waitUntil(lambda: start.isEnabled(), timeout=60000)  # pairs are usable data, no "fix the problems"
    assert not row.isHidden()
    assert [method.itemText(i) for i in range(method.count())] == [
        "Supervised on the chosen answers", "Preference: DPO", "Preference: ORPO"]
    method.setCurrentIndex(method.findData("dpo"))
    assert "prefer the chosen answer" in tp.method_line.text()
    assert w.findChild(QComboBox, "train.right_series").currentData() == "reward_margin"

    tp.option("iters").setValue(6)
    tp.option("lr").setValue(1e-3)
    tp.option("batch").setValue(4)
    tp.option("max_seq_len").setValue(96)
    tp.option("valid_every").setValue(0)
    qtbot.mouseClick(start, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: tp.slot.state == "idle" and tp.result_state in ("done", "failed"), timeout=300000)
    assert tp.result_state == "done", tp.status.text()
    run = w.run_dir
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["method"] == "dpo" and cfg["use"] is None
    steps = [m for m in runs.read_metrics(run) if "reward_margin" in m]
    assert [m["step"] for m in steps] == list(range(1, 7))
    # the plot's right axis holds the live reward margins, step by step
    tp.plot.flush()
    xs = tp.plot.lr_curve.xData
    assert xs is not None and [int(x) for x in xs] == list(range(1, 7))
    assert [float(y) for y in tp.plot.lr_curve.yData] == pytest.approx([m["reward_margin"] for m in steps], abs=1e-6)
    # back to the sample chat data: the method row goes away again
    w.load_data([demo_data_dir()])
    qtbot.waitUntil(lambda: getattr(w.session.dataset, "pairs", 1) == 0 and w.data_report is not None, timeout=60000)
    method.setCurrentIndex(0)
    tp.refresh_controls()
    assert row.isHidden()
    assert isinstance(row, QWidget)


def test_the_method_brings_its_presets_values_and_keeps_the_users_own(window, qtbot, tmp_path):
    from core.presets import preset_values
    from core.train import preset_config

    w = window
    tp = w.train_page
    method = w.findChild(QComboBox, "train.method")
    pairs, _, _ = demo_world.preference_dataset(n_train=40, n_valid=0)
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    w.load_data([f])
    qtbot.waitUntil(lambda: getattr(w.session.dataset, "pairs", 0) == 40 and not tp.method_row.isHidden(),
                    timeout=60000)
    tp.set_preset("quick")
    method.setCurrentIndex(method.findData("sft"))
    assert tp.values()["lr"] == preset_values("quick")["lr"]
    assert not tp.option("beta").isEnabled() and not tp.option("orpo_lambda").isEnabled()

    method.setCurrentIndex(method.findData("dpo"))
    vals = tp.values()
    want = preset_values("quick", "dpo")
    assert (vals["lr"], vals["batch"], vals["beta"]) == (want["lr"], want["batch"], want["beta"])
    assert tp.changed_options() == {} and "Every option as Quick test sets it" in tp.preset_line.text()
    assert tp.option("beta").isEnabled() and not tp.option("orpo_lambda").isEnabled()
    # another preset: its DPO values
    tp.set_preset("balanced")
    want = preset_config("balanced", "dpo")
    assert {k: tp.values()[k] for k in ("lr", "batch", "rank", "beta")} == {k: want[k] for k in ("lr", "batch", "rank",
                                                                                                  "beta")}
    # a value the user set stays through a change of method; the others follow the method
    tp.option("batch").setValue(3)
    method.setCurrentIndex(method.findData("orpo"))
    vals = tp.values()
    assert vals["batch"] == 3 and vals["lr"] == preset_values("balanced", "orpo")["lr"]
    assert tp.changed_options() == {"batch": 3}
    assert tp.option("orpo_lambda").isEnabled() and not tp.option("beta").isEnabled()
    method.setCurrentIndex(method.findData("sft"))
    assert tp.values()["lr"] == preset_values("balanced")["lr"] and tp.values()["batch"] == 3
