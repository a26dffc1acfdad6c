"""Ollama builds the training prompt on both of its template paths (issue 11).

Current Ollama (server/images.go shouldPreferChatTemplate, since v0.32.7) renders a chat
either with the Modelfile TEMPLATE (Go text/template, "go" path) or hands it to
llama-server, which renders the GGUF's embedded ``tokenizer.chat_template`` ("native"
path), and it turns thinking on by default for a model whose selected template can think
(server/routes.go). ``core.export.ollama`` models that selection from Ollama's source; these tests
render both paths per family with the arguments Ollama passes by default and compare them
with the prompt training used (``core.tokens.ChatEncoder``): the Go path through Go's own
text/template engine (tests/go), the native path through Jinja as llama.cpp's chat
handler (llama-cpp-python's Jinja2ChatFormatter) and transformers render it.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from core import chat_templates as ct
from core.model_folder import load_tokenizer_config
from core.paths import demo_model_dir

FIXTURES = Path(__file__).parent / "fixtures" / "models"

# family -> (model folder, HF architecture)
FAMILIES = {
    "qwen2.5": (FIXTURES / "Qwen2.5-0.5B-Instruct", "Qwen2ForCausalLM"),
    "qwen3": (FIXTURES / "Qwen3-0.6B", "Qwen3ForCausalLM"),
    "tinyllama": (FIXTURES / "TinyLlama-1.1B-Chat-v1.0", "LlamaForCausalLM"),
    "demo": (demo_model_dir(), "Qwen2ForCausalLM"),
}
if (FIXTURES / "Qwen3.5-0.8B" / "chat_template.jinja").is_file():  # the real Qwen3.5 tokenizer files
    FAMILIES["qwen3.5"] = (FIXTURES / "Qwen3.5-0.8B", "Qwen3_5ForConditionalGeneration")
GGUF_ARCH = {"Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "LlamaForCausalLM": "llama",
             "Qwen3_5ForConditionalGeneration": "qwen35"}

S = {"role": "system", "content": "You are a terse assistant. Réponds en une phrase."}
CONVERSATIONS = {
    "single-turn": [{"role": "user", "content": "What is the capital of France?"}],
    "multi-turn": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello. How can I help?"},
                   {"role": "user", "content": "Name three colours."},
                   {"role": "assistant", "content": "Red, green and blue."}, {"role": "user", "content": "One more?"}],
    "system": [S, {"role": "user", "content": "Summarise: the cat sat on the mat."}],
    "system-multi-turn": [S, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                          {"role": "user", "content": "And times 3?"}],
    "unicode": [{"role": "user", "content": "Grüße, 世界! 🎉 — ça va? ℝ𝔢𝔞𝔩 \u00a0tab\there"},
                {"role": "assistant", "content": "Très bien ✓ ありがとう"},
                {"role": "user", "content": "Ещё раз, по-русски: 你好 👋\nline two\n\n  indented"}],
    "json": [{"role": "system", "content": 'Answer only with JSON: {"name": str, "tags": [str]}'},
             {"role": "user", "content": 'Describe {"topic": "red fox", "n": 2}'},
             {"role": "assistant", "content": '{"name": "red fox", "tags": ["animal", "orange"]}'},
             {"role": "user", "content": "Now the {{ blue }} whale, with \"quotes\" and \\ backslash."}],
}


@pytest.fixture(scope="module")
def encoders():
    from core.tokens import ChatEncoder

    cache: dict = {}

    def get(family: str):
        if family not in cache:
            cache[family] = ChatEncoder(FAMILIES[family][0])
        return cache[family]

    return get


def export_of(family: str, thinking: bool = False):
    """(tokenizer config, Modelfile ChatFormat, embedded template, GGUF architecture) as an export makes them."""
    folder, arch = FAMILIES[family]
    cfg = load_tokenizer_config(folder)
    fmt = ct.chat_format_for(cfg, thinking=thinking)
    emb = ct.embedded_chat_template(cfg, thinking=thinking, architecture=arch)
    return cfg, fmt, emb, GGUF_ARCH[arch]


def setups(fmt, emb, arch, **kw):
    """Ollama as users have it: before the native path, current with defaults, current forced native."""
    return {label: ct.OllamaSetup(fmt.template, emb.template, architecture=arch, **{**extra, **kw})
            for label, extra in ct.OLLAMA_SCENARIOS}


def go_render(go_renderer, setup):
    think = ct.default_think(setup)
    return lambda template, msgs: go_renderer.render(template, msgs, think=think)


def _diff(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"at {i}: training {a[max(0, i - 30):i + 30]!r} / Ollama {b[max(0, i - 30):i + 30]!r}"


# --------------------------------------------------------------------------- both paths, every family

@pytest.mark.parametrize("conv", list(CONVERSATIONS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_both_paths_give_the_training_prompt(family, conv, encoders, go_renderer):
    messages = CONVERSATIONS[conv]
    want = encoders(family).render(messages, add_generation_prompt=True)
    cfg, fmt, emb, arch = export_of(family)
    paths = {}
    for label, setup in setups(fmt, emb, arch).items():
        path = ct.template_path(setup)
        paths[label] = path
        got = ct.ollama_prompt(setup, messages, go_render=go_render(go_renderer, setup),
                               tokens=ct.special_tokens(cfg))
        assert got == want, f"{family} {conv} {label} ({path} path): {_diff(want, got)}"
    # the exported template shows Ollama no extra ability, so current Ollama keeps the Go TEMPLATE;
    # forced native, llama-server renders the embedded template
    assert paths == {"ollama<0.32.7": "go", "ollama": "go", "ollama OLLAMA_GO_TEMPLATE=0": "native"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_llama_cpp_chat_handler_renders_the_embedded_template_like_training(family, encoders):
    """llama-cpp-python's Jinja chat handler (what `Llama(chat_format=None)` builds from a GGUF's
    tokenizer.chat_template) on the embedded template, with messages as llama-server passes them."""
    fmt_mod = pytest.importorskip("llama_cpp.llama_chat_format")
    cfg, fmt, emb, arch = export_of(family)
    tokens = ct.special_tokens(cfg)
    handler = fmt_mod.Jinja2ChatFormatter(emb.template, eos_token=tokens.get("eos_token", ""),
                                          bos_token=tokens.get("bos_token", ""))
    for name, messages in CONVERSATIONS.items():
        want = encoders(family).render(messages, add_generation_prompt=True)
        got = handler(messages=ct.llama_server_messages(messages)).prompt
        assert got == want, f"{family} {name}: {_diff(want, got)}"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_embedded_template_ignores_thinking_switches_and_shows_no_ability(family, encoders):
    cfg, fmt, emb, arch = export_of(family)
    assert emb.kind == "training"
    assert ct.chat_template_capabilities(emb.template) == set()
    tokens = ct.special_tokens(cfg)
    for messages in CONVERSATIONS.values():
        want = encoders(family).render(messages, add_generation_prompt=True)
        for flag in (True, False, None):
            kw = {} if flag is None else {"enable_thinking": flag}
            got = ct._compiled(emb.template).render(messages=messages, add_generation_prompt=True, **tokens, **kw)
            assert got == want, f"{family} enable_thinking={flag}"


# --------------------------------------------------------------------------- the model of Ollama itself

def test_original_qwen3_template_would_think_on_current_ollama(encoders):
    """What the issue measured: with Qwen3's own template in the GGUF, current Ollama prefers it (it can
    think, the TEMPLATE cannot), turns thinking on, and the prompt loses the empty think block training
    had: 0 of 6 conversations match. Older Ollama (Go path) matches 6 of 6."""
    cfg, fmt, _, arch = export_of("qwen3")
    original = ct.chat_template_of(cfg)
    assert ct.chat_template_capabilities(original) == {"tools", "thinking"}
    tokens = ct.special_tokens(cfg)
    current = ct.OllamaSetup(fmt.template, original, architecture=arch)
    older = ct.OllamaSetup(fmt.template, original, architecture=arch, version=(0, 32, 6))
    assert ct.template_path(current) == "native" and ct.default_think(current) is True
    assert ct.template_path(older) == "go" and ct.default_think(older) is None
    enc = encoders("qwen3")
    same_current = same_older = 0
    for messages in CONVERSATIONS.values():
        want = enc.render(messages, add_generation_prompt=True)
        got = ct.ollama_prompt(current, messages, tokens=tokens)
        assert got.endswith("<|im_start|>assistant\n") and want.endswith("<think>\n\n</think>\n\n")
        same_current += got == want
        same_older += ct.ollama_prompt(older, messages, tokens=tokens) == want
    assert (same_current, same_older) == (0, len(CONVERSATIONS))


def test_qwen25_original_template_takes_the_native_path():
    cfg, fmt, _, arch = export_of("qwen2.5")
    original = ct.chat_template_of(cfg)
    assert ct.chat_template_capabilities(original) == {"tools"}  # the word "tools" is enough
    setup = ct.OllamaSetup(fmt.template, original, architecture=arch)
    assert ct.template_path(setup) == "native" and ct.default_think(setup) is None
    # without a Modelfile TEMPLATE Ollama always renders the GGUF's template
    assert ct.template_path(ct.OllamaSetup(None, original, version=(0, 10, 0))) == "native"
    # OLLAMA_GO_TEMPLATE=1 keeps the TEMPLATE whatever the GGUF shows
    assert ct.template_path(ct.OllamaSetup(fmt.template, original, go_template_env=True)) == "go"


def test_qwen3_fine_tune_trained_thinking_off_does_not_think_by_default(encoders, go_renderer):
    cfg, fmt, emb, arch = export_of("qwen3")
    for label, setup in setups(fmt, emb, arch).items():
        assert ct.default_think(setup) is None, label  # Ollama does not turn thinking on
        got = ct.ollama_prompt(setup, CONVERSATIONS["single-turn"], go_render=go_render(go_renderer, setup),
                               tokens=ct.special_tokens(cfg))
        assert got.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n"), label
    # and the Go template shows no thinking ability to Ollama's parser either
    caps = go_renderer.capabilities(fmt.template)
    assert (caps["think_open"], caps["think_close"]) == ("", "")


def test_go_template_capabilities_match_gos_parser(go_renderer):
    """The Python model of goTemplateCapabilities against Go's own parse tree, for every template we write."""
    templates = []
    for family in FAMILIES:
        templates.append(export_of(family)[1].template)
    templates.append(export_of("qwen3", thinking=True)[1].template)
    templates.append("{{ range .Messages }}{{ .Content }}{{ end }}{{ if .Tools }}{{ .Tools }}{{ end }}{{ .Suffix }}")
    templates.append("{{ range .Messages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}"
                     "{{ .Content }}{{ end }}")
    for template in templates:
        go = go_renderer.capabilities(template)
        want = set()
        if "tools" in go["vars"]:
            want.add("tools")
        if "suffix" in go["vars"]:
            want.add("insert")
        if go["think_open"] and go["think_close"]:
            want.add("thinking")
        assert ct.go_template_capabilities(template) == want, template[:80]
        assert ct.go_template_think_tags(template) == (go["think_open"], go["think_close"]), template[:80]


