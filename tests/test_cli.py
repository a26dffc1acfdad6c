import json
import subprocess
import sys
from pathlib import Path

from core.paths import demo_data_dir, demo_model_dir

ROOT = Path(__file__).resolve().parent.parent


def tl(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_data_check_json_contract(tmp_path):
    good = demo_data_dir() / "train.jsonl"
    p = tl("data", "check", good, "--model", demo_model_dir(), "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert {"format", "records", "valid", "invalid", "problems", "tokens"} <= set(d)
    assert d["format"] == "chat" and d["records"] == d["valid"] == 320 and d["invalid"] == 0
    assert d["tokens"]["min"] <= d["tokens"]["median"] <= d["tokens"]["p95"] <= d["tokens"]["max"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\nnot json\n')
    p = tl("data", "check", bad, "--json")
    assert p.returncode == 1
    d = json.loads(p.stdout)
    assert d["records"] == 3 and d["valid"] == 1 and d["invalid"] == 2
    assert [(x["line"], x["field"]) for x in d["problems"]] == [(2, "completion"), (3, None)]

    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"\x00\x01\x02binary")
    p = tl("data", "check", junk)
    assert p.returncode == 2 and "binary" in p.stderr


def test_train_cli_prints_reports_and_summary(tmp_path):
    p = tl("train", "--model", demo_model_dir(), "--data", demo_data_dir(), "--out", tmp_path / "run",
           "--iters", "6", "--rank", "4", "--batch", "4", "--max-seq-len", "128", "--lr", "1e-3")
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert sum(1 for x in lines if "train_loss" in x) == 6
    summary = lines[-1]
    assert summary["state"] == "done" and summary["steps"] == 6
    assert (tmp_path / "run" / "adapters.safetensors").exists()


def test_every_subcommand_prints_its_help():
    """argparse formats help text with %: a stray one (a blurb's "40% of F16") breaks `--help`."""
    from app.cli import build_parser

    def walk(p, path):
        yield path, p
        for a in p._actions:
            if a.__class__.__name__ == "_SubParsersAction":
                for name, child in a.choices.items():
                    yield from walk(child, path + [name])

    helps = {" ".join(path): p.format_help() for path, p in walk(build_parser(), [])}
    assert {"", "export", "train", "data check", "eval"} <= set(helps) and all(helps.values())
    assert "40% of F16" in helps["export"]
