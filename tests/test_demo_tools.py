"""Learning test (issue #31): the demo model learns to call a new function.

A demo model built with ``python -m core.demo.build --tool-calls`` has Qwen2.5's tool-calling
template and a tool stage: pretraining continued on chats that call other functions (lookup,
classify, paint, find_uses) with names and categories copied from the question into the
arguments, never ``describe(name, category)``. A LoRA fine-tune on records ending in a
``describe`` call, about topics other than the held-out ones, must then call it right (function
name, the topic's name copied from the question, its category) on the held-out topics; the base
model must not. Both are scored by the project's evaluation (core.evaluate: greedy answers,
core.tools.parse_tool_calls, tool_call_accuracy).

The bundled demo model is built so (``python -m core.demo.build --tool-calls --tool-template short
--first-stage`` the first stage's model): BUILD.json says ``tool_calls``, and the learning test runs in the suite
(a model built without tool calls fails it). Measured here (2-core machine, under other load):

- **The bundled build (session 11): base 0.0, fine-tune 1.0** on the 40 held-out topics. Its tool stage
  uses the short form of Qwen2.5's template (build.TOOLS_TEMPLATE_SHORT: the same tags, calls and
  results, without the English instructions around the tool list): a describe record is 243 tokens
  with the demo tokenizer (the question ~190 tokens in) instead of 463 (~400), tool chats 209-314
  tokens. 600 steps, one chat in four a tool chat, lr 1e-3: 634 CPU-s.
- Why the earlier from-scratch builds with tool chats copied no names: not truncation (pretraining
  cuts nothing; their tool chats were 177-250 tokens), not the loss mask (a call record trains the
  call and its <|im_end|>, 25 tokens), not the tokenizer (names tokenize the same in its 1026-token
  vocabulary as in the bundled 882: ' red', ' hammer' in a question, 'red', ' hammer' in a JSON
  string), not fewer copying chats (90.9% of the chats copy the noun from the question, 93.3%
  without tool calls). Their tool chats were 10% of the chats but ~37% of the tokens. Their prose
  answers on the 40 held-out topics name the adjective (30/40, 32/40) but almost never the noun
  (1/40, 4/40); the first-stage model 40/40 both.
- The first-stage model copies names over short contexts only (its pretraining chats are at most 55
  tokens): prose answers name the noun 40/40 with prompts of 15-80 tokens, 27/40 at 260 tokens (the
  system prompt 40 times), 1/40 with Qwen2.5's tool prompt text (376 tokens) as the system message.
- A tool stage with Qwen2.5's full template (600 steps, one chat in four a tool chat, lr 1e-3; 1462
  CPU-s) learned the call format (100%), but the learning test on it gave base 0.0, fine-tune 0.25
  (the noun copied, the adjective and often the category wrong); 240 more steps with one chat in two
  a tool chat made it worse (0.0). The names had to be copied ~400 tokens into the context, which
  this model never learned; with the short template they are ~190 tokens in.
"""
import json
from pathlib import Path

from core.demo import world
from core.paths import demo_dir, demo_model_dir
from core.tools import parse_tool_calls

BUILD = json.loads((demo_dir() / "BUILD.json").read_text())
BUILT_WITH_TOOL_CALLS = BUILD.get("tool_calls", False)
BASE_MAX = 0.10
TUNED_MIN = 0.90
# A describe record is about 460 tokens with the demo tokenizer (Qwen2.5's tool prompt is long, and
# <tool_call> is ordinary text to it): max_seq_len must hold it whole, or the call is cut off.
TRAIN = dict(iters=240, rank=8, alpha=16.0, lr=1e-3, batch=8, targets="all", max_seq_len=640, warmup=10,
             valid_every=0, checkpoint_every=80, seed=0, test_fraction=0.0)


def _write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "expected"}) + "\n" for r in records))


