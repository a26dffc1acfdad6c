"""core.data: every file type, record format and encoding; every class of problem with
its file, line and field; file-level refusals; folders and splits."""
from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest

from core import data
from core.data import limits  # the readers look the limits up there
from core.data import DatasetError, load_dataset, require_clean, split_records, train_valid
from core.events import Cancelled, CancelToken, RecordingEvents

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}]
QA = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]


def write(tmp_path: Path, name: str, content, encoding: str = "utf-8") -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return p


def jsonl(*objs) -> str:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)


def issue_at(ds, line):
    found = [i for i in ds.issues if i.line == line]
    assert len(found) == 1, (line, [str(i) for i in ds.issues])
    return found[0]


# --------------------------------------------------------------------------- record formats

@pytest.mark.parametrize("obj,fmt,messages", [
    ({"messages": CHAT}, "chat", CHAT),
    ({"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                        {"from": "gpt", "value": "Hello!"}]}, "sharegpt", CHAT),
    ({"instruction": "What is 2+2?", "output": "4"}, "alpaca", QA),
    ({"instruction": "Add", "input": "2+2", "output": "4"}, "alpaca",
     [{"role": "user", "content": "Add\n\n2+2"}, {"role": "assistant", "content": "4"}]),
    ({"prompt": "What is 2+2?", "completion": "4"}, "prompt-completion", QA),
    ({"question": "What is 2+2?", "answer": "4"}, "question-answer", QA),
    ({"text": "Once upon a time."}, "text", [{"role": "assistant", "content": "Once upon a time."}]),
    # column names in any letter case
    ({"Instruction": "What is 2+2?", "OUTPUT": "4"}, "alpaca", QA),
    ({"Messages": [{"Role": "User", "Content": "What is 2+2?"}, {"Role": "Assistant", "Content": "4"}]}, "chat", QA),
])
def test_record_formats_normalise_to_chat(tmp_path, obj, fmt, messages):
    ds = load_dataset([write(tmp_path, "d.jsonl", jsonl(obj, obj))])
    assert ds.format == fmt and ds.formats == {"d.jsonl": fmt}
    assert not ds.issues and ds.total == 2 and ds.invalid == 0
    assert [r.messages for r in ds.records] == [messages, messages]
    assert [r.line for r in ds.records] == [1, 2] and ds.records[0].file == "d.jsonl"
    assert ds.duplicates() == 1


def test_tool_messages_pass_through(tmp_path):
    msgs = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "w", "arguments": {}}}]},
            {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]
    ds = load_dataset([write(tmp_path, "t.jsonl", jsonl({"messages": msgs}))])
    assert not ds.issues
    # normalised to OpenAI's full form (core.tools): "type": "function" added, arguments an object
    assert ds.records[0].messages[1]["tool_calls"] == [{"type": "function", "function": {"name": "w", "arguments": {}}}]
    assert [m["role"] for m in ds.records[0].messages] == ["user", "assistant", "tool", "assistant"]


# --------------------------------------------------------------------------- file types

def _same_two(ds, fmt="prompt-completion"):
    assert not ds.issues, [str(i) for i in ds.issues]
    assert ds.format == fmt
    return [r.messages for r in ds.records]


def test_json_array_object_and_jsonl_in_json(tmp_path):
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    want = [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]]
    arr = load_dataset([write(tmp_path, "a.json", json.dumps(rows, indent=2))])
    assert _same_two(arr) == want
    assert [r.line for r in arr.records] == [2, 6]  # the line each element starts on
    obj = load_dataset([write(tmp_path, "o.json", json.dumps({"version": 1, "data": rows}))])
    assert _same_two(obj) == want
    lines = load_dataset([write(tmp_path, "l.json", jsonl(*rows))])  # JSONL saved as .json
    assert _same_two(lines) == want and [r.line for r in lines.records] == [1, 2]
    single = load_dataset([write(tmp_path, "s.json", json.dumps({"messages": QA}))])
    assert [r.messages for r in single.records] == [QA]
    nd = load_dataset([write(tmp_path, "n.ndjson", jsonl(*rows))])
    assert _same_two(nd) == want


