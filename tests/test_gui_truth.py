"""Issue 27 in the window (offscreen, pytest-qt): the banner's figures, one current run named on Train, Try and
Export, History's check boxes and context menu, the way back after a restart, the Data step while a run trains,
the export sizes and explanations, and the small things of item 12. Run folders are written by hand where a
trained run is not needed (their state is what is shown)."""
import json
import os
import re
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QSettings, Qt  # noqa: E402
from PySide6.QtWidgets import QFileDialog, QLabel, QMessageBox  # noqa: E402

from app.gui import theme  # noqa: E402
from app.gui.main import TuneloomApp  # noqa: E402
from core import runs  # noqa: E402
from core.paths import demo_data_dir, demo_model_dir  # noqa: E402
from core.train import MIN_STEPS  # noqa: E402

HISTORY = 5


@pytest.fixture(scope="session")
def qapp_cls():
    return TuneloomApp


@pytest.fixture(autouse=True)
def no_modal_questions(monkeypatch):
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("TUNELOOM_HOME", str(h))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return h


def make_window(qtbot, ini: Path):
    from app.gui.main_window import MainWindow

    w = MainWindow(settings=QSettings(str(ini), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.model_dir is not None, timeout=30000)
    return w


def fake_run(name: str, *, state="done", steps=200, total=200, valid=None, checkpoint=None, adapters=True,
             bimodal=True, warmup=10, title=None) -> Path:
    """A run folder as the trainer leaves it (config, status, metrics; an adapter file and a checkpoint)."""
    rd = runs.new_run_dir(name)
    cfg = {"model": str(demo_model_dir()), "data": [str(demo_data_dir())], "out": str(rd), "name": name,
           "iters": total, "epochs": 3.0, "rank": 32, "alpha": 64.0, "lr": 5e-5, "batch": 8, "targets": "all",
           "max_seq_len": 2048, "grad_checkpoint": True, "warmup": warmup}
    (rd / "config.json").write_text(json.dumps(cfg))
    metrics = []
    for i in range(steps):
        loss = (0.002 if i % 2 == 0 else 7.0 - 4.0 * i / max(1, steps)) if bimodal else 3.0 - i / max(1, steps)
        metrics.append({"step": i + 1, "train_loss": loss, "learning_rate": 1e-4, "epoch": i / 50})
    for step, v in valid or []:
        metrics.append({"step": step, "valid_loss": v})
    (rd / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    st = {"state": state, "step": steps, "total": total, "time": time.time()}
    if state == "running":
        st["pid"] = 2**22 + 12345  # no such process: the run was interrupted
    (rd / "status.json").write_text(json.dumps(st))
    if adapters:
        (rd / "adapters.safetensors").write_bytes(b"\0" * 16)
        (rd / "adapter_config.json").write_text(json.dumps({"base_model": str(demo_model_dir())}))
    if checkpoint is not None:
        ck = rd / "checkpoints" / f"step-{checkpoint}"
        ck.mkdir(parents=True)
        (ck / "state.json").write_text(json.dumps({"step": checkpoint}))
    if title:
        runs.set_title(rd, title)
    return rd


def history_ready(w, qtbot, n):
    qtbot.waitUntil(lambda: w.history_page.list.topLevelItemCount() == n, timeout=20000)


# --------------------------------------------------------------------------- item 1 and 2: the banner

def test_the_done_banner_of_a_bimodal_run_says_the_loss_fell(home, qtbot, tmp_path):
    w = make_window(qtbot, tmp_path / "s.ini")
    tp = w.train_page
    rd = fake_run("bimodal")
    w.session.update(run_dir=rd)
    tp._done({"steps": 200, "run_dir": str(rd), "valid_loss": None})  # the trainer's result, as it arrives
    text = tp.status.text()
    s = tp.loss_summary
    assert s.kind == "training" and s.first > s.last and s.first > 2.0  # not "0.002 -> 2.169"
    assert "<b>Done:</b>" in text and f"training loss {s.first:.3f} → {s.last:.3f}" in text, text
    assert "smoothed over 40 steps at each end" in text
    assert tp.result_problems == [] and tp.result_box.fill_color == theme.tint("ok", tp.palette(), 0.16)

    # with validation losses: they come first, the training loss as a second opinion
    rd2 = fake_run("with-valid", valid=[(0, 5.95), (100, 3.3), (200, 2.68)])
    w.session.update(run_dir=rd2)
    tp._done({"steps": 200, "run_dir": str(rd2), "valid_loss": 2.68})
    text = tp.status.text()
    assert text.index("validation loss 5.950 → 2.680") < text.index("training loss"), text


def test_a_short_run_whose_loss_rose_gets_a_warning_not_a_green_done(home, qtbot, tmp_path):
    w = make_window(qtbot, tmp_path / "s.ini")
    tp = w.train_page
    rd = fake_run("short", steps=6, total=6, valid=[(0, 8.63), (6, 9.23)], bimodal=False, warmup=10)
    w.session.update(run_dir=rd)
    tp._done({"steps": 6, "run_dir": str(rd), "valid_loss": 9.23})
    text = tp.status.text()
    assert "Done, but it probably learned little" in text and "only 6 steps" in text
    assert "validation loss did not fall (8.630 → 9.230)" in text and "warm-up (10 steps)" in text
    assert tp.result_box.fill_color == theme.tint("warning", tp.palette(), 0.16)


def write_small_file(path: Path, n: int = 30) -> Path:
    src = (demo_data_dir() / "train.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    path.write_text("\n".join(src) + "\n", encoding="utf-8")
    return path


def test_a_quick_test_on_30_examples_is_fitted_and_the_form_shows_the_running_runs_settings(home, qtbot, tmp_path):
    w = make_window(qtbot, tmp_path / "s.ini")
    tp, dp = w.train_page, w.data_page
    small = write_small_file(tmp_path / "small.jsonl")
    w.go_to(1)
    dp.load_data([small])
    qtbot.waitUntil(lambda: w.dataset is not None and not w.jobs["data"].running, timeout=60000)
    w.go_to(2)
    tp.set_preset("quick")
    qtbot.waitUntil(lambda: tp.estimate_value is not None and "Fitted to your data" in tp.estimate.text(),
                    timeout=60000)
    assert f"<b>{MIN_STEPS} steps</b>" in tp.estimate.text() and "warm-up 3 steps instead of 10" in tp.estimate.text()
    assert tp.iters.value() == 0  # the form keeps the user's choice (auto)
    qtbot.waitUntil(tp.start_btn.isEnabled, timeout=30000)
    tp.start()
    run_dir = w.run_dir
    # while it runs the form shows the run's own settings, and new data is for the next run
    assert tp.iters.value() == MIN_STEPS and tp.option("warmup").value() == 3 and tp.preset_key() == "quick"
    qtbot.waitUntil(lambda: (run_dir / "config.json").exists(), timeout=60000)  # the trainer writes it
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["iters"] == MIN_STEPS and cfg["warmup"] == 3
    estimate_before = tp.estimate.text()
    w.go_to(1)
    dp.load_data([write_small_file(tmp_path / "other.jsonl", 12)])
    qtbot.waitUntil(lambda: len(w.dataset.records) == 12 and not w.jobs["data"].running, timeout=60000)
    # the token measurement that follows redraws the summary: the note stays (it once vanished there)
    qtbot.waitUntil(lambda: w.session.token_report is not None, timeout=60000)
    # the run may already be over on a fast machine; if not, it is paused for the checks, so that it cannot
    # end (and give the form back) between them
    if tp.slot.state == "running":
        tp.toggle_pause()
        qtbot.waitUntil(lambda: tp.slot.state in ("paused", "idle"), timeout=60000)
    if tp.slot.state == "paused":
        assert (f"A run is training on the data it read when it started ({run_dir.name}):</span> these files are "
                "for the next run") in dp.summary.text(), dp.summary.text()
        w.go_to(2)
        qtbot.wait(500)
        assert tp.estimate.text() == estimate_before
        tp.toggle_pause()
    with qtbot.waitSignal(tp.slot.ended, timeout=300000, raising=False):
        pass
    qtbot.waitUntil(lambda: tp.slot.state == "idle", timeout=300000)
    assert runs.RunInfo.load(run_dir).state == "done"
    assert tp.iters.value() == 0 and tp.option("warmup").value() == 10  # the user's form is back
    if dp._run_then is not None:  # the files were read while the run trained: the note is now in the past
        qtbot.waitUntil(lambda: "trained on the data" in dp.summary.text(), timeout=10000)
        assert (f"The run ({run_dir.name}) trained on the data it read when it started:</span> these files are "
                "for the next run") in dp.summary.text()
        assert "A run is training" not in dp.summary.text()
        # a new run starts (on these files): the note goes, it would name the wrong run
        w.session.update(run_dir=run_dir.parent / "20990101-000000-next")
        w.session.set_job("train", "running")
        assert "these files are for the next run" not in dp.summary.text() and dp._run_then is None
        w.session.set_job("train", None)


# --------------------------------------------------------------------------- items 4 and 5: one current run

def test_ticking_to_compare_never_changes_the_current_run_and_a_click_does(home, qtbot, tmp_path):
    a = fake_run("alpha", title="alpha run")
    b = fake_run("beta", title="beta run")
    w = make_window(qtbot, tmp_path / "s.ini")
    hp = w.history_page
    history_ready(w, qtbot, 2)
    w.go_to(HISTORY)
    w.session.update(run_dir=a)
    lst = hp.list
    item_b = hp.item_for(b)
    # a click on the check box ticks, nothing else
    qtbot.mouseClick(lst.viewport(), Qt.MouseButton.LeftButton, pos=lst.check_rect(item_b).center())
    assert item_b.checkState(0) == Qt.CheckState.Checked and w.run_dir == a
    item_a = hp.item_for(a)
    qtbot.mouseClick(lst.viewport(), Qt.MouseButton.LeftButton, pos=lst.check_rect(item_a).center())
    assert hp.ticked() == [str(b), str(a)] or set(hp.ticked()) == {str(a), str(b)}
    assert "Comparing 2 runs" in hp.compare_label.text() and w.run_dir == a
    # the pages that act on a run name it
    for key in ("train", "try", "export"):
        label = w.findChild(QLabel, f"{key}.current_run")
        assert label is not None and "alpha run" in label.text(), key
    # a single click elsewhere on a row makes that run current; Train shows its state
    rect = lst.visualItemRect(item_b)
    qtbot.mouseClick(lst.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert w.run_dir == b
    for key in ("train", "try", "export"):
        assert "beta run" in w.findChild(QLabel, f"{key}.current_run").text()
    qtbot.waitUntil(lambda: w.train_page.shown_run is not None and w.train_page.shown_run.path == b, timeout=20000)
    assert "Done" in w.train_page.status.text() and "200 / 200" in w.train_page.stat["step"].text()
    assert w.train_page.preset_key() == "quick"  # a finished run: the form stays the next run's
    assert set(hp.ticked()) == {str(a), str(b)}  # ticks untouched


def test_the_history_context_menu_has_the_history_actions(home, qtbot, tmp_path):
    done = fake_run("done-run")
    stopped = fake_run("stopped-run", state="cancelled", steps=196, total=600, checkpoint=150)
    w = make_window(qtbot, tmp_path / "s.ini")
    history_ready(w, qtbot, 2)
    menu = w.history_page.context_menu(stopped)
    texts = [a.text() for a in menu.actions() if a.text()]
    assert texts == ["Make current", "Resume from step 150", "Try", "Export", "Compare (tick)", "Rename",
                     "Show in folder", "Move to Trash..."], texts
    assert all(a.isEnabled() for a in menu.actions() if a.text())
    menu = w.history_page.context_menu(done)
    resume = next(a for a in menu.actions() if a.text().startswith("Resume"))
    assert not resume.isEnabled()  # a finished run
    next(a for a in menu.actions() if a.text() == "Make current").trigger()
    assert w.run_dir == done


def test_after_a_restart_the_unfinished_run_is_offered_with_the_step_it_continues_from(home, qtbot, tmp_path):
    ini = tmp_path / "s.ini"
    fake_run("finished", title="finished run")
    rd = fake_run("killed", state="running", steps=196, total=600, checkpoint=150, title="killed run")
    w = make_window(qtbot, ini)
    history_ready(w, qtbot, 2)
    w.session.update(run_dir=rd)  # it was current (training) when the app was killed
    assert runs.RunInfo.load(rd).state == "interrupted"
    w.hide()  # no close: a kill saves nothing on the way out
    w2 = make_window(qtbot, ini)
    qtbot.waitUntil(lambda: w2.run_dir == rd, timeout=20000)
    tp = w2.train_page
    qtbot.waitUntil(lambda: tp.shown_run is not None and tp.shown_run.path == rd, timeout=20000)
    w2.go_to(2)
    assert tp.resume_btn.isVisible() and tp.resume_btn.text() == "Resume from step 150"
    text = tp.status.text()
    assert "interrupted" in text and "at step 196 of 600" in text and "continues from step 150" in text
    assert "the 46 steps after it are trained again" in text
    assert "killed run" in w2.findChild(QLabel, "train.current_run").text()
    # the form shows the settings Resume continues with: the run's own (rank 32, lr 5e-5, batch 8, 600 steps)
    assert tp.preset_key() == "thorough" and tp.iters.value() == 600 and tp.option("rank").value() == 32
    # Try and Export act on it (it has an adapter): not "needs a trained model"
    assert w2.step_states()["Try"][0] == "ready" and w2.step_states()["Export"][0] == "ready"
    assert "killed run" in w2.findChild(QLabel, "export.current_run").text()


def test_a_paused_run_is_listed_as_paused(home, qtbot, tmp_path):
    from app.gui.run_bar import state_words

    rd = fake_run("live", state="running")
    info = runs.RunInfo.load(rd)
    (rd / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid(), "step": 3}))
    info = runs.RunInfo.load(rd)
    w = make_window(qtbot, tmp_path / "s.ini")
    w.session.update(run_dir=rd)
    assert state_words(info, w.session) == "training"
    w.session.set_job("train", "paused")
    assert state_words(info, w.session) == "paused"
    w.session.set_job("train", None)


# --------------------------------------------------------------------------- items 6, 11: export

def test_export_explains_each_type_and_shows_the_command_from_its_start(home, qtbot, tmp_path):
    rd = fake_run("exp")
    w = make_window(qtbot, tmp_path / "s.ini")
    w.session.update(run_dir=rd)
    ep = w.export_page
    w.go_to(4)
    qtbot.waitUntil(lambda: len(ep._sizes) == ep.quant.count(), timeout=30000)  # worked out off the GUI thread
    seen = set()
    for i in range(ep.quant.count()):
        ep.quant.setCurrentIndex(i)
        note = ep.quant_note.text()
        assert re.match(r"About \d+\.\d (KB|MB)\. [\d.]+ bits a weight", note), note
        assert "Pick it" in note or "usual choice" in note, note
        seen.add(note)
    assert len(seen) == ep.quant.count()
    long = "ollama create my-tuneloom-model -f " + "/very/long/folder" * 20 + "/Modelfile"
    ep.set_command(long)
    assert ep.command.cursorPosition() == 0 and ep.command.text() == long and ep.command.toolTip() == long


def test_show_in_folder_without_a_file_manager_says_so(home, qtbot, tmp_path, monkeypatch):
    from PySide6.QtGui import QDesktopServices, QGuiApplication

    from app.gui.notify import show_in_folder

    w = make_window(qtbot, tmp_path / "s.ini")
    said = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: False)
    w.ctx.status = lambda text, ms=0: said.append(text)
    f = tmp_path / "x.gguf"
    f.write_bytes(b"x")
    assert show_in_folder(w.ctx, f) is False
    box = w.findChild(QMessageBox, "reveal.no_file_manager")
    assert box is not None and box.isVisible() and str(f) in box.text()
    assert said and "No file manager" in said[0] and QGuiApplication.clipboard().text() == str(f)
    box.close()


# --------------------------------------------------------------------------- items 9, 10, 12

def test_csv_pickers_show_the_columns_in_use(home, qtbot, tmp_path):
    csv = tmp_path / "qa.csv"
    csv.write_text("question,answer\nWhat is 2+2?,4\nCapital of France?,Paris\nColour of the sky?,Blue\n")
    w = make_window(qtbot, tmp_path / "s.ini")
    dp = w.data_page
    w.go_to(1)
    dp.load_data([csv])
    qtbot.waitUntil(lambda: dp.mapping_host.isVisible() and not dp.slots.running("data"), timeout=60000)
    qtbot.waitUntil(lambda: dp.mapping.user_column.currentText() == "question", timeout=10000)
    assert dp.mapping.assistant_column.currentText() == "answer"
    # a template naming one column whole selects it too
    dp.mapping.user_template.setText("{answer}")
    dp.mapping.assistant_template.setText("Q: {question}")
    dp.mapping.refresh()
    assert dp.mapping.user_column.currentText() == "answer"
    assert dp.mapping.assistant_column.currentText() == "(choose a column)"  # a template, not one column


def test_evaluate_has_a_browse_button(home, qtbot, tmp_path, monkeypatch):
    w = make_window(qtbot, tmp_path / "s.ini")
    f = tmp_path / "held-out.jsonl"
    f.write_text("")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(f), ""))
    qtbot.mouseClick(w.try_page.eval_browse, Qt.MouseButton.LeftButton)
    assert w.try_page.eval_file.text() == str(f)


