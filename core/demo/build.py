"""Build the bundled demo model (resources/demo/model) and sample data from scratch.

Run ``python -m core.demo.build`` (or by its old name, ``python -m core.demo_build``; a few minutes on
2 CPU cores). The result is a standard Hugging Face folder: Qwen2 architecture, float16 safetensors, its own
byte-level BPE tokenizer (Qwen2's pre-tokenizer, ChatML special tokens), a ChatML
chat template. The model is pretrained with MLX on chats about the synthetic world in
:mod:`core.demo.world`: its facts in prose, the same facts as JSON records of other
schemas than the sample data's, and copying words back from the question.

``--tool-calls`` adds a second stage (:func:`tool_stage`): a tool-calling template of Qwen2.5's form
(by default its short form, TOOLS_TEMPLATE_SHORT), and pretraining continued on the same kinds of chats
with one in four replaced by calls to a few functions whose arguments copy names and categories from the
question. The bundled model is ``--tool-calls --first-stage`` the first stage's model (tests/test_demo_tools.py
has the measurements). ``--first-stage DIR`` takes
the first stage from a model folder already built (e.g. the bundled one) instead of training it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shutil
import tempfile
import time
from pathlib import Path

import core  # noqa: F401  (OpenBLAS before MLX)
from core.demo import world
from core.paths import demo_dir

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
                   " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|im_start|>assistant\\n' }}{% endif %}")
# The template of a build with tool calls: ChatML with Qwen2.5's tool calling (`tools` in a system
# block, calls as <tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>, tool results as
# <tool_response> in a user turn). One change from Qwen2.5's template: no default system prompt
# ("You are Qwen...") when the conversation has none, so a conversation without tools renders as
# plain ChatML, exactly as CHATML_TEMPLATE; with tools and no system message the tool block opens
# with the demo's own system prompt.
TOOLS_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- '" + "You are a helpful assistant." + "' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")
# The same template with Qwen2.5's long English instructions around the tool list left out (the
# system block is the system prompt, then the tools in <tools></tools>): the same tags, calls and
# results, and the question ~170 tokens into a one-tool chat instead of ~400 (the demo tokenizer
# spells most of those instructions letter by letter).
TOOLS_TEMPLATE_SHORT = TOOLS_TEMPLATE.replace(
    "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>", "\\n\\n<tools>").replace(
    "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n", "\\n</tools><|im_end|>\\n")
TOOL_TEMPLATES = {"qwen2.5": TOOLS_TEMPLATE, "short": TOOLS_TEMPLATE_SHORT}
MODEL_SHAPE = dict(hidden_size=128, num_hidden_layers=4, intermediate_size=384, num_attention_heads=4,
                   num_key_value_heads=2)
BUILD_STEPS = 1200
CORPUS_SIZE = 8000
# The tool stage of a build with tool calls: continued pretraining on world.tool_corpus. Measured
# (tests/test_demo_tools.py's docstring): from the first stage's model, with the short template, the
# learning test gives base 0.0, fine-tune 1.0; with Qwen2.5's full template (names ~400 tokens into
# a tool chat) 0.25.
TOOL_STEPS = 600
TOOL_CORPUS_SIZE = 6000
TOOL_LR = 1e-3
TOOL_EVERY = 4  # one chat in TOOL_EVERY of the tool stage's corpus is a tool chat


def _say(text: str) -> None:
    print(text, flush=True)


def render_chatml(messages: list[dict]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def build_tokenizer(texts: list[str], dest: Path, vocab_size: int = 1024) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens(SPECIALS)
    tok.save(str(dest / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for t, i in ids.items()}
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": None,
        "chat_template": CHATML_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
        "errors": "replace", "model_max_length": 1024, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }, indent=2) + "\n")


def write_config(dest: Path, vocab_size: int, ids: dict[str, int], shape: dict | None = None) -> dict:
    shape = shape or MODEL_SHAPE
    cfg = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "hidden_act": "silu",
        "initializer_range": 0.02, "max_position_embeddings": 1024, "max_window_layers": shape["num_hidden_layers"],
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "sliding_window": 1024, "tie_word_embeddings": True,
        "torch_dtype": "float16", "use_cache": True, "use_sliding_window": False, "vocab_size": vocab_size,
        **shape,
    }
    (dest / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (dest / "generation_config.json").write_text(json.dumps({
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"], "do_sample": False}, indent=2) + "\n")
    return cfg


def set_chat_template(model_dir: Path, template: str) -> None:
    cfg_file = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["chat_template"] = template
    cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")


def pretrain(model_dir: Path, corpus: list[dict], steps: int, batch: int, lr: float, seed: int, log=_say,
             init: bool = False, stage: str = "pretrain") -> dict:
    """Train the model in ``model_dir`` on ``corpus`` (records with ``messages``, and ``tools`` for
    a tool chat, encoded as the trainer encodes them) and save its weights there. ``init``: start
    from the weights already saved there (a build's tool stage), not from random ones."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm.models import qwen2
    from safetensors.numpy import save_file

    from core.tokens import ChatEncoder

    enc = ChatEncoder(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    args = qwen2.ModelArgs.from_dict(cfg)
    mx.random.seed(seed)
    model = qwen2.Model(args)
    if init:
        model.load_weights(str(model_dir / "model.safetensors"))
    model.set_dtype(mx.float32)
    seqs = [enc.encode(r["messages"], mask_prompt=True, tools=r.get("tools")) for r in corpus]
    pad = enc.tok.pad_token_id
    rng = random.Random(seed)

    def loss_fn(model, x, y, w):
        logits = model(x)
        ce = nn.losses.cross_entropy(logits, y) * w
        return ce.sum() / w.sum()

    warm = min(100, steps // 4)
    sched = optim.join_schedules([optim.linear_schedule(1e-5, lr, warm), optim.cosine_decay(lr, steps - warm, lr * 0.05)], [warm])
    opt = optim.AdamW(learning_rate=sched, weight_decay=0.01)
    state = [model.state, opt.state]

    def step(x, y, w):
        loss, grads = nn.value_and_grad(model, loss_fn)(model, x, y, w)
        opt.update(model, grads)
        return loss

    # Compiled once, with the model and optimizer state as declared inputs and outputs (an earlier
    # build also wrapped it in a bare @mx.compile; that model never learned to copy a name).
    step = mx.compile(step, inputs=state, outputs=state)

    def epoch_batches() -> list[list[int]]:
        # batches of similar lengths (little padding) drawn afresh every epoch (no fixed groups)
        perm = list(range(len(seqs)))
        rng.shuffle(perm)
        out = []
        for c in range(0, len(perm), batch * 16):
            chunk = sorted(perm[c:c + batch * 16], key=lambda i: len(seqs[i].ids))
            out += [chunk[i:i + batch] for i in range(0, len(chunk) - batch + 1, batch)]
        rng.shuffle(out)
        return out

    t0 = time.time()
    losses = []
    queue: list[list[int]] = []
    for it in range(steps):
        if not queue:
            queue = epoch_batches()
        b = queue.pop()
        L = max(len(seqs[i].ids) for i in b)
        L = int(math.ceil(L / 8) * 8)  # few distinct shapes keep mx.compile's cache small
        ids = np.full((len(b), L), pad, dtype=np.int32)
        w = np.zeros((len(b), L), dtype=np.float32)
        for r, i in enumerate(b):
            s = seqs[i]
            ids[r, :len(s.ids)] = s.ids
            w[r, :len(s.ids)] = s.mask
        x, y, wt = mx.array(ids[:, :-1]), mx.array(ids[:, 1:]), mx.array(w[:, 1:])
        loss = step(x, y, wt)
        mx.eval(state, loss)
        losses.append(loss.item())
        if it % 100 == 0 or it == steps - 1:
            log(f"{stage} step {it + 1}/{steps} loss {np.mean(losses[-50:]):.3f} ({time.time() - t0:.0f}s)")
    weights = {k: np.array(v.astype(mx.float16)) for k, v in tree_flatten(model.parameters())}
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    n_params = sum(v.size for v in weights.values())
    stats = {"params": int(n_params), "final_loss": float(np.mean(losses[-50:])), "seconds": time.time() - t0}
    tool_seqs = [s for r, s in zip(corpus, seqs) if r.get("tools")]
    if tool_seqs:
        stats.update(tool_records=len(tool_seqs), tool_record_tokens=max(len(s.ids) for s in tool_seqs),
                     other_record_tokens=max(len(s.ids) for r, s in zip(corpus, seqs) if not r.get("tools")))
    return stats


def write_sample_data(data_dir: Path) -> None:
    train, valid = world.sample_dataset()
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("valid", valid)):
        (data_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # held-out prompts live beside data/, so loading the sample folder never sees them
    (data_dir.parent / "heldout.json").write_text(json.dumps(world.eval_prompts(), indent=1) + "\n")


def tool_stage(model_dir: Path, steps: int = TOOL_STEPS, corpus_size: int = TOOL_CORPUS_SIZE, seed: int = 0,
               log=_say, every: int = TOOL_EVERY, lr: float = TOOL_LR, template: str = "short") -> dict:
    """A build's tool stage: Qwen2.5's tool-calling template (TOOLS_TEMPLATE) in place of plain
    ChatML, then pretraining continued from the model's weights on :func:`world.tool_corpus` (the
    first stage's kinds of chats, one in four replaced by calls to other functions than the learning
    test's, with names and categories copied from the question into the arguments). The tokenizer
    is kept: <tool_call> is ordinary text to it."""
    set_chat_template(model_dir, TOOL_TEMPLATES[template])
    check_template(model_dir)
    corpus = world.tool_corpus(corpus_size, seed=seed + 1, every=every)
    stats = pretrain(model_dir, corpus, steps=steps, batch=32, lr=lr, seed=seed, log=log, init=True,
                     stage="tool stage")
    return {"steps": steps, "corpus": corpus_size, "every": every, "lr": lr, "template": template, **stats}


def check_template(model_dir: Path) -> None:
    """The tool template renders a conversation without tools as plain ChatML (what the demo's data,
    tests and exports were made for), and tools in its system block."""
    from core.tokens import ChatEncoder

    enc = ChatEncoder(model_dir)
    for r in world.pretraining_corpus(40, seed=3):
        if enc.render(r["messages"], add_generation_prompt=False) != render_chatml(r["messages"]):
            raise ValueError(f"a conversation without tools is not plain ChatML: {r['messages']!r}")
    if not enc.supports_tools or not enc.supports_tool_calls:
        raise ValueError("the tool template shows no tools")


def build(out: Path, steps: int = BUILD_STEPS, seed: int = 0, log=_say, shape: dict | None = None,
          corpus_size: int = CORPUS_SIZE, tool_calls: bool = False, tool_steps: int = TOOL_STEPS,
          first_stage: Path | None = None, tool_every: int = TOOL_EVERY, tool_lr: float = TOOL_LR,
          tool_template: str = "short") -> dict:
    """Build the model and sample data into ``out``. ``tool_calls``: add the tool stage
    (:func:`tool_stage`) after the first. ``first_stage``: a model folder the first stage made (e.g.
    the bundled model of a build without tool calls), used in its place instead of training it again."""
    t_cpu = time.process_time()
    corpus = world.pretraining_corpus(corpus_size, seed=seed)
    tok_texts = [render_chatml(r["messages"]) for r in corpus]
    # Generic text so the tokenizer is not only the demo's words: every English word and JSON key
    # the demo uses, in other combinations.
    rng = random.Random(seed + 1)
    words = sorted({w.strip(".,!?\"{}[]:") for t in tok_texts for w in t.split()} - {""})
    for _ in range(2000):
        tok_texts.append(" ".join(rng.sample(words, 8)) + ".")
    tmp = Path(tempfile.mkdtemp(prefix="demo-build-", dir=out.parent))
    try:
        model_dir = tmp / "model"
        if first_stage is not None:
            shutil.copytree(first_stage, model_dir)
            first = json.loads((Path(first_stage).parent / "BUILD.json").read_text())
            stats = {k: first[k] for k in ("params", "final_loss", "seconds", "cpu_seconds") if k in first}
            steps, corpus_size, shape = first.get("steps", steps), first.get("corpus", corpus_size), first.get("shape")
            # which first stage, without this machine's path in a file that ships: its weights' checksum
            weights = Path(first_stage) / "model.safetensors"
            if weights.is_file():
                stats["first_stage_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        else:
            model_dir.mkdir()
            build_tokenizer(tok_texts, model_dir)
            from tokenizers import Tokenizer

            tk = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            ids = {t: tk.token_to_id(t) for t in SPECIALS}
            write_config(model_dir, tk.get_vocab_size(), ids, shape)
            (model_dir / "LICENSE").write_text("The Tuneloom demo model is generated by core/demo/build.py; "
                                               "Apache-2.0.\n")
            stats = pretrain(model_dir, corpus, steps=steps, batch=32, lr=3e-3, seed=seed, log=log)
        if first_stage is None:
            stats["cpu_seconds"] = round(time.process_time() - t_cpu, 1)
        tools = None
        if tool_calls:
            t_tools = time.process_time()
            tools = tool_stage(model_dir, steps=tool_steps, seed=seed, log=log, every=tool_every, lr=tool_lr,
                               template=tool_template)
            tools["cpu_seconds"] = round(time.process_time() - t_tools, 1)
        write_sample_data(tmp / "data")
        vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
        info = {"steps": steps, "seed": seed, "corpus": corpus_size, **stats, "vocab_size": vocab,
                "shape": shape or MODEL_SHAPE}
        if tools is not None:
            info.update(tool_calls=True, tool_stage=tools)
            stats["tool_stage"] = tools
        (tmp / "BUILD.json").write_text(json.dumps(info, indent=2) + "\n")
        for sub in ("model", "data", "heldout.json", "BUILD.json"):
            dst = out / sub
            if dst.is_dir():
                shutil.rmtree(dst)
            elif dst.exists():
                dst.unlink()
            shutil.move(str(tmp / sub), str(dst))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=demo_dir())
    ap.add_argument("--steps", type=int, default=BUILD_STEPS)
    ap.add_argument("--corpus", type=int, default=CORPUS_SIZE, help="pretraining chats")
    ap.add_argument("--hidden", type=int, default=MODEL_SHAPE["hidden_size"])
    ap.add_argument("--layers", type=int, default=MODEL_SHAPE["num_hidden_layers"])
    ap.add_argument("--intermediate", type=int, default=MODEL_SHAPE["intermediate_size"])
    ap.add_argument("--heads", type=int, default=MODEL_SHAPE["num_attention_heads"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tool-calls", action="store_true",
                    help="add the tool stage: Qwen2.5's tool-calling template, pretraining continued on chats that "
                         "call functions with names copied from the question")
    ap.add_argument("--tool-steps", type=int, default=TOOL_STEPS)
    ap.add_argument("--tool-every", type=int, default=TOOL_EVERY, help="one chat in this many is a tool chat")
    ap.add_argument("--tool-lr", type=float, default=TOOL_LR)
    ap.add_argument("--tool-template", choices=list(TOOL_TEMPLATES), default="short",
                    help="Qwen2.5's tool template, or its short form (no instructions around the tool list)")
    ap.add_argument("--first-stage", type=Path, default=None,
                    help="with --tool-calls: a model folder the first stage made (its BUILD.json beside it), "
                         "used instead of training the first stage again")
    ap.add_argument("--data-only", action="store_true", help="only rewrite the sample data")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.data_only:
        write_sample_data(a.out / "data")
        return
    shape = dict(MODEL_SHAPE, hidden_size=a.hidden, num_hidden_layers=a.layers, intermediate_size=a.intermediate,
                 num_attention_heads=a.heads)
    print(json.dumps(build(a.out, a.steps, a.seed, shape=shape, corpus_size=a.corpus, tool_calls=a.tool_calls,
                           tool_steps=a.tool_steps, first_stage=a.first_stage, tool_every=a.tool_every,
                           tool_lr=a.tool_lr, tool_template=a.tool_template)))


if __name__ == "__main__":
    main()
