"""core.tokens for the formats of issue 13 on the real tokenizers: OpenAI's ``weight`` keeps a
turn out of the loss (and the training text shows it), reasoning is trained in the format the
model's template defines (Qwen3 with thinking on), and a role the template cannot show is a
problem naming the role and the example."""
from __future__ import annotations

import pytest

from core.data import ChatRecord
from core.events import TuneloomError
from core.tokens import ChatEncoder, token_stats, training_runs
from test_tokens import encoders, model_dirs, runs  # noqa: F401  (session fixtures)

U1, U2 = {"role": "user", "content": "Hi"}, {"role": "user", "content": "And now?"}
A1, A2 = {"role": "assistant", "content": "Hello there."}, {"role": "assistant", "content": "Now this."}


def ids_of(enc, text):
    return enc.tokenize(text)[0]


@pytest.mark.parametrize("name", ["qwen2.5", "qwen3", "tinyllama"])
def test_weight_zero_turn_is_read_not_trained(encoders, name):
    enc = encoders[name]
    weighted = enc.encode([U1, {**A1, "weight": 0}, U2, A2])
    last_only = enc.encode([U1, A1, U2, A2], last_turn_only=True)
    every = enc.encode([U1, A1, U2, A2])
    assert weighted.ids == every.ids  # the same text: the turn is still shown to the model
    assert weighted.mask == last_only.mask and weighted.trained < every.trained
    # a trailing turn that is not trained is not part of the sequence at all
    tail = enc.encode([U1, A1, U2, {**A2, "weight": 0}])
    assert tail.ids == enc.encode([U1, A1]).ids and tail.mask == enc.encode([U1, A1]).mask
    with pytest.raises(TuneloomError, match="weight 0"):
        enc.encode([U1, {**A1, "weight": 0}])


def test_training_text_shows_weight(encoders):
    enc = encoders["qwen2.5"]
    pieces = training_runs(enc, [U1, {**A1, "weight": 0}, U2, A2])
    trained = "".join(t for t, on in pieces if on)
    read = "".join(t for t, on in pieces if not on)
    assert "Hello there." in read and "Hello there." not in trained
    assert trained.startswith("Now this.") and "<|im_end|>" in trained
    both = training_runs(enc, [U1, A1, U2, A2])
    assert "Hello there." in "".join(t for t, on in both if on)


def test_qwen3_reasoning_trained_with_thinking_on(model_dirs, encoders):
    off = encoders["qwen3"]
    assert off.supports_thinking and off.supports_reasoning and not off.thinking
    on = ChatEncoder(model_dirs["qwen3"], thinking=True)
    assert on.thinking and on.template_kwargs == {"enable_thinking": True}
    msgs = [U1, {**A1, "reasoning_content": "A greeting: answer kindly."}]
    e = on.encode(msgs)
    prompt = on.prompt_ids([U1])
    # inference with thinking on: the prompt ends with the assistant header, the model writes the think block
    assert on.render([U1], True).endswith("<|im_start|>assistant\n")
    answer = "<think>\nA greeting: answer kindly.\n</think>\n\nHello there.<|im_end|>"
    assert e.ids == prompt + ids_of(on, answer)
    assert e.mask == [False] * len(prompt) + [True] * (len(e.ids) - len(prompt))
    # the template's own rendering of the whole conversation, token for token
    full = on.tok.apply_chat_template(msgs, tokenize=False, enable_thinking=True)
    assert full == on.render([U1], True) + answer + "\n"
    # an answer without reasoning in a thinking dataset: the empty think block the template writes
    plain = on.encode([U1, A1])
    assert plain.ids == prompt + ids_of(on, "<think>\n\n</think>\n\nHello there.<|im_end|>")
    # thinking off (data without reasoning): today's prompt, with the empty think block in the prompt
    assert off.render([U1], True).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # reasoning given to a thinking-off encoder is left out, and counted so the caller can say so
    st = token_stats(off, [ChatRecord(msgs, "r.jsonl", 1)], 512)
    assert st["reasoning_dropped"] == 1 and not st["problems"]


def test_qwen3_multi_turn_with_reasoning_keeps_the_template_format(model_dirs):
    on = ChatEncoder(model_dirs["qwen3"], thinking=True)
    msgs = [U1, {**A1, "reasoning_content": "first"}, U2, {**A2, "reasoning_content": "second"}]
    e = on.encode(msgs)
    text = on.tok.decode(e.ids, skip_special_tokens=False)
    # Qwen3 drops the reasoning of turns before the last question, and keeps the last one's
    assert "first" not in text and "<think>\nsecond\n</think>\n\nNow this.<|im_end|>" in text
    trained = "".join(t for t, m in training_runs(on, msgs) if m)
    assert "Hello there." in trained and "second" in trained
    st = token_stats(on, [ChatRecord(msgs, "r.jsonl", 1)], 512)
    assert st["reasoning_dropped"] == 1  # the first turn's, which the template leaves out: counted


def test_reasoning_on_a_template_without_thinking_is_trained_inline(encoders, model_dirs):
    enc = encoders["qwen2.5"]
    assert not enc.supports_thinking and not ChatEncoder(model_dirs["qwen2.5"], thinking=True).thinking
    e = enc.encode([U1, {**A1, "reasoning_content": "why"}])
    prompt = enc.prompt_ids([U1])
    assert e.ids == prompt + ids_of(enc, "<think>\nwhy\n</think>\n\nHello there.<|im_end|>")


def test_roles_the_template_cannot_show_are_named(encoders):
    tool = [U1, {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
            {"role": "tool", "content": "42"}, A1]
    assert encoders["qwen2.5"].encode(tool).trained > 0  # Qwen's template has tool turns
    tiny = encoders["tinyllama"]
    with pytest.raises(TuneloomError, match="no place for 'tool' messages"):
        tiny.encode([U1, A1, {"role": "tool", "content": "42"}, A2])
    with pytest.raises(TuneloomError, match="cannot show tool calls"):
        tiny.encode(tool[:2] + [U2, A2])
    recs = [ChatRecord([U1, A1], "d.jsonl", 1), ChatRecord([U1, A1, {"role": "tool", "content": "42"}, A2], "d.jsonl", 2)]
    st = token_stats(tiny, recs, 512)
    assert len(st["lengths"]) == 1 and [(p.file, p.line) for p in st["problems"]] == [("d.jsonl", 2)]
    assert "'tool'" in st["problems"][0].message and st["trained"] > 0
