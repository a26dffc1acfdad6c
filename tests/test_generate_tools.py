"""Tool calling in the chat session (issue 31): tools rendered in the prompt as ChatEncoder renders
them, calls read out of a finished answer, the answer kept as a call turn, a tool result per side
continuing it. On a tiny Qwen2.5 model with the real tokenizer and template; the answers are fixed
texts fed through the session's own path (not what a random model happens to write)."""
import json

import pytest

from core.events import TuneloomError

TOOLS = [{"name": "describe", "description": "Describe a thing of the demo world.",
          "parameters": {"type": "object", "properties": {"name": {"type": "string"},
                                                          "category": {"type": "string"}},
                         "required": ["name", "category"]}},
         {"type": "function", "function": {"name": "price", "parameters": {
             "type": "object", "properties": {"name": {"type": "string"}}}}}]
CALL = '<tool_call>\n{"name": "describe", "arguments": {"name": "Olla", "category": "kettle"}}\n</tool_call>'
TWO_CALLS = ('Let me look.\n<tool_call>\n{"name": "describe", "arguments": {"name": "Olla", "category": "kettle"}}\n'
             '</tool_call>\n<tool_call>\n{"name": "price", "arguments": {"name": "Olla"}}\n</tool_call>')
Q = "Tell me about the old kettle Olla."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.fixtures.tiny_models import cached_tiny_model

    return cached_tiny_model("qwen2.5", tmp_path_factory.getbasetemp() / "tiny-models")


@pytest.fixture(scope="module")
def model(model_dir):
    from core.generate import ChatModel

    return ChatModel(model_dir)


@pytest.fixture(scope="module")
def encoder(model_dir):
    from core.tokens import ChatEncoder

    return ChatEncoder(model_dir)


class Scripted:
    """Stands in for ChatModel.stream_ids: records each prompt and yields the token ids of a fixed
    answer per side ("base" / "tuned", by the adapter flag), in the order given."""

    def __init__(self, model, answers: dict[str, list[str]]):
        self.model, self.answers, self.prompts = model, {k: list(v) for k, v in answers.items()}, []

    def __call__(self, prompt_ids, sampling=None, cancel=None, *, adapter=None, cache=None, stop_ids=None):
        side = "tuned" if adapter else "base"
        self.prompts.append((side, list(prompt_ids)))
        text = self.answers[side].pop(0)
        yield from self.model.encoder.tok.encode(text, add_special_tokens=False)
        return "stop"


@pytest.fixture
def scripted(model, monkeypatch):
    def make(answers, both_sides=False):
        s = Scripted(model, answers)
        monkeypatch.setattr(model, "stream_ids", s)
        if both_sides:  # the session asks for an adapter before it lets a "tuned" side in; the script answers it
            monkeypatch.setattr(model, "_swaps", [("stand-in",)])
        return s
    return make


def test_the_prompt_is_the_template_rendered_with_the_tools(model, encoder):
    from core.generate import ChatSession, Sampling
    from core.tools import normalise_tools

    session = ChatSession(model, ("base",), system="You help with the demo world.", tools=TOOLS,
                          sampling=Sampling(temperature=0.0, top_p=1.0, max_tokens=4, seed=0))
    assert session.tools == normalise_tools(TOOLS)  # the bare definition in OpenAI's form
    seen = []
    real = model.stream_ids

    def spy(prompt_ids, *a, **kw):
        seen.append(list(prompt_ids))
        return real(prompt_ids, *a, **kw)

    model.stream_ids = spy
    try:
        turn = session.ask(Q)  # a real (random) model's answer, through the real generation loop
    finally:
        del model.stream_ids
    msgs = [{"role": "system", "content": "You help with the demo world."}, {"role": "user", "content": Q}]
    assert seen == [encoder.prompt_ids(msgs, session.tools)]
    text = encoder.render(msgs, add_generation_prompt=True, tools=session.tools)
    assert "# Tools" in text and '"name": "describe"' in text and '"name": "price"' in text
    assert encoder.tok.decode(seen[0]) == text
    # no tools (from the next question on): the plain prompt, different from the one with tools
    session.reset()
    assert session.prompt_ids("base", Q) == seen[0]
    session.tools = None
    assert session.prompt_ids("base", Q) == encoder.prompt_ids(msgs) != seen[0]
    assert turn.calls == {"base": model.calls(turn.replies["base"], normalise_tools(TOOLS))}
    # ChatModel.stream / answer take the tools too
    assert model.answer(msgs, max_tokens=3, tools=TOOLS) == encoder.decode(
        model.generate_ids(encoder.prompt_ids(msgs, normalise_tools(TOOLS)), 3))


