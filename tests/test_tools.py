"""Tool calling (issue 31), data to evaluation, on the real Qwen2.5, Qwen3, Qwen3.5 and TinyLlama
tokenizers and chat templates: tools, calls and results read from OpenAI's and ShareGPT /
LLaMA-Factory's formats with per-line messages; the training text rendered with the record's
tools; the loss on the assistant's calls and answers, never on the tool prompt or the results
(checked token by token); calls read back out of what each template writes; tool-call accuracy."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core import tools as T
from core.data import ChatRecord, export_jsonl, load_dataset
from core.events import TuneloomError
from core.tokens import ChatEncoder, token_stats, training_runs

MODELS_DIR = Path(__file__).resolve().parent / "fixtures" / "models"
NAMES = {"qwen2.5": "Qwen2.5-0.5B-Instruct", "qwen3": "Qwen3-0.6B", "qwen3.5": "Qwen3.5-0.8B",
         "tinyllama": "TinyLlama-1.1B-Chat-v1.0"}
FILES = ("tokenizer_config.json", "generation_config.json", "special_tokens_map.json", "tokenizer.model",
         "vocab.json", "merges.txt", "chat_template.jinja")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                                    "metric": {"type": "boolean"}, "code": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time in a zone",
                                         "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}
TOOLS = [WEATHER, TIME]
ARGS = {"city": "Paris", "days": 2, "metric": True, "code": "75"}  # "75": a string that looks like a number
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": ARGS}}
CONVO = [{"role": "user", "content": "Weather in Paris?"},
         {"role": "assistant", "content": "", "tool_calls": [CALL]},
         {"role": "tool", "content": "18C and sunny"},
         {"role": "assistant", "content": "It is 18C and sunny."}]


def jsonl(*objs) -> str:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tokenizer-only folders of the four models (no weights)."""
    from transformers import AutoTokenizer

    from tests.fixtures.qwen35 import write_qwen35_tokenizer_json

    root = tmp_path_factory.mktemp("tool-tokenizers")
    out = {}
    for key, name in NAMES.items():
        d = root / name
        d.mkdir()
        for f in FILES:
            if (MODELS_DIR / name / f).is_file():
                shutil.copyfile(MODELS_DIR / name / f, d / f)
        if key == "qwen3.5":
            write_qwen35_tokenizer_json(d)
        elif (d / "vocab.json").is_file():
            AutoTokenizer.from_pretrained(str(d)).backend_tokenizer.save(str(d / "tokenizer.json"))
        out[key] = d
    return out


# (model, thinking) pairs of the tool-capable templates
CASES = [("qwen2.5", False), ("qwen3", False), ("qwen3", True), ("qwen3.5", False)]


@pytest.fixture(scope="session")
def encoders(model_dirs):
    return {case: ChatEncoder(model_dirs[case[0]], thinking=case[1]) for case in CASES}


# ---------------------------------------------------------------------------
# core.tools: normalising and checking
# ---------------------------------------------------------------------------

def test_tools_and_calls_are_normalised_to_openai_form():
    bare = {"name": "get_time", "description": "d", "parameters": '{"type": "object", "properties": {}}'}
    assert T.normalise_tools(json.dumps([bare])) == [
        {"type": "function", "function": {"name": "get_time", "description": "d",
                                          "parameters": {"type": "object", "properties": {}}}}]
    assert T.normalise_tools(TOOLS) == TOOLS
    assert T.normalise_tools(None) is None and T.normalise_tools("[]") is None
    # arguments as a JSON string or an object; the bare LLaMA-Factory call; ids kept
    assert T.normalise_call({"id": 7, "type": "function", "function": {"name": "f", "arguments": '{"a": [1, 2]}'}}) \
        == {"type": "function", "function": {"name": "f", "arguments": {"a": [1, 2]}}, "id": "7"}
    assert T.normalise_calls('{"name": "f", "arguments": {"a": 1}}') == \
        [{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]
    assert T.normalise_call({"function": {"name": "f", "arguments": ""}})["function"]["arguments"] == {}


@pytest.mark.parametrize("bad, field, message", [
    ({"function": {"name": "f", "arguments": "{a: 1}"}}, "c.function.arguments", "are not valid JSON"),
    ({"function": {"name": "f", "arguments": "[1, 2]"}}, "c.function.arguments", "must be a JSON object"),
    ({"function": {"arguments": {}}}, "c.function.name", "is missing"),
    ("nope", "c", "not valid JSON"),
])
def test_bad_calls_name_the_field(bad, field, message):
    with pytest.raises(T.ToolDataError) as e:
        T.normalise_call(bad, "c")
    assert e.value.field == field and message in e.value.message and e.value.hint


def test_check_calls_catches_undeclared_functions_and_orphan_results():
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [T.normalise_call({"name": "nope", "arguments": {}})]}]
    with pytest.raises(T.ToolDataError, match="'nope', a function the example does not declare"):
        T.check_calls(msgs, TOOLS)
    T.check_calls(msgs, None)  # nothing declared: nothing to check the name against
    orphan = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "r"}]
    with pytest.raises(T.ToolDataError, match="a tool result with no call before it") as e:
        T.check_calls(orphan, TOOLS)
    assert e.value.field == "messages[2].role"
    ids = [{"role": "user", "content": "q"},
           {"role": "assistant", "content": "", "tool_calls": [{**CALL, "id": "c1"}]},
           {"role": "tool", "content": "r", "tool_call_id": "c9"}]
    with pytest.raises(T.ToolDataError, match="'c9' names no call"):
        T.check_calls(ids, TOOLS)
    two = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [CALL]},
           {"role": "tool", "content": "r"}, {"role": "tool", "content": "r2"}]
    with pytest.raises(T.ToolDataError, match="2 tool results answer 1 call"):
        T.check_calls(two, TOOLS)


