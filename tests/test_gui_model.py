"""The Model step: catalog cards, a download from a hub look-alike on 127.0.0.1 (progress, speed, ETA,
cancel, resume, use), a hub id that does not exist, and model folders dropped on the window."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import shutil  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QSettings, Qt  # noqa: E402

from app.gui.main import TuneloomApp  # noqa: E402
from app.gui.main_window import MainWindow  # noqa: E402
from app.gui.testing import TickMonitor, simulate_drop  # noqa: E402
from core.catalog import get_entry, load_catalog  # noqa: E402
from core.paths import demo_model_dir  # noqa: E402
from tests.fixtures.hub_server import HubServer, use_hub_server  # noqa: E402

QWEN = "qwen2.5-0.5b-instruct"


@pytest.fixture(scope="session")
def qapp_cls():
    return TuneloomApp


@pytest.fixture(scope="module")
def server():
    """Serves the bundled demo model's files under the hub id and pinned commit of a catalog entry."""
    entry = get_entry(QWEN)
    with HubServer(lifetime=1800) as srv:
        srv.add_repo(entry.hub_id, demo_model_dir(), commit=entry.revision)
        yield srv


@pytest.fixture
def hub_env(server, tmp_path, monkeypatch):
    return use_hub_server(server, tmp_path / "hf-home", monkeypatch)


@pytest.fixture
def window(qtbot, tmp_path, hub_env):
    w = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    n = len(load_catalog())
    qtbot.waitUntil(lambda: w.model_dir is not None and len(w.model_page.cards) >= n, timeout=30000)
    return w


def plain(rich: str) -> str:
    from PySide6.QtGui import QTextDocument

    doc = QTextDocument()
    doc.setHtml(rich)
    return doc.toPlainText()


def click(qtbot, button):
    assert button.isVisible() and button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def test_catalog_cards_say_size_licence_fit_and_whether_here(window):
    cards = window.model_page.cards
    assert set(cards) == {e.key for e in load_catalog()}
    demo = cards["demo"]
    assert demo.downloaded and demo.selected and demo.primary.text() == "In use" and not demo.primary.isEnabled()
    assert "works offline" in demo.badge.text()
    qwen = cards[QWEN]
    assert not qwen.downloaded and qwen.primary.text() == "Download"
    assert "999.6 MB download" in qwen.facts.text() and "licence Apache-2.0" in qwen.facts.text()
    assert "494M parameters" in qwen.facts.text()
    assert "Needs about" in qwen.fit.text() and ("Fits" in qwen.fit.text() or "Too large" in qwen.fit.text())
    assert "Not downloaded" in qwen.status.text()
    assert "4-bit" in cards["qwen2.5-0.5b-instruct-4bit"].badge.text()
    assert window.steps.state(0) == "done" and "demo" in window.steps.item(0).toolTip()


