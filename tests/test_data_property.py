"""Property tests: whatever bytes or JSON a user drops, load_dataset either returns a
Dataset whose records the trainer can use or raises the project's own error type."""
from __future__ import annotations

import codecs
import csv
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.data import ROLES, Dataset, load_dataset
from core.events import TuneloomError

SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".txt", ".md", ".ndjson"]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = ["messages", "conversations", "instruction", "input", "output", "prompt", "completion", "question",
        "answer", "text", "system", "Role", "role", "content", "from", "value", "PROMPT", "tool_calls", "x",
        "weight", "reasoning_content", "name", "types", "type", "chosen", "rejected", "label", "kto_tag", "images"]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=20)
role = st.sampled_from(list(ROLES) + ["human", "gpt", "bot", "model", "User", ""]) | json_scalars
message = st.dictionaries(st.sampled_from(["role", "content", "from", "value", "Role", "tool_calls", "weight",
                                           "reasoning_content"]),
                          role | st.text(max_size=10) | json_values, max_size=4)
# mostly well-formed messages, so that valid records (and near misses) come up often
plausible = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "user", "assistant", "tool"]),
                                   "content": st.text(max_size=8) | st.none() | st.integers()})
think = st.sampled_from(["<think>", "<think>r</think>", "<think>\nr\n</think>\n\na", "</think>", "a"])
plausible_v2 = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "user", "assistant", "tool"]),
     "content": st.text(max_size=8) | think | st.none() | json_values},
    optional={"weight": st.sampled_from([0, 1, 2, 0.5, "1", None, True]),
              "reasoning_content": st.text(max_size=5) | json_scalars})
chat_record = st.fixed_dictionaries({"messages": st.lists(message, max_size=5)}) | \
    st.fixed_dictionaries({"conversations": st.lists(message, max_size=5)}) | \
    st.fixed_dictionaries({"messages": st.lists(plausible, min_size=1, max_size=5)}) | \
    st.fixed_dictionaries({"messages": st.lists(plausible_v2, min_size=1, max_size=5)},
                          optional={"system": json_values}) | \
    st.fixed_dictionaries({"conversations": st.lists(plausible_v2, min_size=1, max_size=4), "system": json_values}) | \
    st.fixed_dictionaries({"prompt": st.lists(plausible_v2, max_size=3) | json_values,
                           "completion": st.lists(plausible_v2, max_size=2) | json_values}) | \
    st.fixed_dictionaries({"input": json_values, "output": json_values}, optional={"instruction": json_values})
# preference data (issue 26): TRL, LLaMA-Factory, whole transcripts, KTO
answer = st.text(max_size=8) | st.lists(plausible_v2, min_size=1, max_size=2) | plausible_v2 | json_values
transcript = st.lists(plausible_v2, min_size=1, max_size=4) | st.sampled_from(
    ["\n\nHuman: hi\n\nAssistant: yo", "\n\nHuman: hi\n\nAssistant: no", "Human: x", "\n\nAssistant: a", ""])
preference_record = st.fixed_dictionaries({"prompt": st.text(max_size=8) | st.lists(plausible_v2, max_size=3),
                                           "chosen": answer, "rejected": answer}) | \
    st.fixed_dictionaries({"conversations": st.lists(plausible_v2, min_size=1, max_size=3), "chosen": answer,
                           "rejected": answer}, optional={"system": json_values}) | \
    st.fixed_dictionaries({"chosen": transcript, "rejected": transcript}) | \
    st.fixed_dictionaries({"messages": st.lists(plausible_v2, min_size=1, max_size=3),
                           "label": st.booleans() | json_scalars}) | \
    st.fixed_dictionaries({"prompt": st.text(max_size=5), "completion": answer, "kto_tag": st.booleans()})


