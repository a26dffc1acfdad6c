"""`tuneloom data check` / `data export` / `train` on the files of issue 26: preference pairs and
`--use chosen`, KTO labels, placeholders and `--fill`; the old JSON keys keep their meaning."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_tokens import model_dirs  # noqa: F401  (session fixture: tokenizer-only model folders)

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
         {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
          "rejected": [{"role": "assistant", "content": "5"}]},
         {"prompt": "Empty", "chosen": "", "rejected": "x"}]


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def lines(*objs) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def test_check_reports_preference_pairs_and_use_chosen(tmp_path):
    f = tmp_path / "dpo.jsonl"
    f.write_text(lines(*PAIRS))
    r = cli("data", "check", f, "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 1  # line 3 is a problem
    assert (out["format"], out["records"], out["valid"], out["invalid"]) == ("preference-prompt", 3, 2, 1)
    assert out["problems"] == [{"file": "dpo.jsonl", "line": 3, "field": "chosen", "message": "is empty"}]
    assert out["preference"] == {"pairs": 2, "kto_desirable": 0, "kto_undesirable": 0,
                                 "shapes": {"dpo.jsonl": "prompt / chosen / rejected, as TRL writes them"},
                                 "use": None, "supervised_examples": 0}
    kinds = {n["kind"]: n["message"] for n in out["notes"]}
    assert kinds["preference_pairs"].startswith("preference pairs: 2 (prompt / chosen / rejected")
    text = cli("data", "check", f)
    assert "preference pairs: 2 (prompt / chosen / rejected, as TRL writes them)\n" in text.stdout
    assert "records: 3  valid: 2  invalid: 1" in text.stdout
    used = json.loads(cli("data", "check", f, "--json", "--use", "chosen").stdout)
    assert used["preference"]["use"] == "chosen" and used["preference"]["supervised_examples"] == 2
    assert used["valid"] == 2 and used["invalid"] == 1
    text = cli("data", "check", f, "--use", "chosen")
    assert "preference pairs: 2 (prompt / chosen / rejected, as TRL writes them); training on the chosen answers" \
        in text.stdout


def test_export_writes_pairs_or_the_chosen_conversations(tmp_path):
    f = tmp_path / "dpo.jsonl"
    f.write_text(lines(*PAIRS[:2]))
    out = tmp_path / "pairs.jsonl"
    r = cli("data", "export", f, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "wrote 2 of 2 examples" in r.stdout and "as preference pairs" in r.stdout
    written = [json.loads(x) for x in out.read_text().splitlines()]
    assert written[0] == {"prompt": [{"role": "user", "content": "The sky is"}],
                          "chosen": [{"role": "assistant", "content": " blue."}],
                          "rejected": [{"role": "assistant", "content": " green."}]}
    # the export reads back as the same pairs, and exporting it again changes nothing
    again = tmp_path / "again.jsonl"
    assert cli("data", "export", out, "--out", again).returncode == 0
    assert again.read_text() == out.read_text()
    chat = tmp_path / "chosen.jsonl"
    r = cli("data", "export", f, "--out", chat, "--use", "chosen")
    assert r.returncode == 0 and "OpenAI chat format" in r.stdout
    assert [json.loads(x) for x in chat.read_text().splitlines()] == [
        {"messages": [{"role": "user", "content": "The sky is"}, {"role": "assistant", "content": " blue."}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}]


def test_fill_placeholders_in_check_and_export(tmp_path):
    f = tmp_path / "identity.json"
    f.write_text("[\n" + ",\n".join(json.dumps(x) for x in [
        {"instruction": "Who are you?", "input": "", "output": "I am {{name}} by {{author}}."},
        {"instruction": "hi", "input": "", "output": "Hello, {{name}} here."}]) + "\n]\n")
    out = json.loads(cli("data", "check", f, "--json").stdout)
    ph = [n for n in out["notes"] if n["kind"] == "placeholders"][0]
    assert ph["count"] == 2 and ph["fields"] == ["{{author}}", "{{name}}"]
    assert ph["lines"] == [{"file": "identity.json", "line": 2}, {"file": "identity.json", "line": 3}]
    dest = tmp_path / "o.jsonl"
    r = cli("data", "export", f, "--out", dest, "--fill", "name=Loom", "--fill", "author=Ada Lovelace")
    assert r.returncode == 0, r.stderr
    assert "note: placeholders filled in 2 examples: author = 'Ada Lovelace', name = 'Loom'" in r.stdout
    assert json.loads(dest.read_text().splitlines()[0])["messages"][1]["content"] == "I am Loom by Ada Lovelace."
    r = cli("data", "check", f, "--fill", "name")
    assert r.returncode == 1 and "--fill expects NAME=VALUE" in r.stderr  # as --map's mistakes


def test_train_refuses_pairs_without_use_chosen(tmp_path):
    f = tmp_path / "dpo.jsonl"
    f.write_text(lines(*PAIRS[:2]))
    r = cli("train", "--model", ROOT / "resources" / "demo" / "model", "--data", f, "--out", tmp_path / "run",
            "--iters", "1")
    assert r.returncode == 1
    assert ("error: dpo.jsonl holds 2 preference pairs (a chosen and a rejected answer to each prompt), not "
            "examples with one answer: supervised training would not know which answer to learn.") in r.stderr
    assert "--use chosen" in r.stderr
    # with --use chosen the chosen answers are trained; the run's config keeps the choice (and --fill)
    pairs = tmp_path / "pairs12.jsonl"
    pairs.write_text(lines(*[{"prompt": f"Q{i}?", "chosen": f"Good {i}, {{{{name}}}}.", "rejected": f"Bad {i}."}
                             for i in range(12)]))
    run = tmp_path / "run2"
    r = cli("train", "--model", ROOT / "resources" / "demo" / "model", "--data", pairs, "--out", run, "--iters", "1",
            "--use", "chosen", "--fill", "name=Loom")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["state"] == "done"
    assert res["train_examples"] + res["valid_examples"] + res["test_examples"] == 12  # the test split is held out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["use"] == "chosen" and cfg["fill"] == {"name": "Loom"} and cfg["chunk"] is False
    r = cli("train", "--help")
    assert "--use {chosen}" in r.stdout and "--fill NAME=VALUE" in r.stdout and "--chunk" in r.stdout


def test_corpus_lines_cut_tokens_and_chunks(tmp_path, model_dirs):  # noqa: F811
    from core.data import ChatRecord
    from core.tokens import ChatEncoder, chunk_records

    docs = [" ".join(f"word{d}_{i}" for i in range(600)) for d in range(3)]
    f = tmp_path / "corpus.txt"
    f.write_text("".join(d + "\n" for d in docs))
    model = model_dirs["qwen2.5"]
    enc = ChatEncoder(model)
    lengths = [len(enc.encode([{"role": "assistant", "content": d}]).ids) for d in docs]
    assert min(lengths) > 1000
    r = cli("data", "check", f, "--json", "--model", model, "--max-seq-len", 256)
    out = json.loads(r.stdout)
    assert out["valid"] == 3 and out["tokens"]["truncated"] == 3
    assert out["tokens"]["cut"] == sum(n - 256 for n in lengths)
    assert out["tokens"]["trained"] == 3 * 255  # plain text: every token after the first is trained
    assert out["tokens"]["trained_share"] == pytest.approx(765 / sum(lengths))
    assert [n["message"] for n in out["notes"] if n["kind"] == "text_rule"][0].startswith(
        "corpus.txt: read one document per line (3 documents)")
    text = cli("data", "check", f, "--model", model, "--max-seq-len", 256).stdout
    share = 765 / sum(lengths)
    assert f"3 longer than 256 (truncated: {sum(n - 256 for n in lengths)} tokens cut away)" in text
    assert f"{share:.0%} of tokens trained on (765 tokens)" in text
    # --chunk: windows of at most 256 tokens that hold the whole text
    recs, split, windows = chunk_records(enc, [ChatRecord([{"role": "assistant", "content": d}]) for d in docs], 256)
    assert split == 3 and windows == len(recs) >= sum(-(-n // 254) for n in lengths)
    assert all(len(enc.encode(x.messages).ids) <= 256 for x in recs)
    by_doc = "".join(x.messages[0]["content"] for x in recs)
    assert by_doc == "".join(docs)
    out = json.loads(cli("data", "check", f, "--json", "--model", model, "--max-seq-len", 256, "--chunk").stdout)
    assert out["tokens"]["chunked"] == {"documents": 3, "windows": windows}
    assert out["tokens"]["truncated"] == 0 and out["tokens"]["cut"] == 0
    assert out["tokens"]["trained"] == sum(len(enc.encode(x.messages).ids) - 1 for x in recs)
    dest = tmp_path / "w.jsonl"
    r = cli("data", "export", f, "--out", dest, "--chunk", "--model", model, "--max-seq-len", 256)
    assert r.returncode == 0 and f"chunked: 3 documents longer than 256 tokens split into {windows} windows" in r.stdout
    assert len(dest.read_text().splitlines()) == windows
    r = cli("data", "check", f, "--chunk")
    assert r.returncode == 2 and "--chunk needs --model" in r.stderr


def test_export_of_chats_beside_pairs_says_what_was_left_out(tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(lines({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}))
    pairs = tmp_path / "dpo.jsonl"
    pairs.write_text(lines(*PAIRS[:2]))
    out = tmp_path / "o.jsonl"
    r = cli("data", "export", chat, pairs, "--out", out)
    assert r.returncode == 0 and "wrote 1 of 3 examples" in r.stdout
    assert ("2 preference pair(s) not written: supervised training cannot use them as they are; --use chosen writes "
            "their chosen conversations") in r.stdout
    r = cli("data", "export", chat, pairs, "--out", out, "--use", "chosen")
    assert "wrote 3 of 3 examples" in r.stdout and len(out.read_text().splitlines()) == 3
