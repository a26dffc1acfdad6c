"""core.data, issue 26: files that other fine-tuning tools ship, read the way their authors meant
them (Alpaca with the question in `input`, preference and KTO data, media records, RL prompt sets,
placeholders, text corpora, LLaMA-Factory's dataset_info.json). Every file here is written by the
test in the shape those tools use; counts and messages are asserted exactly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import data
from core.data import DatasetError, load_dataset


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def jsonl(*objs) -> str:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)


def problems(ds) -> list[tuple]:
    return [(i.file, i.line, i.field, i.message) for i in ds.issues]


def note(ds, kind):
    found = [n for n in ds.notes if n.kind == kind]
    assert len(found) == 1, [(n.kind, str(n)) for n in ds.notes]
    return found[0]


# --------------------------------------------------------------------------- Alpaca: the question in `input`

def test_alpaca_empty_instruction_with_input_is_the_user_turn(tmp_path):
    # Unsloth's set: most records leave `instruction` empty and put the question in `input`
    rows = [{"instruction": "", "input": f"What is {i}+{i}?", "output": str(2 * i)} for i in range(7)]
    rows += [{"instruction": "Translate to French.", "input": "cat", "output": "chat"},
             {"instruction": "Name a colour.", "input": "", "output": "Blue"},
             {"instruction": "", "input": "", "output": "lost"},  # line 10: nothing asked
             {"instruction": "  ", "input": " ", "output": "lost too"}]  # line 11
    ds = load_dataset([write(tmp_path, "unsloth.jsonl", jsonl(*rows))])
    assert ds.format == "alpaca" and ds.total == 11 and len(ds.records) == 9
    assert ds.records[0].messages == [{"role": "user", "content": "What is 0+0?"},
                                      {"role": "assistant", "content": "0"}]
    assert ds.records[7].messages[0] == {"role": "user", "content": "Translate to French.\n\ncat"}
    assert ds.records[8].messages[0] == {"role": "user", "content": "Name a colour."}
    assert problems(ds) == [("unsloth.jsonl", 10, "instruction", "is empty"),
                            ("unsloth.jsonl", 11, "instruction", "is empty")]
    assert "write the instruction (or the input)" in ds.issues[0].hint
    assert note(ds, "input_as_instruction").message == (
        "7 examples have an empty instruction: the input is the user's message (as LLaMA-Factory and Unsloth "
        "read it)")
    # a null instruction reads the same way
    ds = load_dataset([write(tmp_path, "n.jsonl", jsonl({"instruction": None, "input": "Q?", "output": "A"}))])
    assert ds.records[0].messages[0]["content"] == "Q?" and not ds.issues