def check(path: Path, **options) -> Dataset | None:
    """load_dataset(path) raises only TuneloomError; what it returns is consistent: records the
    trainer can use, and problems that each name the file and the line."""
    try:
        ds = load_dataset([path], **options)
    except TuneloomError as exc:
        assert str(exc)
        return None
    assert ds.total == ds.valid + ds.invalid >= 1 and ds.valid == len(ds.records) + ds.left_out
    assert ds.issues or ds.invalid == 0
    for p in ds.preference:  # a prompt that ends where the answer starts; answers of assistant messages only
        assert p.chosen is not None or p.rejected is not None
        assert p.prompt and [m["role"] for m in p.prompt if m["role"] != "system"][-1] in ("user", "tool")
        for side in (p.chosen, p.rejected):
            assert side is None or (side and all(m["role"] in ("assistant", "tool") for m in side))
    for issue in ds.issues:
        assert issue.file == path.name and issue.message
        assert isinstance(issue.line, int) and issue.line >= 1 or issue.message.startswith("... and ")
    for n in ds.notes:
        assert n.message and n.count >= 1
    for r in ds.records:
        roles = [m["role"] for m in r.messages]
        assert all(x in ROLES for x in roles) and "assistant" in roles
        for m in r.messages:
            if m["role"] in ("system", "user") or (m["role"] == "assistant" and not m.get("tool_calls")):
                assert isinstance(m["content"], str)
                m["content"].encode("utf-8")  # no lone surrogates reach the tokenizer
            assert m.get("weight", 1) in (0, 1) and (m["role"] == "assistant" or "weight" not in m)
            assert isinstance(m.get("reasoning_content", ""), str)
        assert any(m["role"] == "assistant" and m.get("weight", 1) == 1 for m in r.messages)
        if len(r.messages) > 1:
            assert [x for x in roles if x != "system"][0] == "user"
        assert r.key()
    ds.duplicates()
    return ds


_TMP = tempfile.TemporaryDirectory(prefix="tuneloom-prop-")  # removed at exit


def write(suffix: str, payload: bytes) -> Path:
    p = Path(_TMP.name) / f"data{suffix}"  # one file per suffix, rewritten by every example
    p.write_bytes(payload)
    return p


@SETTINGS
@given(payload=st.binary(max_size=2000), suffix=st.sampled_from(SUFFIXES),
       prefix=st.sampled_from([b"", codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, b'{"text": "']))
@example(payload=b"\xff" * 10, suffix=".csv", prefix=b"")
@example(payload=b"a,b\n\x00", suffix=".csv", prefix=b"")
@example(payload=b'"unclosed', suffix=".csv", prefix=b"text\n")
def test_random_bytes_never_crash(payload, suffix, prefix):
    check(write(suffix, prefix + payload))


@SETTINGS
@given(docs=st.lists(json_values | chat_record, min_size=1, max_size=6), suffix=st.sampled_from([".jsonl", ".json"]),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]))
def test_random_json_never_crashes(docs, suffix, encoding):
    if suffix == ".jsonl":
        text = "".join(json.dumps(d) + "\n" for d in docs)
    else:
        text = json.dumps(docs if len(docs) > 1 else docs[0], indent=1)
    check(write(suffix, text.encode(encoding, "surrogatepass") if encoding != "utf-16" else text.encode("utf-16")))


@SETTINGS
@given(records=st.lists(chat_record | preference_record, min_size=1, max_size=8))
def test_random_chats_are_valid_or_reported(records):
    path = write(".jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    ds = check(path)
    if ds is not None:
        valid = {r.line for r in ds.records} | {p.line for p in ds.preference}
        assert valid.isdisjoint({i.line for i in ds.issues})
        assert len(valid) + len({i.line for i in ds.issues if i.line}) == len(records)


@SETTINGS
@given(header=st.lists(st.sampled_from(KEYS) | st.text(max_size=8), min_size=1, max_size=4),
       rows=st.lists(st.lists(st.text(max_size=30), max_size=5), max_size=6),
       delimiter=st.sampled_from([",", "\t", ";"]))
def test_random_tables_never_crash(header, rows, delimiter):
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter)
    w.writerow(header)
    w.writerows(rows)
    check(write(".tsv" if delimiter == "\t" else ".csv", buf.getvalue().encode("utf-8", "surrogatepass")))