# ---------------------------------------------------------------------------
# Data: OpenAI's format, ShareGPT / LLaMA-Factory's, per-line messages
# ---------------------------------------------------------------------------

def test_openai_format_keeps_its_tools(tmp_path):
    raw = [{"role": "user", "content": "Weather in Paris?"},
           {"role": "assistant", "content": None, "tool_calls": [
               {"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps(ARGS)}}]},
           {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "18C and sunny"},
           {"role": "assistant", "content": "It is 18C and sunny."}]
    f = tmp_path / "calls.jsonl"
    f.write_text(jsonl({"messages": raw, "tools": TOOLS, "parallel_tool_calls": False},
                       {"messages": CONVO[:1] + [{"role": "assistant", "content": "No call."}]}))
    ds = load_dataset([f])
    assert not ds.issues and ds.total == 2
    rec = ds.records[0]
    assert rec.tools == TOOLS and ds.records[1].tools is None
    assert rec.messages[1] == {"role": "assistant", "content": "",
                               "tool_calls": [{"type": "function", "id": "call_1",
                                               "function": {"name": "get_weather", "arguments": ARGS}}]}
    assert rec.messages[2] == {"role": "tool", "tool_call_id": "call_1", "name": "get_weather",
                               "content": "18C and sunny"}
    assert not [n for n in ds.notes if n.kind == "extra_fields"]  # tools is read, not "extra field ignored"
    assert (ds.tool_calls, ds.tools) == (1, 1)
    # written out (data export) and read back: the same record, tools included
    out = tmp_path / "out.jsonl"
    export_jsonl(ds.records, out)
    again = load_dataset([out])
    assert [(r.messages, r.tools) for r in again.records] == [(r.messages, r.tools) for r in ds.records]


def test_calls_without_tools_are_kept_with_a_note(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(jsonl({"messages": CONVO}))
    ds = load_dataset([f])
    assert not ds.issues and (ds.tool_calls, ds.tools) == (1, 0)
    note = next(n for n in ds.notes if n.kind == "calls_without_tools")
    assert note.count == 1 and "1 example calls functions but declares no tools" in note.message


def test_sharegpt_function_call_and_observation_turns_are_converted(tmp_path):
    bare = [t["function"] for t in TOOLS]
    rec = {"conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": ARGS})},
        {"from": "observation", "value": "18C and sunny"},
        {"from": "gpt", "value": "It is 18C and sunny."}],
        "tools": json.dumps(bare)}
    parallel = {"conversations": [
        {"from": "human", "value": "Weather and time in Paris?"},
        {"from": "function_call", "value": json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}},
                                                       {"name": "get_time", "arguments": {"zone": "CET"}}])},
        {"from": "observation", "value": "18C"}, {"from": "observation", "value": "10:00"},
        {"from": "gpt", "value": "18C, 10:00."}], "tools": json.dumps(bare)}
    f = tmp_path / "glaive.json"
    f.write_text(json.dumps([rec, parallel], indent=1))
    ds = load_dataset([f])
    assert not ds.issues and ds.format == "sharegpt" and ds.total == 2
    assert ds.records[0].tools == TOOLS
    assert ds.records[0].messages == [m if m["role"] != "assistant" or m.get("content") else
                                      {"role": "assistant", "content": "", "tool_calls": [CALL]} for m in CONVO]
    assert [c["function"]["name"] for c in ds.records[1].messages[1]["tool_calls"]] == ["get_weather", "get_time"]
    assert [m["role"] for m in ds.records[1].messages] == ["user", "assistant", "tool", "tool", "assistant"]


