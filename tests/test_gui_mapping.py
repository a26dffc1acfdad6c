"""The Data step's mapping panel on a real CSV: pick columns or write templates, the preview
follows (through core.data, as loading will read the file), a template naming a missing column
is an error naming it, and the choice comes out as load_dataset's options."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Qt  # noqa: E402

from app.gui.mapping_panel import MappingPanel  # noqa: E402
from core.data import load_dataset, sample_rows  # noqa: E402

POKEMON = "name,types,id\nPikachu,Electric,25\nBulbasaur,\"Grass, Poison\",1\nMissingno,,0\nMew,Psychic,151\n"


def panel_on(qtbot, tmp_path):
    f = tmp_path / "pokemon.csv"
    f.write_text(POKEMON, encoding="utf-8")
    p = MappingPanel()
    qtbot.addWidget(p)
    p.resize(700, 500)
    p.show()
    columns, rows = sample_rows([f])
    p.set_sample(columns, rows, f.name)
    return p, f


def test_write_templates_preview_and_apply(qtbot, tmp_path):
    p, f = panel_on(qtbot, tmp_path)
    assert "name" in p.columns_label.text() and "types" in p.columns_label.text()
    assert not p.apply_btn.isEnabled() and p.apply_btn.toolTip()  # nothing written yet: says why
    qtbot.keyClicks(p.user_template, "Pokemon name: {name}")
    qtbot.keyClicks(p.assistant_template, "{types}")
    qtbot.keyClicks(p.system, "You are a Pokedex.")
    qtbot.waitUntil(lambda: "Pokemon name: Pikachu" in p.preview.toPlainText(), timeout=3000)
    text = p.preview.toPlainText()
    assert "Grass, Poison" in text and "You are a Pokedex." in text
    assert "line 4: problem: the assistant template gives an empty text" in text  # Missingno has no types
    assert "1 extra field ignored: `id`" in text
    assert [r.line for r in p.records] == [2, 3] and [i.line for i in p.issues] == [4]
    assert p.apply_btn.isEnabled()
    with qtbot.waitSignal(p.applied, timeout=2000) as sig:
        qtbot.mouseClick(p.apply_btn, Qt.MouseButton.LeftButton)
    opts = sig.args[0]
    assert opts == {"user_template": "Pokemon name: {name}", "assistant_template": "{types}",
                    "system": "You are a Pokedex."}
    assert p.config_fields() == {"user_template": "Pokemon name: {name}", "assistant_template": "{types}",
                                 "system_prompt": "You are a Pokedex."}
    # what the panel previewed is what loading the file with its options gives
    ds = load_dataset([f], **opts)
    assert [r.messages for r in ds.records[:2]] == [r.messages for r in p.records]


def test_pick_columns(qtbot, tmp_path):
    p, _ = panel_on(qtbot, tmp_path)
    p.user_column.setCurrentIndex(p.user_column.findText("name"))
    p.user_column.activated.emit(p.user_column.currentIndex())
    p.assistant_column.setCurrentIndex(p.assistant_column.findText("types"))
    p.assistant_column.activated.emit(p.assistant_column.currentIndex())
    assert p.user_template.text() == "{name}" and p.assistant_template.text() == "{types}"
    assert p.records[0].messages == [{"role": "user", "content": "Pikachu"},
                                     {"role": "assistant", "content": "Electric"}]


def test_missing_column_is_named_and_apply_is_disabled(qtbot, tmp_path):
    p, _ = panel_on(qtbot, tmp_path)
    p.set_templates("Pokemon name: {nmae}", "{types}")
    assert p.error.isVisible() and "'nmae'" in p.error.text() and "['name', 'types', 'id']" in p.error_text
    assert not p.apply_btn.isEnabled() and "Fix the template" in p.apply_btn.toolTip()
    p.set_templates("{name!r}", "{types}")
    assert "not a column name" in p.error_text
    qtbot.keyClicks(p.user_template, "x")  # typing updates after a short pause
    p.set_templates("{name}", "{types}")
    assert not p.error.isVisible() and p.apply_btn.isEnabled()
    with qtbot.waitSignal(p.applied, timeout=2000) as sig:
        qtbot.mouseClick(p.auto_btn, Qt.MouseButton.LeftButton)
    assert sig.args[0] == {}
