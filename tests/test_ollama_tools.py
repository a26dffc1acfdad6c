"""A run trained on tool calls, exported to Ollama (issue 31).

Training renders a tool record with the model's own Hugging Face template and ``tools=``. For
Qwen2.5, Qwen3 (thinking off and on) and Qwen3.5 these tests check that a ``/api/chat`` request
with ``tools`` gives that prompt on every path Ollama may take, and that Ollama's tool-call parser
reads back the calls of the training answers:

* the Go path (Ollama before v0.32.7, or OLLAMA_GO_TEMPLATE=1): the Modelfile TEMPLATE rendered by
  Go's own text/template engine with .Tools / .ToolCalls as Ollama holds them, and the calls parsed
  as Ollama's tools package does (tests/go: render.go, tools.go);
* the native path (current Ollama): the embedded GGUF template rendered with the messages and tools
  as llama-server receives them, through Jinja as transformers and llama.cpp's chat handler
  (llama-cpp-python's Jinja2ChatFormatter) render it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.export import ollama as ol
from core import chat_templates as ct
from core.model_folder import load_tokenizer_config

FIXTURES = Path(__file__).parent / "fixtures" / "models"
FAMILIES = {  # name -> (folder, HF architecture, thinking)
    "qwen2.5": ("Qwen2.5-0.5B-Instruct", "Qwen2ForCausalLM", False),
    "qwen3": ("Qwen3-0.6B", "Qwen3ForCausalLM", False),
    "qwen3-thinking": ("Qwen3-0.6B", "Qwen3ForCausalLM", True),
}
if (FIXTURES / "Qwen3.5-0.8B" / "chat_template.jinja").is_file():
    FAMILIES["qwen3.5"] = ("Qwen3.5-0.8B", "Qwen3_5ForConditionalGeneration", False)
    FAMILIES["qwen3.5-thinking"] = ("Qwen3.5-0.8B", "Qwen3_5ForConditionalGeneration", True)
GGUF_ARCH = {"Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "Qwen3_5ForConditionalGeneration": "qwen35"}
GO_TOOLS = {"qwen2.5", "qwen3", "qwen3-thinking"}  # Qwen3.5 writes XML calls: its TEMPLATE keeps no tools

# Tool definitions as Ollama holds them (api.Tool: type, function{name, description, parameters{type,
# required, properties}}), with properties and call arguments in sorted key order (what a Go TEMPLATE
# sees): the form in which a training record renders identically on every path.
DESCRIBE = {"type": "function", "function": {
    "name": "describe", "description": "Describe a thing of the demo world.",
    "parameters": {"type": "object", "required": ["name", "category"], "properties": {
        "category": {"type": "string", "description": "animal, plant or tool", "enum": ["animal", "plant", "tool"]},
        "name": {"type": "string", "description": "The thing's name"}}}}}
SEARCH = {"type": "function", "function": {
    "name": "search_shop", "description": "Search the shop; returns items as JSON.",
    "parameters": {"type": "object", "required": ["query"], "properties": {
        "max_results": {"type": "integer", "description": "At most this many"},
        "query": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "description": "Only items with these tags"}}}}}


def call(function, **arguments):
    return {"type": "function", "function": {"name": function, "arguments": arguments}}


CONVERSATIONS = {
    "first-question": ([DESCRIBE], [{"role": "user", "content": "Tell me about the lynx."}]),
    "system-call-result": ([DESCRIBE, SEARCH], [
        {"role": "system", "content": "You help in the demo world. Réponds brièvement."},
        {"role": "user", "content": "Find three red scarves."},
        {"role": "assistant", "content": "", "tool_calls": [
            call("search_shop", max_results=3, query="red scarf", tags=["wool", "winter"])]},
        {"role": "tool", "content": '[{"id": 7, "name": "Crimson scarf"}]', "name": "search_shop"}]),
    "parallel-then-answer": ([DESCRIBE], [
        {"role": "user", "content": "Describe the oak and the fern."},
        {"role": "assistant", "content": "", "tool_calls": [call("describe", category="plant", name="oak"),
                                                           call("describe", category="plant", name="fern")]},
        {"role": "tool", "content": "A large tree."}, {"role": "tool", "content": "A shadow plant."},
        {"role": "assistant", "content": "The oak is a large tree; the fern likes shade."},
        {"role": "user", "content": "And the hammer? 🔨"}]),
    "prose-before-call": ([SEARCH, DESCRIBE], [
        {"role": "user", "content": "Is there a \"blue\" kettle <small> & cheap?"},
        {"role": "assistant", "content": "I will search the shop.", "tool_calls": [
            call("search_shop", max_results=1, query="blue kettle <small> & cheap", tags=[])]},
        {"role": "tool", "content": "[]"},
        {"role": "user", "content": "Grüße — try 世界 then."}]),
}


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoTokenizer

    cache: dict = {}

    def get(family):
        folder = FAMILIES[family][0]
        if folder not in cache:
            cache[folder] = AutoTokenizer.from_pretrained(str(FIXTURES / folder))
        return cache[folder]

    return get


def export_of(family, tools=True):
    folder, arch, thinking = FAMILIES[family]
    cfg = load_tokenizer_config(FIXTURES / folder)
    fmt = ct.export_chat_format(cfg, thinking=thinking, tools=tools)
    emb = ct.embedded_chat_template(cfg, thinking=thinking, architecture=arch, tools=tools)
    return cfg, fmt, emb, GGUF_ARCH[arch], thinking


def training(hf, family, tools, messages, *, generation=True):
    thinking = FAMILIES[family][2]
    return hf(family).apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation,
                                          enable_thinking=thinking)


def _diff(a, b):
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"at {i}: training {a[max(0, i - 40):i + 40]!r} / Ollama {b[max(0, i - 40):i + 40]!r}"


def prompts_of(conv):
    """Every training prompt of a conversation: before each assistant turn, and at its end."""
    tools, messages = CONVERSATIONS[conv]
    cuts = [i for i, m in enumerate(messages) if m["role"] == "assistant"] + [len(messages)]
    return [(tools, messages[:i]) for i in cuts]


# --------------------------------------------------------------------------- the prompt, token for token

@pytest.mark.parametrize("conv", list(CONVERSATIONS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_tool_requests_give_the_training_prompt_on_every_path(family, conv, hf, go_renderer):
    cfg, fmt, emb, arch, thinking = export_of(family)
    assert emb.kind == "tools"
    tokens = ct.special_tokens(cfg)
    paths = {}
    for tools, messages in prompts_of(conv):
        want = training(hf, family, tools, messages)
        want_ids = hf(family).encode(want, add_special_tokens=False)
        for label, kw in ct.OLLAMA_SCENARIOS:
            setup = ct.OllamaSetup(fmt.template, emb.template, architecture=arch, **kw)
            paths[label] = ct.template_path(setup)
            if "tools" not in ct.model_capabilities(setup):
                assert family not in GO_TOOLS and paths[label] == "go", label
                continue  # Ollama answers "does not support tools" here (Qwen3.5 before v0.32.7)
            think = ct.default_think(setup)
            got = ct.ollama_prompt(setup, messages, tools=ol.ollama_tools(tools), tokens=tokens,
                                   go_render=lambda t, m, tools=tools, think=think:
                                   go_renderer.render(t, m, tools=tools, think=think))
            assert got == want, f"{family} {conv} {label} ({paths[label]} path): {_diff(want, got)}"
            assert hf(family).encode(got, add_special_tokens=False) == want_ids
    # current Ollama prefers the embedded template (it shows a tool round trip, the TEMPLATE does not)
    assert paths == {"ollama<0.32.7": "go", "ollama": "native", "ollama OLLAMA_GO_TEMPLATE=0": "native"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_llama_cpp_chat_handler_renders_the_embedded_tool_template_like_training(family, hf):
    fmt_mod = pytest.importorskip("llama_cpp.llama_chat_format")
    cfg, fmt, emb, arch, thinking = export_of(family)
    tokens = ct.special_tokens(cfg)
    handler = fmt_mod.Jinja2ChatFormatter(emb.template, eos_token=tokens.get("eos_token", ""),
                                          bos_token=tokens.get("bos_token", ""))
    object_args = ct._needs_object_arguments(emb.template)
    checked = 0
    for conv in CONVERSATIONS:
        for tools, messages in prompts_of(conv):
            want = training(hf, family, tools, messages)
            # what llama-server gets from Ollama: null for empty contents, arguments as Go's JSON text;
            # llama-server turns thinking on unless Ollama says otherwise (a thinking-off fine-tune's
            # template pins it off)
            got = handler(messages=ct.ollama_tool_messages(messages, object_arguments=object_args),
                          tools=ol.ollama_tools(tools), enable_thinking=True).prompt
            assert got == want, f"{family} {conv}: {_diff(want, got)}"
            checked += 1
    assert checked == sum(len(prompts_of(c)) for c in CONVERSATIONS)


@pytest.fixture(scope="module")
def llama_server():
    """A ``llama-server`` binary built from llama.cpp's source (TUNELOOM_LLAMA_SERVER=/path/to/it; the
    vendored llama.cpp of llama-cpp-python's sdist builds it: ``cmake -B build -DGGML_NATIVE=OFF
    -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF && cmake --build build --target llama-server``);
    skipped otherwise (CI does not build it: about ten minutes on two cores)."""
    import os

    exe = os.environ.get("TUNELOOM_LLAMA_SERVER")
    if not exe:
        pytest.skip("no llama-server binary (set TUNELOOM_LLAMA_SERVER to one built from llama.cpp's source)")
    return Path(exe)


class _Server:
    """llama-server on a tiny GGUF of one family, the tool template embedded, on a free local port."""

    def __init__(self, exe: Path, gguf: Path, log: Path):
        import socket
        import subprocess
        import time
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = log
        self.proc = subprocess.Popen([str(exe), "-m", str(gguf), "--jinja", "--host", "127.0.0.1",
                                      "--port", str(self.port), "-c", "2048", "--no-webui", "-t", "1"],
                                     stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300  # a bound for a server that never comes up, not a speed
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("llama-server did not come up: " + log.read_text(errors="replace")[-3000:])

    def apply_template(self, messages, tools) -> str:
        import urllib.request

        body = json.dumps({"messages": messages, "tools": tools}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/apply-template", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())["prompt"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


TINY = {"qwen2.5": "qwen2.5", "qwen3": "qwen3", "qwen3-thinking": "qwen3"}  # families with a tiny model
if "qwen3.5" in FAMILIES:  # a tiny Qwen3.5 in the real layout (tests/fixtures/qwen35.py)
    TINY.update({"qwen3.5": "qwen3.5", "qwen3.5-thinking": "qwen3.5"})


def _tiny_model(name: str, cache_dir) -> Path:
    if name == "qwen3.5":
        from tests.fixtures.qwen35 import cached_tiny_qwen35

        return cached_tiny_qwen35(cache_dir)
    from tests.fixtures.tiny_models import cached_tiny_model

    return cached_tiny_model(name, cache_dir)


@pytest.mark.parametrize("family", list(TINY))
def test_llama_servers_own_jinja_engine_renders_the_embedded_tool_template_like_training(family, hf, llama_server,
                                                                                         tmp_path_factory):
    """What current Ollama runs underneath: llama-server's C++ Jinja engine (``--jinja``), with the
    template embedded in the GGUF as the export writes it, given the messages and tools as Ollama
    hands them on (``/apply-template``, the prompt it would run): every prompt of every tool
    conversation equals the training prompt."""
    from core.export.gguf import export_gguf

    cfg, fmt, emb, arch, thinking = export_of(family)
    tmp = tmp_path_factory.mktemp(f"server-{family}")
    model = _tiny_model(TINY[family], tmp_path_factory.getbasetemp() / "tiny-models")
    gguf = tmp / "model.gguf"
    export_gguf(model, gguf, "f16", chat_template=emb.template)
    server = _Server(llama_server, gguf, tmp / "server.log")
    try:
        object_args = ct._needs_object_arguments(emb.template)
        checked = 0
        for conv in CONVERSATIONS:
            for tools, messages in prompts_of(conv):
                want = training(hf, family, tools, messages)
                got = server.apply_template(ct.ollama_tool_messages(messages, object_arguments=object_args),
                                            ol.ollama_tools(tools))
                assert got == want, f"{family} {conv}: {_diff(want, got)}"
                checked += 1
        assert checked == sum(len(prompts_of(c)) for c in CONVERSATIONS)
    finally:
        server.stop()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_embedded_tool_template_shows_what_the_fine_tune_can_do(family):
    cfg, fmt, emb, arch, thinking = export_of(family)
    caps = ct.chat_template_capabilities(emb.template)
    assert caps == ({"tools", "thinking"} if thinking else {"tools"})
    assert ct.chat_template_has_tool_round_trip(emb.template)
    if family in GO_TOOLS:
        assert ct.go_template_capabilities(fmt.template) == caps
        assert ct.tool_parser_tag(fmt.template) == "<tool_call>"
    else:
        assert "tools" not in ct.go_template_capabilities(fmt.template)


@pytest.mark.parametrize("family", sorted(GO_TOOLS))
def test_gos_parser_agrees_with_the_python_model_of_the_templates(family, go_renderer):
    _, fmt, _, _, _ = export_of(family)
    caps = go_renderer.capabilities(fmt.template)
    assert {"tools", "toolcalls"} <= set(caps["vars"])
    # no Go round trip as Ollama's goTemplateHasToolRoundTrip reads it: the embedded template wins
    assert not any(x in fmt.template for x in ('eq .Role "tool"', "tool_response", "TOOL_RESULTS"))
    assert go_renderer.parse_tool_calls(fmt.template, [DESCRIBE], "")["tag"] == "<tool_call>"


def test_tool_definitions_reach_the_template_as_ollama_holds_them(go_renderer):
    """template_tools (what a Go TEMPLATE sees: Ollama's api.Tool order and keys, properties sorted, a
    description always) agrees with Go's own unmarshal into Ollama's types and marshal of the template's copy."""
    messy = {"function": {"parameters": {"properties": {"b": {"description": "B", "type": ["string"], "default": 1},
                                                        "a": {"enum": [1, 2], "type": "integer"}},
                                         "required": ["a"], "type": "object", "additionalProperties": False},
                          "description": "x < y & z", "name": "f"}, "type": "function"}
    template = "{{ range .Messages }}{{ end }}{{ range .Tools }}{{ json . }}\n{{ end }}"
    got = go_renderer.render(template, [{"role": "user", "content": "hi"}], tools=[messy, DESCRIBE, SEARCH])
    want = "".join(ct.go_json(t) + "\n" for t in ct.template_tools([messy, DESCRIBE, SEARCH]))
    assert got == want
    native = ol.ollama_tools([messy])[0]["function"]  # what llama-server gets: the request's property order
    assert list(native["parameters"]["properties"]) == ["b", "a"] and "default" not in native["parameters"][
        "properties"]["b"] and "additionalProperties" not in native["parameters"]
    # the test data is in Ollama's form, and sorted as a Go TEMPLATE sees it
    assert ol.ollama_tools([DESCRIBE, SEARCH]) == [DESCRIBE, SEARCH] == ct.template_tools([DESCRIBE, SEARCH])


