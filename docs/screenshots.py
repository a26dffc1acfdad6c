"""Screenshots of every page of the window (offscreen), in light and dark appearance, for the README.

    QT_QPA_PLATFORM=offscreen .venv/bin/python docs/screenshots.py
    QT_QPA_PLATFORM=offscreen .venv/bin/python docs/screenshots.py --sizes   # only the page-*-WxH shots

Every page is also shot at 1024x700 and 1600x1000, light and dark (docs/sizes/page-NAME-WxH[-dark].png), and
checked for cut labels and overlapping widgets (app.gui.testing.layout_problems, as tests/test_gui_layout.py).

Loads the sample dataset, trains the demo model briefly and exports it, so every page shows
real state. A download is shown against the hub look-alike the tests use (tests/fixtures/
hub_server.py, on 127.0.0.1), serving the demo model under a made-up id: nothing leaves the
machine. The offscreen platform has no system appearance, so the dark shots set the palette
a dark system theme would give (app.gui.theme.dark_palette).
"""
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
HOME = Path(tempfile.mkdtemp(prefix="tuneloom-shots-"))
os.environ.setdefault("TUNELOOM_HOME", str(HOME))
os.environ["HF_HOME"] = str(HOME / "hf")
os.environ["HF_HUB_OFFLINE"] = "0"
os.environ["OLLAMA_HOST"] = "http://127.0.0.1:9"  # no Ollama here: the page shows the command to run
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import core  # noqa: E402,F401
from PySide6.QtCore import QSettings  # noqa: E402

from app.gui import theme  # noqa: E402
from app.gui.main import TuneloomApp  # noqa: E402
from app.gui.main_window import MainWindow  # noqa: E402
from app.gui.testing import open_window, pump_events  # noqa: E402
from core.paths import demo_data_dir, demo_model_dir  # noqa: E402

OUT = ROOT / "docs"
SIZE = (1180, 800)
SIZES = [(1024, 700), (1600, 1000)]
PAGES = ["model", "data", "train", "try", "export", "history"]


def every_size(app, w, pump, light) -> list[str]:
    """Every page at each of SIZES, light and dark, into docs/sizes/; the layout problems found on the way."""
    from app.gui.testing import layout_problems

    out = OUT / "sizes"
    out.mkdir(exist_ok=True)
    problems = []
    for dark in (False, True):
        app.setPalette(theme.dark_palette() if dark else light)
        for width, height in SIZES:
            w.resize(width, height)
            for row, name in enumerate(PAGES):
                w.go_to(row)
                pump(0.4)
                problems += [f"{name} {width}x{height}: {p}" for p in layout_problems(w)]
                path = out / f"page-{name}-{width}x{height}{'-dark' if dark else ''}.png"
                w.grab().save(str(path))
                print("wrote", path)
    app.setPalette(light)
    w.resize(*SIZE)
    for p in problems:
        print("LAYOUT:", p)
    return problems


def sizes_only():
    """A quick real state (the sample data, a short run, a stopped one) and every page at every size."""
    app = TuneloomApp(sys.argv)
    light = app.palette()

    w, pump = open_window(app, HOME, SIZE, timeout=600, slice_ms=30, ready=lambda w: w.model_dir is not None and len(w.model_page.cards) > 5)
    w.load_data([demo_data_dir()])
    pump(cond=lambda: w.token_report is not None)
    tp = w.train_page
    w.go_to(2)
    tp.set_preset("quick")
    for iters, stop_at in ((60, None), (200, 40)):
        tp.iters.setValue(iters)
        tp.option("lr").setValue(1e-3)
        tp.option("valid_every").setValue(20)
        tp.option("checkpoint_every").setValue(20)
        pump(cond=lambda: tp.start_btn.isEnabled(), timeout=120)
        tp.start()
        if stop_at:
            pump(cond=lambda: tp.plot.train_s.n >= stop_at)
            tp.stop()
        pump(cond=lambda: tp.slot.state == "idle")
        if not stop_at:
            done = w.run_dir
    w.history_page.select_run(done)
    pump(cond=lambda: tp.shown_run is not None and tp.shown_run.path == done, timeout=60)
    problems = every_size(app, w, pump, light)
    w.close()
    return problems


