"""The Modelfile TEMPLATE builds, character for character, the prompt used in training.

Proof by rendering: the Go template runs in Go's own text/template engine
(tests/go/render.go, fed the way Ollama feeds it: Modelfile SYSTEM prepended,
consecutive roles merged, .Messages/.System/.Response...), the Jinja template runs
in transformers' ``apply_chat_template`` on the real tokenizers of
tests/fixtures/models, and the two outputs must be equal for every conversation.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.export import ollama as ol
from core import chat_templates as ct
from core.events import TuneloomError

FIXTURES = Path(__file__).parent / "fixtures" / "models"
DEMO_CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
               "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
               "{% endif %}")

# model id -> (fixture folder, chat template override, expected kind)
MODELS = {
    "qwen2.5": ("Qwen2.5-0.5B-Instruct", None, "chatml"),
    "qwen3": ("Qwen3-0.6B", None, "qwen3"),
    "tinyllama": ("TinyLlama-1.1B-Chat-v1.0", None, "zephyr"),
    "demo-chatml": ("Qwen2.5-0.5B-Instruct", DEMO_CHATML, "chatml"),
}

CONTENTS = ["Hello", "", "Grüße, 世界! 🎉 ça va — ✓", "line one\nline two\n\n  indented\n",
            "{{ .Content }} {{- end }} {% if x %}{{ y }}{% endif %} }}{{", '{"json": [1, 2, {"a": "b"}]}',
            "  padded with spaces  ", "\n\nleading newlines", "trailing newline\n", "tab\there\r\nCRLF",
            'quote " and back\\slash', "<|im_end|> </s> <|user|> literal markers",
            "ℝ𝔢𝔞𝔩 𝓾𝓷𝓲𝓬𝓸𝓭𝓮 \u200b\u00a0"]
SYSTEMS = [None, "You are a helpful assistant.", "", "Système : réponds en JSON.\n{\"format\": \"json\"}"]


def _conversations() -> list[list[dict]]:
    convs = []
    k = 0
    for system in SYSTEMS:
        for turns in range(1, 5):
            msgs = [] if system is None else [{"role": "system", "content": system}]
            for t in range(turns):
                msgs.append({"role": "user", "content": CONTENTS[k % len(CONTENTS)]})
                k += 1
                if t < turns - 1:
                    msgs.append({"role": "assistant", "content": CONTENTS[k % len(CONTENTS)]})
                    k += 1
            convs.append(msgs)
    # ending on an assistant turn (the generation prompt follows it), and a system turn mid-conversation
    convs.append([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])
    convs.append([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\n\n  Hello!\n"}])
    convs.append([{"role": "system", "content": "S"}, {"role": "user", "content": "u"},
                  {"role": "assistant", "content": "\na"}])
    convs.append([{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"},
                  {"role": "system", "content": "new instructions"}, {"role": "user", "content": "u2"}])
    convs.append([{"role": "assistant", "content": "I start."}, {"role": "user", "content": "ok"}])
    return convs


CONVERSATIONS = _conversations()


@pytest.fixture(scope="session")
def tokenizers():
    from transformers import AutoTokenizer

    cache: dict = {}

    def get(folder: str):
        if folder not in cache:
            cache[folder] = AutoTokenizer.from_pretrained(str(FIXTURES / folder))
        return cache[folder]

    return get


def _config(model: str) -> dict:
    folder, override, _ = MODELS[model]
    cfg = json.loads((FIXTURES / folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    if override:
        cfg["chat_template"] = override
    return cfg


def _hf(tokenizers, model: str, messages, *, add_generation_prompt: bool = True, template: str | None = None):
    folder, override, _ = MODELS[model]
    return tokenizers(folder).apply_chat_template(
        messages, chat_template=template or override, tokenize=False, add_generation_prompt=add_generation_prompt,
        enable_thinking=False)


def _first_diff(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"first difference at {i}: HF {a[max(0, i - 30):i + 30]!r} / Go {b[max(0, i - 30):i + 30]!r}"


# --------------------------------------------------------------------------------------
# The known formats against the real tokenizers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(MODELS))
def test_kind_and_stops(model):
    fmt = ct.chat_format_for(_config(model))
    assert fmt.kind == MODELS[model][2] == ct.chat_template_kind(_config(model))
    template, stops = ct.go_template_for(_config(model))
    assert template == fmt.template and stops == list(fmt.stops)
    eos = _config(model)["eos_token"]
    assert eos in stops, "the end-of-turn token must stop generation"
    if fmt.kind in ("chatml", "qwen3"):
        assert {"<|im_start|>", "<|im_end|>"} <= set(stops)
    if fmt.kind == "zephyr":
        assert stops[0] == "</s>" and {"<|user|>", "<|assistant|>", "<|system|>"} <= set(stops)


@pytest.mark.parametrize("model", list(MODELS))
def test_go_template_equals_hf_chat_template(model, go_renderer, tokenizers):
    """Go-rendered prompt == apply_chat_template(add_generation_prompt=True) for every conversation."""
    fmt = ct.chat_format_for(_config(model))
    for conv in CONVERSATIONS:
        want = _hf(tokenizers, model, conv)
        got = go_renderer.render(fmt.template, conv)
        assert got == want, f"{model} {conv!r}: {_first_diff(want, got)}"
        assert fmt.render(conv) == want, "the Python mirror used at export time must agree too"


def test_qwen_details_reproduced(go_renderer, tokenizers):
    """The two details most often lost: Qwen2.5's default system prompt, Qwen3's empty think block."""
    conv = [{"role": "user", "content": "Hi"}]
    q25 = go_renderer.render(ct.chat_format_for(_config("qwen2.5")).template, conv)
    assert q25.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                          "assistant.<|im_end|>\n<|im_start|>user\nHi")
    assert q25 == _hf(tokenizers, "qwen2.5", conv)
    demo = go_renderer.render(ct.chat_format_for(_config("demo-chatml")).template, conv)
    assert demo == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "the demo ChatML has no default"
    q3 = go_renderer.render(ct.chat_format_for(_config("qwen3")).template, conv)
    assert q3 == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    # a past assistant turn has no think block, the last one after the last user message has one
    past = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert "<|im_start|>assistant\nb<|im_end|>" in go_renderer.render(ct.chat_format_for(_config("qwen3")).template,
                                                                        past)


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)


@st.composite
def _alternating(draw):
    msgs = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(_text)})
    turns = draw(st.integers(1, 4))
    for t in range(turns):
        msgs.append({"role": "user", "content": draw(_text)})
        if t < turns - 1 or draw(st.booleans()):
            msgs.append({"role": "assistant", "content": draw(_text)})
    return msgs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv=_alternating())
def test_go_template_equals_hf_on_random_text(conv, go_renderer, tokenizers):
    """Property check over arbitrary text, control characters included."""
    for model in MODELS:
        if model == "qwen3" and any("</think>" in m["content"] for m in conv):
            continue  # documented limitation: reasoning traces in assistant turns
        fmt = ct.chat_format_for(_config(model))
        want = _hf(tokenizers, model, conv)
        assert go_renderer.render(fmt.template, conv) == want, model


# --------------------------------------------------------------------------------------
# The Modelfile: what Ollama reads back from it
# --------------------------------------------------------------------------------------


def _read_modelfile(text: str) -> dict:
    """The commands of a Modelfile as Ollama's parser reads them (for the subset Tuneloom writes)."""
    out: dict = {"parameters": [], "comments": []}
    pos = 0
    for m in re.finditer(r'^(\w+) ("""(.*?)"""|"([^"\n]*)"|(\S+))( ([^\n]*))?$', text, re.S | re.M):
        assert text[pos:m.start()].strip("\n").startswith("#") or not text[pos:m.start()].strip(), \
            f"unparsed text {text[pos:m.start()]!r}"
        pos = m.end()
        cmd = m.group(1).upper()
        value = next(g for g in (m.group(3), m.group(4), m.group(5)) if g is not None)
        if cmd == "PARAMETER":
            raw = m.group(7)
            out["parameters"].append((value, raw[1:-1] if raw.startswith('"') and raw.endswith('"') else raw))
        else:
            assert cmd not in out, f"{cmd} twice"
            out[cmd] = value
    return out


