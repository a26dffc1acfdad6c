"""Screenshot of the Export page's adapter export, other targets and Share section (offscreen), for the README.

    QT_QPA_PLATFORM=offscreen .venv/bin/python docs/screenshots_ship.py

On a tiny trained demo run: "Adapter (small, shares the base)" exported and registered in the recording
Ollama look-alike of the tests (tests/fixtures/ollama_server.py), the PEFT folder written, and a push to the
hub look-alike (tests/fixtures/hub_server.py) with a token pasted for that push. Both servers listen on
127.0.0.1; nothing leaves the machine and no token is written anywhere.
"""
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
HOME = Path(tempfile.mkdtemp(prefix="tuneloom-shots-"))
os.environ.setdefault("TUNELOOM_HOME", str(HOME))
os.environ["HF_HOME"] = str(HOME / "hf")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import core  # noqa: E402,F401

from app.gui.main import TuneloomApp  # noqa: E402
from app.gui.testing import open_window  # noqa: E402
from core.paths import demo_model_dir  # noqa: E402

OUT = ROOT / "docs"
SIZE = (1180, 1060)
TOKEN = "hf_screenshot_token"


def main():
    from tests.fixtures.eval_run import tiny_run
    from tests.fixtures.hub_server import HubServer
    from tests.fixtures.ollama_server import FakeOllama

    run = tiny_run()
    app = TuneloomApp(sys.argv)

    w, pump = open_window(app, HOME, SIZE, timeout=600, slice_ms=10)
    w.session.update(model_dir=demo_model_dir(), run_dir=run)
    ep = w.export_page
    w.go_to(4)
    pump(0.3)
    with FakeOllama(max_lifetime=900) as srv, HubServer(lifetime=900) as hub:
        os.environ["OLLAMA_HOST"] = f"127.0.0.1:{srv.port}"
        os.environ["HF_ENDPOINT"] = hub.url
        hub.write_tokens.add(TOKEN)
        from app.gui.pages.export import tuneloom_answer, verify_messages

        srv.answer = tuneloom_answer(run, verify_messages(run))
        ep.name.setText("kettle-bot-adapter")
        ep.quant.setCurrentIndex(ep.quant.findData("q8_0"))
        ep.ship.kind.setCurrentIndex(1)
        ep.export()
        pump(cond=lambda: ep.slots["export"].job is not None and not ep.slots.running("export")
             and not ep.slots.running("export-check"))
        ep.ship.start_target("peft")
        pump(cond=lambda: not ep.slots.running("ship"))
        ep.ship.repo.setText("tester/kettle-bot")
        ep.ship.token.setText(TOKEN)
        ep.ship.push()
        pump(cond=lambda: not ep.slots.running("share"))
        pump(0.3)
        w.grab().save(str(OUT / "page-export-ship.png"))
        print("wrote", OUT / "page-export-ship.png")
    w.close()


if __name__ == "__main__":
    main()