def test_a_call_answer_becomes_a_call_turn_and_a_typed_result_continues_it(model, encoder, scripted):
    from core.generate import ChatSession

    script = scripted({"base": [CALL, "Olla is an old kettle; it costs 3 coins."]})
    session = ChatSession(model, ("base",), tools=TOOLS)
    chunks = []
    turn = session.ask(Q, on_chunk=chunks.append)
    want = [{"name": "describe", "arguments": {"name": "Olla", "category": "kettle"}}]
    assert turn.replies["base"] == CALL and turn.reasons["base"] == "stop"
    assert turn.calls == {"base": want}
    done = [c for c in chunks if c.done]
    assert len(done) == 1 and done[0].calls == want and all(not c.calls for c in chunks if not c.done)
    assert session.pending_calls("base") == want
    call_turn = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "describe", "arguments": {"name": "Olla", "category": "kettle"}}}]}
    assert session.messages("base") == [{"role": "user", "content": Q}, call_turn]

    result = json.dumps({"name": "Olla", "category": "kettle", "price": 3})
    turn2 = session.tool_result("base", result)
    assert turn2.user is None and turn2.replies == {"base": "Olla is an old kettle; it costs 3 coins."}
    assert turn2.calls == {"base": []} and session.pending_calls("base") == []
    tool_msg = {"role": "tool", "content": result, "name": "describe"}
    assert turn2.results == {"base": [tool_msg]}
    # the continuation's prompt: the template with the tools, the call turn and the result, token for token
    history = [{"role": "user", "content": Q}, call_turn, tool_msg]
    assert script.prompts[1] == ("base", encoder.prompt_ids(history, session.tools))
    rendered = encoder.tok.decode(script.prompts[1][1])
    assert rendered.endswith(f"<tool_response>\n{result}\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert '<tool_call>\n{"name": "describe", "arguments": {"name": "Olla", "category": "kettle"}}\n</tool_call>' \
        in rendered
    assert session.messages("base") == history + [{"role": "assistant",
                                                    "content": "Olla is an old kettle; it costs 3 coins."}]
    # nothing left to answer: a second result is refused, in words
    with pytest.raises(TuneloomError, match="calls no function"):
        session.tool_result("base", "again")
    saved = session.to_json()
    assert saved["tools"] == session.tools and saved["turns"][1]["results"] == {"base": [tool_msg]}


def test_results_are_per_side_and_several_calls_take_one_result_each(model, encoder, scripted):
    from core.generate import ChatSession

    script = scripted({"base": ["I do not know that kettle."], "tuned": [TWO_CALLS, "Olla: a kettle, 3 coins."]},
                      both_sides=True)
    session = ChatSession(model, ("base", "tuned"), tools=TOOLS)
    turn = session.ask(Q)
    assert turn.calls["base"] == [] and [c["name"] for c in turn.calls["tuned"]] == ["describe", "price"]
    assert session.pending_calls("base") == [] and len(session.pending_calls("tuned")) == 2
    tuned_call = session.messages("tuned")[-1]
    assert tuned_call["content"] == "Let me look." and len(tuned_call["tool_calls"]) == 2
    with pytest.raises(TuneloomError, match="calls no function"):
        session.tool_result("base", "{}")
    with pytest.raises(TuneloomError, match="3 tool results for 2 calls"):
        session.tool_result("tuned", ["a", "b", "c"])
    assert len(script.prompts) == 2  # nothing was asked by the refused results
    turn2 = session.tool_result("tuned", ['{"category": "kettle"}', '{"price": 3}'])
    assert set(turn2.replies) == {"tuned"}  # only the side given a result answers
    assert [m["name"] for m in turn2.results["tuned"]] == ["describe", "price"]
    assert script.prompts[2][0] == "tuned"
    assert script.prompts[2][1] == encoder.prompt_ids(
        [{"role": "user", "content": Q}, tuned_call,
         {"role": "tool", "content": '{"category": "kettle"}', "name": "describe"},
         {"role": "tool", "content": '{"price": 3}', "name": "price"}], session.tools)
    # the base side's conversation is unchanged by the tuned side's results
    assert session.messages("base") == [{"role": "user", "content": Q},
                                        {"role": "assistant", "content": "I do not know that kettle."}]
    # a result named explicitly keeps that name
    script.answers["tuned"] = [CALL, "done"]
    script.answers["base"] = ["still no"]
    session.ask("And again?")
    t = session.tool_result("tuned", {"ok": True}, name="describe_v2")
    assert t.results["tuned"] == [{"role": "tool", "content": '{"ok": true}', "name": "describe_v2"}]


def test_without_tools_a_json_answer_is_not_a_call_and_bad_tools_are_refused(model, scripted):
    from core.generate import ChatSession

    scripted({"base": ['{"name": "Olla", "arguments": {"category": "kettle"}}']})
    session = ChatSession(model, ("base",))
    turn = session.ask(Q)
    assert turn.calls == {"base": []}
    assert session.messages("base")[-1] == {"role": "assistant", "content": turn.replies["base"]}
    with pytest.raises(TuneloomError, match=r"tools\[0\].function.name is missing"):
        session.tools = [{"type": "function", "function": {"description": "no name"}}]
    with pytest.raises(TuneloomError, match="not valid JSON"):
        ChatSession(model, ("base",), tools="[{")


def test_a_template_without_tool_support_refuses_the_tools_in_words(tmp_path):
    import shutil

    from core.demo.build import CHATML_TEMPLATE, set_chat_template
    from core.generate import ChatModel, ChatSession
    from core.paths import demo_model_dir

    plain = tmp_path / "plain-chatml"  # the demo model with plain ChatML, no place for tools
    shutil.copytree(demo_model_dir(), plain)
    set_chat_template(plain, CHATML_TEMPLATE)
    session = ChatSession(ChatModel(plain), ("base",), tools=TOOLS)
    with pytest.raises(TuneloomError, match="has no tool support"):
        session.ask(Q)
    assert session.turns == []


def test_tuneloom_chat_with_tools_prints_calls_and_takes_their_results(model_dir, tmp_path, monkeypatch, capsys):
    """`tuneloom chat MODEL --tools FILE`: the calls of an answer printed as calls, the next line typed is what
    the function returned, and the model answers with it in its prompt (a <tool_response> turn)."""
    import builtins

    from app.cli import main
    from core.generate import ChatModel

    tools_file = tmp_path / "tools.jsonl"
    tools_file.write_text("\n".join(json.dumps(t) for t in TOOLS) + "\n", encoding="utf-8")
    answers, prompts = [CALL, "Olla is a red kettle."], []

    def scripted(self, prompt_ids, sampling=None, cancel=None, *, adapter=None, cache=None, stop_ids=None):
        prompts.append(self.encoder.tok.decode(list(prompt_ids)))
        yield from self.encoder.tok.encode(answers.pop(0), add_special_tokens=False)
        return "stop"

    monkeypatch.setattr(ChatModel, "stream_ids", scripted)
    typed = iter([Q, '{"colour": "red"}'])

    def fake_input(prompt=""):
        print(prompt, end="")
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", fake_input)
    assert main(["chat", str(model_dir), "--tools", str(tools_file), "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert '-> call describe(name="Olla", category="kettle")' in out
    assert 'result of describe(name="Olla", category="kettle")> ' in out and "Olla is a red kettle." in out
    assert len(prompts) == 2 and '"name": "describe"' in prompts[0] and "<tools>" in prompts[0]
    assert "<tool_response>" in prompts[1] and '{"colour": "red"}' in prompts[1] and "<tool_call>" in prompts[1]


def test_tuneloom_chat_names_bad_tool_files_and_models_without_tools(model_dir, tmp_path, capsys):
    from app.cli import main
    from tests.fixtures.tiny_models import cached_tiny_model

    bad = tmp_path / "bad.json"
    bad.write_text("[{oops", encoding="utf-8")
    assert main(["chat", str(model_dir), "--tools", str(bad), "--prompt", "hi"]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: Not valid JSON" in err
    good = tmp_path / "good.json"
    good.write_text(json.dumps(TOOLS), encoding="utf-8")
    tinyllama = cached_tiny_model("tinyllama", tmp_path / "models")  # its template has no place for tools
    assert main(["chat", str(tinyllama), "--tools", str(good), "--prompt", "hi"]) == 1
    assert "has no tool support" in capsys.readouterr().err