def measure(model_dir: Path, tmp_path: Path, train_cfg: dict = TRAIN) -> dict:
    """Fine-tune ``model_dir`` on the describe records and evaluate base and fine-tune on the
    held-out ones: {"base", "tuned": tool-call accuracy, "rows": the evaluation's rows, "train": the
    run's summary}."""
    from core.evaluate import evaluate
    from core.train import TrainConfig, train

    train_recs, held = world.tool_learning_dataset()
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "train.jsonl", train_recs[:-24])
    _write(data / "valid.jsonl", train_recs[-24:])
    _write(tmp_path / "heldout.jsonl", held)
    cfg = TrainConfig(model=str(model_dir), data=[str(data)], out=str(tmp_path / "run"), **train_cfg)
    res = train(cfg)
    ev = evaluate(res["run_dir"], [tmp_path / "heldout.jsonl"], adapter="final")
    assert [r.expected_calls for r in ev.rows] == [r["expected"] for r in held]
    return {"base": ev.scores("base").tool_call_accuracy, "tuned": ev.scores("tuned").tool_call_accuracy,
            "rows": ev.rows, "train": res}


def test_the_demo_world_keeps_the_learning_test_fair():
    """The held-out topics are never fine-tuned on, and no pretraining chat calls ``describe``."""
    train_recs, held = world.tool_learning_dataset()
    held_names = {r["expected"][0]["arguments"]["name"] for r in held}
    assert len(held) == len(held_names) == 40
    assert not held_names & {r["expected"][0]["arguments"]["name"] for r in train_recs}
    assert not [r for r in world.pretraining_corpus(400) if r.get("tools")]  # the first stage: as before
    corpus = world.tool_corpus(2000)
    tool_recs = [r for r in corpus if r.get("tools")]
    assert len(tool_recs) == 500
    assert {t["function"]["name"] for r in tool_recs for t in r["tools"]} == set(world.PRETRAIN_TOOLS)
    assert "describe" not in json.dumps(tool_recs)
    # the call text the fine-tune learns is what Qwen2.5's template writes for the call
    call = held[0]["messages"][-1]["tool_calls"][0]["function"]
    assert world.tool_call_text(call["name"], call["arguments"]) == (
        '<tool_call>\n{"name": "describe", "arguments": ' + json.dumps(call["arguments"]) + "}\n</tool_call>")