def test_csv_quoted_newlines_and_row_lines(tmp_path):
    text = 'prompt,completion\n"Say ""hi""","Line one\nline two"\nplain,"a, b"\n\nlast,one\n'
    ds = load_dataset([write(tmp_path, "d.csv", text)])
    assert _same_two(ds)[0] == [{"role": "user", "content": 'Say "hi"'},
                                {"role": "assistant", "content": "Line one\nline two"}]
    assert [r.line for r in ds.records] == [2, 4, 6]  # the header is line 1; a quoted newline spans a line
    assert ds.records[1].messages[1]["content"] == "a, b"


def test_csv_cell_holding_a_json_message_list(tmp_path):
    cell = json.dumps(QA).replace('"', '""')
    ds = load_dataset([write(tmp_path, "m.csv", f'id,messages\n1,"{cell}"\n2,"[{{""role"": ""user""}}"\n')])
    assert ds.format == "chat" and [r.messages for r in ds.records] == [QA]
    assert (ds.issues[0].line, ds.issues[0].field) == (3, "messages") and "not valid JSON" in ds.issues[0].message


def test_tsv_and_semicolon_csv(tmp_path):
    tsv = load_dataset([write(tmp_path, "d.tsv", "Question\tAnswer\nWhat is 2+2?\t4\n")])
    assert _same_two(tsv, "question-answer") == [QA]
    semi = load_dataset([write(tmp_path, "e.csv", "question;answer\nWhat is 2+2?;4\n")])
    assert _same_two(semi, "question-answer") == [QA]


def test_text_files(tmp_path):
    txt = load_dataset([write(tmp_path, "d.txt", "First doc\nstill first.\n\n\nSecond doc.\n")])
    assert _same_two(txt, "text") == [[{"role": "assistant", "content": "First doc\nstill first."}],
                                      [{"role": "assistant", "content": "Second doc."}]]
    assert [r.line for r in txt.records] == [1, 5]
    md = load_dataset([write(tmp_path, "d.md", "# Title\n\nPara one.\n\nPara two.\n\n")])
    assert _same_two(md, "text") == [[{"role": "assistant", "content": "# Title\n\nPara one.\n\nPara two."}]]


def test_parquet(tmp_path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        p = write(tmp_path, "d.parquet", b"PAR1" + b"\x00" * 16 + b"PAR1")
        with pytest.raises(DatasetError, match="pyarrow"):
            load_dataset([p])
        return
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"Prompt": ["What is 2+2?"], "Completion": ["4"]}), p)
    assert _same_two(load_dataset([p])) == [QA]
    bad = write(tmp_path, "bad.parquet", b"not parquet at all")
    with pytest.raises(DatasetError, match="Parquet"):
        load_dataset([bad])


# --------------------------------------------------------------------------- encodings

ROWS = [{"prompt": "Café ☕ naïve", "completion": "Grüße 🚀"}, {"prompt": "二", "completion": "三"}]


@pytest.mark.parametrize("encoding,newline", [
    ("utf-8", "\n"), ("utf-8-sig", "\n"), ("utf-8", "\r\n"), ("utf-8-sig", "\r\n"),
    ("utf-16", "\n"), ("utf-16", "\r\n"), ("utf-16-be-bom", "\r\n"), ("utf-8", "\r"),
])
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_encodings_and_line_ends(tmp_path, encoding, newline, suffix):
    if suffix == ".jsonl":
        text = jsonl(*ROWS)
    elif suffix == ".json":
        text = json.dumps(ROWS, ensure_ascii=False, indent=1) + "\n"
    else:
        text = 'prompt,completion\n' + "".join(f'{r["prompt"]},"{r["completion"]}"\n' for r in ROWS)
    text = text.replace("\n", newline)
    raw = codecs.BOM_UTF16_BE + text.encode("utf-16-be") if encoding == "utf-16-be-bom" else text.encode(encoding)
    ds = load_dataset([write(tmp_path, "d" + suffix, raw)])
    assert not ds.issues, [str(i) for i in ds.issues]
    assert [r.messages[0]["content"] for r in ds.records] == ["Café ☕ naïve", "二"]
    assert [r.messages[1]["content"] for r in ds.records] == ["Grüße 🚀", "三"]