def test_filter_think_tags_model():
    """server/routes.go filterThinkTags through thinking/parser.go, for the qwen3 family only."""
    setup = ct.OllamaSetup("{{ .Messages }}", None, architecture="qwen3")
    cases = {
        "plain answer": "plain answer",
        "  \n\n leading space kept": "  \n\n leading space kept",
        "   ": "",
        "": "",
        "<th": "",
        "<think>reasoning</think>\n\n  the answer": "the answer",
        "\n<think>\nstill thinking": "",
        "<thinker> is not a tag": "<thinker> is not a tag",
        "a <think>x</think> b": "a <think>x</think> b",
    }
    for content, kept in cases.items():
        msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": content},
                {"role": "user", "content": "q2"}, {"role": "assistant", "content": content}]
        out = ct.filter_think_tags(msgs, setup)
        assert out[1]["content"] == kept, content
        assert out[3]["content"] == content, "turns after the last user message are left alone"
    other = ct.OllamaSetup("{{ .Messages }}", None, architecture="llama")
    assert ct.filter_think_tags([{"role": "assistant", "content": "   "}, {"role": "user", "content": "q"}],
                                other)[0]["content"] == "   "
    named = ct.OllamaSetup("{{ .Messages }}", None, architecture="llama", name="me/deepseek-r1:7b")
    assert ct.filter_think_tags([{"role": "assistant", "content": "   "}, {"role": "user", "content": "q"}],
                                named)[0]["content"] == ""


