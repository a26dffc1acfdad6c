"""The GGUF vocabulary: a model folder's tokenizer as llama.cpp reads it.

Byte-level BPE (``tokenizer.json``: tokens, merges, the pre-tokenizer llama.cpp knows it by,
:func:`detect_bpe_pre`) or SentencePiece (``tokenizer.model``: pieces, scores, types), token
types, special token ids and add-BOS/EOS flags through ``gguf.SpecialVocab``, and the chat
template. Used by :mod:`core.export.gguf`; imports nothing of the writer.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import gguf

from core.events import TuneloomError


# --------------------------------------------------------------------------- tokenizer

# HF byte-level BPE pre-tokenizer regexes -> llama.cpp's name for the same pre-tokenizer,
# and the BPE "ignore_merges" setting llama.cpp assumes for it.
BPE_PRE_TOKENIZERS: dict[str, tuple[str, bool]] = {
    # Qwen2 / Qwen2.5 / Qwen3 (and tokenizers trained with the same regex)
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": ("qwen2", False),
    # Llama 3 (digits grouped by three)
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": ("llama-bpe", True),
    # Qwen3.5 (letters may carry combining marks, \p{M}): llama.cpp's "qwen35"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": ("qwen35", False),
}
_ALLOWED_BPE_NORMALIZERS = (None, "NFC")


@dataclass
class _Vocab:
    model: str  # "gpt2" or "llama"
    pre: str
    tokens: list
    toktypes: list[int]
    scores: list[float] | None
    special: gguf.SpecialVocab
    add_space_prefix: bool | None = None


def _does_token_look_special(token: str) -> bool:
    # llama.cpp's converter marks added tokens shaped like <|...|> as CONTROL even when
    # the tokenizer calls them non-special (e.g. Qwen's <|fim_prefix|>)
    return token.startswith("<|") and token.endswith("|>")


def detect_bpe_pre(tokenizer_json: dict) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE ``tokenizer.json``.

    Decided from the tokenizer's structure (normalizer, pre-tokenizer regex, byte-level
    settings), so a custom tokenizer trained with Qwen2's regex is recognised as well.
    """
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise TuneloomError("The tokenizer is not a byte-level BPE tokenizer llama.cpp can reproduce.",
                            "Supported: Qwen-style and Llama-3-style byte-level BPE, SentencePiece (tokenizer.model).")
    norm = tokenizer_json.get("normalizer")
    norm_type = norm.get("type") if norm else None
    if norm_type not in _ALLOWED_BPE_NORMALIZERS:
        raise TuneloomError(f"Unrecognised tokenizer normalizer {norm_type!r}.", "llama.cpp would tokenize this model differently; export is refused.")
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    regex = None
    if (len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel"
            and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert")
            and not steps[1].get("add_prefix_space") and not steps[1].get("use_regex", True)):
        regex = (steps[0].get("pattern") or {}).get("Regex")
    entry = BPE_PRE_TOKENIZERS.get(regex) if regex is not None else None
    if entry is None:
        raise TuneloomError(
            "Unrecognised pre-tokenizer in tokenizer.json.",
            "Only Qwen2- and Llama-3-style byte-level pre-tokenizers are supported; llama.cpp would split text differently.",
        )
    name, ignore_merges = entry
    if bool(model.get("ignore_merges", False)) != ignore_merges:
        raise TuneloomError(f"The tokenizer's ignore_merges={model.get('ignore_merges')} does not match llama.cpp's {name!r} pre-tokenizer.",
                            "llama.cpp would tokenize this model differently; export is refused.")
    if norm_type == "NFC" and name not in ("qwen2", "qwen35"):
        raise TuneloomError("Unrecognised tokenizer normalizer 'NFC' for this pre-tokenizer.", "")
    return name


def _load_bpe_tokenizer(model_dir: Path, scratch: Path):
    """(tokenizers.Tokenizer, folder SpecialVocab should read) for a byte-level BPE model."""
    from tokenizers import Tokenizer

    tok_json = model_dir / "tokenizer.json"
    if tok_json.is_file():
        return Tokenizer.from_file(str(tok_json)), model_dir
    if not (model_dir / "vocab.json").is_file():
        raise TuneloomError(f"No tokenizer found in {model_dir}.", "The folder needs tokenizer.json (or vocab.json + merges.txt, or tokenizer.model).")
    # slow-tokenizer files only: let transformers build the fast tokenizer, as a hub
    # folder's tokenizer.json would be, and give SpecialVocab a folder that has it
    from transformers import AutoTokenizer

    backend = AutoTokenizer.from_pretrained(str(model_dir)).backend_tokenizer
    backend.save(str(scratch / "tokenizer.json"))
    for name in ("tokenizer_config.json", "config.json", "chat_template.jinja", "chat_template.json"):
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, scratch / name)
    return Tokenizer.from_file(str(scratch / "tokenizer.json")), scratch


