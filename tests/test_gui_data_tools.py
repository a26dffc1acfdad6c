"""The Data step with the files of issue 26: preference pairs (train on the chosen answers) and
placeholders (filled from a small form), shown and applied through the real widgets."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import html  # noqa: E402
import json  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QSettings  # noqa: E402

from app.gui.main import TuneloomApp  # noqa: E402
from app.gui.main_window import MainWindow  # noqa: E402


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


def test_preference_pairs_are_shown_and_the_chosen_answers_picked(window, qtbot, tmp_path):
    w = window
    rows = [{"prompt": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad answer {i}."}
            for i in range(12)]
    f = write_jsonl(tmp_path / "dpo.jsonl", rows)
    w.load_data([f])
    qtbot.waitUntil(lambda: w.data_report is not None, timeout=60000)
    page = w.data_page
    summary = page.summary.text()
    assert "preference pairs (prompt, chosen, rejected)" in summary and "preference pairs: 12" in summary
    assert page.answers.isVisible() and page.answers.pref_box.isVisible()
    assert not page.answers.fill_box.isVisible()
    assert page.answers.pref_label.text().startswith("<b>Preference pairs: 12</b> (prompt / chosen / rejected, as "
                                                     "TRL writes them): supervised training needs one answer")
    assert w.session.dataset.records == [] and w.session.dataset.pairs == 12
    from app.session import step_states

    assert step_states(w.session)["Data"][:2] == ("ready", "12 preference pairs")
    before = w.data_report
    page.answers.use_chosen.setChecked(True)
    qtbot.waitUntil(lambda: w.data_report is not before and w.data_report is not None, timeout=60000)
    ds = w.session.dataset
    assert len(ds.records) == 12 and ds.use == "chosen"
    assert ds.records[0].messages == [{"role": "user", "content": "Question 0?"},
                                      {"role": "assistant", "content": "Good answer 0."}]
    assert w.session.data_options == {"use": "chosen"}  # what the Train page passes to TrainConfig
    assert page.answers.use_chosen.isChecked() and "the chosen answers are trained" in page.answers.pref_label.text()


def test_placeholders_get_a_form_that_fills_them(window, qtbot, tmp_path):
    w = window
    rows = [{"instruction": "Who are you?", "input": "", "output": "I am {{name}}, made by {{author}}."},
            {"instruction": "Your name?", "input": "", "output": "Call me {{name}}."},
            {"instruction": "2+2?", "input": "", "output": "4"}]
    f = write_jsonl(tmp_path / "identity.jsonl", rows)
    w.load_data([f])
    qtbot.waitUntil(lambda: w.data_report is not None, timeout=60000)
    page = w.data_page
    assert page.answers.isVisible() and page.answers.fill_box.isVisible() and not page.answers.pref_box.isVisible()
    assert sorted(page.answers.edits) == ["author", "name"]
    assert page.answers.fill_label.text() == ("<b>Placeholders</b> in the answers of 2 examples: {{author}}, "
                                              "{{name}}. Give each a value, or the model learns them as written (the "
                                              "files are not changed).")
    assert "identity.jsonl lines 1, 2" in page.summary.text()
    page.answers.edits["name"].setText("Loom")
    page.answers.edits["author"].setText("Ada")
    before = w.data_report
    page.answers.fill_btn.click()
    qtbot.waitUntil(lambda: w.data_report is not before and w.data_report is not None, timeout=60000)
    ds = w.session.dataset
    assert ds.records[0].messages[1]["content"] == "I am Loom, made by Ada."
    assert w.session.data_options == {"fill": {"author": "Ada", "name": "Loom"}}
    assert html.escape("placeholders filled in 2 examples: author = 'Ada', name = 'Loom'") in page.summary.text()
    # the form stays, with the values, so they can be changed
    assert page.answers.edits["name"].text() == "Loom" and page.answers.fill_label.text().endswith("all filled.")


def test_a_corpus_of_long_lines_shows_the_rule_and_the_tokens_cut(window, qtbot, tmp_path):
    w = window
    f = tmp_path / "corpus.txt"
    f.write_text("".join(" ".join(f"word{d}_{i}" for i in range(120)) + "\n" for d in range(4)))
    w.data_page.max_len.setValue(64)
    w.load_data([f])
    qtbot.waitUntil(lambda: w.data_report is not None and w.token_report is not None, timeout=60000)
    page = w.data_page
    assert "corpus.txt: read one document per line (4 documents)" in page.summary.text()
    lengths = w.token_report.lengths
    assert len(lengths) == 4 and min(lengths) > 64
    assert (f"4 of 4 examples are longer than 64 tokens and would be cut off ({sum(n - 64 for n in lengths):,} "
            "tokens cut away)") in page.trunc_label.text()


def test_refused_media_shows_the_field_and_why(window, qtbot, tmp_path):
    w = window
    img = {"messages": [{"role": "user", "content": "<image>What is this?"},
                        {"role": "assistant", "content": "A logo."}], "images": ["1.jpg"]}
    only = write_jsonl(tmp_path / "mllm.jsonl", [img, img])
    w.load_data([only])
    qtbot.waitUntil(lambda: "Cannot use" in w.data_page.summary.text(), timeout=60000)
    assert ("mllm.jsonl: every example carries images, video or audio (line 1, &#x27;images&#x27; carries images: "
            "the model reads text only") in w.data_page.summary.text()
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [chat, img, chat])
    w.load_data([mixed])
    qtbot.waitUntil(lambda: w.data_report is not None and w.data_paths == [mixed], timeout=60000)
    tree = w.data_page.problems
    assert tree.topLevelItemCount() == 1
    it = tree.topLevelItem(0)
    assert [it.text(c) for c in range(4)] == [
        "mixed.jsonl", "2", "images",
        "carries images: the model reads text only, so it would learn the answer without them"]
