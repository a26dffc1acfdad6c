"""core.data, the formats of issue 13: structured answers, input/output, TRL's conversational
prompt/completion, OpenAI's weight, ShareGPT's system field and roles, reasoning, templates
for tables, and the count of everything normalisation changed or left out."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import data
from core.data import DatasetError, load_dataset

U = {"role": "user", "content": "Hi"}
A = {"role": "assistant", "content": "Hello"}


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def jsonl(*objs) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n" for o in objs)


def problems(ds) -> dict:
    """line -> (field, message) of every problem; each line has one."""
    out = {}
    for i in ds.issues:
        assert i.file and i.line not in out, [str(x) for x in ds.issues]
        out[i.line] = (i.field, i.message)
    return out


def note(ds, kind):
    found = [n for n in ds.notes if n.kind == kind]
    assert len(found) == 1, [str(n) for n in ds.notes]
    return found[0]


# --------------------------------------------------------------------------- structured answers, input/output

def test_object_and_array_answers_become_compact_json(tmp_path):
    job = {"title": "Café owner", "remote": True, "tags": ["a", "ü"]}
    f = write(tmp_path, "x.jsonl", jsonl({"input": "Barista wanted in Köln", "output": job},
                                         {"input": "Two jobs", "output": [job, {"title": "x"}]},
                                         {"input": "bad", "output": 3},
                                         {"input": "", "output": "empty prompt"},
                                         {"input": "only input"}))
    ds = load_dataset([f])
    assert ds.format == "input-output"
    assert ds.records[0].messages == [{"role": "user", "content": "Barista wanted in Köln"},
                                      {"role": "assistant", "content": json.dumps(job, ensure_ascii=False)}]
    assert ds.records[1].messages[1]["content"] == json.dumps([job, {"title": "x"}], ensure_ascii=False)
    assert json.loads(ds.records[0].messages[1]["content"]) == job and "ü" in ds.records[0].messages[1]["content"]
    assert problems(ds) == {3: ("output", "must be text, found a number"), 4: ("input", "is empty"),
                            5: ("output", "is missing")}
    n = note(ds, "json_answer")
    assert n.count == 2 and "answers are JSON objects: the model will learn to write JSON" in n.message


def test_instruction_without_input_and_structured_in_every_answer_field(tmp_path):
    ds = load_dataset([write(tmp_path, "a.jsonl", jsonl({"instruction": "Extract", "output": {"k": 1}}))])
    assert ds.format == "alpaca" and ds.records[0].messages == [
        {"role": "user", "content": "Extract"}, {"role": "assistant", "content": '{"k": 1}'}]
    for fields, fmt in ((("prompt", "completion"), "prompt-completion"), (("question", "answer"), "question-answer")):
        ds = load_dataset([write(tmp_path, f"{fmt}.jsonl", jsonl({fields[0]: "q", fields[1]: {"k": [1, 2]}}))])
        assert ds.format == fmt and ds.records[0].messages[1]["content"] == '{"k": [1, 2]}'
    chat = load_dataset([write(tmp_path, "c.jsonl", jsonl({"messages": [U, {"role": "assistant",
                                                                          "content": {"ok": True}}]}))])
    assert chat.records[0].messages[1]["content"] == '{"ok": true}' and note(chat, "json_answer").count == 1
    # structured input is written as JSON too, and counted apart from answers
    inp = load_dataset([write(tmp_path, "i.jsonl", jsonl({"input": {"text": "x"}, "output": "y"}))])
    assert inp.records[0].messages[0]["content"] == '{"text": "x"}' and note(inp, "json_prompt").count == 1


def test_input_output_in_a_csv_and_with_map(tmp_path):
    ds = load_dataset([write(tmp_path, "d.csv", "Input,Output\nq,a\n")])
    assert ds.format == "input-output" and ds.records[0].messages[1]["content"] == "a"
    # --map onto input/output keeps working, and an object answer no longer refuses the row
    m = load_dataset([write(tmp_path, "m.jsonl", jsonl({"posting": "p", "fields": {"a": 1}}))],
                     mapping={"input": "posting", "output": "fields"})
    assert m.records[0].messages == [{"role": "user", "content": "p"}, {"role": "assistant", "content": '{"a": 1}'}]


# --------------------------------------------------------------------------- TRL conversational prompt/completion

def test_trl_conversational_prompt_completion(tmp_path):
    rows = [
        {"prompt": [{"role": "system", "content": "S"}, U, {"role": "assistant", "content": "earlier"},
                    {"role": "user", "content": "and now?"}],
         "completion": [{"role": "assistant", "content": "now"}]},                               # 1
        {"prompt": [U], "completion": "plain text answer"},                                      # 2
        {"prompt": "plain question", "completion": [A]},                                         # 3
        {"prompt": [U], "completion": [{"role": "user", "content": "x"}]},                       # 4
        {"prompt": [U, A], "completion": [A]},                                                   # 5 two assistants
        {"prompt": [{"role": "robot", "content": "x"}], "completion": [A]},                      # 6
        {"prompt": [U], "completion": [{"role": "assistant", "content": 7}]},                    # 7
    ]
    ds = load_dataset([write(tmp_path, "trl.jsonl", jsonl(*rows))])
    assert ds.format == "prompt-completion"
    assert ds.records[0].messages == [{"role": "system", "content": "S"}, U,
                                      {"role": "assistant", "content": "earlier", "weight": 0},
                                      {"role": "user", "content": "and now?"}, {"role": "assistant", "content": "now"}]
    assert ds.records[1].messages == [U, {"role": "assistant", "content": "plain text answer"}]
    assert ds.records[2].messages == [{"role": "user", "content": "plain question"}, A]
    assert problems(ds) == {
        4: ("completion[0].role", "the completion holds a user message; it may hold only the assistant's answer"),
        5: ("completion[0].role", "two assistant messages in a row"),
        6: ("prompt[0].role", "unknown role 'robot'"),
        7: ("completion[0].content", "must be text, found a number"),
    }
    assert note(ds, "prompt_context").count == 1  # the earlier assistant turn is context (TRL trains the completion)


# --------------------------------------------------------------------------- OpenAI weight

def test_openai_weight(tmp_path):
    rows = [
        {"messages": [U, {**A, "weight": 0}, {"role": "user", "content": "again"}, {**A, "weight": 1}]},  # 1
        {"messages": [U, {**A, "weight": 0}]},                                                          # 2
        {"messages": [U, {**A, "weight": 0.5}]},                                                        # 3
        {"messages": [{**U, "weight": 1}, A]},                                                          # 4
        {"messages": [U, {**A, "weight": "1"}]},                                                        # 5
        {"messages": [U, {**A, "weight": 1}]},                                                          # 6
    ]
    ds = load_dataset([write(tmp_path, "w.jsonl", jsonl(*rows))])
    assert [r.line for r in ds.records] == [1, 6]
    assert ds.records[0].messages == [U, {**A, "weight": 0}, {"role": "user", "content": "again"}, A]
    assert ds.records[1].messages == [U, A]  # weight 1 is the default: not kept
    p = problems(ds)
    assert p[2] == ("messages", "every assistant message has weight 0: nothing to learn from")
    assert p[3][0] == "messages[1].weight" and "must be 0 (not trained) or 1 (trained), found 0.5" in p[3][1]
    assert p[4] == ("messages[0].weight", "only assistant messages have a weight, not user messages")
    assert p[5][0] == "messages[1].weight" and "found '1'" in p[5][1]
    assert note(ds, "untrained_turns").message.startswith("1 assistant turn in 1 example has weight 0")


# --------------------------------------------------------------------------- ShareGPT system, roles

def test_sharegpt_system_field_and_roles(tmp_path):
    conv = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
    rows = [
        {"system": "Be brief.", "conversations": conv},                                                # 1
        {"conversations": [{"from": "system", "value": "Be brief."}] + conv},                          # 2
        {"system": "Be brief.", "conversations": [{"from": "system", "value": "Be brief."}] + conv},   # 3 same
        {"system": "Be brief.", "conversations": [{"from": "system", "value": "Other"}] + conv},       # 4
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Hello"}]},     # 5
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "model", "value": "Hello"}]},   # 6
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Hello"}]},   # 7
        {"system": ["not", "text"], "conversations": conv},                                            # 8
        {"system": "", "conversations": conv},                                                         # 9 empty: none
    ]
    ds = load_dataset([write(tmp_path, "s.jsonl", jsonl(*rows))])
    want = [{"role": "system", "content": "Be brief."}, U, A]
    by_line = {r.line: r.messages for r in ds.records}
    assert by_line[1] == want and by_line[2] == want and by_line[3] == want
    assert by_line[5] == [U, A] and by_line[6] == [U, A] and by_line[9] == [U, A]
    assert problems(ds) == {
        4: ("system", "the example has a system field and a different system message"),
        7: ("conversations[1].from", "unknown role 'robot'"),
        8: ("system", "must be text, found a list"),
    }
    assert not ds.notes  # the system field is used: nothing left out


def test_chat_top_level_system_and_tool_roles(tmp_path):
    ds = load_dataset([write(tmp_path, "c.jsonl", jsonl(
        {"system": "S", "messages": [U, A]},
        {"messages": [U, {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]},
                      {"role": "tool", "content": "42"}, A]}))])
    assert ds.records[0].messages[0] == {"role": "system", "content": "S"}
    assert [m["role"] for m in ds.records[1].messages] == ["user", "assistant", "tool", "assistant"]


# --------------------------------------------------------------------------- reasoning

def test_reasoning_content_and_think_blocks(tmp_path):
    rows = [
        {"messages": [U, {**A, "reasoning_content": "They greet me."}]},                         # 1
        {"messages": [U, {"role": "assistant", "content": "<think>\nThey greet me.\n</think>\n\nHello"}]},  # 2
        {"messages": [U, {"role": "assistant", "content": "<think>never closed"}]},              # 3
        {"messages": [U, {"role": "assistant", "content": "<think>x</think>y", "reasoning_content": "z"}]},  # 4
        {"messages": [U, {**A, "reasoning_content": 5}]},                                         # 5
        {"messages": [U, {"role": "assistant", "content": "<think>only thinking</think>\n"}]},   # 6
        {"messages": [U, A]},                                                                      # 7
    ]
    ds = load_dataset([write(tmp_path, "r.jsonl", jsonl(*rows))])
    want = [U, {**A, "reasoning_content": "They greet me."}]
    assert [r.messages for r in ds.records] == [want, want, [U, A]]
    assert ds.reasoning == 2 and data.has_reasoning(want) and not data.has_reasoning([U, A])
    assert problems(ds) == {
        3: ("messages[1].content", "starts a <think> block that is never closed"),
        4: ("messages[1].content", "has both reasoning_content and a <think> block"),
        5: ("messages[1].reasoning_content", "must be text, found a number"),
        6: ("messages[1].content", "the assistant message is empty"),
    }
    assert note(ds, "think_blocks").count == 1
    assert "2 of 3 examples carry reasoning" in data.reasoning_summary(ds)
    assert "thinking is on" in data.reasoning_summary(ds, True)
    assert "no thinking mode" in data.reasoning_summary(ds, False)
    plain = load_dataset([write(tmp_path, "p.jsonl", jsonl({"messages": [U, A]}))])
    assert plain.reasoning == 0 and "thinking off" in data.reasoning_summary(plain, True)


# --------------------------------------------------------------------------- templates

POKEMON = "name,types,id\nPikachu,Electric,25\nBulbasaur,\"Grass, Poison\",1\nMissingno,,0\n"


def test_templates_on_a_table(tmp_path):
    f = write(tmp_path, "pokemon.csv", POKEMON)
    ds = load_dataset([f], user_template="Pokemon name: {name}", assistant_template="{types}",
                      system="You are a Pokedex.")
    assert ds.format == "template"
    assert [r.messages for r in ds.records] == [
        [{"role": "system", "content": "You are a Pokedex."}, {"role": "user", "content": "Pokemon name: Pikachu"},
         {"role": "assistant", "content": "Electric"}],
        [{"role": "system", "content": "You are a Pokedex."}, {"role": "user", "content": "Pokemon name: Bulbasaur"},
         {"role": "assistant", "content": "Grass, Poison"}]]
    assert [r.line for r in ds.records] == [2, 3]
    assert problems(ds) == {4: ("types", "the assistant template gives an empty text (the field types is empty)")}
    assert "1 extra field ignored: `id`" in note(ds, "extra_fields").message
    assert note(ds, "system_added").count == 2
    # column names in any letter case; literal braces; several columns in one template
    ds2 = load_dataset([f], user_template="{{Pokemon}} {NAME} #{id}", assistant_template="{Types}")
    assert ds2.records[0].messages == [{"role": "user", "content": "{Pokemon} Pikachu #25"},
                                       {"role": "assistant", "content": "Electric"}]
    assert not ds2.notes


def test_template_naming_a_missing_column_is_an_error_listing_the_columns(tmp_path):
    f = write(tmp_path, "pokemon.csv", POKEMON)
    with pytest.raises(DatasetError) as err:
        load_dataset([f], user_template="Pokemon name: {nmae}", assistant_template="{types}")
    msg = err.value.user_message()
    assert "'nmae'" in msg and "['name', 'types', 'id']" in msg and err.value.file == "pokemon.csv"
    j = write(tmp_path, "p.jsonl", jsonl({"name": "a", "types": "b"}, {"name": "c", "types": "d"}))
    with pytest.raises(DatasetError, match=r"the assistant template names the column 'kind'.*\['name', 'types'\]"):
        load_dataset([j], user_template="{name}", assistant_template="{kind}")


@pytest.mark.parametrize("user,assistant,needle", [
    ("{name!r}", "{types}", "not a column name"),
    ("{name:>10}", "{types}", "not a column name"),
    ("{}", "{types}", "not a column name"),
    ("Pokemon {", "{types}", "cannot be read"),
    ("{name}", None, "the assistant template is missing"),
    (None, "{types}", "the user template is missing"),
    ("  ", "{types}", "The user template is empty"),
])
def test_bad_templates(tmp_path, user, assistant, needle):
    with pytest.raises(DatasetError, match=needle):
        load_dataset([write(tmp_path, "p.csv", POKEMON)], user_template=user, assistant_template=assistant)


def test_templates_on_json_rows(tmp_path):
    rows = [{"name": "Pikachu", "stats": {"hp": 35}, "types": ["Electric"]},  # 1
            {"name": "Eevee", "level": 5, "types": ["Normal"]},                # 2 no stats
            ["not", "an", "object"],                                           # 3
            {"name": "Mew", "stats": {"hp": 100}, "types": None}]              # 4
    ds = load_dataset([write(tmp_path, "t.jsonl", jsonl(*rows))], user_template="{name}: {stats}",
                      assistant_template="{types}")
    assert ds.records[0].messages == [{"role": "user", "content": 'Pikachu: {"hp": 35}'},
                                      {"role": "assistant", "content": '["Electric"]'}]
    p = problems(ds)
    assert p[2][0] == "stats" and "has no field 'stats' (the user template uses it)" in p[2][1]
    assert p[3] == (None, "an example must be an object with named fields, found a list")
    assert p[4][0] == "types" and "the assistant template gives an empty text" in p[4][1]
    assert note(ds, "json_answer").count == 1 and note(ds, "json_prompt").count == 1


def test_templates_and_map_together_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="either a field mapping or templates"):
        load_dataset([write(tmp_path, "p.csv", POKEMON)], mapping={"prompt": "name", "completion": "types"},
                     user_template="{name}", assistant_template="{types}")


def test_system_alone_adds_to_examples_without_one(tmp_path):
    ds = load_dataset([write(tmp_path, "c.jsonl", jsonl({"messages": [U, A]},
                                                        {"messages": [{"role": "system", "content": "Own"}, U, A]},
                                                        {"messages": [{"role": "system", "content": "S"}, U, A]}))],
                      system="S")
    assert [r.messages[0] for r in ds.records] == [{"role": "system", "content": "S"},
                                                   {"role": "system", "content": "Own"},
                                                   {"role": "system", "content": "S"}]
    assert note(ds, "system_added").count == 1 and note(ds, "system_kept").count == 1


# --------------------------------------------------------------------------- nothing dropped silently

def test_extra_fields_are_counted_and_named(tmp_path):
    rows = [{"id": 1, "source": "web", "prompt": "p", "completion": "c"},
            {"id": 2, "source": "web", "prompt": "p2", "completion": "c2"},
            {"id": 3, "prompt": "p3", "completion": ""}]  # invalid: its fields are not counted
    ds = load_dataset([write(tmp_path, "e.jsonl", jsonl(*rows))])
    n = note(ds, "extra_fields")
    assert n.message.startswith("2 extra fields ignored: `id`, `source`") and n.count == 2
    assert n.fields == ["id", "source"]
    msg = load_dataset([write(tmp_path, "m.jsonl", jsonl({"messages": [{**U, "name": "bob"}, A]}))])
    assert note(msg, "message_fields").message.startswith("1 extra message field ignored: `name`")
    parts = load_dataset([write(tmp_path, "p.jsonl", jsonl({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}, A]}))])
    assert parts.records[0].messages[0]["content"] == "Hi there" and note(parts, "content_parts").count == 1
    clean = load_dataset([write(tmp_path, "c.jsonl", jsonl({"prompt": "p", "completion": "c", "system": "s"}))])
    assert clean.notes == []


def test_preview_records_matches_loading(tmp_path):
    f = write(tmp_path, "pokemon.csv", POKEMON)
    columns, rows = data.sample_rows([f], 5)
    assert columns == ["name", "types", "id"] and [line for line, _ in rows] == [2, 3, 4]
    recs, issues, notes = data.preview_records(rows, file="pokemon.csv", user_template="Pokemon name: {name}",
                                               assistant_template="{types}")
    full = load_dataset([f], user_template="Pokemon name: {name}", assistant_template="{types}")
    assert [r.messages for r in recs] == [r.messages for r in full.records]
    assert [(i.line, i.message) for i in issues] == [(i.line, i.message) for i in full.issues]
    assert [n.message for n in notes] == [n.message for n in full.notes]
    with pytest.raises(DatasetError, match="'nope'"):
        data.preview_records(rows, user_template="{nope}", assistant_template="{types}")
    # a table whose columns name no format still shows its columns
    assert data.sample_rows([write(tmp_path, "odd.csv", "foo;bar\n1;2\n")]) == (["foo", "bar"], [(2, {"foo": "1",
                                                                                                    "bar": "2"})])


def test_export_writes_openai_chat_and_reads_back_the_same(tmp_path):
    rows = [{"messages": [U, {**A, "weight": 0}, {"role": "user", "content": "more"},
                          {**A, "reasoning_content": "r"}]},
            {"text": "A plain document."},
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
             "system": "S"}]
    recs = []
    for i, r in enumerate(rows):
        recs += load_dataset([write(tmp_path, f"in{i}.jsonl", jsonl(r))]).records
    out = tmp_path / "out.jsonl"
    assert data.export_jsonl(recs, out) == 3
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["messages"][1] == {"role": "assistant", "content": "Hello", "weight": 0}
    assert lines[1] == {"messages": [{"role": "assistant", "content": "A plain document."}]}
    assert lines[2] == {"messages": [{"role": "system", "content": "S"}, U, A]}
    back = load_dataset([out])
    assert not back.issues and [r.messages for r in back.records] == [r.messages for r in recs]


def test_json_document_lines_for_one_example_and_a_wrapped_list(tmp_path):
    one = load_dataset([write(tmp_path, "one.json", '\n\n{"messages": []}\n')])
    assert [(i.line, i.field) for i in one.issues] == [(3, "messages")]
    wrapped = json.dumps({"note": "[not the list]", "data": [{"prompt": "p", "completion": ""},
                                                             {"prompt": "p", "completion": "c"}]}, indent=1)
    ds = load_dataset([write(tmp_path, "w.json", wrapped)])
    assert [i.line for i in ds.issues] == [4] and [r.line for r in ds.records] == [8]


# --------------------------------------------------------------------------- preference pairs in a table

def test_a_preference_csv_reads_as_pairs_and_an_empty_one_is_explained(tmp_path):
    """A table whose header names a preference shape (TRL's prompt / chosen / rejected) read as pairs;
    it used to crash looking that shape up among the supervised ones (hypothesis found the empty case)."""
    f = write(tmp_path, "pairs.csv", "prompt,chosen,rejected\nWhat is 2+2?,4,5\nCapital of France?,Paris,Rome\n")
    ds = load_dataset([f])
    assert [(p.prompt[0]["content"], p.chosen[0]["content"], p.rejected[0]["content"]) for p in ds.preference] == [
        ("What is 2+2?", "4", "5"), ("Capital of France?", "Paris", "Rome")]
    assert [p.line for p in ds.preference] == [2, 3]
    empty = write(tmp_path, "empty.csv", "chosen,rejected\n")
    with pytest.raises(DatasetError, match="has a header row but no examples"):
        load_dataset([empty])