def test_call_arguments_are_respaced_like_python(go_renderer):
    cfg, fmt, _, _, _ = export_of("qwen2.5")
    args = {"n": [1, 2.5, {"x": None, "y": True}], "s": 'a "q" \\ <b> & c: d, e', "u": "ü 世界 🦊"}
    messages = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": args}}]}, {"role": "user", "content": "again"}]
    text = go_renderer.render(fmt.template, messages)
    assert '"arguments": ' + json.dumps(args, ensure_ascii=False) + "}" in text
    assert ct._pyjson(ct.go_json(args)) == json.dumps(args, ensure_ascii=False)


# --------------------------------------------------------------------------- Ollama reads the calls back

def answers(hf, family):
    """(tools, the assistant turns training taught, as the model writes them, and their calls)."""
    stop = ("<|im_end|>",)
    for conv, (tools, messages) in CONVERSATIONS.items():
        for i, m in enumerate(messages):
            if m["role"] != "assistant" or not m.get("tool_calls"):
                continue
            prompt = training(hf, family, tools, messages[:i])
            full = training(hf, family, tools, messages[:i + 1], generation=False)
            assert full.startswith(prompt), conv
            text = full[len(prompt):]
            for s in stop:
                text = text.split(s)[0]
            yield conv, tools, text, ct.tool_calls_of(m)


