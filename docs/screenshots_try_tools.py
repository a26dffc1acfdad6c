"""Screenshots of the Try page with tools (offscreen): definitions in the Tools section, an answer
that calls a function shown as a call, and the input for its result; then the answer it continues with.

    QT_QPA_PLATFORM=offscreen .venv/bin/python docs/screenshots_try_tools.py [OUT_DIR]

On a tiny Qwen2.5 model with the real tokenizer and template (tests/fixtures/tiny_models.py). Its
weights are random, so what it writes is fixed here: the token ids of a call, then of an answer, go
through the chat session's own path (prompt with the tools, call parsing, history) in place of the
model's. Writes page-try-tools.png and page-try-tools-result.png.
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

import core  # noqa: E402,F401

from app.gui.main import TuneloomApp  # noqa: E402
from app.gui.testing import open_window  # noqa: E402

SIZE = (1180, 860)
TOOLS = [{"name": "describe", "description": "Describe a thing of the demo world.",
          "parameters": {"type": "object", "properties": {"name": {"type": "string"},
                                                          "category": {"type": "string"}},
                         "required": ["name", "category"]}},
         {"name": "price", "description": "The price of a thing, in coins.",
          "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}]
ANSWERS = ['<tool_call>\n{"name": "describe", "arguments": {"name": "Olla", "category": "kettle"}}\n</tool_call>',
           "Olla is an old copper kettle that whistles when the water boils."]


def main():
    from core.generate import ChatModel
    from tests.fixtures.tiny_models import cached_tiny_model

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs"
    model_dir = cached_tiny_model("qwen2.5", HOME / "models")
    answers = list(ANSWERS)

    def stream_ids(model, prompt_ids, sampling=None, cancel=None, *, adapter=None, cache=None, stop_ids=None):
        yield from model.encoder.tok.encode(answers.pop(0), add_special_tokens=False)
        return "stop"

    ChatModel.stream_ids = stream_ids
    app = TuneloomApp(sys.argv)

    w, pump = open_window(app, HOME, SIZE, timeout=600, slice_ms=10)
    w.session.update(model_dir=model_dir, run_dir=None)
    tp = w.try_page
    w.go_to(3)
    pump(0.3)
    tp.tools_box.expand(animate=False)
    tp.tools_edit.setPlainText("\n".join(json.dumps(t) for t in TOOLS))
    tp.prompt.setText("Tell me about Olla.")
    tp.ask()
    pump(cond=lambda: not tp.slots.running("try") and tp.result_rows["base"].isVisible())
    tp.result_inputs["base"].setText('{"name": "Olla", "category": "kettle", "material": "copper"}')
    pump(0.3)
    w.grab().save(str(out / "page-try-tools.png"))
    print("wrote", out / "page-try-tools.png")
    tp.send_tool_result("base")
    pump(cond=lambda: not tp.slots.running("try") and tp.base_out.toPlainText().endswith(ANSWERS[1]))
    pump(0.3)
    w.grab().save(str(out / "page-try-tools-result.png"))
    print("wrote", out / "page-try-tools-result.png")
    w.close()


if __name__ == "__main__":
    main()
