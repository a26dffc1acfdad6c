"""core.tokens on the real Qwen2.5, Qwen3 and TinyLlama tokenizers: training token ids are
exactly what inference feeds and produces, and the loss mask covers every assistant turn
(content and end-of-turn token) and nothing else.

References: for Qwen (byte-level BPE, where transformers and llama.cpp agree, see
test_gguf_export) ``apply_chat_template(tokenize=True)``; for TinyLlama (SentencePiece)
llama.cpp itself on an exported GGUF when llama-cpp-python is installed, and always
SentencePiece run the way llama.cpp runs it."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from core.data import ChatRecord
from core.events import TuneloomError
from core.tokens import ChatEncoder, token_stats

MODELS_DIR = Path(__file__).resolve().parent / "fixtures" / "models"
NAMES = {"qwen2.5": "Qwen2.5-0.5B-Instruct", "qwen3": "Qwen3-0.6B", "tinyllama": "TinyLlama-1.1B-Chat-v1.0"}
TOKENIZER_FILES = ("tokenizer_config.json", "generation_config.json", "special_tokens_map.json", "tokenizer.model",
                   "tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json")
EOT = {"qwen2.5": "<|im_end|>", "qwen3": "<|im_end|>", "tinyllama": "</s>"}

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    [{"role": "system", "content": "You are  terse."},
     {"role": "user", "content": "Write  double spaces\n    and a code indent"},
     {"role": "assistant", "content": "def f(x):\n    return x  # two  spaces\n\n\tdone"},
     {"role": "user", "content": "Again?"},
     {"role": "assistant", "content": "  leading spaces, 🚀 emoji, 中文 and café."}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": "\nstarts with a newline"},
     {"role": "user", "content": "e"}, {"role": "assistant", "content": "ends with spaces   "}],
]


def _copy_tokenizer(src: Path, dest: Path, chat_template: str | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    if chat_template is not None:
        cfg = json.loads((dest / "tokenizer_config.json").read_text())
        cfg["chat_template"] = chat_template
        (dest / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dest


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tokenizer-only model folders (no weights), tokenizer.json written once for speed."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for key, name in NAMES.items():
        d = _copy_tokenizer(MODELS_DIR / name, root / name)
        if (d / "vocab.json").is_file() and not (d / "tokenizer.json").is_file():
            AutoTokenizer.from_pretrained(str(d)).backend_tokenizer.save(str(d / "tokenizer.json"))
        out[key] = d
    return out


@pytest.fixture(scope="session")
def encoders(model_dirs) -> dict[str, ChatEncoder]:
    return {k: ChatEncoder(d) for k, d in model_dirs.items()}


@pytest.fixture(scope="session")
def tinyllama_gguf(tmp_path_factory):
    """llama.cpp's own tokenizer for TinyLlama, via a GGUF exported by core.export.gguf."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from core.export.gguf import export_gguf
    from fixtures.tiny_models import cached_tiny_model

    model = cached_tiny_model("tinyllama", tmp_path_factory.getbasetemp() / "tiny-models")
    path = export_gguf(model, tmp_path_factory.mktemp("gguf-tok") / "tinyllama.gguf", "f16")["path"]
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    yield llm
    getattr(llm, "close", lambda: None)()


