"""`tuneloom eval` and `tuneloom chat` on a real tiny run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.paths import demo_model_dir
from tests.fixtures.eval_run import tiny_run

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"exact_match", "json_valid", "json_field_accuracy", "loss", "perplexity", "examples", "preference_accuracy",
        "tool_call_accuracy"}


def tl(*args, timeout=600, **kw):
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def run_dir():
    return tiny_run()


def test_eval_json_contract_and_same_numbers_as_the_engine(run_dir, tmp_path):
    from core.evaluate import evaluate

    p = tl("eval", run_dir, "--limit", "4", "--json", "--csv", tmp_path / "t.csv")
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)  # one JSON object and nothing else on stdout
    assert set(out) == {"base", "tuned"}
    for side in ("base", "tuned"):
        assert set(out[side]) == KEYS | {"split"}
        assert out[side]["split"] == "test"  # the run's test split, never seen in training
        assert out[side]["examples"] == 4
        assert 0 <= out[side]["exact_match"] <= 1 and out[side]["loss"] > 0
        assert out[side]["perplexity"] == pytest.approx(2.718281828 ** out[side]["loss"], rel=1e-6)
    # what the GUI will show: the engine's numbers for the same run and options, exactly
    assert evaluate(run_dir, limit=4).to_json() == out
    assert (tmp_path / "t.csv").read_text(encoding="utf-8-sig").count("\n") == 5


def test_eval_on_given_files_and_plain_output(run_dir, tmp_path):
    prose = tmp_path / "prose.jsonl"
    prose.write_text("".join(json.dumps({"prompt": f"Tell me about the {t}.", "completion": f"The {t} is nice."}) + "\n"
                             for t in ("red fox", "old kettle", "light oak")))
    p = tl("eval", run_dir, "--data", prose, "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    for side in ("base", "tuned"):
        assert out[side]["json_valid"] is None and out[side]["json_field_accuracy"] is None
        assert out[side]["tool_call_accuracy"] is None  # no calls in the data
        assert out[side]["examples"] == 3
    p = tl("eval", run_dir, "--data", prose)
    assert p.returncode == 0 and "exact match" in p.stdout and "fine-tuned" in p.stdout and "n/a" in p.stdout


def test_eval_errors(tmp_path):
    p = tl("eval", tmp_path, "--json")
    assert p.returncode == 1 and "not a run folder" in p.stderr and p.stdout == ""


def test_chat_streams_the_run_and_matches_the_session(run_dir):
    from core.generate import ChatSession, Sampling

    q = "Describe the red fox in structured format."
    p = tl("chat", demo_model_dir(), "--adapter", run_dir, "--prompt", q, "--temperature", "0", "--max-tokens", "40")
    assert p.returncode == 0, p.stderr[-3000:]
    session = ChatSession.for_run(run_dir, ("tuned",), sampling=Sampling(temperature=0, top_p=1, max_tokens=40))
    assert p.stdout.rstrip("\n") == session.ask(q).replies["tuned"]
    # a run folder alone means its base model with its adapter; multi-turn from stdin
    p = tl("chat", run_dir, "--temperature", "0", "--max-tokens", "40", input=f"{q}\nTell me about the old kettle.\n")
    assert p.returncode == 0, p.stderr[-3000:]
    session.ask("Tell me about the old kettle.")
    assert p.stdout.count("model> ") == 2
    for turn in session.turns:
        assert turn.replies["tuned"] in p.stdout
