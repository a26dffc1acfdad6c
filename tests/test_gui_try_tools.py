"""The Try page with tools (issue 31): definitions pasted or loaded and checked inline, calls shown
as calls, a typed tool result continuing the turn, and the tool-call accuracy in the Evaluate summary.

On a tiny Qwen2.5 model with the real tokenizer and template. What the model writes is fixed (its
token ids are fed through the chat session's own path in place of the random model's), so the
call is there to show."""
import json
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import QSettings, Qt  # noqa: E402
from PySide6.QtGui import QTextCursor  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from app.gui import theme  # noqa: E402
from app.gui.main_window import MainWindow  # noqa: E402
from app.gui.pages.try_ import call_text, eval_summary_text, read_tools_text  # noqa: E402

TOOLS = [{"name": "describe", "description": "Describe a thing of the demo world.",
          "parameters": {"type": "object", "properties": {"name": {"type": "string"},
                                                          "category": {"type": "string"}}}},
         {"name": "price", "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}}]
CALL = '<tool_call>\n{"name": "describe", "arguments": {"name": "Olla", "category": "kettle"}}\n</tool_call>'
SHOWN = 'describe(name="Olla", category="kettle")'
FINAL = "Olla is an old kettle."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.fixtures.tiny_models import cached_tiny_model

    return cached_tiny_model("qwen2.5", tmp_path_factory.getbasetemp() / "tiny-models")


class Scripted:
    """ChatModel.stream_ids with fixed answers (in order), recording each prompt."""

    def __init__(self, answers):
        self.answers, self.prompts = list(answers), []

    def install(self, monkeypatch):
        from core.generate import ChatModel

        script = self

        def stream_ids(model, prompt_ids, sampling=None, cancel=None, *, adapter=None, cache=None, stop_ids=None):
            script.prompts.append(model.encoder.tok.decode(list(prompt_ids)))
            yield from model.encoder.tok.encode(script.answers.pop(0), add_special_tokens=False)
            return "stop"

        monkeypatch.setattr(ChatModel, "stream_ids", stream_ids)
        return self


@pytest.fixture
def window(qtbot, tmp_path, model_dir):
    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.session.model_dir is not None, timeout=30000)
    w.session.update(model_dir=model_dir, run_dir=None)
    w.go_to(3)
    return w


def test_reading_tools_and_writing_calls():
    tools, err = read_tools_text(json.dumps(TOOLS))
    assert err is None and [t["function"]["name"] for t in tools] == ["describe", "price"]
    assert read_tools_text("\n".join(json.dumps(t) for t in TOOLS) + "\n") == (tools, None)  # one per line
    assert read_tools_text("  \n") == (None, None)
    assert read_tools_text('[{"name": "describe",}]')[1].startswith("Not valid JSON: Expecting property name")
    assert read_tools_text(json.dumps(TOOLS[0]) + "\n{oops}\n")[1].startswith("Line 2 is not valid JSON")
    assert read_tools_text('[{"description": "x"}]')[1] == "tools[0].name is missing: give every function its name."
    assert call_text({"name": "describe", "arguments": {"name": "Olla", "n": 2, "ok": True}}) == \
        'describe(name="Olla", n=2, ok=true)'
    assert call_text({"name": "now", "arguments": {}}) == "now()"


def test_tools_pasted_or_loaded_are_checked_inline(window, qtbot, tmp_path):
    page = window.try_page
    box = window.findChild(type(page.tools_box), "try.tools")
    assert box is page.tools_box and not box.isExpanded()
    box.expand(animate=False)
    page.tools_edit.setPlainText('[{"name": "describe", "parameters": {')
    assert page.tools is None and "Not valid JSON" in page.tools_message.text()
    assert "Cannot use these tools" in page.tools_message.text()
    assert not page.ask_btn.isEnabled() and "tool definitions" in page.ask_btn.toolTip()
    assert QApplication.activeModalWidget() is None  # said inline, no dialog
    page.prompt.setText("hello")
    page.ask()
    assert not page.slots.running("try") and page.status.text().startswith("Fix the tool definitions first")
    page.tools_edit.setPlainText("\n".join(json.dumps(t) for t in TOOLS))
    assert page.tools_error is None and [t["function"]["name"] for t in page.tools] == ["describe", "price"]
    assert "2 functions:" in page.tools_message.text() and box.text() == "Tools (describe, price)"
    assert page.ask_btn.isEnabled()
    f = tmp_path / "tools.json"
    f.write_text(json.dumps(TOOLS[:1]), encoding="utf-8")
    assert page.load_tools_file(f)
    assert page.tools_edit.toPlainText() == json.dumps(TOOLS[:1]) and box.text() == "Tools (describe)"
    assert not page.load_tools_file(tmp_path / "missing.json")
    assert "Cannot read the file" in page.tools_message.text() and page.tools_error is None
    page.tools_clear.click()
    assert page.tools is None and box.text() == "Tools"


def test_a_call_is_shown_as_a_call_and_a_typed_result_continues_the_turn(window, qtbot, monkeypatch):
    page = window.try_page
    script = Scripted([CALL, FINAL]).install(monkeypatch)
    page.tools_edit.setPlainText(json.dumps(TOOLS))
    page.prompt.setText("Tell me about Olla.")
    qtbot.mouseClick(page.ask_btn, Qt.MouseButton.LeftButton)
    row = page.result_rows["base"]
    qtbot.waitUntil(lambda: not page.slots.running("try") and row.isVisible(), timeout=120000)
    # the prompt had the tools in the template's tool prompt
    assert len(script.prompts) == 1 and "# Tools" in script.prompts[0] and '"name": "price"' in script.prompts[0]
    text = page.base_out.toPlainText()
    assert text == "\u2192 call " + SHOWN and "<tool_call>" not in text
    # styled apart from prose: the call's own colour
    cur = QTextCursor(page.base_out.document())
    cur.setPosition(text.index("describe") + 1)
    assert cur.charFormat().foreground().color() == theme.accent("tool", page.base_out.palette())
    assert "describe" in page.result_labels["base"].text()
    assert not page.result_rows["tuned"].isVisible()
    chat = page.holder.chat
    assert chat.turns[-1].calls == {"base": [{"name": "describe", "arguments": {"name": "Olla", "category": "kettle"}}]}

    result = '{"name": "Olla", "category": "kettle", "age": "old"}'
    page.result_inputs["base"].setText(result)
    qtbot.keyClick(page.result_inputs["base"], Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: not page.slots.running("try") and page.base_out.toPlainText().endswith(FINAL),
                    timeout=120000)
    assert page.base_out.toPlainText() == f"\u2192 call {SHOWN}\n\u2190 describe returned: {result}\n{FINAL}"
    assert not row.isVisible()
    assert chat.turns[-1].user is None and chat.turns[-1].results == {
        "base": [{"role": "tool", "content": result, "name": "describe"}]}
    # the continuation's prompt: the call turn as the template writes it, then the typed result
    assert script.prompts[1].endswith(
        '<|im_start|>assistant\n<tool_call>\n{"name": "describe", "arguments": {"name": "Olla", "category": '
        f'"kettle"}}}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n{result}\n</tool_response>'
        "<|im_end|>\n<|im_start|>assistant\n")
    # a new chat forgets the waiting calls
    page.new_chat()
    assert page.base_out.toPlainText() == "" and not row.isVisible() and chat.turns == []


def test_evaluate_summary_shows_tool_call_accuracy_per_side():
    from core.evaluate import AnswerScore, EvalResult, EvalRow

    def row(i, base_right, tuned_right):
        r = EvalRow(i, [{"role": "user", "content": "q"}], "", expected_calls=[{"name": "f", "arguments": {}}])
        r.scores = {"base": AnswerScore(False, None, None, None, calls_right=base_right),
                    "tuned": AnswerScore(False, None, None, None, calls_right=tuned_right)}
        return r

    res = EvalResult(rows=[row(0, False, True), row(1, False, True), row(2, True, True), row(3, False, False)],
                     losses={}, source="test", adapter="adapters_best.safetensors")
    text = eval_summary_text(res)
    assert "Tool-call accuracy (right function, arguments equal as JSON, every call of the turn): " \
           "original model 25%, fine-tune 75%." in text
    plain = EvalResult(rows=[EvalRow(0, [{"role": "user", "content": "q"}], "a",
                                     scores={s: AnswerScore(True, None, None, None) for s in ("base", "tuned")})],
                       losses={}, source="test")
    assert "Tool-call accuracy" not in eval_summary_text(plain)


def test_an_answer_with_two_calls_takes_one_result_each_before_it_continues(window, qtbot, monkeypatch):
    page = window.try_page
    two = (CALL + '\n<tool_call>\n{"name": "price", "arguments": {"name": "Olla"}}\n</tool_call>')
    script = Scripted([two, "It costs 3 coins."]).install(monkeypatch)
    page.tools_edit.setPlainText(json.dumps(TOOLS))
    page.prompt.setText("What is Olla and what does it cost?")
    page.ask()
    qtbot.waitUntil(lambda: not page.slots.running("try") and page.result_rows["base"].isVisible(), timeout=120000)
    assert page.base_out.toPlainText() == f'\u2192 call {SHOWN}\n\u2192 call price(name="Olla")'
    assert "(1 of 2)" in page.result_labels["base"].text() and "describe" in page.result_labels["base"].text()
    page.result_inputs["base"].setText('{"category": "kettle"}')
    page.send_tool_result("base")
    assert not page.slots.running("try") and len(script.prompts) == 1  # waits for the second result
    assert "(2 of 2)" in page.result_labels["base"].text() and "price" in page.result_labels["base"].text()
    page.result_inputs["base"].setText("3")
    page.send_tool_result("base")
    qtbot.waitUntil(lambda: not page.slots.running("try") and page.base_out.toPlainText().endswith("3 coins."),
                    timeout=120000)
    assert page.holder.chat.turns[-1].results["base"] == [
        {"role": "tool", "content": '{"category": "kettle"}', "name": "describe"},
        {"role": "tool", "content": "3", "name": "price"}]
    assert script.prompts[1].endswith('<tool_response>\n{"category": "kettle"}\n</tool_response>\n'
                                      "<tool_response>\n3\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_the_evaluate_table_shows_calls_per_row_and_their_accuracy(qtbot):
    """An example that expects tool calls shows them as calls in its row (expected, each model's), the
    right/wrong columns say whether each side's calls were right, the metrics show the tool-call accuracy,
    and a click shows the calls in full beside the answers as written; a plain example is unchanged."""
    from app.gui.eval_table import TOOL_ROW, EvalTable
    from core.evaluate import AnswerScore, EvalResult, EvalRow

    want = [{"name": "describe", "arguments": {"name": "Olla", "category": "kettle"}}]
    call = EvalRow(0, [{"role": "user", "content": "What is Olla?"}], CALL, tools=TOOLS, expected_calls=want,
                   answers={"base": "Olla is a kettle.", "tuned": CALL},
                   calls={"base": [], "tuned": want})
    call.scores = {"base": AnswerScore(False, None, None, None, calls_right=False),
                   "tuned": AnswerScore(True, None, None, None, calls_right=True)}
    plain = EvalRow(1, [{"role": "user", "content": "Hi"}], "Hello.", answers={"base": "Hey.", "tuned": "Hello."},
                    scores={"base": AnswerScore(False, None, None, None), "tuned": AnswerScore(True, None, None, None)})
    t = EvalTable()
    qtbot.addWidget(t)
    assert t.metrics.isRowHidden(TOOL_ROW)
    t.set_result(EvalResult(rows=[call, plain], losses={}, source="test"))
    cells = [[t.table.item(r, c).text() for c in range(7)] for r in range(2)]
    assert cells[0][2:] == [SHOWN, "(no call)", SHOWN, "no", "yes"]
    assert cells[1][2:] == ["Hello.", "Hey.", "Hello.", "no", "yes"]
    assert not t.metrics.isRowHidden(TOOL_ROW)
    assert t.metric_texts()["base"]["tool_call_accuracy"] == "0.0%"
    assert t.metric_texts()["tuned"]["tool_call_accuracy"] == "100.0%"
    t.table.selectRow(0)
    detail = t.detail.toPlainText()
    assert "Expected calls (functions offered: describe, price)" in detail and SHOWN in detail
    assert "Original model: calls (wrong)" in detail and "Fine-tuned model: calls (right)" in detail
    assert "Olla is a kettle." in detail  # the answer as written, beside the calls read out of it
    t.set_result(EvalResult(rows=[plain], losses={}, source="test"))
    assert t.metrics.isRowHidden(TOOL_ROW)
    t.set_result(EvalResult(rows=[call], losses={}, source="test"))
    t.clear("another run")  # an emptied table shows no empty tool-call row
    assert t.metrics.isRowHidden(TOOL_ROW)