def test_small_things(home, qtbot, tmp_path):
    import sys

    rd = fake_run("one")
    w = make_window(qtbot, tmp_path / "s.ini")
    tp = w.train_page
    # collapsed sections point right, not up
    for box in (tp.advanced, tp.hosts_box):
        assert not box.isExpanded()

        def image(icon):
            return icon.pixmap(16, 16).toImage()

        shown = image(box.toggleButton().icon())
        assert shown == image(box._convert_string_to_icon("\u25b6"))
        assert shown != image(box._convert_string_to_icon("\u25b2"))
    if sys.platform != "darwin":
        assert tp.hosts_box.text() == "Several computers" and "this Mac" not in tp.hosts_box.content().findChild(
            QLabel).text()
    # the preset line always has two lines: changing an option does not move what is below
    lines = tp.preset_line.text().count("<br>")
    tp.option("rank").setValue(12)
    assert tp.preset_line.text().count("<br>") == lines == 1
    # no empty progress bar before any run
    assert not tp.progress.isVisible()
    # History: one run's curve smoothed, its raw curve faint behind
    history_ready(w, qtbot, 1)
    w.session.update(run_dir=rd)
    qtbot.waitUntil(lambda: w.history_page.opened is not None, timeout=20000)
    items = w.history_page.plot.getPlotItem().listDataItems()
    assert len(items) >= 2
    smooth = items[0].yData
    assert max(smooth[20:]) < 7.0 * 0.6  # not the raw zig-zag between 0.002 and 7