@pytest.mark.parametrize("family", sorted(GO_TOOLS))
def test_ollamas_parser_recovers_the_calls_the_fine_tune_writes(family, hf, go_renderer):
    _, fmt, _, _, _ = export_of(family)
    seen = 0
    for conv, tools, text, calls in answers(hf, family):
        parsed = go_renderer.parse_tool_calls(fmt.template, ol.ollama_tools(tools), text)
        assert parsed["tag"] == "<tool_call>"
        assert parsed["calls"] == calls, f"{family} {conv}: {text!r}"
        seen += len(calls)
    assert seen == 4


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tuneloom_parses_the_same_calls(family, hf):
    tools_mod = pytest.importorskip("core.tools", reason="core.tools (the data side of issue 31) not merged yet")
    folder = FIXTURES / FAMILIES[family][0]
    for conv, tools, text, calls in answers(hf, family):
        got = tools_mod.parse_tool_calls(text, folder)
        assert [{"name": c["name"], "arguments": c["arguments"]} for c in got] == calls, f"{family} {conv}"


# --------------------------------------------------------------------------- runs without tools: unchanged

@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_run_without_tools_keeps_todays_templates(family):
    folder, arch, thinking = FAMILIES[family]
    cfg = load_tokenizer_config(FIXTURES / folder)
    plain_fmt = ct.chat_format_for(cfg, thinking=thinking)
    plain_emb = ct.embedded_chat_template(cfg, thinking=thinking, architecture=arch)
    _, fmt, emb, _, _ = export_of(family, tools=False)
    assert (fmt.template, emb.template, emb.kind) == (plain_fmt.template, plain_emb.template, plain_emb.kind)
    assert emb.kind != "tools"