def test_non_utf8_names_byte_offset_and_line(tmp_path):
    raw = jsonl(ROWS[1]).encode() + '{"prompt": "caf\u00e9", "completion": "x"}\n'.encode("latin-1")
    with pytest.raises(DatasetError) as err:
        load_dataset([write(tmp_path, "latin.jsonl", raw)])
    offset = raw.index(b"\xe9")
    assert f"byte offset {offset}" in str(err.value) and "line 2" in str(err.value) and "UTF-8" in str(err.value)
    assert err.value.file == "latin.jsonl" and "UTF-8" in err.value.hint


def test_bad_byte_after_the_first_chunk_has_exact_offset(tmp_path):
    good = jsonl(*([ROWS[0]] * 40000)).encode()  # > 1 MB: the error is in a later read
    assert len(good) > data.CHUNK_BYTES
    raw = good + b'{"prompt": "\xc3(", "completion": "x"}\n'
    with pytest.raises(DatasetError) as err:
        load_dataset([write(tmp_path, "d.jsonl", raw)])
    assert f"byte offset {len(good) + 12}" in str(err.value) and "line 40001" in str(err.value)


@pytest.mark.parametrize("raw,needle", [
    (codecs.BOM_UTF32_LE + '{"text": "a"}'.encode("utf-32-le"), "UTF-32"),
    ('{"text": "a"}\n'.encode("utf-16-le"), "UTF-16 text without a byte-order mark"),
    (codecs.BOM_UTF16_LE + b"{\x00\x00\xd8}\x00", "not valid UTF-16: bad bytes 00 d8 at byte offset 4"),
    (codecs.BOM_UTF16_LE + b"{\x00}", "not valid UTF-16"),
])
def test_other_encodings_refused_with_offset(tmp_path, raw, needle):
    with pytest.raises(DatasetError, match="offset") as err:
        load_dataset([write(tmp_path, "d.jsonl", raw)])
    assert needle in str(err.value)


# --------------------------------------------------------------------------- mapping, several files, folders

def test_user_mapping_overrides_field_names(tmp_path):
    mapping = {"prompt": "Frage", "completion": "ANTWORT"}
    f = write(tmp_path, "de.jsonl", jsonl({"frage": "What is 2+2?", "antwort": "4"}, {"frage": "x"}))
    ds = load_dataset([f], mapping=mapping)
    assert ds.format == "prompt-completion" and [r.messages for r in ds.records] == [QA]
    assert (issue_at(ds, 2).field, issue_at(ds, 2).message) == ("ANTWORT", "is missing")
    csvf = write(tmp_path, "de.csv", "Frage,Antwort\nWhat is 2+2?,4\n")
    assert [r.messages for r in load_dataset([csvf], mapping=mapping).records] == [QA]
    with pytest.raises(DatasetError, match="no column 'Frage'"):
        load_dataset([write(tmp_path, "other.csv", "frag,antwort\na,b\n")], mapping=mapping)
    with pytest.raises(DatasetError, match="unknown fields"):
        load_dataset([csvf], mapping={"reply": "Antwort"})


def test_several_files(tmp_path):
    a = write(tmp_path, "a.jsonl", jsonl({"messages": QA}))
    b = write(tmp_path, "b.csv", "prompt,completion\nx,y\n,\nz,\n")
    ds = load_dataset([a, b])
    assert ds.formats == {"a.jsonl": "chat", "b.csv": "prompt-completion"}
    assert ds.format == "mixed: chat, prompt-completion"
    assert ds.total == 3 and len(ds.records) == 2 and ds.invalid == 1
    assert (ds.issues[0].file, ds.issues[0].line, ds.issues[0].field) == ("b.csv", 4, "completion")


