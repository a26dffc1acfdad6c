"""The Data page's training text of tool-calling data (issue 31): what app.gui.jobs.measure_tokens hands the
page shows the template's tool prompt (untrained) and the call (trained), on the real Qwen2.5 tokenizer.
(A GUI test file because it imports app.gui.)"""
from __future__ import annotations

import shutil
from pathlib import Path

from core.data import ChatRecord

MODELS_DIR = Path(__file__).resolve().parent / "fixtures" / "models"
TOOLS = [{"type": "function", "function": {
    "name": "describe", "description": "Describe a thing",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}}}]


def test_training_text_preview_shows_the_tool_prompt_and_trains_the_call(tmp_path):
    from transformers import AutoTokenizer

    from app.gui.jobs import measure_tokens

    model = tmp_path / "qwen2.5"
    model.mkdir()
    for f in ("tokenizer_config.json", "generation_config.json", "vocab.json", "merges.txt"):
        shutil.copyfile(MODELS_DIR / "Qwen2.5-0.5B-Instruct" / f, model / f)
    AutoTokenizer.from_pretrained(str(model)).backend_tokenizer.save(str(model / "tokenizer.json"))
    msgs = [{"role": "user", "content": "Describe the red fox."},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "describe", "arguments": {"name": "red fox"}}}]}]
    report = measure_tokens([ChatRecord(msgs, "d.jsonl", 1, TOOLS)], model)
    assert report.preview_error is None
    runs = report.previews[0]
    untrained = "".join(t for t, tr in runs if not tr)
    assert "# Tools" in untrained and '"name": "describe", "description": "Describe a thing"' in untrained
    assert [t for t, tr in runs if tr] == ['<tool_call>\n{"name": "describe", "arguments": {"name": "red fox"}}\n'
                                          '</tool_call><|im_end|>']
