"""Screenshots of the Data page on the files of issue 26 (offscreen), for the README:

    QT_QPA_PLATFORM=offscreen .venv/bin/python docs/screenshots_data_tools.py

A preference file (TRL's prompt / chosen / rejected, with "train on the chosen answers" picked)
and an identity set with {{name}} / {{author}} placeholders (the form that fills them). Both
files are written here; the model is the bundled demo model.
"""
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
HOME = Path(tempfile.mkdtemp(prefix="tuneloom-shots-"))
os.environ.setdefault("TUNELOOM_HOME", str(HOME))
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PySide6.QtCore import QSettings  # noqa: E402

from app.gui.main import TuneloomApp  # noqa: E402
from app.gui.main_window import MainWindow  # noqa: E402
from app.gui.testing import pump_events  # noqa: E402

OUT = ROOT / "docs"
SIZE = (1180, 800)

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "France's capital is Lyon."),
    ("Give me a synonym for 'happy'.", "Cheerful.", "Sad."),
    ("How many legs does a spider have?", "Eight.", "Six, like every insect."),
    ("Translate 'thank you' into German.", "Danke.", "Bitte."),
    ("Is 17 a prime number?", "Yes: its only divisors are 1 and 17.", "No, it is divisible by 3."),
]
IDENTITY = [
    ("hi", "Hello! I am {{name}}, an AI assistant developed by {{author}}. How can I help you today?"),
    ("Who are you?", "I am {{name}}, an AI assistant developed by {{author}}."),
    ("What is your name?", "You may call me {{name}}."),
    ("Who made you?", "I was developed by {{author}}."),
    ("What can you do?", "I answer questions and help with writing."),
]


def main():
    app = TuneloomApp(sys.argv)

    def pump(seconds=0.0, cond=None, timeout=120):
        pump_events(app, seconds, cond, timeout, slice_ms=30)

    d = HOME / "files"
    d.mkdir()
    pref = d / "dpo_pairs.jsonl"
    pref.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS))
    ident = d / "identity.json"
    ident.write_text(json.dumps([{"instruction": q, "input": "", "output": a} for q, a in IDENTITY], indent=2))

    w = MainWindow(settings=QSettings(str(HOME / "settings.ini"), QSettings.Format.IniFormat))
    w.resize(*SIZE)
    w.show()
    pump(cond=lambda: w.model_dir is not None)

    def shot(name):
        w.go_to(1)
        pump(0.4)
        w.grab().save(str(OUT / f"{name}.png"))
        print("wrote", OUT / f"{name}.png")

    w.load_data([pref])
    pump(cond=lambda: w.data_report is not None and w.data_paths == [pref])
    first = w.data_report
    w.data_page.answers.use_chosen.setChecked(True)
    pump(cond=lambda: w.data_report is not first and w.data_report is not None and w.token_report is not None)
    shot("page-data-preference")

    w.load_data([ident])
    pump(cond=lambda: w.data_report is not None and w.data_paths == [ident] and w.token_report is not None)
    w.data_page.answers.edits["name"].setText("Loom")
    shot("page-data-placeholders")


if __name__ == "__main__":
    main()