@SETTINGS
@given(rows=st.lists(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), json_values, max_size=4)
                     | json_values, min_size=1, max_size=6),
       user=st.sampled_from(["{name}", "Pokemon name: {name}", "{NAME} {x}", "{{lit}} {name}", "{", "{name!r}",
                             "{text}"]) | st.text(max_size=12),
       assistant=st.sampled_from(["{types}", "{x}", "{output}", "}"]) | st.text(max_size=8),
       system=st.none() | st.text(max_size=6), suffix=st.sampled_from([".jsonl", ".json"]))
def test_random_rows_through_templates(rows, user, assistant, system, suffix):
    text = "".join(json.dumps(r) + "\n" for r in rows) if suffix == ".jsonl" else json.dumps(rows, indent=1)
    ds = check(write(suffix, text.encode("utf-8", "surrogatepass")), user_template=user, assistant_template=assistant,
               system=system)
    if ds is not None:
        assert ds.format == "template"
        for r in ds.records:
            assert [m["role"] for m in r.messages][-2:] == ["user", "assistant"]


@SETTINGS
@given(header=st.lists(st.sampled_from(["name", "types", "id", "Name"]) | st.text(max_size=6), min_size=1,
                       max_size=4),
       rows=st.lists(st.lists(st.text(max_size=12), max_size=5), max_size=6))
def test_random_tables_through_templates(header, rows):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    check(write(".csv", buf.getvalue().encode("utf-8", "surrogatepass")), user_template="Pokemon name: {name}",
          assistant_template="{types}", system="You are a Pokedex.")


@SETTINGS
@given(records=st.lists(chat_record, min_size=1, max_size=8))
def test_export_reads_back_the_same_records(records):
    from core.data import export_jsonl

    ds = check(write(".jsonl", "".join(json.dumps(r) + "\n" for r in records).encode()))
    if ds is None or not ds.records:
        return
    out = Path(_TMP.name) / "export.jsonl"
    assert export_jsonl(ds.records, out) == len(ds.records)
    back = load_dataset([out])
    assert not back.issues and [r.messages for r in back.records] == [r.messages for r in ds.records]


@SETTINGS
@given(rows=st.lists(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), json_values, max_size=4),
                     max_size=5),
       user=st.sampled_from(["{name}", "{x} {types}", "{", "{a!r}", "{}", ""]) | st.text(max_size=10),
       assistant=st.sampled_from(["{types}", "{output}", "}"]) | st.text(max_size=6) | st.none())
def test_mapping_preview_raises_only_dataset_errors(rows, user, assistant):
    """What the GUI's mapping panel calls on every key press."""
    from core.data import DatasetError, preview_records

    try:
        recs, issues, notes = preview_records(list(enumerate(rows, 2)), file="t.csv", user_template=user,
                                              assistant_template=assistant)
    except DatasetError as exc:
        assert str(exc)
        return
    assert len(recs) + len(issues) == len(rows)
    assert all(i.file == "t.csv" and i.line >= 2 for i in issues)


@SETTINGS
@given(records=st.lists(preference_record, min_size=1, max_size=8))
def test_export_reads_back_the_same_preference_records(records):
    """Pairs are written in TRL's conversational form and read back as the same records."""
    from core.data import export_jsonl

    ds = check(write(".jsonl", "".join(json.dumps(r) + "\n" for r in records).encode()))
    if ds is None or not ds.preference:
        return
    out = Path(_TMP.name) / "export-pref.jsonl"
    assert export_jsonl(ds.preference, out) == len(ds.preference)
    back = load_dataset([out])
    assert not back.issues
    assert [(p.prompt, p.chosen, p.rejected) for p in back.preference] == \
        [(p.prompt, p.chosen, p.rejected) for p in ds.preference]
