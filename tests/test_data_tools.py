"""core.data, issue 26: files that other fine-tuning tools ship, read the way their authors meant
them (Alpaca with the question in `input`, preference and KTO data, media records, RL prompt sets,
placeholders, text corpora, LLaMA-Factory's dataset_info.json). Every file here is written by the
test in the shape those tools use; counts and messages are asserted exactly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import data
from core.data import limits  # the readers look the limits up there
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


# --------------------------------------------------------------------------- preference data

HH = "\n\nHuman: {q}\n\nAssistant: {a}"


def test_trl_prompt_chosen_rejected_strings_and_messages(tmp_path):
    rows = [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
            {"prompt": [{"role": "user", "content": "What colour is the sky?"}],
             "chosen": [{"role": "assistant", "content": "It is blue."}],
             "rejected": [{"role": "assistant", "content": "It is green."}]},
            {"prompt": "Hi", "chosen": "", "rejected": "x"},  # line 3: empty chosen
            {"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "user", "content": "A"}],
             "rejected": "B"}]  # line 4: a user message as the answer
    f = write(tmp_path, "dpo.jsonl", jsonl(*rows))
    ds = load_dataset([f])
    assert ds.format == "preference-prompt" and ds.total == 4 and ds.pairs == 2 and ds.records == []
    assert ds.valid == 2 and ds.invalid == 2 and ds.left_out == 2
    p = ds.preference[1]
    assert (p.prompt, p.chosen, p.rejected, p.line) == (
        [{"role": "user", "content": "What colour is the sky?"}], [{"role": "assistant", "content": "It is blue."}],
        [{"role": "assistant", "content": "It is green."}], 2)
    assert ds.preference[0].chosen == [{"role": "assistant", "content": " blue."}]
    assert problems(ds) == [
        ("dpo.jsonl", 3, "chosen", "is empty"),
        ("dpo.jsonl", 4, "chosen[0].role",
         "the chosen answer holds a user message; it may hold only the assistant's answer")]
    assert note(ds, "preference_pairs").message == (
        "preference pairs: 2 (prompt / chosen / rejected, as TRL writes them in dpo.jsonl): supervised training "
        "needs one answer per example: use the chosen answers (--use chosen), or tune on the preferences")
    with pytest.raises(DatasetError) as err:
        data.require_clean(ds, skip_invalid=True)
    assert str(err.value) == ("dpo.jsonl holds 2 preference pairs (a chosen and a rejected answer to each prompt), "
                              "not examples with one answer: supervised training would not know which answer to "
                              "learn.")
    assert "--use chosen" in err.value.hint and "preference tuning" in err.value.hint
    used = load_dataset([f], use="chosen")
    assert [r.messages for r in used.records] == [
        [{"role": "user", "content": "The sky is"}, {"role": "assistant", "content": " blue."}],
        [{"role": "user", "content": "What colour is the sky?"}, {"role": "assistant", "content": "It is blue."}]]
    assert used.valid == 2 and used.invalid == 2 and used.left_out == 0
    assert note(used, "preference_pairs").message.endswith(
        "supervised training learns the chosen answers (--use chosen); the 2 rejected answers are left out")
    data.require_clean(used, skip_invalid=True)  # no refusal now
    assert data.preference_summary(used) == {"pairs": 2, "kto_desirable": 0, "kto_undesirable": 0,
                                             "shapes": {"dpo.jsonl": "prompt / chosen / rejected, as TRL writes them"},
                                             "use": "chosen", "supervised_examples": 2}


def test_llama_factory_sharegpt_pairs(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Write a haiku."}],
             "chosen": {"from": "gpt", "value": "Old pond, frog jumps in."},
             "rejected": {"from": "gpt", "value": "No."}, "system": "Be poetic."},
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                               {"from": "human", "value": "Bye?"}],
             "chosen": {"from": "gpt", "value": "Goodbye!"}, "rejected": {"from": "gpt", "value": "What?"}},
            {"conversations": [{"from": "human", "value": "Q"}],
             "chosen": {"from": "gpt", "value": "A"}}]  # line 3: no rejected: plain ShareGPT in the wrong file
    ds = load_dataset([write(tmp_path, "dpo_en_demo.json", "[\n" + ",\n".join(map(json.dumps, rows)) + "\n]\n")])
    assert ds.format == "preference-sharegpt" and ds.pairs == 2 and ds.total == 3
    assert ds.preference[0].prompt == [{"role": "system", "content": "Be poetic."},
                                       {"role": "user", "content": "Write a haiku."}]
    assert ds.preference[1].prompt[1] == {"role": "assistant", "content": "Hello"}
    assert ds.preference[1].rejected == [{"role": "assistant", "content": "What?"}]
    assert [(i.line, i.message) for i in ds.issues] == [
        (4, "this example is in the 'sharegpt' format but the file's other 2 examples are 'preference-sharegpt' "
             "(mixed formats in one file)")]
    # the issue's complaint: never "has no assistant message to learn from"
    assert not any("no assistant message" in i.message for i in ds.issues)


def test_whole_transcript_pairs_as_text_and_as_messages(tmp_path):
    rows = [{"chosen": HH.format(q="Hi there", a="Hello! How can I help?"),
             "rejected": HH.format(q="Hi there", a="Go away.")},
            {"chosen": HH.format(q="A", a="B") + HH.format(q="C", a="D"),
             "rejected": HH.format(q="A", a="B") + HH.format(q="C", a="E")},
            {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
             "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]},
            {"chosen": HH.format(q="X", a="Y"), "rejected": HH.format(q="Z", a="Y")},  # line 4: other prompt
            {"chosen": "just text", "rejected": "other text"}]  # line 5: no turns
    ds = load_dataset([write(tmp_path, "hh.jsonl", jsonl(*rows))])
    assert ds.format == "preference-transcript" and ds.pairs == 3
    assert ds.preference[0].prompt == [{"role": "user", "content": "Hi there"}]
    assert ds.preference[0].chosen == [{"role": "assistant", "content": "Hello! How can I help?"}]
    assert ds.preference[1].prompt == [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
                                       {"role": "user", "content": "C"}]
    assert (ds.preference[1].chosen[0]["content"], ds.preference[1].rejected[0]["content"]) == ("D", "E")
    assert ds.preference[2].rejected == [{"role": "assistant", "content": "5"}]
    assert [(i.line, i.field, i.message) for i in ds.issues] == [
        (4, "rejected", "starts from a different conversation than chosen"),
        (5, "chosen", 'is text without turns: expected a whole conversation, "\\n\\nHuman: ...\\n\\nAssistant: ..."')]
    assert "chosen / rejected as whole conversations in hh.jsonl" in note(ds, "preference_pairs").message


def test_kto_labels_train_only_the_desirable_answers(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}],
             "label": i % 3 != 0} for i in range(6)]
    rows.append({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
                 "label": "yes"})  # line 7: not true/false -> not KTO: read as chat, the label is an extra field
    ds = load_dataset([write(tmp_path, "kto.jsonl", jsonl(*rows))])
    assert ds.format == "kto" and ds.total == 7 and len(ds.preference) == 6 and ds.pairs == 0
    # the supervised records are the 4 desirable answers only
    assert [r.messages[1]["content"] for r in ds.records] == ["A1", "A2", "A4", "A5"]
    assert ds.left_out == 2 and ds.valid == 6 and ds.invalid == 1
    assert note(ds, "kto_labels").message == (
        "KTO labels: 6 examples, 4 desirable and 2 undesirable (kto.jsonl); supervised training learns every "
        "answer it sees, so the 2 answers labelled undesirable (label false) are left out and the 4 desirable "
        "ones trained")
    assert [(i.line, i.message) for i in ds.issues] == [
        (7, "this example is in the 'chat' format but the file's other 6 examples are 'kto' (mixed formats in one "
            "file)")]
    data.require_clean(load_dataset([write(tmp_path, "k2.jsonl", jsonl(*rows[:6]))]), skip_invalid=False)
    # LLaMA-Factory's kto_tag on ShareGPT, and TRL's unpaired prompt / completion / label
    lf = load_dataset([write(tmp_path, "kto_en_demo.json", json.dumps([
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}], "kto_tag": False},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "kto_tag": True}]))])
    assert lf.format == "kto" and [r.messages[1]["content"] for r in lf.records] == ["Hello"]
    assert lf.preference[0].rejected == [{"role": "assistant", "content": "Hey"}] and lf.preference[0].chosen is None
    trl = load_dataset([write(tmp_path, "u.jsonl", jsonl({"prompt": "P", "completion": "C", "label": True},
                                                         {"prompt": "P", "completion": "D", "label": False}))])
    assert trl.format == "kto" and [r.messages for r in trl.records] == [
        [{"role": "user", "content": "P"}, {"role": "assistant", "content": "C"}]]


# --------------------------------------------------------------------------- placeholders

IDENTITY = [
    {"instruction": "hi", "input": "", "output": "Hello! I am {{name}}, an AI assistant developed by {{author}}."},
    {"instruction": "Who are you?", "input": "", "output": "I am {{name}}, trained by {{author}}."},
    {"instruction": "What is 2+2?", "input": "", "output": "4"},
    {"instruction": "Your name?", "input": "", "output": "You may call me {{ name }}."},
    {"instruction": "Format {x}", "input": "", "output": "Use {value} here."},
]


def test_placeholders_are_counted_with_their_lines_and_filled(tmp_path):
    f = write(tmp_path, "identity.jsonl", jsonl(*IDENTITY))
    ds = load_dataset([f])
    assert len(ds.records) == 5 and not ds.issues
    n = note(ds, "placeholders")
    assert n.count == 4 and n.fields == ["{value}", "{{author}}", "{{name}}"]
    assert n.lines == [("identity.jsonl", 1), ("identity.jsonl", 2), ("identity.jsonl", 4), ("identity.jsonl", 5)]
    assert n.message == ("unfilled placeholders in the answers of 4 examples: {value} (1), {{author}} (2), "
                         "{{name}} (3) (identity.jsonl lines 1, 2, 4, 5): the model would learn them as written; "
                         "fill them with --fill NAME=VALUE (the Data page: Fill placeholders), or edit the file")
    assert n.to_json()["lines"][0] == {"file": "identity.jsonl", "line": 1}
    filled = load_dataset([f], fill={"name": "Loom", "author": "Tuneloom", "value": "V", "nobody": "x"})
    assert filled.records[0].messages[1]["content"] == "Hello! I am Loom, an AI assistant developed by Tuneloom."
    assert filled.records[3].messages[1]["content"] == "You may call me Loom."
    assert filled.records[4].messages == [{"role": "user", "content": "Format {x}"},  # prompts keep unknown slots
                                          {"role": "assistant", "content": "Use V here."}]
    assert not [x for x in filled.notes if x.kind == "placeholders"]
    assert note(filled, "placeholders_filled").message == (
        "placeholders filled in 4 examples: author = 'Tuneloom', name = 'Loom', value = 'V'")
    assert note(filled, "fill_unused").message == "nothing to fill for --fill nobody: no {{nobody}} or {nobody} in the data"
    part = load_dataset([f], fill={"name": "Loom"})
    assert note(part, "placeholders").message.startswith(
        "unfilled placeholders in the answers of 3 examples: {value} (1), {{author}} (2) (identity.jsonl lines 1, 2, 5)")
    with pytest.raises(DatasetError, match="Cannot fill the placeholder 'a b'"):
        load_dataset([f], fill={"a b": "x"})
    # JSON answers, LaTeX and shell variables are not placeholders
    js = load_dataset([write(tmp_path, "j.jsonl", jsonl({"input": "x", "output": {"name": "y"}},
                                                        {"input": "y", "output": "\\frac{a}{b} = x^{n}, \\text{km}"},
                                                        {"input": "z", "output": "echo ${HOME}"}))])
    assert len(js.records) == 3 and not [x for x in js.notes if x.kind == "placeholders"]


# --------------------------------------------------------------------------- images, video, audio

def test_media_records_are_refused_with_the_field(tmp_path):
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    rows = [{"messages": chat},
            {"messages": [{"role": "user", "content": "<image>What is in this picture?"},
                          {"role": "assistant", "content": "PyTorch logo."}], "images": ["mllm_demo_data/1.jpg"]},
            {"conversations": [{"from": "human", "value": "<video>What is she doing?"},
                               {"from": "gpt", "value": "Dancing."}]},
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "Describe"},
                                                       {"type": "image_url", "image_url": {"url": "x.png"}}]},
                          {"role": "assistant", "content": "A cat."}]},
            {"instruction": "Transcribe.", "output": "hello", "audio": "a.wav"},
            {"messages": chat, "images": []}]  # an empty images list carries nothing
    ds = load_dataset([write(tmp_path, "mm.jsonl", jsonl(*rows))])
    assert len(ds.records) == 2 and ds.total == 6
    assert [(i.line, i.field, i.message) for i in ds.issues] == [
        (2, "images", "carries images: the model reads text only, so it would learn the answer without them"),
        (3, "conversations[0].value", "holds a <video> token, which stands for a video: the model reads text only, "
                                      "so it would learn the answer without it"),
        (4, "messages[0].content[1]", "has a content part of type 'image_url', which is an image: the model reads "
                                      "text only, so it would learn the answer without it"),
        (5, "audio", "carries audio: the model reads text only, so it would learn the answer without it")]
    assert ds.issues[0].hint == "remove the examples that need them; Tuneloom fine-tunes text-only chat models"
    # a file of them is refused as a whole
    only = write(tmp_path, "mllm_demo.json", json.dumps(rows[1:3]))
    with pytest.raises(DatasetError) as err:
        load_dataset([only])
    assert str(err.value) == ("mllm_demo.json: every example carries images, video or audio (line 1, 'images' "
                              "carries images: the model reads text only, so it would learn the answer without them).")
    assert "text-only" in err.value.hint


# --------------------------------------------------------------------------- RL prompt sets

def verl_row(i):
    return {"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": f"What is {i} * 3?"}],
            "ability": "math", "reward_model": {"style": "rule", "ground_truth": str(3 * i)},
            "extra_info": {"split": "train", "index": i}}


def test_prompt_only_files_say_rl_data(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset([write(tmp_path, "gsm8k_rl.jsonl", jsonl(*[verl_row(i) for i in range(5)]))])
    assert str(err.value) == (
        "gsm8k_rl.jsonl: prompts without answers: this looks like RL data (a prompt and no answer to learn; the "
        "reference answer in 'reward_model.ground_truth' is for a reward function, not an answer to learn) - all 5 of "
        "its examples have a prompt and no answer (first at line 1).")
    assert err.value.hint.startswith("Supervised fine-tuning learns the answer the model should give")
    # TRL's prompt-only form (text): the same message, without a reference answer
    with pytest.raises(DatasetError, match=r"^p\.jsonl: prompts without answers: this looks like RL data \(a prompt "
                                           r"and no answer to learn\) - its one example has a prompt"):
        load_dataset([write(tmp_path, "p.jsonl", jsonl({"prompt": "Write a poem about the sea."}))])
    # in a file of conversations, such a line is a problem of its own
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    ds = load_dataset([write(tmp_path, "mixed.jsonl", jsonl(chat, verl_row(1), chat))])
    assert len(ds.records) == 2
    assert [(i.line, i.field, i.message) for i in ds.issues] == [
        (2, "prompt", "prompts without answers: this looks like RL data (a prompt and no answer to learn; the "
                      "reference answer in 'reward_model.ground_truth' is for a reward function, not an answer to "
                      "learn)")]


def test_prompt_only_beyond_the_junk_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "JUNK_ROWS", 50)
    with pytest.raises(DatasetError, match="none of its first 50 examples have a prompt and no answer"):
        load_dataset([write(tmp_path, "rl.jsonl", jsonl(*[verl_row(i) for i in range(80)]))])


# --------------------------------------------------------------------------- text corpora

def corpus(n_docs: int, words: int) -> str:
    return "".join(" ".join(f"w{d}x{i}" for i in range(words)) + "\n" for d in range(n_docs))


def test_txt_of_long_lines_without_blank_lines_is_one_document_per_line(tmp_path):
    ds = load_dataset([write(tmp_path, "corpus.txt", corpus(4, 300))])
    assert len(ds.records) == 4 and [r.line for r in ds.records] == [1, 2, 3, 4]
    assert ds.records[1].messages == [{"role": "assistant", "content": " ".join(f"w1x{i}" for i in range(300))}]
    n = note(ds, "text_rule")
    length = len(" ".join(f"w0x{i}" for i in range(300)))
    assert n.message == (f"corpus.txt: read one document per line (4 documents): it has no blank lines and its lines "
                         f"are long (on average {length:,} characters)")
    # blank lines separate documents, whatever the line lengths
    ds = load_dataset([write(tmp_path, "b.txt", corpus(2, 300) + "\n" + corpus(1, 300))])
    assert len(ds.records) == 2 and note(ds, "text_rule").message == "b.txt: read as documents separated by blank lines"
    # short lines without blank lines: wrapped prose, one document (and said so)
    ds = load_dataset([write(tmp_path, "poem.txt", "Roses are red,\nviolets are blue,\nsugar is sweet.\n")])
    assert len(ds.records) == 1 and note(ds, "text_rule").message == (
        "poem.txt: read as one document: it has no blank lines and its 3 lines are short (on average 15 characters; "
        "lines of 200+ characters would be read one document per line)")
    ds = load_dataset([write(tmp_path, "r.md", "# T\n\nbody\n")])
    assert note(ds, "text_rule").message == "r.md: read as one document (a Markdown file)"


# --------------------------------------------------------------------------- Parquet, in full

def test_parquet_is_checked_to_the_last_row_with_progress(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")

    rows = [{"prompt": [{"role": "user", "content": f"Q{i}"}],
             "chosen": [{"role": "assistant", "content": f"good {i}"}],
             "rejected": [{"role": "assistant", "content": f"bad {i}"}]} for i in range(3000)]
    rows[2499]["chosen"] = [{"role": "assistant", "content": ""}]  # row 2500
    rows[2999]["rejected"] = [{"role": "user", "content": "x"}]  # the last row
    f = tmp_path / "dpo.parquet"
    pq.write_table(pa.Table.from_pylist(rows), f, row_group_size=700)

    ds = load_dataset([f])
    assert ds.format == "preference-prompt" and ds.total == 3000 and ds.pairs == 2998
    assert [(i.line, i.field, i.message) for i in ds.issues] == [
        (2500, "chosen[0].content", "the assistant message is empty"),
        (3000, "rejected[0].role", "the rejected answer holds a user message; it may hold only the assistant's answer")]
    # the reader reports how far it is, batch by batch, up to the file's size
    seen = []
    assert sum(1 for _ in data.read_rows(f, on_bytes=seen.append)) == 3000
    size = f.stat().st_size
    assert seen == sorted(seen) and seen[-1] == size and len(seen) == 3  # batches of 1024 rows


# --------------------------------------------------------------------------- LLaMA-Factory's data folder

def lf_folder(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    info = {
        "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
        "identity": {"file_name": "identity.json"},
        "dpo_en_demo": {"file_name": "dpo_en_demo.json", "ranking": True, "formatting": "sharegpt",
                        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
        "kto_en_demo": {"file_name": "kto_en_demo.json", "formatting": "sharegpt",
                        "columns": {"messages": "messages", "kto_tag": "label"},
                        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                 "assistant_tag": "assistant"}},
        "mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                      "columns": {"messages": "messages", "images": "images"},
                      "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                               "assistant_tag": "assistant"}},
        "c4_demo": {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}},
        "custom": {"file_name": "custom.jsonl", "columns": {"prompt": "q", "response": "a", "history": "hist",
                                                             "system": "sys"}},
        "renamed_tags": {"file_name": "tags.json", "formatting": "sharegpt", "columns": {"messages": "turns"},
                         "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "client",
                                  "assistant_tag": "agent"}},
        "alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en", "ms_hub_url": "llamafactory/alpaca_en"},
        "gone": {"file_name": "gone.json"},
    }
    write(tmp_path, "data/dataset_info.json", json.dumps(info, indent=2))
    write(tmp_path, "data/alpaca_en_demo.json", json.dumps([
        {"instruction": "Describe a cat.", "input": "", "output": "A small furry animal."},
        {"instruction": "", "input": "What is 1+1?", "output": "2"}]))
    write(tmp_path, "data/identity.json", json.dumps([
        {"instruction": "Who are you?", "input": "", "output": "I am {{name}}, made by {{author}}."}]))
    write(tmp_path, "data/dpo_en_demo.json", json.dumps([
        {"conversations": [{"from": "human", "value": "Pick a fruit."}],
         "chosen": {"from": "gpt", "value": "An apple."}, "rejected": {"from": "gpt", "value": "A rock."}}]))
    write(tmp_path, "data/kto_en_demo.json", json.dumps([
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], "label": True},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}],
         "label": False}]))
    write(tmp_path, "data/mllm_demo.json", json.dumps([
        {"messages": [{"role": "user", "content": "<image>Who are they?"}, {"role": "assistant", "content": "Players."}],
         "images": ["mllm_demo_data/1.jpg"]}]))
    write(tmp_path, "data/c4_demo.jsonl", jsonl({"text": "A document about rivers."}, {"text": "Another one."}))
    write(tmp_path, "data/custom.jsonl", jsonl({"q": "And 3?", "a": "Three.", "sys": "Count.",
                                                "hist": [["1?", "One."], ["2?", "Two."]]}))
    write(tmp_path, "data/tags.json", json.dumps([
        {"turns": [{"speaker": "client", "text": "Refund?"}, {"speaker": "agent", "text": "Yes, within 30 days."}]}]))
    return d


def test_llama_factory_folder_follows_dataset_info(tmp_path):
    d = lf_folder(tmp_path)
    ds = load_dataset([d], use="chosen", fill={"name": "Loom", "author": "Ada"})
    assert ds.formats == {"data/alpaca_en_demo.json": "alpaca", "data/identity.json": "alpaca",
                          "data/dpo_en_demo.json": "preference-sharegpt", "data/kto_en_demo.json": "kto",
                          "data/c4_demo.jsonl": "text", "data/custom.jsonl": "chat", "data/tags.json": "sharegpt"}
    msgs = {r.file: [] for r in ds.records}
    for r in ds.records:
        msgs[r.file].append(r.messages)
    assert msgs["data/alpaca_en_demo.json"][1] == [{"role": "user", "content": "What is 1+1?"},
                                                   {"role": "assistant", "content": "2"}]
    assert msgs["data/identity.json"][0][1]["content"] == "I am Loom, made by Ada."
    assert msgs["data/dpo_en_demo.json"] == [[{"role": "user", "content": "Pick a fruit."},
                                             {"role": "assistant", "content": "An apple."}]]
    assert msgs["data/kto_en_demo.json"] == [[{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello!"}]]
    assert msgs["data/c4_demo.jsonl"] == [[{"role": "assistant", "content": "A document about rivers."}],
                                         [{"role": "assistant", "content": "Another one."}]]
    assert msgs["data/custom.jsonl"] == [[{"role": "system", "content": "Count."},
                                         {"role": "user", "content": "1?"}, {"role": "assistant", "content": "One."},
                                         {"role": "user", "content": "2?"}, {"role": "assistant", "content": "Two."},
                                         {"role": "user", "content": "And 3?"},
                                         {"role": "assistant", "content": "Three."}]]
    assert msgs["data/tags.json"] == [[{"role": "user", "content": "Refund?"},
                                      {"role": "assistant", "content": "Yes, within 30 days."}]]
    assert len(ds.records) == 9 and ds.pairs == 1 and len(ds.preference) == 3 and ds.left_out == 1
    assert [(i.file, i.line, i.field, i.message) for i in ds.issues] == [
        ("data/dataset_info.json", None, "gone", "names the file gone.json, which is not in data"),
        ("data/mllm_demo.json", None, None,
         "data/mllm_demo.json: every example carries images, video or audio (line 1, 'images' carries images: the "
         "model reads text only, so it would learn the answer without them).")]
    assert note(ds, "dataset_info_remote").message == (
        "data/dataset_info.json: 1 entry names data on a hub, not a file here, and is not read: alpaca_en")
    assert note(ds, "dataset_info").message == (
        "data/dataset_info.json: 8 files read the way its entries say (formatting, columns, tags, ranking)")
    # without dataset_info.json the same folder's files are read by their own field names: q / a is no format
    (d / "dataset_info.json").unlink()
    with pytest.raises(DatasetError, match=r"data/custom.jsonl: no example in it has a known format"):
        load_dataset([d], use="chosen")


def test_parquet_without_examples_is_refused_after_the_first_thousand_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    f = tmp_path / "junk.parquet"
    pq.write_table(pa.table({"id": list(range(50_000)), "body": ["x"] * 50_000}), f, row_group_size=10_000)
    seen = []
    with pytest.raises(DatasetError) as err:
        for _ in data.load_file(f, on_bytes=seen.append)[0]:
            pass
    assert str(err.value) == ("junk.parquet: none of its first 1000 examples has a known format (fields seen: "
                              "['id', 'body']).")
    assert len(seen) == 0  # stopped inside the first batch of 1024 rows: the rest was never read