def test_download_shows_progress_speed_eta_then_cancel_resume_and_use(window, qtbot, hub_env, tmp_path):
    w, srv = window, hub_env
    card = w.model_page.cards[QWEN]
    size = (demo_model_dir() / "model.safetensors").stat().st_size
    # bytes per second: slow enough to watch and cancel (the 1.8 MB weights take 18 s: a GUI thread stalled
    # a few seconds under load still cancels them half-way)
    srv.throttle(100_000)
    mon = TickMonitor(parent=w).start()
    click(qtbot, card.primary)
    job = w.jobs[f"download:{QWEN}"]
    assert card.progress.isVisible() and card.cancel.isVisible() and not card.primary.isVisible()
    assert w.steps.item(0).toolTip().endswith(QWEN)  # the Model step says a download is under way
    # byte-level progress with speed and time left
    # (the small files before the weights can take the half second speed needs under load: wait for the weights)
    qtbot.waitUntil(lambda: "/s" in card.detail.text() and "left" in card.detail.text()
                    and "model.safetensors" in card.detail.text(), timeout=30000)
    assert 0 < card.progress.value() < 1000
    assert "of" in card.progress.format()
    seen = card.progress.value()
    with qtbot.waitSignal(job.ended, timeout=10000):
        click(qtbot, card.cancel)
    assert card.state == "paused" and card.primary.text() == "Resume download"
    assert 0 < card.info.partial_bytes < size
    assert "Paused" in card.status.text() and card.progress.isVisible()
    assert not card.downloaded and w.model_dir == demo_model_dir()
    mon.stop()
    # the window kept responding while bytes arrived (its own work never held the loop 100 ms; the hub
    # look-alike serving them runs in this same process and competes for the GIL, which the ceiling bounds)
    assert mon.responsive(100), mon
    # a window opened later (the app restarted) finds the partial download and offers to resume it
    w2 = MainWindow(settings=QSettings(str(tmp_path / "other.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w2)
    qtbot.waitUntil(lambda: QWEN in w2.model_page.cards and w2.model_dir is not None, timeout=30000)
    again = w2.model_page.cards[QWEN]
    assert again.info.partial_bytes == card.info.partial_bytes and again.primary.text() == "Resume download"
    assert "Paused" in again.status.text()
    w2.close()

    srv.throttle(None)
    mon = TickMonitor(parent=w).start()
    click(qtbot, card.primary)
    job = w.jobs[f"download:{QWEN}"]
    with qtbot.waitSignal(job.ended, timeout=30000):
        pass
    mon.stop()
    assert card.downloaded and card.state == "idle", card.status.text()
    assert card.status.text() == "Downloaded" and card.primary.text() == "Use this model"
    assert card.progress.value() >= seen
    gets = srv.gets("model.safetensors")
    assert len(gets) == 2 and gets[0].range is None
    resumed_at = int(gets[1].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at and gets[1].status == 206  # resumed, not fetched again
    assert (card.info.path / "model.safetensors").read_bytes() == (demo_model_dir() / "model.safetensors").read_bytes()
    assert mon.responsive(100), mon

    click(qtbot, card.primary)
    qtbot.waitUntil(lambda: w.model_dir == card.info.path and w.model_checking is None, timeout=30000)
    assert card.selected and not w.model_page.cards["demo"].selected
    assert "In use:" in w.model_page.current.text() and "Qwen2.5 0.5B Instruct" in w.model_page.current.text()
    assert w.steps.item(0).data(Qt.ItemDataRole.UserRole + 2) == "Qwen2.5 0.5B Instruct"
    assert w.settings.value("model") == str(card.info.path)


def test_unknown_hub_id_gets_a_card_and_a_plain_message(window, qtbot):
    w = window
    card = w.model_page.add_hub_id("nobody/no-such-model")
    assert card is not None and card.info.hub_id == "nobody/no-such-model"
    qtbot.waitUntil(lambda: card.state == "failed", timeout=30000)
    assert "No model 'nobody/no-such-model'" in plain(card.status.text())
    assert "Check the spelling" in card.status.text()
    assert card.primary.text() == "Try again"
    assert w.settings.value("models/custom") in (["nobody/no-such-model"], "nobody/no-such-model")
    assert w.model_dir == demo_model_dir()


def test_model_folders_dropped_on_the_window_are_checked(window, qtbot, tmp_path):
    w = window
    broken = tmp_path / "broken-model"
    shutil.copytree(demo_model_dir(), broken)
    (broken / "tokenizer.json").unlink()
    (broken / "model.safetensors").write_bytes((demo_model_dir() / "model.safetensors").read_bytes()[:5000])
    entered, dropped = simulate_drop(w, [broken])
    assert entered and dropped and not w.overlay.isVisible()
    assert w.pages.currentWidget() is w.model_page
    qtbot.waitUntil(lambda: "cannot be used" in w.model_page.current.text(), timeout=30000)
    text = w.model_page.current.text()
    assert "has no tokenizer" in text and "truncated" in text  # every problem, each in words
    # the model still in use is named as people know it, not by its folder "model" (issue 27, item 12)
    assert w.model_dir == demo_model_dir() and "The model in use is still <b>Tuneloom demo model" in text

    good = tmp_path / "my-model"
    shutil.copytree(demo_model_dir(), good)
    simulate_drop(w, [good])
    qtbot.waitUntil(lambda: w.model_dir == good, timeout=30000)
    assert "In use:" in w.model_page.current.text() and "my-model" in w.model_page.current.text()
    assert w.steps.state(0) == "done"
