"""The chat session: one load, both models side by side, streaming, history, sampling, stop."""
import json
import threading
import time

import pytest

from core.events import CancelToken, TuneloomError
from core.paths import demo_model_dir
from tests.fixtures.eval_run import tiny_run

Q1 = "Describe the red fox in structured format."
Q2 = "Tell me about the old kettle."


@pytest.fixture(scope="module")
def run_dir():
    return tiny_run()


@pytest.fixture(scope="module")
def model(run_dir):
    from core.generate import ChatModel

    return ChatModel(demo_model_dir(), adapter_dir=run_dir)


@pytest.fixture(scope="module")
def plain():
    from core.generate import ChatModel

    return ChatModel(demo_model_dir())


def greedy(n=48):
    from core.generate import Sampling

    return Sampling(temperature=0.0, top_p=1.0, max_tokens=n, seed=0)


def test_two_turns_stream_into_both_sides_and_the_history_is_rendered_as_training(model):
    from core.generate import ChatSession

    session = ChatSession(model, system="You are a helpful assistant.", sampling=greedy())
    seen = []
    calls = []
    real = model.stream_ids

    def spy(prompt_ids, *args, **kw):
        calls.append((kw.get("adapter"), list(prompt_ids)))
        return real(prompt_ids, *args, **kw)

    model.stream_ids = spy
    try:
        session.ask(Q1, on_chunk=seen.append)
        first_order = [c.side for c in seen if not c.done]
        session.ask(Q2, on_chunk=seen.append)
    finally:
        del model.stream_ids
    # several chunks per answer on each side, and they add up to the answer kept in the history
    for turn in session.turns:
        assert set(turn.replies) == {"base", "tuned"} and set(turn.reasons.values()) <= {"stop", "length"}
    dones = [c.side for c in seen if c.done]
    assert dones.count("base") == 2 and dones.count("tuned") == 2
    chunks = {"base": [], "tuned": []}
    turn_i = {"base": 0, "tuned": 0}
    texts = {("base", 0): "", ("base", 1): "", ("tuned", 0): "", ("tuned", 1): ""}
    for c in seen:
        texts[(c.side, turn_i[c.side])] += c.text
        if c.text:
            chunks[c.side].append((turn_i[c.side], c.text))
        if c.done:
            turn_i[c.side] += 1
    for (side, t), text in texts.items():
        assert text == session.turns[t].replies[side]
        assert sum(1 for i, _ in chunks[side] if i == t) >= 3, (side, t, chunks[side])
    # the two sides take turns token by token: both have streamed before the first one ends
    assert "base" in first_order[:4] and "tuned" in first_order[:4]
    # the base side is the plain model and the tuned side the adapter, both answering the same question
    assert [a for a, _ in calls] == [False, True, False, True]
    # second question: each side's prompt is its own conversation so far, exactly as training renders it
    enc = model.encoder
    for side, (adapter, ids) in zip(("base", "tuned"), calls[2:]):
        msgs = session.messages(side)[:-2] + [{"role": "user", "content": Q2}]
        assert msgs[1:4] == [{"role": "user", "content": Q1},
                             {"role": "assistant", "content": session.turns[0].replies[side]},
                             {"role": "user", "content": Q2}]
        assert ids == enc.prompt_ids(msgs)
        # a training example of this conversation starts with exactly these tokens
        trained = enc.encode(msgs + [{"role": "assistant", "content": "x"}])
        assert trained.ids[: len(ids)] == ids
        text = enc.tok.decode(ids)
        assert Q1 in text and session.turns[0].replies[side] in text and text.endswith("<|im_start|>assistant\n")


def test_base_side_is_the_plain_model_and_tuned_side_the_adapter(model, plain, run_dir):
    from mlx_lm import load

    msgs = [{"role": "user", "content": Q1}]
    base = model.answer(msgs, max_tokens=40, adapter=False)
    tuned = model.answer(msgs, max_tokens=40, adapter=True)
    assert base == plain.answer(msgs, max_tokens=40)
    # mlx-lm's own loading and generation of the run give the same fine-tuned answer
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    other, _ = load(str(demo_model_dir()), adapter_path=str(run_dir))
    other.set_dtype(mx.float32)  # as core.train.load_base does on the CPU
    ids = model.encoder.prompt_ids(msgs)
    ref = []
    for tok, _ in generate_step(mx.array(ids), other, max_tokens=40, sampler=lambda x: mx.argmax(x, axis=-1)):
        if int(tok) in model.encoder.eos_ids:
            break
        ref.append(int(tok))
    assert model.generate_ids(ids, 40, adapter=True) == ref
    assert base != tuned  # the adapter changes something
    # switching back and forth leaves both intact
    assert model.answer(msgs, max_tokens=40, adapter=False) == base
    assert model.answer(msgs, max_tokens=40) == tuned