def test_the_tool_template_renders_tools_as_qwen25_and_plain_chats_as_chatml(tmp_path):
    import shutil

    from core.demo import build
    from core.tokens import ChatEncoder

    model = tmp_path / "model"
    shutil.copytree(demo_model_dir(), model)
    build.set_chat_template(model, build.TOOLS_TEMPLATE)
    build.check_template(model)
    enc = ChatEncoder(model)
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert enc.render(plain, add_generation_prompt=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n")
    rec = world.tool_learning_dataset()[1][0]
    text = enc.render(rec["messages"], add_generation_prompt=False, tools=rec["tools"])
    call = rec["expected"][0]
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n")
    assert '<tools>\n{"type": "function", "function": {"name": "describe"' in text
    assert text.endswith("<|im_start|>assistant\n" + world.tool_call_text(call["name"], call["arguments"])
                         + "<|im_end|>\n")
    assert parse_tool_calls(text.split("<|im_start|>assistant\n")[-1], model) == [call]
    # the whole record fits the learning test's max_seq_len, and only the call is trained
    e = enc.encode(rec["messages"], tools=rec["tools"])
    assert len(e.ids) <= TRAIN["max_seq_len"]
    trained = enc.tok.decode([i for i, m in zip(e.ids, e.mask) if m], skip_special_tokens=False)
    assert trained == world.tool_call_text(call["name"], call["arguments"]) + "<|im_end|>"


def test_the_short_tool_template_drops_only_the_instructions(tmp_path):
    """TOOLS_TEMPLATE_SHORT is made from TOOLS_TEMPLATE by replacing text: if the replacement stopped
    matching it would silently equal the full template. Checked here on a copy of the demo model with
    the template set anew (the next test checks the bundled model's own)."""
    import shutil

    from core.demo import build
    from core.tokens import ChatEncoder

    model = tmp_path / "model"
    shutil.copytree(demo_model_dir(), model)
    build.set_chat_template(model, build.TOOLS_TEMPLATE_SHORT)
    build.check_template(model)
    enc = ChatEncoder(model)
    rec = world.tool_learning_dataset()[1][0]
    call = rec["expected"][0]
    text = enc.render(rec["messages"], add_generation_prompt=False, tools=rec["tools"])
    assert text.startswith('<|im_start|>system\nYou are a helpful assistant.\n\n<tools>\n{"type": "function"')
    assert "# Tools" not in text and "For each function call" not in text
    assert "\n</tools><|im_end|>\n<|im_start|>user\n" in text
    assert text.endswith("<|im_start|>assistant\n" + world.tool_call_text(call["name"], call["arguments"])
                         + "<|im_end|>\n")
    short_len = len(enc.encode(rec["messages"], tools=rec["tools"]).ids)
    build.set_chat_template(model, build.TOOLS_TEMPLATE)  # the full template: about twice as long
    assert short_len < 300 < len(ChatEncoder(model).encode(rec["messages"], tools=rec["tools"]).ids)


def test_the_bundled_demo_model_has_the_short_tool_template_and_renders_plain_chats_as_chatml():
    from core.demo import build
    from core.tokens import ChatEncoder

    cfg = json.loads((demo_model_dir() / "tokenizer_config.json").read_text())
    assert BUILT_WITH_TOOL_CALLS, "the bundled demo model must be built with --tool-calls (module docstring)"
    assert BUILD.get("tool_calls") and BUILD["tool_stage"]["template"] == "short"
    assert cfg["chat_template"] == build.TOOLS_TEMPLATE_SHORT
    build.check_template(demo_model_dir())
    enc = ChatEncoder(demo_model_dir())
    rec = world.tool_learning_dataset()[1][0]
    text = enc.render(rec["messages"], add_generation_prompt=False, tools=rec["tools"])
    assert text.startswith('<|im_start|>system\nYou are a helpful assistant.\n\n<tools>\n{"type": "function"')
    assert "# Tools" not in text and len(enc.encode(rec["messages"], tools=rec["tools"]).ids) < 300


def test_the_demo_model_learns_a_new_function_call(tmp_path):
    m = measure(demo_model_dir(), tmp_path)
    assert m["base"] <= BASE_MAX, [r.answers["base"] for r in m["rows"][:3]]
    assert m["tuned"] >= TUNED_MIN, [(r.expected_calls, r.answers["tuned"]) for r in m["rows"]
                                     if not r.scores["tuned"].calls_right][:5]


def _strings(v):
    if isinstance(v, dict):
        for x in v.values():
            yield from _strings(x)
    elif isinstance(v, list):
        for x in v:
            yield from _strings(x)
    elif isinstance(v, str):
        yield v


def test_the_shipped_build_record_names_no_path_of_the_machine_that_built_it():
    assert not [s for s in _strings(BUILD) if "/" in s or "\\" in s], BUILD


def test_a_build_on_a_first_stage_records_its_weights_checksum_not_its_path(tmp_path):
    import hashlib

    from core.demo import build

    shape = {"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64, "num_attention_heads": 2,
             "num_key_value_heads": 1}
    (tmp_path / "first").mkdir()
    build.build(tmp_path / "first", steps=10, corpus_size=100, shape=shape, log=lambda *a: None)
    (tmp_path / "tools").mkdir()
    build.build(tmp_path / "tools", first_stage=tmp_path / "first" / "model", tool_calls=True, tool_steps=10,
                log=lambda *a: None)
    info = json.loads((tmp_path / "tools" / "BUILD.json").read_text())
    weights = (tmp_path / "first" / "model" / "model.safetensors").read_bytes()
    assert info["first_stage_sha256"] == hashlib.sha256(weights).hexdigest()
    assert info["tool_calls"] and info["shape"] == shape and info["steps"] == 10
    assert not [s for s in _strings(info) if str(tmp_path) in s], info