def test_mlx_lm_folder_layout(tmp_path):
    folder = tmp_path / "data"
    write(folder, "train.jsonl", jsonl(*[{"prompt": f"t{i}", "completion": "x"} for i in range(5)]))
    write(folder, "valid.jsonl", jsonl({"prompt": "v", "completion": "x"}))
    write(folder, "test.jsonl", jsonl({"prompt": "s", "completion": "x"}, {"prompt": "bad"}))
    write(folder, "README.md", "# About this data\n")
    write(folder, "._train.jsonl", b"\x00\x05\x16\x07 macOS resource fork")
    ev = RecordingEvents()
    ds = load_dataset([folder], events=ev)
    assert set(ds.formats) == {"data/train.jsonl", "data/valid.jsonl", "data/test.jsonl"}
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 5, "valid": 1, "test": 1}
    assert len(ds.records) == 6 and ds.total == 8 and ds.invalid == 1  # test examples are checked, not trained
    assert (ds.issues[0].file, ds.issues[0].line, ds.issues[0].field) == ("data/test.jsonl", 2, "completion")
    train, valid = train_valid(ds)
    assert [r.messages[0]["content"] for r in valid] == ["v"] and len(train) == 5
    assert ev.progresses[-1][0] == ev.progresses[-1][1] and any("reading" in p[2] for p in ev.progresses)
    # typed: bytes of the files, the file being read named in item (no front end parses "reading NAME")
    assert {p.unit for p in ev.reports} == {"byte"} and {p.item for p in ev.reports if p.item} == set(ds.formats)
    # the same files dropped together (not the folder) are the same split
    ds2 = load_dataset([folder / "train.jsonl", folder / "valid.jsonl"])
    assert train_valid(ds2)[1][0].messages[0]["content"] == "v"


def test_folder_without_split_reads_every_file(tmp_path):
    folder = tmp_path / "mine"
    write(folder, "a.jsonl", jsonl({"text": "a"}))
    write(folder, "b.txt", "b\n")
    ds = load_dataset([folder])
    assert set(ds.formats) == {"mine/a.jsonl", "mine/b.txt"} and len(ds.records) == 2 and not ds.splits
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(DatasetError, match="holds no dataset files"):
        load_dataset([empty])


# --------------------------------------------------------------------------- problems: file, line, field

def test_each_class_of_problem_is_located(tmp_path):
    u, a = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}
    lines = [
        {"messages": [u, a]},                                                        # 1 fine
        '{"messages": [',                                                            # 2 malformed JSON
        {"messages": [u, {"role": "assistant", "content": "  "}]},                   # 3 empty field
        {"messages": [u, {"role": "assistant"}]},                                    # 4 missing field
        {"messages": [u, {"role": "robot", "content": "x"}]},                        # 5 unknown role
        {"messages": [u, a, {"role": "system", "content": "late"}]},                # 6 system not first
        {"messages": [a, u, a]},                                                     # 7 starts with assistant
        {"messages": [u, u, a]},                                                     # 8 two users in a row
        {"messages": [{"role": "system", "content": "s"}, u]},                      # 9 no assistant turn
        {"messages": [u, {"role": "assistant", "content": 42}]},                    # 10 non-string content
        {"messages": [u, {"role": "assistant", "content": [{"type": "text"}]}]},    # 11 list content
        {"instruction": "a", "output": "b"},                                        # 12 another format
        {"messages": []},                                                            # 13 no messages
        {"messages": [u, a, u]},                                                     # 14 ends unanswered
        {"messages": "hello"},                                                       # 15 not a list
        {"mesages": [u, a]},                                                         # 16 misspelt: missing
        [1, 2],                                                                      # 17 not an object
        {"messages": [u, {"role": "assistant", "content": "\ud83d"}]},              # 18 lone surrogate
        {"messages": [u, a]},                                                        # 19 fine
    ]
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    ds = load_dataset([write(tmp_path, "bad.jsonl", text)])
    assert ds.total == 19 and len(ds.records) == 2 and ds.invalid == 17 and len(ds.issues) == 17
    assert all(i.file == "bad.jsonl" and i.message and i.hint for i in ds.issues)
    expect = {
        2: (None, "not valid JSON"),
        3: ("messages[1].content", "the assistant message is empty"),
        4: ("messages[1].content", "is missing"),
        5: ("messages[1].role", "unknown role 'robot'"),
        6: ("messages[2].role", "a system message may only come first"),
        7: ("messages[0].role", "starts with an assistant message"),
        8: ("messages[1].role", "two user messages in a row"),
        9: ("messages", "has no assistant message"),
        10: ("messages[1].content", "must be text, found a number"),
        11: ("messages[1].content", "must be text, found a list"),
        12: (None, "mixed formats in one file"),
        13: ("messages", "has no messages"),
        14: ("messages[2].role", "ends with a user message"),
        15: ("messages", "must be a list of messages"),
        16: ("messages", "is missing"),
        17: (None, "must be an object"),
        18: ("messages[1].content", "unpaired surrogate"),
    }
    for line, (fld, msg) in expect.items():
        issue = issue_at(ds, line)
        assert issue.field == fld and msg in issue.message, (line, str(issue))
    assert data.issue_dicts(ds.issues)[0] == {"file": "bad.jsonl", "line": 2, "field": None,
                                              "message": ds.issues[0].message}


