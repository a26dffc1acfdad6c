"""Nothing cut, nothing covered (issue 27): every page at 1024x700 and at 1600x1000, in the states a user sees
most (the sample dataset, a table's column panel, a finished run current, a stopped one in the history), checked
from widget geometries (app.gui.testing.layout_problems), not pixels."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget  # noqa: E402

from app.gui.main import TuneloomApp  # noqa: E402
from app.gui.testing import layout_problems  # noqa: E402
from core.paths import demo_data_dir  # noqa: E402
from tests.test_gui_truth import fake_run  # noqa: E402

SIZES = [(1024, 700), (1600, 1000)]
PAGES = ["model", "data", "train", "try", "export", "history"]


@pytest.fixture(scope="session")
def qapp_cls():
    return TuneloomApp


def test_the_check_finds_a_cut_label_and_overlapping_widgets(qtbot):
    box = QWidget()
    qtbot.addWidget(box)
    lay = QHBoxLayout(box)
    cut = QLabel("a label whose text is much longer than the room it is given")
    cut.setMinimumWidth(10)
    cut.setMaximumWidth(60)
    wrapped = QLabel("a word-wrapped label with far too many words for a box this small to hold them all")
    wrapped.setWordWrap(True)
    wrapped.setFixedSize(80, 20)
    button = QPushButton("A button with a long text")
    button.setFixedWidth(40)
    lay.addWidget(cut)
    lay.addWidget(wrapped)
    lay.addWidget(button)
    box.resize(400, 60)
    box.show()
    qtbot.waitExposed(box)
    found = layout_problems(box)
    assert any("QLabel(-: a label whose text" in p and "is cut" in p for p in found), found
    assert any("word-wrapped" in p and "height" in p for p in found), found
    assert any("QPushButton" in p and "is cut" in p for p in found), found
    # two widgets of one layout placed over each other
    assert not any("overlap" in p for p in found), found
    button.move(cut.pos())
    assert any("overlap" in p and "QPushButton" in p for p in layout_problems(box))


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELOOM_HOME", str(tmp_path / "home"))
    from app.gui.main_window import MainWindow

    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.model_dir is not None, timeout=30000)
    return w


def check_every_page(w, qtbot, what: str) -> list[str]:
    found = []
    for size in SIZES:
        w.resize(*size)
        for row, name in enumerate(PAGES):
            w.go_to(row)
            qtbot.wait(150)  # a layout pass: geometries settle
            assert w.width() == size[0] and w.height() == size[1], (what, w.size(), "the window grew by itself")
            found += [f"{name} {size[0]}x{size[1]} ({what}): {p}" for p in layout_problems(w)]
    return found


def test_no_page_cuts_a_label_or_overlaps_widgets_at_either_size(window, qtbot, tmp_path):
    w = window
    problems = check_every_page(w, qtbot, "empty")
    w.load_data([demo_data_dir()])
    qtbot.waitUntil(lambda: w.token_report is not None and not w.jobs["data"].running, timeout=60000)
    done = fake_run("finished", valid=[(0, 5.9), (200, 2.7)], title="a finished run with a long name")
    fake_run("stopped", state="cancelled", steps=196, total=600, checkpoint=150)
    qtbot.waitUntil(lambda: w.history_page.list.topLevelItemCount() == 2, timeout=20000)
    w.session.update(run_dir=done)
    qtbot.waitUntil(lambda: w.train_page.shown_run is not None, timeout=20000)
    w.history_page.set_ticked([str(done)])
    problems += check_every_page(w, qtbot, "sample data, a finished run")
    # a table: the column panel appears on the Data page (the window must not grow)
    csv = tmp_path / "qa.csv"
    csv.write_text("question,answer\n" + "".join(f"What is {i}+{i}?,{2 * i}\n" for i in range(40)))
    w.load_data([csv])
    qtbot.waitUntil(lambda: w.data_page.mapping_host.isVisible()
                    and not any(j.running for j in w.jobs.values()), timeout=60000)
    problems += check_every_page(w, qtbot, "a CSV")
    # a job running: its progress bar and Cancel beside the buttons (under load the check above once caught the
    # token lengths being measured, and the bar lay under Cancel at 1024x700: a size policy, see data.py)
    w.data_page.set_busy("measuring token lengths: 29 of 40 examples", 29, 40)
    problems += check_every_page(w, qtbot, "a job's progress")
    w.data_page.set_busy(None)
    # a file with problems and a short max length: the problem list, its record and four lines under the histogram
    # (the histogram's axis title was under the Max length row, and the window grew past 700)
    lines = (demo_data_dir() / "train.jsonl").read_text().splitlines()[:40]
    lines[6] = lines[6][:-2]
    lines[12] = '{"messages": [{"role": "user", "content": "Where is my order?"}]}'
    bad = tmp_path / "support-chats.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    w.load_data([bad])
    qtbot.waitUntil(lambda: w.data_paths == [bad] and w.token_report is not None and not w.jobs["data"].running
                    and w.data_page.problems.topLevelItemCount() == 2, timeout=60000)
    w.data_page.max_len.setValue(64)
    w.data_page.problems.setCurrentItem(w.data_page.problems.topLevelItem(1))
    qtbot.waitUntil(lambda: "Where is my order" in w.data_page.record_view.toPlainText(), timeout=20000)
    problems += check_every_page(w, qtbot, "problems, max length 64")
    assert problems == [], "\n".join(problems)


def test_section_headers_are_readable_in_either_appearance(window, qtbot):
    """A folding section's header (▶ Advanced, ▶ Tools, ▶ More places) kept the palette it was made with: after a
    switch to dark its text and arrow were black on the dark window."""
    from PySide6.QtGui import QPalette
    from PySide6.QtWidgets import QApplication

    from app.gui import theme
    from app.gui.widgets import Section

    app = QApplication.instance()
    light = app.palette()
    sections = window.findChildren(Section)
    assert {s.objectName() for s in sections} >= {"train.advanced", "train.hosts_box", "try.tools", "export.more"}

    def unreadable():
        bad = []
        for s in sections:
            back = window.palette().color(QPalette.ColorRole.Window)
            btn = s.toggleButton()
            icon = btn.icon().pixmap(16, 16).toImage()
            arrow = max((icon.pixelColor(x, y) for x in range(icon.width()) for y in range(icon.height())
                         if icon.pixelColor(x, y).alpha() > 200), key=lambda c: abs(c.lightness() - back.lightness()))
            for what, colour in (("text", btn.palette().color(QPalette.ColorRole.ButtonText)), ("arrow", arrow)):
                if abs(colour.lightness() - back.lightness()) < 100:
                    bad.append(f"{s.objectName()} {what} {colour.name()} on {back.name()}")
        return bad

    try:
        for pal in (theme.dark_palette(), light):
            app.setPalette(pal)
            want = pal.color(QPalette.ColorRole.Window)
            # the switch reached the window (until then its old background makes any text look readable)
            qtbot.waitUntil(lambda: window.palette().color(QPalette.ColorRole.Window) == want, timeout=5000)
            qtbot.waitUntil(lambda: not unreadable(), timeout=5000)
    finally:
        app.setPalette(light)


def test_a_constant_learning_rate_is_drawn_on_an_axis_from_zero(qtbot):
    """A run at a constant rate (no warm-up, no decay) had its right axis auto-ranged around that one value:
    -400..400 (x0.001) with the rate a flat line in the middle."""
    from app.gui.plots import TrainPlot

    plot = TrainPlot()
    qtbot.addWidget(plot)
    plot.resize(600, 300)
    plot.show()
    for step in range(1, 51):
        plot.add_step(step, 3.0 - step / 50, 1e-4)
    plot.flush()
    qtbot.waitUntil(lambda: plot.lr_view.viewRange()[1][0] == 0.0, timeout=5000)
    low, high = plot.lr_view.viewRange()[1]
    assert 1e-4 < high < 1.2e-4, (low, high)


def test_legend_text_follows_the_appearance(qtbot):
    """After dark and back to light the history's legend kept the dark appearance's light grey text."""
    from PySide6.QtGui import QPalette
    from PySide6.QtWidgets import QApplication

    from app.gui import theme
    from app.gui.plots import ComparePlot

    app = QApplication.instance()
    light = app.palette()
    plot = ComparePlot()
    qtbot.addWidget(plot)
    plot.show()
    plot.show_runs([("run a", [1, 2, 3], [3.0, 2.0, 1.0], [3], [1.5]), ("run b", [1, 2], [3.0, 2.5], [], [])])

    def colours():  # the colours the labels' text is drawn in (not the option kept for the next text)
        import re

        return {c.lower() for _s, label in plot.legend.items
                for c in re.findall(r"color:\s*(#[0-9a-fA-F]{6})", label.item.toHtml())}

    try:
        for pal in (theme.dark_palette(), light):
            app.setPalette(pal)
            want = pal.color(QPalette.ColorRole.Text).name()
            qtbot.waitUntil(lambda: plot.palette().color(QPalette.ColorRole.Text).name() == want, timeout=5000)
            qtbot.waitUntil(lambda: colours() == {want}, timeout=5000)
    finally:
        app.setPalette(light)