def test_models_load_once_for_many_questions(run_dir, monkeypatch):
    from core import train
    from core.generate import ChatSession

    loads = []
    real = train.load_base

    def counting(path):
        loads.append(str(path))
        return real(path)

    monkeypatch.setattr(train, "load_base", counting)
    session = ChatSession.for_run(run_dir, sampling=greedy(16))
    for q in (Q1, Q2, "Tell me about the red fox."):
        session.ask(q)
    session.reset()
    session.ask(Q1)
    assert len(loads) == 1
    assert len(session.turns) == 1 and session.turns[0].replies["tuned"]


def test_follow_up_reuses_the_cache_and_answers_as_a_fresh_prompt(model):
    from core.generate import ChatSession, PromptCache

    session = ChatSession(model, ("tuned",), sampling=greedy(32))
    session.ask(Q1)
    cache = session._caches["tuned"]
    held = list(cache.tokens)
    prompt2 = session.prompt_ids("tuned", Q2)
    from core.generate import _common_prefix

    assert _common_prefix(held, prompt2) > 10  # the first exchange's tokens are reused
    turn = session.ask(Q2)
    fresh = model.encoder.decode(list(model.stream_ids(prompt2, greedy(32), adapter=True, cache=PromptCache())))
    assert turn.replies["tuned"] == fresh
    assert cache.tokens[: len(prompt2)] == prompt2


def test_stop_ends_both_answers_within_a_second(model, monkeypatch):
    from core.generate import ChatSession, Sampling

    monkeypatch.setattr(model.encoder, "eos_ids", [])  # nothing ends the answers but the stop
    session = ChatSession(model, sampling=Sampling(temperature=1.0, top_p=1.0, max_tokens=1_000_000, seed=1))
    cancel = CancelToken()
    got = []
    done = threading.Event()

    def work():
        session.ask(Q1, on_chunk=got.append, cancel=cancel)
        done.set()

    th = threading.Thread(target=work, daemon=True)
    th.start()
    deadline = time.monotonic() + 60
    while sum(1 for c in got if c.text) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not done.is_set()
    cancel.cancel()
    at_cancel = len(got)
    assert done.wait(60), "the answers did not stop"  # a hang guard; promptness is counted in tokens below
    # each side finishes at most the token in hand when the cancel came, then ends (sides take turns)
    after = got[at_cancel:]
    assert sum(1 for c in after if c.text and not c.done) <= 2, after
    assert sorted(c.side for c in after if c.done) == ["base", "tuned"]
    turn = session.turns[-1]
    assert turn.reasons == {"base": "cancelled", "tuned": "cancelled"}
    assert turn.replies["base"] and turn.replies["tuned"]  # what had come is kept


def test_stop_during_a_long_prompt(model):
    from core.generate import PromptCache

    cancel = CancelToken()
    cancel.cancel()
    long = [{"role": "user", "content": "red fox " * 2000}]
    cache = PromptCache()
    gen = model.stream_ids(model.encoder.prompt_ids(long), greedy(8), cancel, cache=cache)
    with pytest.raises(StopIteration) as end:
        next(gen)
    assert end.value.value == "cancelled"
    assert cache.tokens == []  # not one chunk of the long prompt was computed (counted in work, not seconds)


def test_sampling_settings(model):
    from core.generate import Sampling

    msgs = [{"role": "user", "content": "Tell me about the light oak."}]
    hot = dict(temperature=1.5, top_p=1.0, max_tokens=24)
    a = model.answer(msgs, sampling=Sampling(**hot, seed=7), adapter=False)
    assert a == model.answer(msgs, sampling=Sampling(**hot, seed=7), adapter=False)  # same seed, same answer
    others = {model.answer(msgs, sampling=Sampling(**hot, seed=s), adapter=False) for s in range(8, 14)}
    assert len(others | {a}) > 1  # other seeds, other answers
    # top-p so small that only the likeliest token is left: greedy, whatever the temperature
    g = model.answer(msgs, max_tokens=24)
    assert model.answer(msgs, sampling=Sampling(temperature=2.0, top_p=1e-6, max_tokens=24, seed=3)) == g
    ids = model.generate_ids(model.encoder.prompt_ids(msgs), 5)
    assert len(ids) <= 5
    for bad in (dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(max_tokens=0)):
        with pytest.raises(TuneloomError):
            Sampling(**bad).check()
    d = Sampling()
    assert 0 < d.temperature <= 1 and 0 < d.top_p <= 1 and d.max_tokens >= 256 and d.seed is not None


