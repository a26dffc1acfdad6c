"""`tuneloom data check` / `data export` / `train` with the dataset options of issue 13: templates,
--system, --map; export round-trips (same records, same trained tokens); exit codes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_tokens import model_dirs  # noqa: F401  (session fixture: tokenizer-only model folders)

ROOT = Path(__file__).resolve().parent.parent
POKEMON = "name,types,id\nPikachu,Electric,25\nBulbasaur,\"Grass, Poison\",1\nCharmander,Fire,4\n"
TEMPLATES = ["--user-template", "Pokemon name: {name}", "--assistant-template", "{types}",
             "--system", "You are a Pokedex."]


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def check_json(*args):
    r = cli("data", "check", "--json", *args)
    return r.returncode, json.loads(r.stdout)


def test_check_with_templates(tmp_path):
    f = tmp_path / "pokemon.csv"
    f.write_text(POKEMON)
    rc, out = check_json(f, *TEMPLATES)
    assert rc == 0 and out["format"] == "template" and out["valid"] == 3 and not out["problems"]
    assert any(n["message"].startswith("1 extra field ignored: `id`") for n in out["notes"])
    assert out["reasoning"] == 0 and "thinking off" in out["reasoning_summary"]
    r = cli("data", "check", f, "--user-template", "Pokemon name: {nmae}", "--assistant-template", "{types}")
    assert r.returncode == 2 and "'nmae'" in r.stderr and "['name', 'types', 'id']" in r.stderr
    text = cli("data", "check", f, *TEMPLATES)
    assert text.returncode == 0 and "note: 1 extra field ignored: `id`" in text.stdout
    # --map keeps working
    g = tmp_path / "de.csv"
    g.write_text("Frage,Antwort\nWie?,So.\n")
    rc, out = check_json(g, "--map", "prompt=Frage", "--map", "completion=Antwort")
    assert rc == 0 and out["valid"] == 1


def test_export_writes_valid_records_and_round_trips(tmp_path, model_dirs):  # noqa: F811
    src = tmp_path / "mixed.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo", "weight": 0},
                      {"role": "user", "content": "Job?"},
                      {"role": "assistant", "content": {"title": "Café", "remote": True}}], "id": 1},
        {"messages": [{"role": "user", "content": "x"}]},  # line 2: no answer
        {"messages": [{"role": "user", "content": "Why?"},
                      {"role": "assistant", "content": "<think>\nBecause.\n</think>\n\nSo."}]},
    ]
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    r = cli("data", "export", src, "--out", out)
    assert r.returncode == 1, r.stderr
    assert "mixed.jsonl, line 2" in r.stdout and "wrote 2 of 3 examples" in r.stdout
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert lines[0] == {"messages": [{"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "Yo", "weight": 0},
                                     {"role": "user", "content": "Job?"},
                                     {"role": "assistant", "content": '{"title": "Café", "remote": true}'}]}
    assert lines[1]["messages"][1] == {"role": "assistant", "content": "So.", "reasoning_content": "Because."}
    model = model_dirs["qwen2.5"]
    rc_in, before = check_json(src, "--model", model)
    rc_out, after = check_json(out, "--model", model)
    assert rc_in == 1 and rc_out == 0 and after["valid"] == before["valid"] == 2 and not after["problems"]
    assert after["tokens"]["trained"] == before["tokens"]["trained"] > 0
    assert after["tokens"]["total"] == before["tokens"]["total"]
    # exporting the export changes nothing; a clean export exits 0
    again = tmp_path / "again.jsonl"
    assert cli("data", "export", out, "--out", again).returncode == 0
    assert again.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")


def test_export_with_templates_round_trips(tmp_path, model_dirs):  # noqa: F811
    f = tmp_path / "pokemon.csv"
    f.write_text(POKEMON)
    out = tmp_path / "p.jsonl"
    r = cli("data", "export", f, "--out", out, *TEMPLATES)
    assert r.returncode == 0, r.stdout + r.stderr
    first = json.loads(out.read_text().splitlines()[0])
    assert first == {"messages": [{"role": "system", "content": "You are a Pokedex."},
                                  {"role": "user", "content": "Pokemon name: Pikachu"},
                                  {"role": "assistant", "content": "Electric"}]}
    model = model_dirs["qwen3"]
    _, a = check_json(f, "--model", model, *TEMPLATES)
    _, b = check_json(out, "--model", model)
    assert (a["valid"], a["tokens"]["trained"], a["tokens"]["total"]) == \
        (b["valid"], b["tokens"]["trained"], b["tokens"]["total"])


def test_export_of_unusable_file_and_bad_options(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("foo,bar\n1,2\n")
    r = cli("data", "export", bad, "--out", tmp_path / "o.jsonl")
    assert r.returncode == 2 and "do not name a known format" in r.stderr and not (tmp_path / "o.jsonl").exists()
    r = cli("data", "export", bad, "--out", tmp_path / "o.jsonl", "--user-template", "{foo}")
    assert r.returncode == 2 and "assistant template is missing" in r.stderr


def test_train_help_and_reasoning_in_check(tmp_path, model_dirs):  # noqa: F811
    r = cli("train", "--help")
    assert r.returncode == 0 and "--user-template" in r.stdout and "--assistant-template" in r.stdout
    assert "--system" in r.stdout
    f = tmp_path / "think.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "2+2?"},
                                          {"role": "assistant", "content": "4", "reasoning_content": "Add."}]}) + "\n")
    _, q3 = check_json(f, "--model", model_dirs["qwen3"])
    assert q3["reasoning"] == 1 and q3["tokens"]["thinking"] is True and "thinking is on" in q3["reasoning_summary"]
    _, q25 = check_json(f, "--model", model_dirs["qwen2.5"])
    assert q25["tokens"]["thinking"] is False and "no thinking mode" in q25["reasoning_summary"]