def test_modelfile_system_reaches_both_paths(encoders, go_renderer):
    system = "Tu es concis."
    cfg, fmt, emb, arch = export_of("qwen2.5")
    messages = CONVERSATIONS["multi-turn"]
    want = encoders("qwen2.5").render([{"role": "system", "content": system}] + messages, add_generation_prompt=True)
    for label, setup in setups(fmt, emb, arch, system=system).items():
        got = ct.ollama_prompt(setup, messages, go_render=lambda t, m: go_renderer.render(t, m),
                               tokens=ct.special_tokens(cfg))
        assert got == want, label


# --------------------------------------------------------------------------- thinking on (reasoning data)

@pytest.mark.parametrize("family, kind, embedded, abilities", [
    ("qwen3", "qwen3-thinking", "training", {"thinking"}),
    # Qwen3.5's own template renders thinking-on chats as training did: it is embedded as it is
    ("qwen3.5", "qwen3.5-thinking", "original", {"thinking", "tools"}),
])
def test_thinking_on_is_consistent_on_both_paths(tokenizers_hf, go_renderer, family, kind, embedded, abilities):
    """A run trained on reasoning ("thinking": true): the Modelfile thinks (Ollama finds the tags), the GGUF
    embeds a template that can think, and both paths give the thinking-on prompt by default and the thinking-off
    one when the request says think=false. (Qwen3's thinking-on prompt ends bare, Qwen3.5's opens the block.)"""
    if family not in FAMILIES:
        pytest.skip(f"no {family} reference files")
    cfg, fmt, emb, arch = export_of(family, thinking=True)
    assert fmt.kind == kind and emb.kind == embedded
    assert ct.chat_template_capabilities(emb.template) == abilities  # Ollama parses its reasoning
    caps = go_renderer.capabilities(fmt.template)
    assert (caps["think_open"], caps["think_close"]) == ("<think>", "</think>")
    assert ct.go_template_capabilities(fmt.template) == {"thinking"}
    # the Jinja twin (what a derived export would embed) renders the same prompts
    assert ct.check_ollama_prompts(fmt, fmt.jinja, cfg, thinking=True, architecture=arch) == []
    tok = tokenizers_hf(family)
    tokens = ct.special_tokens(cfg)
    for messages in CONVERSATIONS.values():
        for think in (None, False):
            want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                           enable_thinking=think is not False)
            for label, setup in setups(fmt, emb, arch).items():
                if think is None:
                    assert ct.default_think(setup) is True, label
                t = ct.default_think(setup) if think is None else think
                got = ct.ollama_prompt(setup, messages, think=t, tokens=tokens,
                                       go_render=lambda tpl, m, t=t: go_renderer.render(tpl, m, think=t))
                assert got == want, f"{label} think={think}: {_diff(want, got)}"


