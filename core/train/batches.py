"""Batches: the data order (a pure function of (seed, epoch) so a resume replays it exactly), packing,
padding and the encoding of records into token ids and masks."""
from __future__ import annotations

import math
import random

from core import arch
from core.tokens import ChatEncoder, Encoded
from core.train.config import TrainConfig


class BatchPlan:
    def __init__(self, lengths: list[int], batch: int, seed: int):
        self.lengths, self.batch, self.seed = lengths, batch, seed
        if len(lengths) < batch:
            self.batch = max(1, len(lengths))
        self._cache: dict[int, list[list[int]]] = {}

    def epoch(self, e: int) -> list[list[int]]:
        if e not in self._cache:
            rng = random.Random(self.seed * 1000003 + e)
            idx = list(range(len(self.lengths)))
            rng.shuffle(idx)
            # Group by length within windows to cut padding, keep randomness across windows.
            window = self.batch * 16
            grouped = []
            for i in range(0, len(idx), window):
                grouped += sorted(idx[i:i + window], key=lambda j: self.lengths[j])
            batches = [grouped[i:i + self.batch] for i in range(0, len(grouped) - self.batch + 1, self.batch)]
            rng.shuffle(batches)
            self._cache = {e: batches}
        return self._cache[e]

    @property
    def per_epoch(self) -> int:
        return len(self.lengths) // self.batch

    def micro(self, k: int) -> list[int]:
        """The k-th micro-batch of the whole run (0-based)."""
        e, i = divmod(k, self.per_epoch)
        return self.epoch(e)[i]


# core.arch: the families whose __call__ is head(body(x)), and those whose layers carry a recurrent state
# along the sequence (packing is refused for them: the run trains unpacked and says why)
SELECTIVE_HEAD_TYPES = arch.SELECTIVE_HEAD_TYPES
RECURRENT_TYPES = arch.RECURRENT_TYPES


def packing_unavailable(model_type: str | None) -> str | None:
    """Why sequence packing cannot be used for ``model_type`` (None when it can)."""
    if model_type in RECURRENT_TYPES:
        return ("Packing is off for this model: its linear-attention (Gated DeltaNet) layers carry a memory from "
                "one token to the next, so examples packed into one row would leak into each other. "
                "Training unpacked (padding each batch instead).")
    return None


def selective_head(model) -> bool:
    """Whether we may compute logits only where the loss needs them.

    The output projection is the largest matmul of a small model with a large vocabulary
    (Qwen: 152k x hidden), and prompt and padding positions never need logits. For the
    architectures whose ``__call__`` is exactly ``head(model(x))`` we run the body and the
    head ourselves, the head on trained positions only.
    """
    return getattr(getattr(model, "args", None), "model_type", None) in SELECTIVE_HEAD_TYPES


def pack_sequences(seqs: list[Encoded], capacity: int) -> list[tuple[Encoded, list[int]]]:
    """First-fit-decreasing packing of examples into rows of at most ``capacity`` tokens.

    Returns (row, segment lengths). Attention stays within each example (a block-diagonal
    causal mask is built per batch) and RoPE only sees distances within an example, so a
    packed example trains exactly as it would alone, with no padding in between.
    """
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i].ids))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = min(len(seqs[i].ids), capacity)
        for r, f in enumerate(free):
            if f >= n:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(capacity - n)
    out = []
    for members in rows:
        ids, mask, segs = [], [], []
        for i in members:
            s = seqs[i]
            n = min(len(s.ids), capacity)
            ids += s.ids[:n]
            mask += [False] + list(s.mask[1:n])  # the first token is never predicted from another example
            segs.append(n)
        out.append((Encoded(ids, mask), segs))
    return out


def pad_batch(seqs: list[Encoded], pad_id: int, max_len: int, select: bool = False,
              segments: list[list[int]] | None = None):
    """(inputs, targets, weights) as arrays; with ``select`` the targets and weights are those
    of the trained positions only, plus ``idx``, their flat positions (padded to a bucket size so
    that mx.compile sees few shapes; padded entries have weight 0)."""
    import mlx.core as mx
    import numpy as np

    L = min(max(len(s.ids) for s in seqs), max_len)
    L = min(int(math.ceil(L / 16) * 16), max_len)  # few shapes: small mx.compile cache
    ids = np.full((len(seqs), L), pad_id, dtype=np.int32)
    w = np.zeros((len(seqs), L), dtype=np.float32)
    for r, s in enumerate(seqs):
        n = min(len(s.ids), L)
        ids[r, :n] = s.ids[:n]
        w[r, :n] = s.mask[:n]
    x, y, wt = ids[:, :-1], ids[:, 1:], w[:, 1:]
    attn = None
    if segments is not None:  # block-diagonal causal mask for packed rows
        seg = np.zeros((len(seqs), L), dtype=np.int32)
        for r, lens in enumerate(segments):
            pos = 0
            for k, n in enumerate(lens):
                seg[r, pos:pos + n] = k + 1
                pos += n
        seg = seg[:, :-1]
        causal = np.tril(np.ones((L - 1, L - 1), dtype=bool))
        attn = mx.array((seg[:, :, None] == seg[:, None, :]) & causal[None])[:, None]
    if not select:
        if attn is not None:
            raise ValueError("packing needs the selective-head path")
        return mx.array(x), mx.array(y), mx.array(wt)
    flat = np.flatnonzero(wt.reshape(-1) > 0).astype(np.int32)
    bucket = max(64, (wt.size // 4 + 63) // 64 * 64)  # at most 4 sizes per batch shape
    k = max(bucket, int(math.ceil(len(flat) / bucket) * bucket))
    idx = np.zeros(k, dtype=np.int32)
    idx[: len(flat)] = flat
    wsel = np.zeros(k, dtype=np.float32)
    wsel[: len(flat)] = wt.reshape(-1)[flat]
    ysel = y.reshape(-1)[idx]
    out = (mx.array(x), mx.array(ysel), mx.array(wsel), mx.array(idx))
    return out + (attn,) if attn is not None else out


def encode_records(encoder: ChatEncoder, records, cfg: TrainConfig) -> list[Encoded]:
    out = []
    for r in records:
        e = encoder.encode(r.messages, mask_prompt=cfg.mask_prompt, last_turn_only=cfg.last_turn_only,
                           tools=getattr(r, "tools", None))
        if len(e.ids) > cfg.max_seq_len:
            e = Encoded(e.ids[: cfg.max_seq_len], e.mask[: cfg.max_seq_len])
        if sum(e.mask[1:]) > 0:
            out.append(e)
    return out
