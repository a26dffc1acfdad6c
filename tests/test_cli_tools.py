"""The command line's contract for tool-calling data (issue 31): `tuneloom data check --json` counts
the examples with calls (``tool_calls``) and with tool definitions (``tools``); a model without tool
support is named as the problem, per line; `tuneloom eval RUN --json` reports ``tool_call_accuracy``
for the base and the fine-tuned model (null when the data has no calls), on a tiny Qwen2.5 run
trained on tool calls."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = [{"type": "function", "function": {
    "name": "describe", "description": "Describe a thing",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}, "category": {"type": "string"}},
                   "required": ["name", "category"]}}}]
THINGS = [("red fox", "animal"), ("old kettle", "tool"), ("light oak", "tree"), ("blue jay", "animal"),
          ("iron pan", "tool"), ("tall pine", "tree")]


def tl(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def call_record(name: str, category: str, *, answered: bool = False, tools: bool = True) -> dict:
    msgs = [{"role": "user", "content": f"Describe the {name}."},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "describe",
                                                  "arguments": json.dumps({"name": name, "category": category})}}]}]
    if answered:
        msgs += [{"role": "tool", "content": f"The {name} is a {category}."},
                 {"role": "assistant", "content": f"It is a {category}."}]
    return {"messages": msgs, **({"tools": TOOLS} if tools else {})}


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_data_check_counts_calls_and_tool_definitions(tmp_path):
    f = write_jsonl(tmp_path / "calls.jsonl", [
        call_record("red fox", "animal", answered=True), call_record("old kettle", "tool"),
        call_record("light oak", "tree", tools=False),
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}])
    p = tl("data", "check", f, "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert (out["tool_calls"], out["tools"], out["valid"]) == (3, 2, 4)
    assert [n["kind"] for n in out["notes"]] == ["calls_without_tools"]
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "a", "completion": "b"}])
    out = json.loads(tl("data", "check", plain, "--json").stdout)
    assert (out["tool_calls"], out["tools"]) == (0, 0)
    p = tl("data", "check", f)
    assert "tool calling: 3 example(s) with calls, 2 with tool definitions" in p.stdout


def test_data_check_names_bad_tool_lines(tmp_path):
    bad = call_record("red fox", "animal")
    bad["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{name: red fox}"
    f = write_jsonl(tmp_path / "calls.jsonl", [call_record("old kettle", "tool"), bad])
    p = tl("data", "check", f, "--json")
    assert p.returncode == 1
    out = json.loads(p.stdout)
    assert out["problems"] == [{"file": "calls.jsonl", "line": 2,
                                "field": "messages[1].tool_calls[0].function.arguments",
                                "message": "are not valid JSON (Expecting property name enclosed in double quotes "
                                           "at character 1)"}]
    assert (out["tool_calls"], out["tools"]) == (1, 1)


def test_data_check_with_a_model_without_tool_support(tmp_path):
    from tests.fixtures.tiny_models import reference_dir

    tiny = tmp_path / "tinyllama"
    tiny.mkdir()
    for name in ("tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "generation_config.json"):
        (tiny / name).write_bytes((reference_dir("tinyllama") / name).read_bytes())
    f = write_jsonl(tmp_path / "calls.jsonl", [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
        call_record("red fox", "animal")])
    p = tl("data", "check", f, "--model", tiny, "--json")
    assert p.returncode == 1, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert [(q["file"], q["line"]) for q in out["problems"]] == [("calls.jsonl", 2)]
    assert out["problems"][0]["message"].startswith("The chat template of tinyllama has no tool support")


@pytest.fixture(scope="module")
def tool_run(tmp_path_factory):
    """A tiny Qwen2.5 (real tokenizer and template, random weights) trained a few steps on call records."""
    from core.train import TrainConfig, train
    from tests.fixtures.tiny_models import cached_tiny_model

    root = tmp_path_factory.mktemp("tool-run")
    model = cached_tiny_model("qwen2.5", root / "models")
    data = write_jsonl(root / "calls.jsonl", [call_record(n, c, answered=i % 2 == 0)
                                              for i, (n, c) in enumerate(THINGS * 4)])
    out = root / "run"
    train(TrainConfig(model=str(model), data=[str(data)], out=str(out), rank=4, alpha=8.0, lr=1e-3, batch=4,
                      max_seq_len=384, warmup=1, valid_every=0, checkpoint_every=0, seed=3, iters=4))
    return out


def test_eval_reports_tool_call_accuracy_for_both_sides(tool_run, tmp_path):
    held = write_jsonl(tmp_path / "held.jsonl", [call_record("green frog", "animal", answered=True),
                                                 call_record("steel saw", "tool")])
    p = tl("eval", tool_run, "--data", held, "--json", "--jsonl", tmp_path / "rows.jsonl", "--max-tokens", "40")
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    for side in ("base", "tuned"):
        acc = out[side]["tool_call_accuracy"]
        assert isinstance(acc, float) and acc in (0.0, 0.5, 1.0)
        assert out[side]["examples"] == 2
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["expected_calls"] for r in rows] == [[{"name": "describe", "arguments": {"name": "green frog",
                                                                                       "category": "animal"}}],
                                                   [{"name": "describe", "arguments": {"name": "steel saw",
                                                                                       "category": "tool"}}]]
    # each row asks up to the call, and its expected answer is the call as the template writes it
    assert [len(r["messages"]) for r in rows] == [1, 1]
    assert rows[0]["expected"] == ('<tool_call>\n{"name": "describe", "arguments": {"name": "green frog", '
                                   '"category": "animal"}}\n</tool_call>')
    for r in rows:
        for side in ("base", "tuned"):
            assert isinstance(r[f"{side}_calls"], list) and r[f"{side}_calls_right"] in (True, False)
    p = tl("eval", tool_run, "--data", held, "--max-tokens", "40")
    assert p.returncode == 0 and "tool-call accuracy" in p.stdout
    # the same run on data without calls: null
    prose = write_jsonl(tmp_path / "prose.jsonl", [{"prompt": "Describe the red fox.", "completion": "An animal."}])
    out = json.loads(tl("eval", tool_run, "--data", prose, "--json", "--max-tokens", "8").stdout)
    assert out["base"]["tool_call_accuracy"] is None and out["tuned"]["tool_call_accuracy"] is None


def test_train_refuses_tool_data_on_a_model_without_tool_support(tmp_path):
    from tests.fixtures.tiny_models import cached_tiny_model

    model = cached_tiny_model("tinyllama", tmp_path / "models")
    data = write_jsonl(tmp_path / "calls.jsonl", [call_record(n, c) for n, c in THINGS * 2])
    p = tl("train", "--model", model, "--data", data, "--out", tmp_path / "run", "--iters", "1")
    assert p.returncode != 0
    assert "has no tool support: it has no place for the tool definitions" in p.stderr
    assert "choose a model whose chat template supports tools (Qwen2.5, Qwen3, Qwen3.5)" in p.stderr
    assert not list((tmp_path / "run").glob("adapters*"))  # nothing trained