def hf_chat_ids(enc: ChatEncoder, messages, add_generation_prompt: bool) -> list[int]:
    out = enc.tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                      **enc.template_kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def spm_reference(enc: ChatEncoder, text: str) -> list[int]:
    """SentencePiece itself (dummy prefix on), each run of text between special tokens on
    its own: how llama.cpp tokenizes a prompt (a space before text that starts the prompt
    or follows a special token)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(enc.model_dir / "tokenizer.model"))
    specials = {"<unk>": 0, "<s>": 1, "</s>": 2}
    ids: list[int] = []
    for part in re.split("(<unk>|<s>|</s>)", text):
        if part in specials:
            ids.append(specials[part])
        elif part:
            ids.extend(sp.encode(part))
    return ids


def runs(e) -> list[list[int]]:
    """The trained tokens, as contiguous runs."""
    out, cur = [], []
    for t, m in zip(e.ids, e.mask):
        if m:
            cur.append(t)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


# --------------------------------------------------------------------------- training == inference

@pytest.mark.parametrize("name", list(NAMES))
@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
def test_training_sequence_is_inference_prompt_plus_answer(encoders, name, conv):
    enc = encoders[name]
    msgs = CONVERSATIONS[conv]
    e = enc.encode(msgs)
    prompt = enc.prompt_ids(msgs[:-1])
    assert e.ids[: len(prompt)] == prompt
    eot = enc.tok.convert_tokens_to_ids(EOT[name])
    assert e.ids[-1] == eot and eot in enc.eos_ids and e.ids.count(eot) == prompt.count(eot) + 1
    assert all(e.mask[len(prompt):]) and not e.mask[0]
    answer = e.ids[len(prompt):]
    if name == "tinyllama":
        # llama.cpp's rules: BOS in front; the answer continues the prompt's last text run
        assert prompt[0] == enc.bos_id == 1 and prompt.count(1) == 1
        assert prompt == [1] + spm_reference(enc, enc.render(msgs[:-1], True))
    else:
        assert prompt == hf_chat_ids(enc, msgs[:-1], True)
        assert enc.tok.decode(answer, skip_special_tokens=False) == msgs[-1]["content"] + EOT[name]
        # the training sequence is the start of the tokenized conversation (then only "\n")
        full = hf_chat_ids(enc, msgs, False)
        assert full[: len(e.ids)] == e.ids and enc.tok.decode(full[len(e.ids):]) == "\n"


@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
def test_tinyllama_matches_llama_cpp(encoders, tinyllama_gguf, conv):
    enc, llm = encoders["tinyllama"], tinyllama_gguf
    msgs = CONVERSATIONS[conv]
    for k in range(1, len(msgs) + 1):
        if msgs[k - 1]["role"] == "assistant":  # every prompt inference would see in this chat
            text = enc.render(msgs[: k - 1], True)
            assert enc.prompt_ids(msgs[: k - 1]) == llm.tokenize(text.encode(), add_bos=True, special=True)
    e = enc.encode(msgs)
    full = llm.tokenize(enc.render(msgs, False).encode(), add_bos=True, special=True)
    assert full[: len(e.ids)] == e.ids  # then only the template's trailing newline
    for text in ["  double", "x\n    four-space indent", "a\t\tb   c", " lead", "trail  ", "🚀 中文 café", "<s>x</s>y"]:
        assert enc.tokenize(text)[0] == llm.tokenize(text.encode(), add_bos=False, special=True), text


def test_tinyllama_traps_are_real(encoders):
    """What transformers would have given: no BOS, other whitespace splits, no space after </s>."""
    enc = encoders["tinyllama"]
    msgs = CONVERSATIONS[1]
    hf = hf_chat_ids(enc, msgs[:-1], True)
    ours = enc.prompt_ids(msgs[:-1])
    assert hf[0] != enc.bos_id and ours[0] == enc.bos_id
    assert hf != ours[1:]
    assert enc.tok.encode("yo  double", add_special_tokens=False) != enc.tokenize("yo  double", False)[0]
    # the answer is a continuation: no SentencePiece space in front of it
    e = enc.encode(CONVERSATIONS[0])
    assert enc.tok.convert_ids_to_tokens(e.ids[-3:]) == ["Hello", "!", "</s>"]


def test_qwen3_prompt_has_empty_think_block_and_answer_follows(encoders):
    enc = encoders["qwen3"]
    msgs = CONVERSATIONS[0]
    prompt = enc.prompt_ids(msgs[:-1])
    think = enc.tok.encode("<think>\n\n</think>\n\n", add_special_tokens=False)
    assert prompt[-len(think):] == think
    e = enc.encode(msgs)
    im_end = enc.tok.convert_tokens_to_ids("<|im_end|>")
    assert e.ids == prompt + enc.tok.encode("Hello!", add_special_tokens=False) + [im_end]
    assert enc.tok.decode([t for t, m in zip(e.ids, e.mask) if m], skip_special_tokens=False) == "Hello!<|im_end|>"


def test_qwen3_template_rewriting_earlier_turns(encoders):
    """Qwen3 drops reasoning from earlier turns and gives only the last one a think block:
    earlier turns are trained as the history shows them, the last as inference renders it."""
    enc = encoders["qwen3"]
    msgs = [{"role": "user", "content": "one"},
            {"role": "assistant", "content": "<think>secret plan</think>visible answer"},
            {"role": "user", "content": "two"}, {"role": "assistant", "content": "second"}]
    e = enc.encode(msgs)
    prompt = enc.prompt_ids(msgs[:-1])
    assert e.ids[: len(prompt)] == prompt
    assert "secret" not in enc.tok.decode(e.ids)
    assert [enc.tok.decode(r, skip_special_tokens=False) for r in runs(e)] == \
        ["visible answer<|im_end|>", "second<|im_end|>"]


# --------------------------------------------------------------------------- masks

@pytest.mark.parametrize("name", list(NAMES))
def test_every_assistant_turn_is_trained_never_headers(encoders, name):
    enc = encoders[name]
    msgs = CONVERSATIONS[2]
    answers = [m["content"] for m in msgs if m["role"] == "assistant"]
    e = enc.encode(msgs)
    trained = runs(e)
    assert len(trained) == 3
    eot = enc.tok.convert_tokens_to_ids(EOT[name])
    assert all(r[-1] == eot for r in trained)
    if name == "tinyllama":
        # each run is the turn's text (as a continuation of its header) and </s>
        assert trained[0] == enc.tokenize("b", False)[0] + [eot]
        assert enc.decode(trained[1]) == answers[1]
    else:
        texts = [enc.tok.decode(r, skip_special_tokens=False) for r in trained]
        assert texts[0] == "b<|im_end|>" and texts[2] == "ends with spaces   <|im_end|>"
        assert texts[1] in ("\nstarts with a newline<|im_end|>", "starts with a newline<|im_end|>")
        header = enc.tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
        assert not any(e.mask[i] for i in range(len(e.ids)) if e.ids[i:i + len(header)] == header)

    last = enc.encode(msgs, last_turn_only=True)
    assert last.ids == e.ids and runs(last) == trained[-1:]
    every = enc.encode(msgs, mask_prompt=False)
    assert every.ids == e.ids and every.mask == [False] + [True] * (len(e.ids) - 1)


def test_plain_text_is_trained_whole(encoders):
    for name, enc in encoders.items():
        e = enc.encode([{"role": "assistant", "content": "Just some text."}])
        assert e.ids[-1] == enc.eos_id and e.mask == [False] + [True] * (len(e.ids) - 1)
        assert (e.ids[0] == enc.bos_id) == (name == "tinyllama")


def test_template_without_end_of_turn_gets_eos(model_dirs, tmp_path):
    d = _copy_tokenizer(model_dirs["qwen2.5"], tmp_path / "plain",
                        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                        "{% if add_generation_prompt %}assistant:{% endif %}")
    enc = ChatEncoder(d)
    e = enc.encode(CONVERSATIONS[0])
    assert enc.tok.decode([t for t, m in zip(e.ids, e.mask) if m], skip_special_tokens=False) == " Hello!<|im_end|>"
    assert e.ids[: len(enc.prompt_ids(CONVERSATIONS[0][:1]))] == enc.prompt_ids(CONVERSATIONS[0][:1])


def test_template_that_writes_bos_gets_no_second_one(model_dirs, tmp_path):
    d = _copy_tokenizer(model_dirs["tinyllama"], tmp_path / "bos",
                        "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}"
                        "{% if add_generation_prompt %}[assistant]{% endif %}")
    enc = ChatEncoder(d)
    e = enc.encode(CONVERSATIONS[0])
    assert e.ids[0] == 1 and e.ids.count(1) == 1 and e.ids[-1] == 2


def test_encoder_errors(model_dirs, tmp_path):
    with pytest.raises(TuneloomError, match="tokenizer"):
        ChatEncoder(tmp_path / "missing")
    cfg = json.loads((model_dirs["qwen2.5"] / "tokenizer_config.json").read_text())
    cfg.pop("chat_template")
    d = _copy_tokenizer(model_dirs["qwen2.5"], tmp_path / "base")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(TuneloomError, match="no chat template"):
        ChatEncoder(d)


# --------------------------------------------------------------------------- statistics

def test_token_stats(encoders):
    enc = encoders["qwen2.5"]
    records = [ChatRecord(c) for c in CONVERSATIONS] + [ChatRecord(CONVERSATIONS[0])]
    encoded = [enc.encode(r.messages) for r in records]
    lengths = [len(x.ids) for x in encoded]
    st = token_stats(enc, records, max_seq_len=sorted(lengths)[1])
    assert st["lengths"] == lengths and st["total"] == sum(lengths)
    assert (st["min"], st["max"]) == (min(lengths), max(lengths))
    assert st["median"] in lengths and st["p95"] == max(lengths)
    assert st["truncated"] == sum(n > sorted(lengths)[1] for n in lengths) == 2
    # issue 26: what is trained after cutting at max_seq_len, over all the data's tokens
    cap = sorted(lengths)[1]
    assert st["trained"] == sum(sum(x.mask[:cap]) for x in encoded) < sum(x.trained for x in encoded)
    assert st["cut"] == sum(n - cap for n in lengths if n > cap) > 0
    assert st["trained_share"] == pytest.approx(st["trained"] / sum(lengths))
    assert 0 < st["trained_share"] < 0.5
    assert token_stats(enc, [], 10)["total"] == 0


# --------------------------------------------------------------------------- properties

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# whitespace runs, newlines, tabs, SentencePiece's own space mark, multi-byte text, bits of markup
TEXT = st.lists(st.sampled_from(list("ab xy\n\t\u2581é中🚀<|>/") + ["  ", "    ", "\n\n", "<s>", "</s>", "<unk>"]),
                max_size=25).map("".join)
CONTENT = st.lists(st.sampled_from(list("ab xy\n\t\u2581é中🚀.{}") + ["  ", "    ", "\n\n", "word", " Word"]),
                   min_size=1, max_size=20).map("".join).filter(str.strip)


@PROPERTY
@given(text=TEXT)
def test_sentencepiece_like_llama_cpp_on_random_text(encoders, tinyllama_gguf, text):
    enc = encoders["tinyllama"]
    assert enc.tokenize(text)[0] == tinyllama_gguf.tokenize(text.encode(), add_bos=False, special=True)


@PROPERTY
@given(turns=st.lists(st.tuples(CONTENT, CONTENT), min_size=1, max_size=3), system=st.none() | CONTENT)
def test_random_chats_encode_like_inference(encoders, turns, system):
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        m for u, a in turns for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]
    for name, enc in encoders.items():
        e = enc.encode(msgs)
        prompt = enc.prompt_ids(msgs[:-1])
        assert e.ids[: len(prompt)] == prompt, name
        assert e.ids[-1] == enc.tok.convert_tokens_to_ids(EOT[name]) and all(e.mask[len(prompt):])
        assert len(runs(e)) <= len(turns) and e.trained > len(e.ids) - len(prompt) - 1
        assert enc.encode(msgs, last_turn_only=True).trained == len(e.ids) - len(prompt)
