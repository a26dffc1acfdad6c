"""The Data page with the mapping panel: a CSV with non-chat columns, mapped to chat and reloaded (pytest-qt)."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QSettings, Qt  # noqa: E402

from app.gui.main_window import MainWindow  # noqa: E402

ROWS = [("Pikachu", "electric", "A small yellow mouse that stores electricity."),
        ("Bulbasaur", "grass", "A seed on its back grows as it does."),
        ("Charmander", "fire", "The flame on its tail shows how it feels."),
        ("Squirtle", "water", "It hides in its shell and sprays water.")]


def test_csv_columns_mapped_and_reloaded(qtbot, tmp_path):
    csv = tmp_path / "pokemon.csv"
    csv.write_text("name,type,description\n" + "".join(f"{n},{t},{d}\n" for n, t, d in ROWS * 5))
    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.session.model_dir is not None, timeout=30000)
    page = w.data_page
    page.load_data([csv])
    qtbot.waitUntil(lambda: page.mapping_host.isVisible() and not page.slots.running("data"), timeout=60000)
    panel = page.mapping
    assert "description" in panel.columns_label.text()
    panel.user_template.setText("Tell me about {name} ({type}).")
    panel.assistant_template.setText("{description}")
    panel.system.setText("You know every Pokemon.")
    qtbot.waitUntil(lambda: panel.apply_btn.isEnabled(), timeout=10000)
    qtbot.mouseClick(panel.apply_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.session.dataset is not None and w.session.dataset.records
                    and not page.slots.running("data")
                    and w.session.data_options.get("user_template") == "Tell me about {name} ({type}).",
                    timeout=60000)
    ds = w.session.dataset
    assert len(ds.records) == 20
    msgs = ds.records[0].messages
    assert msgs[0] == {"role": "system", "content": "You know every Pokemon."}
    assert msgs[1]["content"] == "Tell me about Pikachu (electric)." and msgs[-1]["content"] == ROWS[0][2]
    assert w.session.data_options == {"user_template": "Tell me about {name} ({type}).",
                                      "assistant_template": "{description}", "system_prompt": "You know every Pokemon."}
    assert page.mapping_host.isVisible()  # the panel stays for further changes
    qtbot.waitUntil(lambda: "reasoning" in page.summary.text(), timeout=60000)
    # the Train page's config carries the mapping (what the run's config.json will say)
    from core.train import TrainConfig

    known = set(TrainConfig.__dataclass_fields__)
    assert {"user_template", "assistant_template", "system_prompt"} <= known