def test_a_model_without_tool_rendering_keeps_its_plain_export_with_a_note():
    cfg = load_tokenizer_config(FIXTURES / "TinyLlama-1.1B-Chat-v1.0")
    emb = ct.embedded_chat_template(cfg, architecture="LlamaForCausalLM", tools=True)
    assert emb.kind != "tools" and any("Tool calling is not kept" in n for n in emb.notes)
    assert ct.export_chat_format(cfg, tools=True).template == ct.chat_format_for(cfg).template


# --------------------------------------------------------------------------- the export and its verify step

@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from tests.fixtures.tiny_models import cached_tiny_model

    return cached_tiny_model("qwen2.5", tmp_path_factory.mktemp("models"))


def fake_run(folder: Path, base: Path, *, tools: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model": str(base)}), encoding="utf-8")
    (folder / "adapters.safetensors").write_bytes(b"")
    cfg = {"model": str(base), "max_seq_len": 512, **({"tools": True} if tools else {})}
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return folder


def test_export_plan_follows_the_runs_tools_flag(tiny_qwen, tmp_path):
    from core.export.pipeline import plan_export, run_tools

    with_tools = fake_run(tmp_path / "tools-run", tiny_qwen, tools=True)
    without = fake_run(tmp_path / "plain-run", tiny_qwen, tools=False)
    assert run_tools(with_tools) is True and run_tools(without) is False and run_tools(None) is False
    plan = plan_export(with_tools, modelfile=tmp_path / "t.Modelfile")
    plain = plan_export(without, modelfile=tmp_path / "p.Modelfile")
    assert plan.tools is True and plan.as_dict()["tools"] is True and plan.embedded_template.kind == "tools"
    assert "{{- range .Tools }}" in plan.modelfile_text and "range .Tools" not in plain.modelfile_text
    assert plain.tools is False and plain.embedded_template.kind != "tools"
    cfg = load_tokenizer_config(tiny_qwen)
    assert plain.chat_format.template == ct.chat_format_for(cfg).template  # unchanged without tool data


@pytest.fixture
def gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(200_000))
    return path