def test_problems_in_other_formats(tmp_path):
    alp = load_dataset([write(tmp_path, "a.jsonl", jsonl({"instruction": "x", "output": 5},
                                                         {"instruction": "", "output": "y"},
                                                         {"instruction": "x", "output": "y", "input": None}))])
    assert [(i.line, i.field, i.message) for i in alp.issues] == [
        (1, "output", "must be text, found a number"), (2, "instruction", "is empty")]
    sg = load_dataset([write(tmp_path, "s.json", json.dumps([
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "yo"}]},
    ], indent=2))])
    assert len(sg.records) == 1
    assert (sg.issues[0].line, sg.issues[0].field) == (14, "conversations[1].from")  # where it starts
    assert "robot" in sg.issues[0].message and "human, gpt" in sg.issues[0].hint
    rows = load_dataset([write(tmp_path, "c.csv", 'prompt,completion\na,b\n"x",y,z\n"open,b\n')])
    assert [(i.line, i.field) for i in rows.issues] == [(3, None), (4, None)]
    assert "3 columns" in rows.issues[0].message


def test_mixed_formats_majority_wins(tmp_path):
    ds = load_dataset([write(tmp_path, "m.jsonl", jsonl({"text": "odd one"}, *[{"messages": QA}] * 3))])
    assert ds.formats["m.jsonl"] == "chat" and len(ds.records) == 3
    assert issue_at(ds, 1).message.startswith("this example is in the 'text' format")


def test_problem_list_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_ISSUES", 50)
    rows = [{"prompt": "p", "completion": ""}] * 400 + [{"prompt": "p", "completion": "c"}]
    ds = load_dataset([write(tmp_path, "many.jsonl", jsonl(*rows))])
    assert ds.total == 401 and ds.invalid == 400 and len(ds.records) == 1
    assert len(ds.issues) == 51 and "350 more problems" in ds.issues[-1].message


# --------------------------------------------------------------------------- files that cannot be used