def main():
    from tests.fixtures.hub_server import HubServer

    server = HubServer(lifetime=900).start()
    server.add_repo("tuneloom/demo-model", demo_model_dir())
    os.environ["HF_ENDPOINT"] = server.url
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = False

    app = TuneloomApp(sys.argv)
    light = app.palette()

    def pump(seconds=0.0, cond=None, timeout=600):
        pump_events(app, seconds, cond, timeout, slice_ms=30)

    settings = QSettings(str(HOME / "settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(settings=settings)
    w.resize(*SIZE)
    w.show()
    pump(cond=lambda: w.model_dir is not None and len(w.model_page.cards) > 5)

    def shot(row, name):
        w.go_to(row)
        pump(0.3)
        w.grab().save(str(OUT / f"{name}.png"))
        print("wrote", OUT / f"{name}.png")

    def dark(on: bool):
        app.setPalette(theme.dark_palette() if on else light)
        pump(0.3)

    # Model: the catalog, then a download in progress (throttled so it is caught half-way)
    shot(0, "page-model")
    dark(True)
    shot(0, "page-model-dark")
    dark(False)
    server.throttle(250_000)
    card = w.model_page.add_hub_id("tuneloom/demo-model")
    pump(cond=lambda: "left" in card.detail.text() and card.progress.value() > 150, timeout=60)
    w.model_page.scroll.ensureWidgetVisible(card)
    shot(0, "page-model-download")
    w.model_page.cancel_download(card)
    pump(cond=lambda: card.state == "paused", timeout=30)
    server.throttle(None)

    # Data: the sample dataset as a chat, as training text, and a file with problems
    w.load_data([demo_data_dir()])
    pump(cond=lambda: w.token_report is not None)
    shot(1, "page-data")
    dark(True)
    shot(1, "page-data-dark")
    dark(False)
    w.data_page.training_toggle.setChecked(True)
    shot(1, "page-data-training-text")
    w.data_page.training_toggle.setChecked(False)
    bad = HOME / "support-chats.jsonl"
    lines = (demo_data_dir() / "train.jsonl").read_text().splitlines()[:40]
    lines[6] = lines[6][:-2]  # a line cut short
    lines[12] = '{"messages": [{"role": "user", "content": "Where is my order?"}]}'  # no answer
    lines[20] = '{"messages": [{"role": "assistant", "content": "Hello"}, {"role": "robot", "content": "?"}]}'
    bad.write_text("\n".join(lines) + "\n")
    w.load_data([bad])
    pump(cond=lambda: w.data_paths == [bad] and w.token_report is not None)
    w.data_page.max_len.setValue(64)
    w.data_page.problems.setCurrentItem(w.data_page.problems.topLevelItem(1))
    pump(cond=lambda: "Where is my order" in w.data_page.record_view.toPlainText(), timeout=30)
    shot(1, "page-data-problems")
    w.data_page.max_len.setValue(512)

    # Train on the sample dataset: running, paused, done; a run that fails; two runs compared in the history
    w.load_data([demo_data_dir()])
    pump(cond=lambda: w.data_paths == [demo_data_dir()] and w.token_report is not None)
    tp = w.train_page
    slot = tp.slot
    w.go_to(2)
    tp.set_preset("quick")

    def train(iters, lr, until=None):
        tp.iters.setValue(iters)
        tp.option("lr").setValue(lr)
        tp.option("valid_every").setValue(20)
        pump(cond=lambda: tp.start_btn.isEnabled(), timeout=120)
        tp.start()
        if until is not None:
            pump(cond=until)
            return None
        pump(cond=lambda: slot.state == "idle")
        return w.run_dir

    # the run Try shows: the demo's own LoRA settings (core.demo.DEMO_TRAIN), so its answers are the demo's
    from core.demo import DEMO_TRAIN

    tp.options.set_values({k: v for k, v in DEMO_TRAIN.items() if k in tp.options.widgets})
    train(DEMO_TRAIN["iters"], DEMO_TRAIN["lr"], until=lambda: tp.plot.train_s.n >= 90)
    pump(0.4)
    shot(2, "page-train-running")
    tp.pause()
    pump(cond=lambda: slot.state == "paused", timeout=120)
    pump(0.3)
    shot(2, "page-train-paused")
    tp.resume()
    pump(cond=lambda: slot.state == "idle")
    good = w.run_dir
    tp.plot.flush()
    shot(2, "page-train-done")
    shot(2, "page-train")
    # a run that fails: its dataset's files were moved away after they were checked
    import shutil

    moved = HOME / "support-chats"
    shutil.copytree(demo_data_dir(), moved)
    w.load_data([moved], switch=False)
    pump(cond=lambda: w.data_paths == [moved] and w.token_report is not None)
    for f in moved.iterdir():
        f.unlink()
    w.go_to(2)
    train(60, 1e-3)
    shot(2, "page-train-failed")
    w.load_data([demo_data_dir()], switch=False)
    pump(cond=lambda: w.data_paths == [demo_data_dir()] and w.token_report is not None)
    w.go_to(2)
    other = train(240, 2e-4)
    hp = w.history_page
    pump(cond=lambda: hp.item_for(other) is not None and hp.item_for(good) is not None, timeout=30)
    hp.set_ticked([good, other])
    pump(0.3)
    shot(5, "page-history")
    hp.select_run(good)
    pump(cond=lambda: w.model_checking is None, timeout=30)
    from core.demo import first_heldout_prompt

    w.try_page.prompt.setText(first_heldout_prompt())  # a topic in neither split of the sample data
    w.try_page.ask()
    pump(cond=lambda: not w.jobs["try"].running and w.try_page.tuned_out.toPlainText() not in ("...", ""))
    shot(3, "page-try")
    w.export_page.export()  # asks Ollama about the name first, then exports (no Ollama here: files and the command)
    ep = w.export_page
    pump(cond=lambda: ep.slots["export"].job is not None and not ep.slots.running("export")
         and not ep.slots.running("export-check"))
    shot(4, "page-export")
    dark(True)
    for row, name in ((2, "train"), (3, "try"), (4, "export"), (5, "history")):
        shot(row, f"page-{name}-dark")
    dark(False)
    every_size(app, w, pump, light)
    w.close()
    server.stop()


if __name__ == "__main__":
    if "--sizes" in sys.argv[1:]:
        sys.exit(1 if sizes_only() else 0)
    main()