@pytest.mark.parametrize("model", list(MODELS))
def test_modelfile_round_trip(model, tmp_path, go_renderer, tokenizers):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    mf = tmp_path / "Modelfile"
    system = "Tu es concis.\nRéponds en français {sans} \"fioritures\"."
    licence = 'Apache License\nVersion 2.0, January 2004\n"License" shall mean...'
    text = ol.write_modelfile(mf, gguf, _config(model), system=system, num_ctx=1024, temperature=0.3,
                              license_text=licence)
    assert mf.read_text(encoding="utf-8") == text
    assert not list(tmp_path.glob(".Modelfile.*")), "atomic write leaves no temporary file"
    parsed = _read_modelfile(text)
    fmt = ct.chat_format_for(_config(model))
    assert parsed["FROM"] == "./model.gguf"
    assert parsed["TEMPLATE"] == fmt.template
    assert parsed["SYSTEM"] == system and parsed["LICENSE"] == licence
    params = parsed["parameters"]
    assert [v for k, v in params if k == "stop"] == list(fmt.stops)
    assert ("num_ctx", "1024") in params and ("temperature", "0.3") in params
    # Ollama puts SYSTEM in front of a conversation that has no system message
    for conv in CONVERSATIONS:
        if conv[0]["role"] == "system":
            continue
        want = _hf(tokenizers, model, [{"role": "system", "content": system}] + conv)
        assert go_renderer.render(parsed["TEMPLATE"], conv, system=parsed["SYSTEM"]) == want
    # and /api/generate builds [system, user prompt]
    want = _hf(tokenizers, model, [{"role": "system", "content": system}, {"role": "user", "content": "Hi?"}])
    assert go_renderer.render(parsed["TEMPLATE"], mode="generate", prompt="Hi?", system=system) == want