@pytest.mark.parametrize("name,content,needle", [
    ("e.jsonl", b"", "is empty (0 bytes)"),
    ("e.jsonl", b"\n  \n\r\n", "is empty"),
    ("e.json", codecs.BOM_UTF8 + b"  \n", "is empty"),
    ("e.csv", b"\n\n", "is empty"),
    ("e.txt", b"\n\n\n", "holds no examples"),
    ("h.csv", b"prompt,completion\n", "header row but no examples"),
    ("cols.csv", b"foo,bar\n1,2\n", "do not name a known format"),
    ("bin.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    ("x.csv", b"PK\x03\x04\x14\x00\x06\x00", "ZIP archive"),
    ("g.jsonl", b"\x1f\x8b\x08\x00", "gzip"),
    ("x.jsonl", b"prompt,completion\nhi,there\n", "not JSON Lines"),
    ("x.json", b"prompt,completion\n", "not JSON"),
    ("x.json", b'{"a": 1, "b": 2}', "expected a list of examples"),
    ("x.json", b"[]", "empty list"),
    ("x.json", b'[{"a": 1}, ', "not valid JSON"),
    ("w.jsonl", jsonl({"foo": 1}, {"bar": 2}).encode(), "no example in it has a known format"),
    ("d.xlsx", b"whatever", "CSV UTF-8"),
    ("noext", b"whatever", "no extension"),
])
def test_unusable_files_get_their_own_message(tmp_path, name, content, needle):
    with pytest.raises(DatasetError) as err:
        load_dataset([write(tmp_path, name, content)])
    assert needle in err.value.user_message(), err.value.user_message()
    assert err.value.file == name and err.value.hint


def test_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset([tmp_path / "nope.jsonl"])
    with pytest.raises(DatasetError, match="No dataset files"):
        load_dataset([])


def test_deep_nesting_and_huge_numbers_are_problems_not_crashes(tmp_path):
    text = "[" * 100000 + "\n" + '{"text": ' + "9" * 5000 + "}\n" + jsonl({"text": "ok"})
    ds = load_dataset([write(tmp_path, "d.jsonl", text)])
    assert len(ds.records) == 1 and [i.line for i in ds.issues] == [1, 2]
    with pytest.raises(DatasetError):
        load_dataset([write(tmp_path, "d.json", "[" * 100000)])


def test_junk_jsonl_stops_early(tmp_path):
    ds_file = write(tmp_path, "junk.jsonl", "this is not json\n" * 200000)
    with pytest.raises(DatasetError, match=f"first {data.JUNK_ROWS} lines"):
        load_dataset([ds_file])
    objs = write(tmp_path, "objs.jsonl", '{"foo": 1}\n' * 200000)
    with pytest.raises(DatasetError, match="fields seen: \\['foo'\\]"):
        load_dataset([objs])


def test_nothing_valid_and_require_clean(tmp_path):
    bad = load_dataset([write(tmp_path, "bad.jsonl", jsonl({"prompt": "a", "completion": ""}))])
    assert not bad.records and bad.invalid == 1
    with pytest.raises(DatasetError, match="none of the 1 examples is valid") as err:
        require_clean(bad, skip_invalid=True)
    assert "bad.jsonl, line 1 [completion]: is empty" in str(err.value)
    some = load_dataset([write(tmp_path, "some.jsonl", jsonl({"prompt": "a", "completion": ""},
                                                             {"prompt": "a", "completion": "b"}))])
    with pytest.raises(DatasetError, match="1 problem"):
        require_clean(some, skip_invalid=False)
    require_clean(some, skip_invalid=True)


def test_cancel(tmp_path):
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        load_dataset([write(tmp_path, "d.jsonl", jsonl({"text": "a"}))], cancel=token)


# --------------------------------------------------------------------------- split

def _recs(n, dup=0):
    recs = [data.ChatRecord([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}], "f", i)
            for i in range(n)]
    return recs + [data.ChatRecord(list(recs[0].messages), "f", n + k) for k in range(dup)]


def test_split_is_seeded_90_10_and_disjoint():
    recs = _recs(100)
    train, valid = split_records(recs)
    assert (len(train), len(valid)) == (90, 10)
    assert split_records(list(reversed(recs)))[1] and \
        {r.key() for r in split_records(list(reversed(recs)))[1]} == {r.key() for r in valid}  # order-independent
    assert [r.line for r in split_records(recs, seed=0)[1]] == [r.line for r in valid]
    assert {r.line for r in split_records(recs, seed=1)[1]} != {r.line for r in valid}
    assert not {r.key() for r in train} & {r.key() for r in valid}
    assert sorted(r.line for r in train + valid) == list(range(100))


def test_split_keeps_duplicates_on_one_side_and_at_least_one_valid():
    recs = _recs(5, dup=4)
    for seed in range(20):
        train, valid = split_records(recs, 0.1, seed)
        assert len(valid) >= 1 and len(train) >= 1 and len(train) + len(valid) == 9
        assert not {r.key() for r in train} & {r.key() for r in valid}
    assert len(split_records(_recs(2), 0.0)[1]) == 1
    with pytest.raises(DatasetError, match="At least 2"):
        split_records(_recs(1))
    with pytest.raises(DatasetError, match="identical"):
        split_records(_recs(1, dup=3))
    with pytest.raises(DatasetError, match="between 0 and 1"):
        split_records(_recs(10), 1.5)


def test_train_valid_on_one_file_uses_split(tmp_path):
    ds = load_dataset([write(tmp_path, "d.jsonl", jsonl(*[{"prompt": f"p{i}", "completion": "c"} for i in range(20)]))])
    train, valid = train_valid(ds, 0.1, seed=3)
    assert (len(train), len(valid)) == (18, 2)
    assert train_valid(ds, 0.1, seed=3) == (train, valid)