def _tool_case():
    tools, messages = CONVERSATIONS["system-call-result"]
    return {"messages": messages[:2], "tools": tools, "expected": ct.tool_calls_of(messages[2]),
            "model": str(FIXTURES / "Qwen2.5-0.5B-Instruct")}


def test_verify_asks_a_held_out_question_with_its_tools(gguf_file):
    from tests.fixtures.ollama_server import FakeOllama
    from core.events import RecordingEvents

    cfg = load_tokenizer_config(FIXTURES / "Qwen2.5-0.5B-Instruct")
    fmt = ct.export_chat_format(cfg, tools=True)
    case = _tool_case()
    events = RecordingEvents()
    with FakeOllama() as server:
        server.tool_calls = [{"function": {"name": c["name"], "arguments": c["arguments"]}} for c in case["expected"]]
        res = ol.register_model(gguf_file, "tools-tuned", template=fmt.template, stops=fmt.stops, host=server.url,
                                verify_tools=case, events=events)
        assert server.problems == []
        chats = server.calls("POST", "/api/chat")
    assert len(chats) == 2  # the plain question, then the held-out one with its tools
    body = chats[1].json
    assert body["tools"] == ol.ollama_tools(case["tools"]) and body["stream"] is False
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    check = res["tool_check"]
    assert check["match"] is True and check["ollama"] == case["expected"]
    assert check["question"] == "Find three red scarves." and check["tools_as_trained"] is True
    assert any("tool check: Ollama parsed the expected call" in m for k, m in events.logs if k == "info")