def test_text_stream_never_splits_a_character(model):
    from core.generate import TextStream

    enc = model.encoder
    text = "Füchse 🦊 und 狐狸 lieben café"
    ids = enc.tokenize(text)[0]
    ts = TextStream(enc)
    pieces = [ts.add(i) for i in ids]
    pieces.append(ts.flush())
    assert "".join(pieces) == enc.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p) >= 5


def test_trained_system_prompt(tmp_path, run_dir):
    from core.generate import trained_system_prompt

    data = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}]} for i in range(9)]
    rows.append({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": str(demo_model_dir()), "data": [str(data)],
                                                 "valid_fraction": 0.2, "seed": 0}))
    assert trained_system_prompt(run) == "Answer in JSON."
    (run / "config.json").write_text(json.dumps({"model": str(demo_model_dir()), "data": [str(data)],
                                                 "system_prompt": "Be brief."}))
    assert trained_system_prompt(run) == "Be brief."
    assert trained_system_prompt(run_dir) is None  # the demo data has no system prompt


def test_session_errors(model, plain):
    from core.generate import ChatSession

    with pytest.raises(TuneloomError):
        ChatSession(plain)  # no adapter: no fine-tuned side
    with pytest.raises(TuneloomError):
        ChatSession(model, ("other",))
    s = ChatSession(plain, ("base",))
    with pytest.raises(TuneloomError):
        s.ask("   ")
    with pytest.raises(TuneloomError):
        plain.answer([{"role": "user", "content": "hi"}], adapter=True)


def test_dora_adapter_switches_off_to_the_plain_model(tmp_path, plain):
    from core.generate import ChatModel
    from core.paths import demo_data_dir
    from core.train import TrainConfig, train

    out = tmp_path / "dora"
    train(TrainConfig(model=str(demo_model_dir()), data=[str(demo_data_dir())], out=str(out), dora=True, iters=4,
                      rank=4, alpha=8.0, lr=5e-3, batch=8, max_seq_len=128, warmup=1, valid_every=0,
                      checkpoint_every=0, valid_batches=1))
    m = ChatModel(demo_model_dir(), adapter_dir=out)
    msgs = [{"role": "user", "content": Q2}]
    assert m.has_adapter and m.answer(msgs, max_tokens=24, adapter=False) == plain.answer(msgs, max_tokens=24)
    ids = m.encoder.prompt_ids(msgs)
    import mlx.core as mx
    import numpy as np

    base_logits = m.run_with(False, lambda model: model(mx.array(ids)[None]))
    tuned_logits = m.run_with(True, lambda model: model(mx.array(ids)[None]))
    plain_logits = plain.model(mx.array(ids)[None])
    assert np.array_equal(np.array(base_logits), np.array(plain_logits))  # exactly the plain model
    assert not np.allclose(np.array(tuned_logits), np.array(plain_logits), atol=1e-4)


def test_batched_greedy_ids_equal_one_at_a_time_on_both_sides(model):
    """The forgetting check and the demo answer in batches (ChatModel.greedy_ids_batch): the same ids as
    generate_ids one prompt at a time, for prompts of different lengths and different budgets."""
    from core.demo import heldout_prompts

    prompts = [model.encoder.prompt_ids(p["messages"]) for kind in ("structured", "prose")
               for p in heldout_prompts()[kind][:6]]
    assert len({len(p) for p in prompts}) > 1
    for adapter in (False, True):
        one = [model.generate_ids(p, 24, adapter=adapter) for p in prompts]
        assert model.greedy_ids_batch(prompts, 24, adapter=adapter) == one
        assert model.greedy_ids_batch(prompts[:3], [4, 24, 1], adapter=adapter) == [one[0][:4], one[1], one[2][:1]]