@pytest.fixture(scope="module")
def tokenizers_hf():
    from transformers import AutoTokenizer

    cache: dict = {}

    def get(family: str):
        if family not in cache:
            cache[family] = AutoTokenizer.from_pretrained(str(FAMILIES[family][0]))
        return cache[family]

    return get


def test_unknown_templates_get_a_derived_embedded_template(encoders):
    """A template none of the known formats matches: the derived Go template and its Jinja twin."""
    alpaca = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
              "{% elif m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
              "{% elif m['role'] == 'assistant' %}### Response:\n{{ m['content'] + eos_token }}\n\n{% endif %}"
              "{% endfor %}{% if add_generation_prompt %}### Response:\n{% endif %}")
    cfg = {**load_tokenizer_config(FAMILIES["tinyllama"][0]), "chat_template": alpaca}
    emb = ct.embedded_chat_template(cfg, architecture="LlamaForCausalLM")
    fmt = ct.chat_format_for(cfg)
    # the original would hand llama.cpp's null content (an empty message) to `+`: the derived twin is embedded
    assert fmt.kind == "derived" and emb.kind == "training" and emb.template == fmt.jinja
    assert ct.check_ollama_prompts(fmt, fmt.jinja, cfg, architecture="llama") == []
    tokens = ct.special_tokens(cfg)
    for messages in CONVERSATIONS.values():
        want = ct.render_jinja(alpaca, messages, tokens=tokens)
        assert ct._compiled(emb.template).render(messages=messages, add_generation_prompt=True, **tokens) == want


def test_qwen35_trims_only_on_the_native_path(encoders, go_renderer):
    """Qwen3.5's template trims every message; a Go template cannot: the embedded template (llama.cpp,
    Ollama's native path) is exact for untrimmed text too, the Go TEMPLATE only for trimmed text."""
    if "qwen3.5" not in FAMILIES:
        pytest.skip("no Qwen3.5 reference files")
    cfg, fmt, emb, arch = export_of("qwen3.5")
    assert fmt.kind == "qwen3.5" and not fmt.exact_untrimmed
    messages = [{"role": "user", "content": "  padded  "}, {"role": "assistant", "content": "\nA\n"},
                {"role": "user", "content": "next"}]
    want = encoders("qwen3.5").render(messages, add_generation_prompt=True)
    native = ct.OllamaSetup(fmt.template, emb.template, architecture=arch, go_template_env=False)
    assert ct.ollama_prompt(native, messages, tokens=ct.special_tokens(cfg)) == want
    go = ct.OllamaSetup(fmt.template, emb.template, architecture=arch)
    got = ct.ollama_prompt(go, messages, go_render=go_render(go_renderer, go))
    assert got != want and got.replace("  padded  ", "padded").replace("\nA\n", "A") == want