def test_modelfile_defaults_and_paths(tmp_path):
    cfg = _config("qwen2.5")
    sub = tmp_path / "my exports é"
    sub.mkdir()
    gguf = sub / "tuned model.gguf"
    gguf.write_bytes(b"GGUF")
    text = ol.write_modelfile(tmp_path / "mf" / "Modelfile", gguf, cfg)
    parsed = _read_modelfile(text)
    assert parsed["FROM"] == "../my exports é/tuned model.gguf"  # relative to the Modelfile, quoted for spaces
    assert ("num_ctx", "8192") in parsed["parameters"], "Qwen's 131072 context is capped"
    assert ("temperature", str(ol.DEFAULT_TEMPERATURE)) in parsed["parameters"]
    assert "SYSTEM" not in parsed and "LICENSE" not in parsed
    assert ("num_ctx", "2048") in _read_modelfile(
        ol.write_modelfile(tmp_path / "Modelfile", gguf, _config("tinyllama")))["parameters"]


def test_modelfile_refuses_what_it_cannot_hold(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(TuneloomError, match="three double quotes"):
        ol.write_modelfile(tmp_path / "Modelfile", gguf, _config("qwen2.5"), system='say """hi"""')
    with pytest.raises(TuneloomError, match="non-printable"):
        ol.write_modelfile(tmp_path / "Modelfile", gguf, _config("qwen2.5"), system="bell \x07")
    assert not (tmp_path / "Modelfile").exists()


def test_ollama_create_command(tmp_path):
    cmd = ol.ollama_create_command(tmp_path / "dir with space" / "Modelfile", "my-model")
    assert cmd == f"ollama create my-model -f '{tmp_path / 'dir with space' / 'Modelfile'}'"


# --------------------------------------------------------------------------------------
# Derived templates, and refusals
# --------------------------------------------------------------------------------------

ALPACA = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
          "{% elif m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
          "{% elif m['role'] == 'assistant' %}### Response:\n{{ m['content'] + eos_token }}\n\n{% endif %}"
          "{% endfor %}{% if add_generation_prompt %}### Response:\n{% endif %}")
