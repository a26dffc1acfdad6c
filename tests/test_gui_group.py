"""The Train page's "Several Macs" panel (offscreen, pytest-qt): Check Macs lists every host of the host
file, the switch is on offer only when all are ready, and Start with it on trains the run as a group
(two ranks on 127.0.0.1) whose curve and run folder are those of an ordinary run."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QCheckBox, QLineEdit, QListWidget, QPushButton  # noqa: E402
from test_gui_train import (find, home, loss_points, make_window, no_modal_questions,  # noqa: E402,F401
                            qapp_cls, ready_to_train, steps_on_disk)

from core import distributed as dist  # noqa: E402
from core import runs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _panel(w):
    return (find(w, QLineEdit, "train.hosts"), find(w, QPushButton, "train.check_hosts"),
            find(w, QListWidget, "train.hosts_list"), find(w, QCheckBox, "train.use_hosts"))


def _check(qtbot, w, hostfile: Path):
    edit, check, lst, use = _panel(w)
    edit.setText(str(hostfile))
    assert not use.isEnabled() and "Check" in use.toolTip()
    qtbot.mouseClick(check, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: check.isEnabled() and lst.count() and "Checking" not in lst.item(0).text(),
                    timeout=30000)
    return [lst.item(i).text() for i in range(lst.count())]


def test_check_macs_offers_the_switch_only_when_every_mac_is_ready(home, qtbot, tmp_path, monkeypatch):
    monkeypatch.setattr(dist, "_ssh", lambda host, command, timeout: subprocess.CompletedProcess(
        [], 255, "", f"ssh: connect to host {host.ssh} port 22: Operation timed out"))
    ini = tmp_path / "s.ini"
    w = make_window(qtbot, ini)
    edit, check, lst, use = _panel(w)
    assert not check.isEnabled() and not use.isEnabled() and use.toolTip()

    good = tmp_path / "macs.txt"
    good.write_text("127.0.0.1\n127.0.0.1\n")
    lines = _check(qtbot, w, good)
    assert lines == ["rank 0 (127.0.0.1): ok", "rank 1 (127.0.0.1): ok"]
    assert use.isEnabled() and "2 Macs" in use.toolTip()

    far = tmp_path / "far.txt"
    far.write_text("127.0.0.1 10.0.0.1\nmini.local 192.0.2.1\n")
    lines = _check(qtbot, w, far)
    assert lines[0] == "rank 0 (127.0.0.1): ok" and lines[1].startswith("rank 1 (mini.local): cannot be reached")
    assert lst.item(1).data(Qt.ItemDataRole.UserRole) is False and "ssh mini.local" in lst.item(1).toolTip()
    assert not use.isEnabled() and not use.isChecked()
    assert "1 of 2 Macs are not ready" in use.toolTip() and "mini.local" in use.toolTip()

    bad = tmp_path / "one.txt"
    bad.write_text("127.0.0.1\n")
    lines = _check(qtbot, w, bad)
    assert "a group needs two or more" in lines[0] and not use.isEnabled()
    assert "a group needs two or more" in use.toolTip()

    # the host file is remembered with the window's settings
    edit.setText(str(good))
    w.close()
    w2 = make_window(qtbot, ini)
    assert find(w2, QLineEdit, "train.hosts").text() == str(good)
    w2.close()


def test_a_mac_that_only_lacks_files_is_offered_a_copy(home, qtbot, tmp_path, monkeypatch):
    import json

    copied = []

    def fake_ssh(host, command, timeout):  # the other Mac answers the probe: same versions, files missing until copied
        import shlex

        paths = shlex.split(command)[3:]  # python -c PROBE PATH...
        missing = [] if copied else paths
        return subprocess.CompletedProcess([], 0, json.dumps({"versions": dist.local_versions(), "missing": missing}),
                                           "")

    monkeypatch.setattr(dist, "_ssh", fake_ssh)
    monkeypatch.setattr(dist, "copy_missing", lambda checks, events=None: copied.extend(
        (c.host.ssh, p) for c in checks for p in c.missing))
    w = make_window(qtbot, tmp_path / "s.ini")
    edit, check, lst, use = _panel(w)
    copy = find(w, QPushButton, "train.copy_missing")
    far = tmp_path / "far.txt"
    far.write_text("127.0.0.1 10.0.0.1\nmini.local 192.0.2.1\n")
    lines = _check(qtbot, w, far)
    assert lines[1].startswith("rank 1 (mini.local): lacks ") and "rsync" in lines[1]
    assert not use.isEnabled() and not copy.isHidden()
    qtbot.mouseClick(copy, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: check.isEnabled() and lst.count() == 2 and "Copying" not in lst.item(0).text(),
                    timeout=30000)
    model = str(Path(w.session.model_dir).resolve())
    assert ("mini.local", model) in copied
    assert [lst.item(i).text() for i in range(2)] == ["rank 0 (127.0.0.1): ok", "rank 1 (mini.local): ok"]
    assert use.isEnabled() and copy.isHidden()
    w.close()


@pytest.mark.timeout(300)
def test_start_on_two_macs_trains_an_ordinary_run(home, qtbot, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the ranks run `python -m app.cli` here
    w = make_window(qtbot, tmp_path / "s.ini")
    start = ready_to_train(qtbot, w, iters=4)
    hosts = tmp_path / "macs.txt"
    hosts.write_text("127.0.0.1\n127.0.0.1\n")
    _check(qtbot, w, hosts)
    _, _, _, use = _panel(w)
    use.setChecked(True)
    pause, stop = find(w, QPushButton, "train.pause"), find(w, QPushButton, "train.stop")
    tp = w.train_page
    with qtbot.waitSignal(tp.slot.ended, timeout=240000):
        qtbot.mouseClick(start, Qt.MouseButton.LeftButton)
        assert stop.isEnabled() and not pause.isEnabled() and "not paused" in pause.toolTip()
    run_dir = w.run_dir
    assert tp.result_state == "done", tp.status.text()
    assert "Done" in tp.status.text() and "4 steps" in tp.status.text()
    assert loss_points(w) == [1.0, 2.0, 3.0, 4.0]  # every step once
    assert steps_on_disk(run_dir) == [1, 2, 3, 4]
    assert tp.stat["step"].text() == "4 / 4"
    log = tp.log.toPlainText()
    assert "rank 1 (127.0.0.1): ok" in log and "training on 2 Macs" in log
    info = runs.RunInfo.load(run_dir)
    assert info.state == "done" and info.steps == 4
    assert (run_dir / "adapters.safetensors").exists()
    assert "not paused" not in pause.toolTip()  # the next run may be one on this Mac alone


@pytest.mark.timeout(400)
def test_a_group_run_stops_and_resumes_on_the_same_curve(home, qtbot, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    w = make_window(qtbot, tmp_path / "s.ini")
    start = ready_to_train(qtbot, w, iters=30, checkpoint_every=5)
    hosts = tmp_path / "macs.txt"
    hosts.write_text("127.0.0.1\n127.0.0.1\n")
    _check(qtbot, w, hosts)
    _panel(w)[3].setChecked(True)
    tp = w.train_page
    qtbot.mouseClick(start, Qt.MouseButton.LeftButton)
    run_dir = w.run_dir
    qtbot.waitUntil(lambda: len(loss_points(w)) >= 3, timeout=180000)
    with qtbot.waitSignal(tp.slot.ended, timeout=60000):
        qtbot.mouseClick(find(w, QPushButton, "train.stop"), Qt.MouseButton.LeftButton)
    assert tp.result_state == "stopped" and "Stopped" in tp.status.text(), tp.status.text()
    info = runs.RunInfo.load(run_dir)
    assert info.state == "cancelled" and info.resumable and info.steps < 30
    resume = find(w, QPushButton, "train.resume")
    assert not resume.isHidden()  # offered (the page itself may be behind the Data step here)
    with qtbot.waitSignal(tp.slot.ended, timeout=240000):
        resume.click()
        qtbot.waitUntil(lambda: tp.slot.state == "running", timeout=10000)
        assert tp._group_run  # resumed on the Macs too
    assert tp.result_state == "done", tp.status.text()
    assert steps_on_disk(run_dir) == list(range(1, 31))
    assert loss_points(w) == [float(s) for s in range(1, 31)]  # the old points and the new, each once
    assert runs.RunInfo.load(run_dir).state == "done"


@pytest.mark.timeout(400)
def test_a_dpo_run_trains_on_two_macs_and_plots_its_rewards(home, qtbot, tmp_path, monkeypatch):
    """Preference tuning is no exception: with pairs and DPO chosen the switch stays on offer, and the
    group's reward margins fill the plot's right axis as a run on this Mac does."""
    import json

    from PySide6.QtWidgets import QComboBox

    from core.demo import world as demo_world

    monkeypatch.chdir(ROOT)
    w = make_window(qtbot, tmp_path / "s.ini")
    tp = w.train_page
    start = find(w, QPushButton, "train.start")
    pairs, _, _ = demo_world.preference_dataset(n_train=24, n_valid=0)
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    w.load_data([f])
    qtbot.waitUntil(lambda: w.data_report is not None and getattr(w.session.dataset, "pairs", 0) == 24,
                    timeout=60000)
    qtbot.waitUntil(lambda: start.isEnabled(), timeout=60000)
    method = find(w, QComboBox, "train.method")
    method.setCurrentIndex(method.findData("dpo"))
    for name, value in (("iters", 3), ("lr", 1e-3), ("batch", 3), ("max_seq_len", 96), ("valid_every", 0)):
        tp.option(name).setValue(value)
    hosts = tmp_path / "macs.txt"
    hosts.write_text("127.0.0.1\n127.0.0.1\n")
    _check(qtbot, w, hosts)
    use = _panel(w)[3]
    assert use.isEnabled()  # DPO chosen: the group is on offer as for a supervised run
    use.setChecked(True)
    qtbot.mouseClick(start, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: tp.slot.state == "idle" and tp.result_state in ("done", "failed", "stopped"),
                    timeout=300000)
    assert tp.result_state == "done", tp.status.text()
    run = w.run_dir
    assert json.loads((run / "config.json").read_text())["method"] == "dpo"
    assert "training on 2 Macs" in tp.log.toPlainText()
    steps = [m for m in runs.read_metrics(run) if "reward_margin" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    tp.plot.flush()
    assert [int(x) for x in tp.plot.lr_curve.xData] == [1, 2, 3]
    assert [float(y) for y in tp.plot.lr_curve.yData] == pytest.approx([m["reward_margin"] for m in steps],
                                                                        abs=1e-6)