def test_llamafactory_folder_with_a_tools_column(tmp_path):
    folder = tmp_path / "lf"
    folder.mkdir()
    (folder / "dataset_info.json").write_text(json.dumps({"calls": {
        "file_name": "calls.json", "formatting": "sharegpt",
        "columns": {"messages": "conversations", "tools": "tools"}}}))
    (folder / "calls.json").write_text(json.dumps([{"conversations": [
        {"from": "human", "value": "Time in Paris?"},
        {"from": "function_call", "value": '{"name": "get_time", "arguments": {"zone": "CET"}}'},
        {"from": "observation", "value": "10:00"}, {"from": "gpt", "value": "It is 10:00."}],
        "tools": json.dumps([TIME["function"]])}]))
    ds = load_dataset([folder])
    assert not ds.issues and ds.tools == 1 and ds.tool_calls == 1
    assert ds.records[0].messages[1]["tool_calls"] == [
        {"type": "function", "function": {"name": "get_time", "arguments": {"zone": "CET"}}}]


def test_tool_data_problems_name_file_line_and_what_to_do(tmp_path):
    good = {"messages": CONVO, "tools": TOOLS}
    bad_args = {"messages": [CONVO[0], {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris}"}}]}], "tools": TOOLS}
    undeclared = {"messages": [CONVO[0], {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_stock", "arguments": {}}}]}], "tools": TOOLS}
    orphan = {"messages": [CONVO[0], {"role": "tool", "content": "18C"}, CONVO[3]], "tools": TOOLS}
    bad_tools = {"messages": CONVO, "tools": "[{not json"}
    no_name = {"messages": CONVO, "tools": [{"type": "function", "function": {"parameters": {}}}]}
    sg_bad = {"conversations": [{"from": "human", "value": "q"},
                                {"from": "function_call", "value": "get_weather(Paris)"},
                                {"from": "observation", "value": "r"}, {"from": "gpt", "value": "a"}]}
    f = tmp_path / "t.jsonl"
    f.write_text(jsonl(good, bad_args, undeclared, orphan, bad_tools, no_name))
    ds = load_dataset([f])
    got = [(i.file, i.line, i.field, i.message, i.hint) for i in ds.issues]
    assert got == [
        ("t.jsonl", 2, "messages[1].tool_calls[0].function.arguments",
         "are not valid JSON (Expecting property name enclosed in double quotes at character 1)",
         'write the arguments as a JSON object, e.g. "{\\"city\\": \\"Paris\\"}"'),
        ("t.jsonl", 3, "messages[1].tool_calls[0].function.name",
         "calls 'get_stock', a function the example does not declare (its tools: get_time, get_weather)",
         "add the function to the example's tools, or fix the name"),
        ("t.jsonl", 4, "messages[1].role", "a tool result with no call before it",
         "put the assistant's tool_calls before the result, or remove the result"),
        ("t.jsonl", 5, "tools", "holds text that is not valid JSON (Expecting property name enclosed in double "
                                "quotes at character 2)",
         'write the tools as a JSON list: [{"name": "...", "description": "...", "parameters": {...}}]'),
        ("t.jsonl", 6, "tools[0].function.name", "is missing", "give every function its name"),
    ]
    assert str(ds.issues[0]).startswith("t.jsonl, line 2 [messages[1].tool_calls[0].function.arguments]: are not")
    sg_good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    g = tmp_path / "s.jsonl"
    g.write_text(jsonl(sg_good, sg_bad))
    ds = load_dataset([g])
    assert [(i.line, i.field) for i in ds.issues] == [(2, "conversations[1].value")]
    assert ds.issues[0].message.startswith("holds text that is not valid JSON")


# ---------------------------------------------------------------------------
# Training text: the template's tool prompt; the loss on calls and answers only
# ---------------------------------------------------------------------------

def _token_spans(enc: ChatEncoder, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text of ``ids`` and each token's (start, end) in it, from growing prefixes."""
    spans, prev = [], ""
    for i in range(len(ids)):
        text = enc.tok.decode(ids[: i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert text.startswith(prev)
        spans.append((len(prev), len(text)))
        prev = text
    return prev, spans


# what each template writes for CALL (the call turn's trained text, end-of-turn token included)
CALL_TEXT = {
    "qwen2.5": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2, "metric": true, '
               '"code": "75"}}\n</tool_call><|im_end|>',
    "qwen3": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2, "metric": true, '
             '"code": "75"}}\n</tool_call><|im_end|>',
    "qwen3.5": "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n"
               "</parameter>\n<parameter=metric>\nTrue\n</parameter>\n<parameter=code>\n75\n</parameter>\n"
               "</function>\n</tool_call><|im_end|>",
}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}{'-thinking' if c[1] else ''}")
def test_loss_covers_calls_and_answers_never_tool_results(encoders, case):
    enc = encoders[case]
    e = enc.encode(CONVO, tools=TOOLS)
    text, spans = _token_spans(enc, e.ids)
    # the tool prompt is in the training text, as the template writes it with these tools
    assert '"name": "get_weather"' in text[: text.index("Weather in Paris?")]
    assert text == enc.render(enc.prepare(CONVO, TOOLS), add_generation_prompt=False, tools=TOOLS) or \
        text.startswith(enc.render(enc.prepare(CONVO[:3], TOOLS), add_generation_prompt=True, tools=TOOLS))
    answer = ("<think>\n\n</think>\n\n" if case == ("qwen3", True) else "") + "It is 18C and sunny.<|im_end|>"
    call_at = text.index(CALL_TEXT[case[0]])
    answer_at = text.rindex(answer)
    result_lo = text.index("<tool_response>\n18C")
    result_hi = text.index("</tool_response>", result_lo) + len("</tool_response>")
    trained_regions = [(call_at, call_at + len(CALL_TEXT[case[0]])), (answer_at, answer_at + len(answer))]
    for i, ((lo, hi), m) in enumerate(zip(spans, e.mask)):
        inside = any(a <= lo and hi <= b for a, b in trained_regions)
        assert m == inside, (i, text[lo:hi], m)
        if lo < result_hi and hi > result_lo:
            assert not m  # no token of the tool result is ever trained
    # as the Data page shows it: trained runs are exactly the call and the answer
    runs = training_runs(enc, CONVO, tools=TOOLS)
    assert [t for t, tr in runs if tr] == [CALL_TEXT[case[0]], answer]
    assert "".join(t for t, _ in runs) == text


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}{'-thinking' if c[1] else ''}")
def test_a_record_ending_in_its_call_trains_the_call(encoders, case):
    enc = encoders[case]
    e = enc.encode(CONVO[:2], tools=TOOLS)
    runs = training_runs(enc, CONVO[:2], tools=TOOLS)
    want = CALL_TEXT[case[0]]
    if case == ("qwen3", True):  # thinking on: the call follows the (empty) think block the model writes
        want = "<think>\n\n</think>\n\n" + want
    assert [t for t, tr in runs if tr] == [want]
    assert e.ids[: len(enc.prompt_ids(CONVO[:1], TOOLS))] == enc.prompt_ids(CONVO[:1], TOOLS)


def test_arguments_given_as_a_json_string_render_as_objects(encoders):
    enc = encoders[("qwen2.5", False)]
    as_text = [CONVO[0], {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": json.dumps(ARGS)}}]}]
    assert enc.encode(as_text, tools=TOOLS).ids == enc.encode(CONVO[:2], tools=TOOLS).ids


def test_tinyllama_refuses_tool_data_with_the_reason(model_dirs):
    enc = ChatEncoder(model_dirs["tinyllama"])
    assert not enc.supports_tools
    with pytest.raises(TuneloomError, match="has no tool support: it has no place for the tool definitions") as e:
        enc.encode([CONVO[0], CONVO[3]], tools=TOOLS)
    assert "Qwen2.5, Qwen3, Qwen3.5" in e.value.hint
    with pytest.raises(TuneloomError, match="has no tool support: it cannot show tool calls"):
        enc.encode(CONVO[:2])
    recs = [ChatRecord([CONVO[0], CONVO[3]], "d.jsonl", 1), ChatRecord(CONVO, "d.jsonl", 2, TOOLS)]
    st = token_stats(enc, recs, 512)
    assert [(p.file, p.line) for p in st["problems"]] == [("d.jsonl", 2)]
    assert "no tool support" in st["problems"][0].message and st["trained"] > 0


# ---------------------------------------------------------------------------
# Reading calls back out of what each template writes
# ---------------------------------------------------------------------------

PARALLEL = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}},
            {"type": "function", "function": {"name": "get_time", "arguments": {"zone": "Europe/Paris"}}}]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}{'-thinking' if c[1] else ''}")
@pytest.mark.parametrize("calls, content", [([CALL], ""), (PARALLEL, ""), (PARALLEL, "Let me look that up.")])
def test_parse_tool_calls_reads_what_the_template_writes(encoders, model_dirs, case, calls, content):
    enc = encoders[case]
    convo = [CONVO[0], {"role": "assistant", "content": content, "tool_calls": calls}]
    runs = training_runs(enc, convo, tools=TOOLS)
    written = "".join(t for t, tr in runs if tr)
    want = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in calls]
    for where in (model_dirs[case[0]], enc.tok.chat_template, enc.tok):
        assert T.parse_tool_calls(written, where, TOOLS) == want
    assert T.tool_call_accuracy([want], [T.parse_tool_calls(written, model_dirs[case[0]], TOOLS)]) == 1.0


def test_parse_tool_calls_edge_cases(model_dirs):
    q25 = model_dirs["qwen2.5"]
    assert T.parse_tool_calls("The weather is fine.", q25) == []
    cut = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}'  # generation stopped before the tag
    assert T.parse_tool_calls(cut, q25) == [{"name": "get_time", "arguments": {"zone": "CET"}}]
    broken = '<tool_call>\n{"name": "get_time", "arguments": {"zone": \n</tool_call>\n<tool_call>\n' \
             '{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}\n</tool_call>'
    assert T.parse_tool_calls(broken, q25) == [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    # Qwen3.5's values are text: a string parameter stays a string, others are read as JSON
    xml = "<tool_call>\n<function=get_weather>\n<parameter=code>\n007\n</parameter>\n<parameter=days>\n3\n" \
          "</parameter>\n<parameter=extra>\n{\"a\": [1]}\n</parameter>\n</function>\n</tool_call>"
    assert T.parse_tool_calls(xml, model_dirs["qwen3.5"], TOOLS) == [
        {"name": "get_weather", "arguments": {"code": "007", "days": 3, "extra": {"a": [1]}}}]
    # a template without <tool_call> blocks: the bare JSON call
    tmpl = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert T.parse_tool_calls('{"name": "f", "arguments": {"x": 1}}', tmpl) == [{"name": "f", "arguments": {"x": 1}}]


def test_tool_call_accuracy_by_hand():
    a = [{"name": "f", "arguments": {"x": 1, "y": "a"}}]
    b = [{"name": "g", "arguments": {}}, {"name": "f", "arguments": {"x": 1}}]
    assert T.tool_call_accuracy([a, b, None], [[{"name": "f", "arguments": {"y": "a", "x": 1.0}}], b[::-1], []]) == 0.5
    assert T.tool_call_accuracy([a], [[{"name": "f", "arguments": {"x": True, "y": "a"}}]]) == 0.0  # true is not 1
    assert T.tool_call_accuracy([a, b], [a, b[:1]]) == 0.5  # all of a record's calls, not some
    assert T.tool_call_accuracy([None, []], [a, a]) is None  # no record has calls
    assert T.tool_call_accuracy([[CALL]], [[{"name": "get_weather", "arguments": json.dumps(ARGS)}]]) == 1.0


# ---------------------------------------------------------------------------
# Evaluation: asked up to the first call, calls compared
# ---------------------------------------------------------------------------

def test_eval_rows_ask_up_to_the_first_call_and_score_the_calls(encoders):
    from core.evaluate import EvalResult, call_text, score_row, to_rows

    enc = encoders[("qwen2.5", False)]
    recs = [ChatRecord(CONVO, "t.jsonl", 1, TOOLS), ChatRecord([CONVO[0], CONVO[3]], "t.jsonl", 2)]
    rows = to_rows(recs)
    assert [r.messages for r in rows] == [CONVO[:1], CONVO[:1]]
    assert rows[0].expected_calls == [{"name": "get_weather", "arguments": ARGS}] and rows[0].tools == TOOLS
    assert rows[1].expected_calls is None and rows[1].expected == "It is 18C and sunny."
    rows[0].expected = call_text(enc, rows[0])
    assert rows[0].expected == CALL_TEXT["qwen2.5"][: -len("<|im_end|>")]
    right = rows[0].expected
    wrong = right.replace('"Paris"', '"Lyon"')
    for side, answer in (("base", wrong), ("tuned", right)):
        score_row(enc, rows[0], side, answer)
        score_row(enc, rows[1], side, "It is 18C and sunny.")
    result = EvalResult(rows=rows, losses={"base": None, "tuned": None})
    out = result.to_json()
    assert out["base"]["tool_call_accuracy"] == 0.0 and out["tuned"]["tool_call_accuracy"] == 1.0
    assert out["tuned"]["exact_match"] == 1.0 and out["base"]["exact_match"] == 0.5
    row = rows[0].to_json()
    assert row["tuned_calls_right"] is True and row["base_calls"] == [
        {"name": "get_weather", "arguments": {**ARGS, "city": "Lyon"}}]
    # no calls in the data: null
    plain = EvalResult(rows=rows[1:], losses={"base": None, "tuned": None}).to_json()
    assert plain["base"]["tool_call_accuracy"] is None and plain["tuned"]["tool_call_accuracy"] is None


def test_empty_tool_calls_are_a_turn_without_calls(tmp_path):
    f = tmp_path / "e.jsonl"
    f.write_text(jsonl({"messages": [CONVO[0], {"role": "assistant", "content": "Sunny.", "tool_calls": [],
                                                "function_call": None}], "tools": TOOLS}))
    ds = load_dataset([f])
    assert not ds.issues and not ds.notes and (ds.tool_calls, ds.tools) == (0, 1)
    assert ds.records[0].messages[1] == {"role": "assistant", "content": "Sunny."}


def test_openai_legacy_function_call_and_a_lone_call(tmp_path):
    legacy = {"messages": [CONVO[0], {"role": "assistant", "content": None, "function_call": {
        "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}], "tools": TOOLS}
    lone = {"messages": [{"role": "assistant", "content": "", "tool_calls": [CALL]}], "tools": TOOLS}
    f = tmp_path / "l.jsonl"
    f.write_text(jsonl(legacy, lone))
    ds = load_dataset([f])
    assert ds.records[0].messages[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert [(i.line, i.field, i.message) for i in ds.issues] == [
        (2, "messages[0].role", "the conversation starts with an assistant message, not a user message")]


# ---------------------------------------------------------------------------
# Tools in preference records (DPO / ORPO pairs and KTO examples)
# ---------------------------------------------------------------------------

WRONG_CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lyon"}}}
PAIR = {"tools": TOOLS,
        "prompt": [{"role": "user", "content": "Weather in Paris?"}],
        "chosen": [{"role": "assistant", "content": "", "tool_calls": [CALL]}],
        "rejected": [{"role": "assistant", "content": "", "tool_calls": [WRONG_CALL]}]}


def test_preference_records_carry_their_tools_to_counts_export_and_training_text(tmp_path, model_dirs):
    """A pair's ``tools`` are kept (not "extra field ignored"), counted by data check, written back by
    data export, and rendered by the template for both answers, whose calls carry the loss."""
    from core.train.preference import encode_pairs

    f = tmp_path / "pairs.jsonl"
    kto = {"tools": TOOLS, "prompt": [{"role": "user", "content": "Time in Tokyo?"}],
           "completion": [{"role": "assistant", "content": "", "tool_calls": [
               {"type": "function", "function": {"name": "get_time", "arguments": {"zone": "Asia/Tokyo"}}}]}],
           "label": True}
    f.write_text(jsonl(PAIR, {**PAIR, "tools": None, "chosen": "It is sunny.", "rejected": "No idea."}))
    ds = load_dataset([f])
    assert not ds.issues and ds.pairs == 2
    p = ds.preference[0]
    assert [t["function"]["name"] for t in p.tools] == ["get_weather", "get_time"] and ds.preference[1].tools is None
    assert (ds.tools, ds.tool_calls) == (1, 1)
    assert not [n for n in ds.notes if n.kind == "extra_fields"]
    export_jsonl(ds.preference, tmp_path / "out.jsonl")
    again = load_dataset([tmp_path / "out.jsonl"])
    assert [r.key() for r in again.preference] == [r.key() for r in ds.preference]
    # the chosen answers as chat records (--use chosen) keep the tools too
    chosen = load_dataset([f], use="chosen")
    assert chosen.records[0].tools == p.tools and (chosen.tools, chosen.tool_calls) == (1, 1)
    # KTO's unpaired form
    g = tmp_path / "kto.jsonl"
    g.write_text(jsonl(kto))
    assert load_dataset([g]).preference[0].tools[1]["function"]["name"] == "get_time"

    enc = ChatEncoder(model_dirs["qwen2.5"])
    pair = encode_pairs(enc, [p], 1024)[0]
    for side, want in ((pair.chosen, "Paris"), (pair.rejected, "Lyon")):
        text = enc.tok.decode(side.ids)
        assert "get_time" in text and "<tools>" in text  # the tool prompt, as the template renders it
        trained = enc.tok.decode([t for t, m in zip(side.ids[1:], side.mask[1:]) if m])
        assert "<tool_call>" in trained and want in trained and "get_time" not in trained
    assert pair.chosen.ids[:20] == pair.rejected.ids[:20]
    # a template without tool support refuses them, as it does chat records with tools
    with pytest.raises(TuneloomError, match="no tool support"):
        encode_pairs(ChatEncoder(model_dirs["tinyllama"]), [p], 1024)


def test_a_preference_call_to_an_undeclared_function_is_a_problem_on_its_line(tmp_path):
    bad = {**PAIR, "rejected": [{"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_news", "arguments": {}}}]}]}
    f = tmp_path / "pairs.jsonl"
    f.write_text(jsonl(PAIR, bad))
    ds = load_dataset([f])
    assert ds.pairs == 1 and len(ds.issues) == 1
    issue = ds.issues[0]
    assert issue.line == 2 and issue.field.startswith("rejected") and "get_news" in issue.message, issue
    # the field named is the one in the file: a system prompt put in front does not shift the prompt's
    # messages, and a whole conversation (KTO's messages) names its own messages
    orphan = {**PAIR, "system": "Be brief.", "prompt": [{"role": "tool", "content": "18C"},
                                                      {"role": "user", "content": "Weather in Paris?"}]}
    kto = {"tools": TOOLS, "label": False, "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_news", "arguments": {}}}]}]}
    late = {**orphan, "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                 {"role": "tool", "content": "18C"}, {"role": "user", "content": "Weather?"}]}
    g = tmp_path / "more.jsonl"
    g.write_text(jsonl(orphan, late))
    h = tmp_path / "kto.jsonl"
    h.write_text(jsonl(kto))
    first, second = load_dataset([g]).issues, load_dataset([h]).issues
    assert [i.field for i in first] == ["prompt[0].role", "prompt[2].role"], first
    assert "no call before it" in first[1].message, first
    assert [i.field for i in second] == ["messages[1].tool_calls[0].function.name"], second


def test_a_dpo_run_on_pairs_with_tools_trains_on_their_tool_prompt_and_says_so_in_its_config(tmp_path,
                                                                                           tmp_path_factory):
    """The run's config.json says "tools": true (what the export reads to render tools)."""
    import core.train as tr
    from core.export.pipeline import run_tools
    from tests.fixtures.tiny_models import cached_tiny_model

    cities = ["Paris", "Lyon", "Nice", "Lille"]
    rows = []
    for i, city in enumerate(cities):
        good = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}
        bad = {"type": "function", "function": {"name": "get_time", "arguments": {"zone": city}}}
        rows.append({"tools": TOOLS, "prompt": [{"role": "user", "content": f"Weather in {city}?"}],
                     "chosen": [{"role": "assistant", "content": "", "tool_calls": [good]}],
                     "rejected": [{"role": "assistant", "content": "", "tool_calls": [bad]}]})
    (tmp_path / "pairs.jsonl").write_text(jsonl(*rows))
    model = str(cached_tiny_model("qwen2.5", tmp_path_factory.getbasetemp() / "tiny-models"))
    res = tr.train(tr.TrainConfig(model=model, data=[str(tmp_path / "pairs.jsonl")], out=str(tmp_path / "run"),
                                  method="dpo", rank=4, alpha=8.0, lr=1e-3, batch=2, max_seq_len=512, warmup=1,
                                  valid_every=0, checkpoint_every=0, seed=3, iters=1, test_fraction=0.0))
    assert res["state"] == "done" and res["total_steps"] == 1
    assert run_tools(tmp_path / "run") is True