HEADERS = ("{% if messages[0]['role'] != 'system' %}<|start|>system\n\"Default\" {persona} \\ ✓<|end|>\n{% endif %}"
           "{% for message in messages %}<|start|>{{ message['role'] }}\n{{ message['content'] }}<|end|>\n"
           "{% endfor %}{% if add_generation_prompt %}<|start|>assistant\n{% endif %}")
ODD_MARKERS = ("{% for m in messages %}{{ '\u00a0{{[' + m['role'] + ']\x07\t' }}{{ m['content'] }}{{ '\u2028}}\n' }}"
               "{% endfor %}{% if add_generation_prompt %}{{ '\u00a0{{[assistant]\x07\t' }}{% endif %}")


@pytest.mark.parametrize("template", [ALPACA, HEADERS, ODD_MARKERS], ids=["alpaca", "headers", "odd-markers"])
def test_derived_template_equals_jinja(template, go_renderer, tokenizers):
    cfg = {**_config("tinyllama"), "chat_template": template}
    fmt = ct.chat_format_for(cfg)
    assert fmt.kind == "derived"
    assert "</s>" in fmt.stops
    for conv in CONVERSATIONS:
        want = _hf(tokenizers, "tinyllama", conv, template=template)
        got = go_renderer.render(fmt.template, conv)
        assert got == want, f"{conv!r}: {_first_diff(want, got)}"
    if template is ALPACA:
        assert any("BOS" in n for n in fmt.notes)
    if template is ODD_MARKERS:  # non-printable markers travel as Go escapes, so the Modelfile keeps them
        assert "\x07" not in fmt.template and "\u2028" not in fmt.template


@pytest.mark.parametrize("template, reason", [
    ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | upper }}{% endfor %}"
     "{% if add_generation_prompt %}<assistant>{% endif %}", "exactly once"),
    ("{% for m in messages %}{% if loop.index0 % 2 == 0 %}A: {% else %}B: {% endif %}{{ m['content'] }}\n"
     "{% endfor %}{% if add_generation_prompt %}B: {% endif %}", "differently"),
    ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}<|eot|>{% endfor %}"
     "{% if add_generation_prompt %}<|assistant|>{% endif %}", "prompts differ"),
    ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
     "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}", "System role not supported"),
    ("{% for m in messages %}{% if m['role'] == 'user' and loop.last %}[LAST]{% endif %}{{ m['role'] }}: "
     "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}", "what follows"),
], ids=["uppercase", "index-parity", "trim", "rejects-system", "last-message-special"])
def test_refuses_templates_it_cannot_reproduce(template, reason):
    with pytest.raises(ct.TemplateNotSupported, match=re.escape(reason)) as err:
        ct.chat_format_for({"chat_template": template, "eos_token": "</s>"})
    assert err.value.hint, "a refusal says what to do next"


def test_no_chat_template_is_refused():
    with pytest.raises(ct.TemplateNotSupported, match="no chat template"):
        ct.go_template_for({"eos_token": "</s>"})


def test_renderer_follows_ollama(go_renderer):
    """The harness itself: Ollama merges consecutive roles and refuses nothing a legacy template would need."""
    tpl = "{{ range .Messages }}[{{ .Role }}]{{ .Content }}{{ end }}|{{ .System }}"
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert go_renderer.render(tpl, msgs, system="S") == "[system]S[user]a\n\nb|S"
    with pytest.raises(RuntimeError, match="does not use .Messages"):
        go_renderer.render("{{ .Prompt }}", msgs)
