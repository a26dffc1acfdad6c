"""Screenshots of the Try and Export pages (offscreen) on a tiny trained demo run, for the README.

    QT_QPA_PLATFORM=offscreen .venv/bin/python docs/screenshots_try_export.py

Try: both answers mid-stream, and the evaluation table (docs/screenshots.py makes page-try.png and
page-export.png with the other pages). Export: the stages in progress, a
finished export registered in the recording Ollama look-alike the tests use
(tests/fixtures/ollama_server.py, on 127.0.0.1), and Ollama not running. Nothing leaves the machine.
"""
import os
import socket
import sys
import tempfile
import time
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

OUT = ROOT / "docs"
SIZE = (1180, 800)


def main():
    from tests.fixtures.eval_run import tiny_run
    from tests.fixtures.ollama_server import FakeOllama

    run = tiny_run()
    app = TuneloomApp(sys.argv)

    w, pump = open_window(app, HOME, SIZE, timeout=600, slice_ms=10)
    w.session.update(model_dir=demo_model_dir(), run_dir=run)
    tp = w.try_page

    def shot(row, name, settle=0.3):
        w.go_to(row)
        pump(settle)
        w.grab().save(str(OUT / f"{name}.png"))
        print("wrote", OUT / f"{name}.png")

    # Try: the models load on the first question; the second is caught mid-stream
    w.go_to(3)
    pump(cond=lambda: tp.system.toPlainText() != "" or not tp.slots.running("try-system"), timeout=60)
    question = tp.prompt.text()
    tp.temperature.setValue(0.0)
    tp.ask()
    pump(cond=lambda: not tp.slots.running("try"))
    tp.new_chat()
    tp.max_tokens.setValue(300)
    tp.prompt.setText(question)
    tp.ask()
    pump(cond=lambda: (len(tp.base_out.toPlainText()) > 25 and len(tp.tuned_out.toPlainText()) > 25)
         or not tp.slots.running("try"))
    shot(3, "page-try-streaming", settle=0.0)
    pump(cond=lambda: not tp.slots.running("try"))
    tp.eval_limit.setValue(16)
    tp.evaluate()
    pump(cond=lambda: not tp.slots.running("eval"))
    tp.table.table.selectRow(1)
    shot(3, "page-try-eval")
    tp.tabs.setCurrentIndex(0)

    # Export: in progress, done (registered and verified), Ollama not running
    ep = w.export_page
    with FakeOllama(max_lifetime=900) as srv:
        os.environ["OLLAMA_HOST"] = f"127.0.0.1:{srv.port}"
        ep.name.setText("kettle-bot")
        ep.quant.setCurrentIndex(ep.quant.findData("q4_k_m"))
        w.go_to(4)
        srv.answer = None  # filled in below with Tuneloom's own answer, as a real Ollama would give
        from app.gui.pages.export import tuneloom_answer, verify_messages

        srv.answer = tuneloom_answer(run, verify_messages(run))
        ep.export()
        pump(cond=lambda: ep.stages.current in ("gguf", "upload", "create") or
             (ep.slots["export"].job is not None and not ep.slots.running("export")))
        shot(4, "page-export-progress", settle=0.0)
        pump(cond=lambda: ep.slots["export"].job is not None and not ep.slots.running("export"))
        shot(4, "page-export-done")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["OLLAMA_HOST"] = f"127.0.0.1:{port}"  # nothing listens there
    ep.quant.setCurrentIndex(ep.quant.findData("q8_0"))
    job = ep.slots["export"].job
    ep.export()
    pump(cond=lambda: ep.slots["export"].job is not job and not ep.slots.running("export")
         and not ep.slots.running("export-check"))
    shot(4, "page-export-no-ollama")
    w.close()


if __name__ == "__main__":
    main()