def _bpe_vocab(model_dir: Path, vocab_size: int, scratch: Path) -> _Vocab:
    tok, special_dir = _load_bpe_tokenizer(model_dir, scratch)
    pre = detect_bpe_pre(json.loads(tok.to_str()))
    vocab = tok.get_vocab(with_added_tokens=True)
    if max(vocab.values()) >= vocab_size:
        raise TuneloomError(f"The tokenizer has token id {max(vocab.values())} but the model's vocab_size is {vocab_size}.",
                            "The tokenizer does not belong to these weights.")
    added = tok.get_added_tokens_decoder()
    reverse = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    toktypes: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            toktypes.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if i in added:
            info = added[i]
            if not info.normalized:
                # llama.cpp matches added tokens on their pre-normalised text
                token = tok.decode(tok.encode(token, add_special_tokens=False).ids, skip_special_tokens=False)
            if info.special or _does_token_look_special(token):
                toktypes.append(gguf.TokenType.CONTROL)
            else:
                toktypes.append(gguf.TokenType.USER_DEFINED)
        else:
            toktypes.append(gguf.TokenType.NORMAL)
        tokens.append(token)

    special = gguf.SpecialVocab(special_dir, load_merges=True)
    if not special.merges:
        raise TuneloomError("The tokenizer has no BPE merges.", "The tokenizer files look incomplete.")
    for kind, text in (("bos", "a"), ("eos", "a")):
        if kind not in special.add_special_token:
            # not stated in tokenizer_config.json: ask the tokenizer what it does
            with_special = tok.encode(text, add_special_tokens=True).ids
            without = tok.encode(text, add_special_tokens=False).ids
            tid = special.special_token_ids.get(kind)
            if kind == "bos":
                special.add_special_token[kind] = len(with_special) > len(without) and with_special[0] == tid
            else:
                special.add_special_token[kind] = len(with_special) > len(without) and with_special[-1] == tid
    return _Vocab("gpt2", pre, tokens, toktypes, None, special)


def _spm_vocab(model_dir: Path, vocab_size: int) -> _Vocab:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(model_dir / "tokenizer.model"))
    T = gguf.TokenType
    tokens: list[bytes] = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    toktypes = [int(T.UNUSED)] * vocab_size
    if sp.vocab_size() > vocab_size:
        raise TuneloomError(f"tokenizer.model has {sp.vocab_size()} pieces but the model's vocab_size is {vocab_size}.",
                            "The tokenizer does not belong to these weights.")
    for i in range(sp.vocab_size()):
        kind = T.NORMAL
        if sp.IsUnknown(i):
            kind = T.UNKNOWN
        elif sp.IsControl(i):
            kind = T.CONTROL
        elif sp.IsUnused(i):
            kind = T.UNUSED
        elif sp.IsByte(i):
            kind = T.BYTE
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = sp.GetScore(i)
        toktypes[i] = int(kind)

    # tokens added on top of the SentencePiece model, as the converter reads them
    added_json = model_dir / "added_tokens.json"
    if added_json.is_file():
        for text, tid in json.loads(added_json.read_text(encoding="utf-8")).items():
            if tid < vocab_size:
                tokens[tid], scores[tid], toktypes[tid] = text.encode("utf-8"), -1000.0, int(T.USER_DEFINED)
    add_space_prefix = None
    cfg_path = model_dir / "tokenizer_config.json"
    if cfg_path.is_file():
        tcfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        add_space_prefix = tcfg.get("add_prefix_space")
        for tid_s, data in (tcfg.get("added_tokens_decoder") or {}).items():
            tid, text = int(tid_s), data["content"]
            if tid >= vocab_size:
                continue
            if data.get("special") or _does_token_look_special(text):
                toktypes[tid] = int(T.CONTROL)
            else:
                text = text.replace("\u2581", " ")
                toktypes[tid] = int(T.USER_DEFINED)
            tokens[tid], scores[tid] = text.encode("utf-8"), -1000.0

    special = gguf.SpecialVocab(model_dir, n_vocab=len(tokens))
    # HF's LlamaTokenizer adds BOS and not EOS unless tokenizer_config.json says otherwise
    special.add_special_token.setdefault("bos", True)
    special.add_special_token.setdefault("eos", False)
    return _Vocab("llama", "default", tokens, toktypes, scores, special, add_space_prefix)


def _load_vocab(model_dir: Path, vocab_size: int, scratch: Path) -> _Vocab:
    # the converter's order for these architectures: SentencePiece when there is a
    # tokenizer.model, byte-level BPE otherwise
    if (model_dir / "tokenizer.model").is_file():
        return _spm_vocab(model_dir, vocab_size)
    return _bpe_vocab(model_dir, vocab_size, scratch)


def _add_vocab(w: gguf.GGUFWriter, v: _Vocab) -> None:
    w.add_tokenizer_model(v.model)
    w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    if v.scores is not None:
        w.add_token_scores(v.scores)
    w.add_token_types(v.toktypes)
    if v.add_space_prefix is not None:
        w.add_add_space_prefix(v.add_space_prefix)
    v.special.add_to_gguf(w, quiet=True)



def _estimate_kv_bytes(v: _Vocab) -> int:
    toks = sum(len(t) + 12 for t in v.tokens)
    merges = sum(len(m.encode("utf-8")) + 8 for m in v.special.merges)
    template = len(str(v.special.chat_template or "").encode("utf-8"))
    return toks + merges + template + 64 * 1024
