"""Build the bundled demo model (resources/demo/model) and sample data from scratch.

Run ``python -m core.demo.build`` (or by its old name, ``python -m core.demo_build``; a few minutes on
2 CPU cores). The result is a standard Hugging Face folder: Qwen2 architecture, float16 safetensors, its own
byte-level BPE tokenizer (Qwen2's pre-tokenizer, ChatML special tokens), a ChatML
chat template. The model is pretrained with MLX on chats about the synthetic world in
:mod:`core.demo.world`: its facts in prose, the same facts as JSON records of other
schemas than the sample data's, and copying words back from the question.
"""
from __future__ import annotations

import argparse
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
MODEL_SHAPE = dict(hidden_size=128, num_hidden_layers=4, intermediate_size=384, num_attention_heads=4,
                   num_key_value_heads=2)
BUILD_STEPS = 1200
CORPUS_SIZE = 8000


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


def pretrain(model_dir: Path, corpus: list[dict], steps: int, batch: int, lr: float, seed: int, log=_say) -> dict:
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
    model.set_dtype(mx.float32)
    seqs = [enc.encode(r["messages"], mask_prompt=True) for r in corpus]
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
            log(f"pretrain step {it + 1}/{steps} loss {np.mean(losses[-50:]):.3f} ({time.time() - t0:.0f}s)")
    weights = {k: np.array(v.astype(mx.float16)) for k, v in tree_flatten(model.parameters())}
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    n_params = sum(v.size for v in weights.values())
    return {"params": int(n_params), "final_loss": float(np.mean(losses[-50:])), "seconds": time.time() - t0}


def write_sample_data(data_dir: Path) -> None:
    train, valid = world.sample_dataset()
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("valid", valid)):
        (data_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # held-out prompts live beside data/, so loading the sample folder never sees them
    (data_dir.parent / "heldout.json").write_text(json.dumps(world.eval_prompts(), indent=1) + "\n")


def build(out: Path, steps: int = BUILD_STEPS, seed: int = 0, log=_say, shape: dict | None = None,
          corpus_size: int = CORPUS_SIZE) -> dict:
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
        model_dir.mkdir()
        build_tokenizer(tok_texts, model_dir)
        from tokenizers import Tokenizer

        tk = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        ids = {t: tk.token_to_id(t) for t in SPECIALS}
        write_config(model_dir, tk.get_vocab_size(), ids, shape)
        (model_dir / "LICENSE").write_text("The Tuneloom demo model is generated by core/demo/build.py; Apache-2.0.\n")
        stats = pretrain(model_dir, corpus, steps=steps, batch=32, lr=3e-3, seed=seed, log=log)
        write_sample_data(tmp / "data")
        stats["cpu_seconds"] = round(time.process_time() - t_cpu, 1)
        (tmp / "BUILD.json").write_text(json.dumps({"steps": steps, "seed": seed, "corpus": corpus_size, **stats,
                                                   "vocab_size": tk.get_vocab_size(),
                                                   "shape": shape or MODEL_SHAPE}, indent=2) + "\n")
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
    ap.add_argument("--data-only", action="store_true", help="only rewrite the sample data")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.data_only:
        write_sample_data(a.out / "data")
        return
    shape = dict(MODEL_SHAPE, hidden_size=a.hidden, num_hidden_layers=a.layers, intermediate_size=a.intermediate,
                 num_attention_heads=a.heads)
    print(json.dumps(build(a.out, a.steps, a.seed, shape=shape, corpus_size=a.corpus)))


if __name__ == "__main__":
    main()
