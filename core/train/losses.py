"""The loss: token-weighted cross-entropy, with logits only at the trained positions where the
architecture allows it (core.train.batches.selective_head), and the validation loss over a set."""
from __future__ import annotations

from core.tokens import Encoded
from core.train.batches import pad_batch, selective_head


def _body(model, x, mask):
    """The transformer body with an explicit attention mask (qwen2/qwen3/llama: the same loop
    their ``Model.model.__call__`` runs with a causal mask, without pipeline parallelism)."""
    inner = model.model
    h = inner.embed_tokens(x)
    for layer in inner.layers:
        h = layer(h, mask, None)
    return inner.norm(h)


def _head(model, h):
    lm = getattr(model, "language_model", model)  # Qwen3.5 wraps its text model
    if lm.args.tie_word_embeddings:
        return lm.model.embed_tokens.as_linear(h)
    return lm.lm_head(h)


def _loss(model, x, y, w, idx=None, attn=None):
    import mlx.core as mx
    import mlx.nn as nn

    if idx is None:
        logits = model(x).astype(mx.float32)
    else:  # logits only at the trained positions (see selective_head)
        h = model.model(x) if attn is None else _body(model, x, attn)
        h = h.reshape(-1, h.shape[-1])[idx]
        logits = _head(model, h).astype(mx.float32)
    ce = nn.losses.cross_entropy(logits, y) * w
    ntoks = w.sum()
    return ce.sum() / mx.maximum(ntoks, 1.0), ntoks


def evaluate_loss(model, seqs: list[Encoded], batch: int, pad_id: int, max_len: int, max_batches: int = -1,
                  group=None) -> float:
    """Token-weighted mean loss over ``seqs``. In a group each rank takes every size-th batch and
    the sums are added over the ranks, so the result is the single-process one."""
    import mlx.core as mx

    total, count = 0.0, 0.0
    nb = 0
    select = selective_head(model)
    rank, size = (group.rank, group.size) if group is not None else (0, 1)
    for i in range(0, len(seqs), batch):
        if 0 <= max_batches <= nb:
            break
        nb += 1
        if (nb - 1) % size != rank:
            continue
        loss, n = _loss(model, *pad_batch(seqs[i:i + batch], pad_id, max_len, select))
        mx.eval(loss, n)
        total += loss.item() * n.item()
        count += n.item()
    if size > 1:
        total, count = group.sum_floats(total, count)
    return total / max(count, 1.0)
