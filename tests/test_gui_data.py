"""The Data step with real files: drops, preview, training text, histogram, problems, responsiveness."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QSettings, Qt  # noqa: E402

from app.gui.main import TuneloomApp  # noqa: E402
from app.gui.main_window import MainWindow  # noqa: E402
from app.gui.testing import TickMonitor, simulate_drop  # noqa: E402

MAX_GAP_MS = 100


@pytest.fixture(scope="session")
def qapp_cls():
    return TuneloomApp


@pytest.fixture
def window(qtbot, tmp_path):
    w = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.model_dir is not None, timeout=30000)
    return w


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def qa_rows(n):
    # lengths vary so the histogram has a spread; every 10th answer is long
    return [{"prompt": f"What is item {i}?",
             "completion": f"Item {i} is a thing." + (" It is described at length." * 12 if i % 10 == 0 else "")}
            for i in range(n)]


def wait_loaded(qtbot, w, tokens=True):
    qtbot.waitUntil(lambda: w.data_report is not None and (not tokens or w.token_report is not None), timeout=60000)


def test_drop_on_the_drop_zone_shows_format_counts_split_and_chat_preview(window, qtbot, tmp_path):
    w = window
    f = write_jsonl(tmp_path / "qa.jsonl", qa_rows(30))
    entered, dropped = simulate_drop(w.data_page.drop, [f])
    assert entered and dropped
    wait_loaded(qtbot, w)
    page = w.data_page
    qtbot.waitUntil(lambda: "Example 1" in page.preview.toPlainText(), timeout=5000)  # laid out a moment later
    summary = page.summary.text()
    assert "qa.jsonl" in summary and "prompt and completion" in summary
    assert "30 examples" in summary and "30 usable" in summary and "none with problems" in summary
    # the trainer's split: 10% kept for the final test, then 10% of the rest held out for validation
    assert "<b>24</b> to train on, <b>3</b> to check progress" in summary and "<b>3</b> for the final test" in summary
    assert page.results.isVisible() and page.drop.compact
    assert not page.problems.isVisible()  # no problems: no empty list
    # the first examples as a chat: role names and the texts, in file order
    text = page.preview.toPlainText()
    assert "User\nWhat is item 0?" in text and "Assistant\nItem 0 is a thing." in text
    assert text.index("What is item 0?") < text.index("What is item 1?")
    assert "Example 1" in text and "qa.jsonl, line 1" in text


def test_training_text_marks_what_is_learned(window, qtbot, tmp_path):
    w = window
    f = write_jsonl(tmp_path / "qa.jsonl", qa_rows(12))
    w.load_data([f])
    wait_loaded(qtbot, w)
    runs = w.token_report.previews[0]
    prompt = "".join(t for t, trained in runs if not trained)
    answer = "".join(t for t, trained in runs if trained)
    # the chat template is applied; the prompt is read but not learned, the answer and its end token are
    assert "<|im_start|>user\nWhat is item 0?<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert answer.startswith("Item 0 is a thing.") and answer.endswith("<|im_end|>")
    page = w.data_page
    qtbot.mouseClick(page.training_toggle, Qt.MouseButton.LeftButton, pos=page.training_toggle.rect().center())
    assert page.training_toggle.isChecked() and page.preview.mode == "training"
    shown = page.preview.toPlainText()
    assert "<|im_start|>user" in shown and "Item 1 is a thing.<|im_end|>" in shown
    html = page.preview.toHtml()
    from app.gui import theme

    grey = theme.muted(page.preview.palette()).name()
    learned = theme.tint("ok", page.preview.palette(), 0.22).name()
    assert f"color:{grey}" in html and f"background-color:{learned}" in html
    page.training_toggle.setChecked(False)
    assert "User\nWhat is item 0?" in page.preview.toPlainText()


def test_histogram_marks_max_length_and_counts_truncation(window, qtbot, tmp_path):
    w = window
    f = write_jsonl(tmp_path / "qa.jsonl", qa_rows(40))
    w.load_data([f])
    wait_loaded(qtbot, w)
    page, rep = w.data_page, w.token_report
    lengths = rep.lengths
    assert len(lengths) == 40 and max(lengths) > 2 * min(lengths)
    assert page.truncated == 0 and "No example is longer than 512 tokens" in page.trunc_label.text()
    assert page.histogram.max_line.value() == 512
    cut = sorted(lengths)[-5]  # the longest short example: the four long answers are longer
    page.max_len.setValue(cut)
    expected = sum(n > cut for n in lengths)
    assert expected == 4
    assert page.truncated == expected and page.histogram.max_line.value() == cut
    assert f"{expected} of 40 examples are longer than {cut} tokens" in page.trunc_label.text()
    assert page.histogram.bars_over is not None  # the bars past the line are drawn in the warning colour
    heights = list(page.histogram.bars_ok.opts["height"]) + list(page.histogram.bars_over.opts["height"])
    assert sum(heights) == 40
    assert w.settings.value("data/max_seq_len") in (cut, str(cut))


def test_problem_list_names_file_line_field_and_shows_the_record(window, qtbot, tmp_path):
    w = window
    rows = ['{"prompt": "good one", "completion": "fine"}',
            '{"prompt": "broken", "completion": "no closing brace"',
            '{"prompt": "no answer here"}',
            '{"prompt": "good two", "completion": "also fine"}']
    f = tmp_path / "mixed.jsonl"
    f.write_text("\n".join(rows) + "\n")
    csv = tmp_path / "table.csv"
    csv.write_text('prompt,completion\n"hi","there"\n"hello",""\n')
    entered, dropped = simulate_drop(w, [f, csv])  # dropped on the window, not the drop zone
    assert entered and dropped
    wait_loaded(qtbot, w)
    page = w.data_page
    got = [tuple(page.problems.topLevelItem(i).text(c) for c in range(4))
           for i in range(page.problems.topLevelItemCount())]
    assert [g[:2] for g in got] == [("mixed.jsonl", "2"), ("mixed.jsonl", "3"), ("table.csv", "3")]
    assert "not valid JSON" in got[0][3]
    assert got[1][2] == "completion"
    assert "3 with problems" in page.summary.text() and "3 usable" in page.summary.text()
    assert page.problems.topLevelItem(0).toolTip(0).count("What to do:") == 1
    # clicking a problem shows that record as it is in the file
    item = page.problems.topLevelItem(1)
    rect = page.problems.visualItemRect(item)
    qtbot.mouseClick(page.problems.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: "no answer here" in page.record_view.toPlainText(), timeout=10000)
    shown = page.record_view.toPlainText()
    assert shown.startswith("mixed.jsonl, line 3 [completion]:")
    assert '     3 | {"prompt": "no answer here"}' in shown and "good two" not in shown
    page.problems.setCurrentItem(page.problems.topLevelItem(0))
    qtbot.waitUntil(lambda: '"broken"' in page.record_view.toPlainText(), timeout=10000)
    assert "line 2" in page.record_view.toPlainText()


def test_dragging_over_the_window_says_what_a_drop_will_do(window, tmp_path):
    from PySide6.QtCore import QPointF
    from PySide6.QtGui import QDragLeaveEvent
    from PySide6.QtWidgets import QApplication

    from app.gui.testing import drag_enter_event, file_mime
    from core.paths import demo_data_dir, demo_model_dir

    for paths, text in (([demo_data_dir() / "train.jsonl"], "Drop to add these examples"),
                        ([demo_model_dir()], "Drop to use this model folder")):
        mime = file_mime(paths)
        enter = drag_enter_event(QPointF(50, 50), mime)
        QApplication.sendEvent(window, enter)
        assert enter.isAccepted()
        assert window.overlay.isVisible() and window.overlay.text == text
        QApplication.sendEvent(window, QDragLeaveEvent())
        assert not window.overlay.isVisible()


def test_unsupported_drop_is_refused(window, tmp_path):
    pdf = tmp_path / "notes.pdf"
    pdf.write_bytes(b"%PDF-1.4")
    entered, _ = simulate_drop(window, [pdf], leave_instead=True)
    assert not entered
    entered, _ = simulate_drop(window.data_page.drop, [pdf], leave_instead=True)
    assert not entered


def test_2gb_junk_file_is_rejected_while_the_window_stays_responsive(window, qtbot, tmp_path):
    junk = tmp_path / "junk.jsonl"
    with open(junk, "wb") as fh:
        fh.truncate(2 * 1024 ** 3)  # sparse: 2 GB of NUL bytes that take no disk space
    mon = TickMonitor(parent=window).start()
    t0 = time.process_time()  # CPU seconds of this process: a loaded machine does not stretch them
    simulate_drop(window, [junk])
    qtbot.waitUntil(lambda: "Cannot use" in window.data_page.summary.text(), timeout=60000)
    # ticks after the refusal too (waited for: on a busy machine 200 ms held 5 ticks, not 10)
    qtbot.waitUntil(lambda: mon.ticks >= 10, timeout=60000)
    mon.stop()
    assert time.process_time() - t0 < 10  # refused at the first bytes, not after reading 2 GB
    assert "binary" in window.data_page.summary.text() or "NUL" in window.data_page.summary.text()
    assert window.dataset is None and not window.data_page.results.isVisible()
    assert mon.ticks >= 10 and mon.responsive(MAX_GAP_MS), mon
    # and the window carries on: the sample dataset loads after it
    qtbot.mouseClick(window.data_page.sample_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.dataset is not None, timeout=30000)


def test_window_stays_responsive_during_a_long_load_and_cancel_stops_it(window, qtbot, tmp_path):
    """A 10 ms timer keeps ticking (largest gap under 100 ms) while a big dataset is read, split and
    measured with the tokenizer off the GUI thread; Cancel stops the measuring."""
    n = 30000
    big = tmp_path / "big.jsonl"
    with open(big, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": f"Tell me about thing number {i}, please."},
                {"role": "assistant", "content": f"Thing {i} is one of many things; it is number {i}."}]}) + "\n")
    w = window
    mon = TickMonitor(parent=w).start()
    simulate_drop(w.data_page.drop, [big])
    assert w.data_page.cancel_btn.isVisible()
    qtbot.waitUntil(lambda: w.data_report is not None, timeout=60000)
    assert f"{n:,} examples" in w.data_page.summary.text()
    tokens = w.jobs["tokens"]
    qtbot.waitUntil(lambda: "measuring token lengths" in w.data_page.progress.format(), timeout=30000)
    qtbot.wait(1500)  # measuring goes on, the window keeps ticking
    assert tokens.running
    with qtbot.waitSignal(tokens.ended, timeout=10000):
        qtbot.mouseClick(w.data_page.cancel_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: mon.ticks > 100, timeout=60000)  # a count of ticks, not a time (load)
    mon.stop()
    assert w.token_report is None and "stopped" in w.data_page.trunc_label.text()
    assert not w.data_page.cancel_btn.isVisible()
    assert w.dataset is not None and len(w.dataset.records) == n  # the dataset itself stays
    assert mon.ticks > 100
    assert mon.responsive(MAX_GAP_MS), mon


def test_the_tick_monitor_catches_work_on_the_gui_thread_and_not_a_sleeping_one(qtbot):
    """What the responsiveness checks above hold to 100 ms: CPU the GUI thread itself spends between two
    ticks of its 10 ms timer (a loaded machine that does not schedule the process adds wall time, not
    this); a GUI thread standing still for over a second fails whatever the reason."""
    from PySide6.QtCore import QTimer

    def spin(ms):
        end = time.thread_time() + ms / 1000
        while time.thread_time() < end:
            pass

    mon = TickMonitor().start()
    QTimer.singleShot(30, lambda: spin(150))
    qtbot.wait(400)
    mon.stop()
    assert mon.max_busy_ms >= 150 and not mon.responsive(100), mon

    mon = TickMonitor().start()
    QTimer.singleShot(30, lambda: time.sleep(0.15))  # waiting, not working: a scheduler delay looks the same
    qtbot.wait(400)
    mon.stop()
    assert mon.max_gap_ms >= 150 and mon.max_busy_ms < 100 and mon.responsive(100), mon
    # the time the GUI thread stood runnable waiting for a CPU is taken off each gap (a sleep is not that)
    assert len(mon.queued) == len(mon.gaps) and min(mon.queued) >= 0, mon
    assert mon.max_stall_ms <= mon.max_gap_ms and (not sys.platform.startswith("linux") or mon.max_stall_ms >= 140)

    mon = TickMonitor().start()
    QTimer.singleShot(30, lambda: time.sleep(1.2))
    qtbot.wait(1600)
    mon.stop()
    assert not mon.responsive(100), mon


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/schedstat"), reason="Linux's schedstat only")
def test_the_tick_monitor_keeps_one_file_open_and_closes_it_when_it_goes(qtbot):
    """Its schedstat file: a second start() reuses no old descriptor, stop() closes it, and a monitor
    dropped without stop() (a test failing before it) closes it as it goes."""
    import gc

    def schedstat_fds():  # (only TickMonitor opens these; another monitor closing meanwhile does not matter)
        out = set()
        for f in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{f}").endswith("/schedstat"):
                    out.add(int(f))
            except OSError:
                pass
        return out

    before = schedstat_fds()
    mon = TickMonitor().start()
    first = mon._schedstat
    mon.start()
    assert first not in schedstat_fds() - {mon._schedstat}  # the second start closed the first file
    assert schedstat_fds() - before == {mon._schedstat}
    mon.stop()
    assert mon._schedstat is None and not schedstat_fds() - before
    mon.start()
    last = mon._schedstat
    assert last in schedstat_fds()
    del mon
    gc.collect()
    assert last not in schedstat_fds()