def test_evaluate_on_a_file_with_a_bad_line_says_which_line_was_left_out(qtbot, tmp_path):
    from app.gui.main_window import MainWindow
    from tests.fixtures.eval_run import tiny_run

    run = tiny_run()
    lines = (demo_data_dir() / "valid.jsonl").read_text(encoding="utf-8").splitlines()[:4]
    lines.insert(2, '{"messages": [{"role": "user", "content": "no answer here"}')  # line 3: cut short
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines) + "\n", encoding="utf-8")
    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.session.model_dir is not None, timeout=30000)
    w.session.update(model_dir=demo_model_dir(), run_dir=run)
    w.go_to(3)
    page = w.try_page
    page.eval_file.setText(str(broken))
    page.eval_limit.setValue(2)
    qtbot.waitUntil(page.eval_btn.isEnabled, timeout=30000)
    page.evaluate()
    qtbot.waitUntil(lambda: not w.jobs["eval"].running and "Left out" in page.table.status.text(), timeout=300000)
    text = page.table.status.text()
    assert "broken.jsonl" in text and "line 3" in text, text


def test_the_words_of_item_12(home, qtbot, tmp_path):
    w = make_window(qtbot, tmp_path / "s.ini")
    one = tmp_path / "one-bad.jsonl"
    good = (demo_data_dir() / "train.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    one.write_text("\n".join(good + ['{"messages": []}']) + "\n", encoding="utf-8")
    said = []
    w.ctx.status = lambda text, ms=0: said.append(text)
    w.data_page.load_data([one])
    qtbot.waitUntil(lambda: w.dataset is not None and not w.jobs["data"].running, timeout=60000)
    assert any(s == "3 usable examples, 1 problem" for s in said), said
    # a bad model folder: the model in use is named as people know it, not by its folder ("model")
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    w.model_page.set_model(bad)
    qtbot.waitUntil(lambda: "still" in w.model_page.current.text(), timeout=30000)
    assert "Tuneloom demo model" in w.model_page.current.text() and "Still using model." not in \
        w.model_page.current.text()