def test_verify_warns_when_ollamas_calls_differ(gguf_file):
    from tests.fixtures.ollama_server import FakeOllama
    from core.events import RecordingEvents

    cfg = load_tokenizer_config(FIXTURES / "Qwen2.5-0.5B-Instruct")
    fmt = ct.export_chat_format(cfg, tools=True)
    events = RecordingEvents()
    with FakeOllama() as server:
        server.tool_calls = [{"function": {"name": "search_shop", "arguments": {"query": "blue scarf"}}}]
        res = ol.register_model(gguf_file, "tools-tuned", template=fmt.template, stops=fmt.stops, host=server.url,
                                verify_tools=_tool_case(), events=events)
        assert server.problems == []
    assert res["tool_check"]["match"] is False
    assert res["tool_check"]["ollama"] == [{"name": "search_shop", "arguments": {"query": "blue scarf"}}]
    assert any("tool check" in m and "blue scarf" in m for k, m in events.logs if k == "warning")


def test_the_held_out_tool_question_comes_from_the_validation_split(tiny_qwen, tmp_path, monkeypatch):
    import core.evaluate as ev
    from core.export.pipeline import tool_verify_case

    run = fake_run(tmp_path / "run", tiny_qwen, tools=True)
    tools, messages = CONVERSATIONS["parallel-then-answer"]

    class Rec:
        def __init__(self, messages, tools=None):
            self.messages, self.tools = messages, tools

    plain = Rec([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    monkeypatch.setattr(ev, "run_split", lambda run_dir, **kw: ([], [plain, Rec(messages, tools)]))
    case = tool_verify_case(run)
    assert case["messages"] == messages[:1] and case["tools"] == tools and case["model"] == str(tiny_qwen)
    assert case["expected"] == [{"name": "describe", "arguments": {"category": "plant", "name": "oak"}},
                                {"name": "describe", "arguments": {"category": "plant", "name": "fern"}}]
    monkeypatch.setattr(ev, "run_split", lambda run_dir, **kw: ([], [plain]))
    assert tool_verify_case(run) is None


def test_definitions_in_another_key_order_are_trained_in_the_form_ollama_hands_them_on(hf, go_renderer):
    """Ollama re-serialises the definitions a client sends (its key order, its keys), so the model's template
    rendered with the data's own definitions (properties before required, a `default`, as many schemas are)
    is not what Ollama builds; Tuneloom's training text renders them in Ollama's form (core.tools.ollama_tools),
    and that one is, on every path."""
    from core.tokens import ChatEncoder

    cfg, fmt, emb, arch, _ = export_of("qwen2.5")
    usual = {"type": "function", "function": {"name": "describe", "description": "Describe a thing.",
                                              "parameters": {"type": "object", "properties": {
                                                  "name": {"type": "string", "default": "fox"}},
                                                  "required": ["name"]}}}
    messages = [{"role": "user", "content": "Describe it."}]
    assert not ct.tools_as_ollama_holds_them([usual]) and ct.tools_as_ollama_holds_them([DESCRIBE])
    enc = ChatEncoder(FIXTURES / FAMILIES["qwen2.5"][0])
    trained = enc.render(enc.prepare(messages, [usual]), add_generation_prompt=True, tools=[usual])
    assert trained == training(hf, "qwen2.5", ol.ollama_tools([usual]), messages)
    assert trained != training(hf, "qwen2.5", [usual], messages)  # the data's own form would differ
    for label, kw in ct.OLLAMA_SCENARIOS:
        setup = ct.OllamaSetup(fmt.template, emb.template, architecture=arch, **kw)
        got = ct.ollama_prompt(setup, messages, tools=ol.ollama_tools([usual]), tokens=ct.special_tokens(cfg),
                               go_render=lambda t, m: go_renderer.render(t, m, tools=[usual]))
        assert got == trained, label


@pytest.fixture(scope="module")
def ollama_pkgs():
    """Ollama's own template and tools packages compiled from its source, where a checkout is given
    (TUNELOOM_OLLAMA_SRC=/path/to/ollama); skipped otherwise. Their other dependencies (the api package's
    modules) cannot be fetched offline: tests/go/ollama_real stands in for those."""
    from tests.go.gorender import GoUnavailable, OllamaPackages, build_ollama_packages, ollama_source

    src = ollama_source()
    if src is None:
        pytest.skip("no Ollama source checkout (set TUNELOOM_OLLAMA_SRC to one)")
    try:
        binary = build_ollama_packages(src)
    except GoUnavailable as exc:
        pytest.skip(f"Go toolchain unavailable ({exc})")
    pkgs = OllamaPackages(binary)
    yield pkgs
    pkgs.close()


@pytest.mark.parametrize("family", sorted(GO_TOOLS))
def test_ollamas_own_packages_from_its_source_render_and_parse_like_training(family, hf, ollama_pkgs, go_renderer):
    """Ollama's template.Execute renders the training prompt of every tool conversation from the TEMPLATE
    (and the same as tests/go's re-written engine), and its tools.Parser recovers the training calls."""
    cfg, fmt, emb, arch, thinking = export_of(family)
    think = True if thinking else None  # Ollama's default for a template that can think
    for conv in CONVERSATIONS:
        for tools, messages in prompts_of(conv):
            want = training(hf, family, tools, messages)
            got = ollama_pkgs.render(fmt.template, messages, tools=tools, think=think)
            assert got == want, f"{family} {conv}: {_diff(want, got)}"
            assert go_renderer.render(fmt.template, messages, tools=tools, think=think) == got
    seen = 0
    for conv, tools, text, calls in answers(hf, family):
        real = ollama_pkgs.parse(fmt.template, ol.ollama_tools(tools), text)
        assert real["tag"] == "<tool_call>" and real["calls"] == calls, f"{family} {conv}: {text!r}"
        assert go_renderer.parse_tool_calls(fmt.template, ol.ollama_tools(tools), text)["calls"] == real["calls"]
        seen += len(calls)
    assert seen == 4


def test_unsorted_properties_and_arguments_are_exact_only_on_the_native_path(hf, go_renderer):
    """Ollama's Go path hands a TEMPLATE its properties and call arguments in plain Go maps: keys sorted.
    Training data whose keys are not sorted gets the training prompt on current Ollama (native path) only."""
    cfg, fmt, emb, arch, _ = export_of("qwen3")
    tool = {"type": "function", "function": {"name": "move", "description": "Move a piece.", "parameters": {
        "type": "object", "required": ["to", "from"], "properties": {"to": {"type": "string"},
                                                                     "from": {"type": "string"}}}}}
    messages = [{"role": "user", "content": "e2 to e4"},
                {"role": "assistant", "content": "", "tool_calls": [call("move", to="e4", **{"from": "e2"})]},
                {"role": "tool", "content": "ok"}]
    want = training(hf, "qwen3", [tool], messages)
    got = {}
    for label, kw in ct.OLLAMA_SCENARIOS:
        setup = ct.OllamaSetup(fmt.template, emb.template, architecture=arch, **kw)
        got[ct.template_path(setup)] = ct.ollama_prompt(
            setup, messages, tools=ol.ollama_tools([tool]), tokens=ct.special_tokens(cfg),
            go_render=lambda t, m: go_renderer.render(t, m, tools=[tool]))
    assert got["native"] == want
    assert got["go"] != want and '"from": {"type": "string"}, "to"' in got["go"] and '{"from": "e2", "to": "e4"}' in got["go"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_ollamas_own_template_package_renders_plain_chats_like_tests_go(family, ollama_pkgs, go_renderer):
    """The re-written engine the other template tests use (tests/go/render.go) agrees with Ollama's own
    template package on the plain TEMPLATEs of runs without tool data too."""
    from tests.test_ollama_paths import CONVERSATIONS as PLAIN

    _, fmt, _, _, thinking = export_of(family, tools=False)
    for name, messages in PLAIN.items():
        for think in (None, True, False):
            assert ollama_pkgs.render(fmt.template, messages, think=think) == go_renderer.render(
                fmt.template, messages, think=think), f"{family} {name} think={think}"


# --------------------------------------------------------------------------- training tells the export

def test_a_run_on_tool_records_says_so_in_its_config_and_one_without_does_not(tmp_path, monkeypatch):
    """config.json "tools": true is what the export reads (core.export.pipeline.run_tools). The records here get their
    tool definitions the way the data side keeps them (ChatRecord.tools)."""
    import core.train as tr
    from core.export.pipeline import run_tools
    from core.paths import demo_data_dir

    fast = dict(rank=4, alpha=8.0, lr=1e-3, batch=4, max_seq_len=96, warmup=1, valid_every=0, valid_batches=1,
                checkpoint_every=0, seed=3, iters=1)
    import core.train.config  # the module whose load_dataset the trainer calls

    real_load = core.train.config.load_dataset

    def with_tools(*a, **kw):
        ds = real_load(*a, **kw)
        ds.records[0].tools = [DESCRIBE]
        return ds

    from tests.fixtures.tiny_models import cached_tiny_model

    # a template with a place for tools (the demo model's ChatML has none, and training refuses tools for it)
    model = str(cached_tiny_model("qwen2.5", tmp_path / "models"))
    plain = tr.train(tr.TrainConfig(model=model, data=[str(demo_data_dir())], out=str(tmp_path / "a"), **fast))
    monkeypatch.setattr(core.train.config, "load_dataset", with_tools)
    tooled = tr.train(tr.TrainConfig(model=model, data=[str(demo_data_dir())], out=str(tmp_path / "b"), **fast))
    assert run_tools(tmp_path / "a") is False and "tools" not in json.loads((tmp_path / "a" / "config.json").read_text())
    assert run_tools(tmp_path / "b") is True
    assert plain is not None and tooled is not None
