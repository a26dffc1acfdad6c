"""The Export page's line for the verify step's tool check (issue 31)."""
from __future__ import annotations


def test_tool_check_line_says_what_ollama_parsed():
    from app.gui.pages.export import tool_check_html

    assert tool_check_html(None) == ""
    call = {"name": "describe", "arguments": {"name": "oak", "category": "plant"}}
    ok = tool_check_html({"question": "Describe the oak <tree>", "match": True, "ollama": [call], "expected": [call]})
    assert "Ollama parsed the expected call" in ok and "describe({&quot;name&quot;: &quot;oak&quot;" in ok
    assert "&lt;tree&gt;" in ok
    bad = tool_check_html({"question": "q", "match": False, "ollama": [], "expected": [call]})
    assert "Ollama parsed: no call" in bad and "Expected: describe(" in bad
