"""Preference tuning on LoRA: DPO and ORPO losses, written from the papers' formulas.

A preference pair is one prompt (a message list) with two answers, ``chosen`` and ``rejected``.
Each side is encoded as a training sequence whose loss mask covers the answer only (the prompt's
tokens are never trained), and a batch of B pairs is one padded batch of 2B rows: the B chosen
sides first, then the B rejected ones, so that both sides share one forward pass.

Per side, ``logp`` is the sum of the answer tokens' log-probabilities under the model.

DPO (Rafailov et al., 2023, eq. 7, with the conservative label smoothing of cDPO):
    h    = beta * ((logp_c - ref_c) - (logp_r - ref_r))
    loss = -(1 - eps) * log sigmoid(h) - eps * log sigmoid(-h)
The implicit reward of a side is ``beta * (logp - ref)``; the reward margin is chosen minus rejected,
and the reward accuracy the share of pairs whose margin is positive. The reference log-probabilities
come from the same weights with the adapter switched off (the base model), so no second model is
held in memory; they are computed once per example before training and cached (see
:func:`reference_logps`), which costs one forward pass per example instead of one per step.

ORPO (Hong et al., 2024, eq. 6-7): with the mean token log-probability ``m`` of a side and its
odds ``odds = p / (1 - p)`` where ``p = exp(m)``,
    loss = NLL(chosen, mean per token) - lambda * log sigmoid(log odds_c - log odds_r)
ORPO needs no reference model.

The step metrics every method reports (metrics.jsonl keys): ``reward_margin``, ``reward_accuracy``,
``logp_chosen`` and ``logp_rejected`` (mean over the batch's pairs of each side's summed
log-probability). For ORPO the "reward" is the log-odds ratio term's argument scaled by lambda.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from core.tokens import Encoded

METHODS = ("sft", "dpo", "orpo")
METHOD_TEXT = {
    "sft": ("Supervised", "Learn to write the answers in your data (on preference data: the chosen answers)."),
    "dpo": ("Preference: DPO", "Learn to prefer the chosen answer over the rejected one, staying close to the "
                               "original model (Direct Preference Optimization)."),
    "orpo": ("Preference: ORPO", "Learn the chosen answers and, at the same time, to prefer them over the "
                                 "rejected ones, without a reference model (Odds Ratio Preference Optimization)."),
}
METRIC_KEYS = ("reward_margin", "reward_accuracy", "logp_chosen", "logp_rejected")


@dataclass
class EncodedPair:
    chosen: Encoded
    rejected: Encoded

    @property
    def length(self) -> int:
        return max(len(self.chosen.ids), len(self.rejected.ids))


def _messages(answer) -> list[dict]:
    if isinstance(answer, str):
        return [{"role": "assistant", "content": answer}]
    return [dict(answer)] if isinstance(answer, dict) else [dict(m) for m in answer]


def encode_pair(encoder, prompt: list[dict], chosen, rejected, max_len: int, tools: list[dict] | None = None
                ) -> EncodedPair | None:
    """Both sides of a pair as training sequences, the loss on the last answer only (None when either
    side has no answer token left within ``max_len``). An answer is a text, a message, or the list of
    messages that follow the prompt (as :class:`core.data.PreferenceRecord` holds them). ``tools``: the
    functions the prompt offers, rendered by the template for both sides (a template without tool
    support refuses them, as for chat records)."""
    sides = []
    for answer in (chosen, rejected):
        e = encoder.encode(list(prompt) + _messages(answer), mask_prompt=True, last_turn_only=True, tools=tools)
        if len(e.ids) > max_len:
            e = Encoded(e.ids[:max_len], e.mask[:max_len])
        if sum(e.mask[1:]) == 0:
            return None
        sides.append(e)
    return EncodedPair(*sides)


def pair_rows(pairs: list[EncodedPair]) -> list[Encoded]:
    """The 2B rows of a batch of B pairs: every chosen side, then every rejected side."""
    return [p.chosen for p in pairs] + [p.rejected for p in pairs]


# ---------------------------------------------------------------------------
# Log-probabilities
# ---------------------------------------------------------------------------

def _token_logps(model, x, y, w, idx=None, attn=None):
    """Per-token log-probabilities of the targets, weighted, and the row of each entry."""
    import mlx.core as mx
    import mlx.nn as nn

    from core.train.losses import _body, _head

    def wide(a):  # half-precision logits are summed in float32 (float32 and float64 stay as they are)
        return a.astype(mx.float32) if a.dtype in (mx.float16, mx.bfloat16) else a

    if idx is None:
        logits = wide(model(x))
        lp = -nn.losses.cross_entropy(logits, y) * w  # (rows, L-1)
        return lp, None
    h = model.model(x) if attn is None else _body(model, x, attn)
    h = h.reshape(-1, h.shape[-1])[idx]
    logits = wide(_head(model, h))
    lp = -nn.losses.cross_entropy(logits, y) * w  # (k,)
    return lp, idx // x.shape[1]


def sequence_logps(model, x, y, w, idx=None, attn=None):
    """(sum of answer-token log-probs, answer token count) per row."""
    import mlx.core as mx

    lp, rows = _token_logps(model, x, y, w, idx, attn)
    if rows is None:
        return lp.sum(axis=1), w.sum(axis=1)
    n = x.shape[0]
    sums = mx.zeros((n,), dtype=lp.dtype).at[rows].add(lp)
    counts = mx.zeros((n,), dtype=lp.dtype).at[rows].add(w)
    return sums, counts


# ---------------------------------------------------------------------------
# Losses (arrays in, arrays out: mx.compile and value_and_grad friendly)
# ---------------------------------------------------------------------------

def _log_sigmoid(z):
    import mlx.core as mx

    return -mx.logaddexp(mx.zeros_like(z), -z)


def dpo_terms(logp, ref, beta: float, label_smoothing: float = 0.0, norm=None):
    """DPO loss and metrics from the 2B per-row log-probs and reference log-probs (chosen first).

    With ``norm`` (see :func:`group_norm`: the pairs and chosen answer tokens of the whole step, over
    every rank of a group) the loss and the metrics are this rank's share of the step's: sums over
    its pairs divided by the step's pair count, so that adding them over the ranks gives the values
    of one process over the whole batch."""
    import mlx.core as mx

    b = logp.shape[0] // 2
    pc, pr = logp[:b], logp[b:]
    rc, rr = ref[:b], ref[b:]
    reward_c = beta * (pc - rc)
    reward_r = beta * (pr - rr)
    h = reward_c - reward_r
    loss = -(1.0 - label_smoothing) * _log_sigmoid(h) - label_smoothing * _log_sigmoid(-h)
    wins = (h > 0).astype(mx.float32)
    if norm is not None:
        pairs = norm[0]
        return loss.sum() / pairs, mx.stack([h.sum(), wins.sum(), pc.sum(), pr.sum()]) / pairs
    metrics = mx.stack([h.mean(), wins.mean(), pc.mean(), pr.mean()])
    return loss.mean(), metrics


def orpo_terms(logp, counts, lam: float, norm=None):
    """ORPO loss and metrics from the 2B per-row log-prob sums and answer token counts.

    With ``norm`` (:func:`group_norm`) this rank's share of the step's loss and metrics: the
    supervised term divided by the step's chosen answer tokens, the odds-ratio term and the metrics by
    its pairs (the two terms are weighted differently, so one factor per rank could not do it)."""
    import mlx.core as mx

    b = logp.shape[0] // 2
    mean = logp / mx.maximum(counts, 1.0)
    mc, mr = mean[:b], mean[b:]

    def log_odds(m):  # log(p / (1 - p)) with p = exp(m) < 1; log1p(-exp(m)) stays finite for m < 0
        return m - mx.log1p(-mx.exp(mx.minimum(m, -1e-6)))

    ratio = log_odds(mc) - log_odds(mr)
    wins = (ratio > 0).astype(mx.float32)
    if norm is not None:
        pairs, chosen = norm[0], mx.maximum(norm[1], 1.0)
        loss = -(logp[:b].sum() / chosen) - lam * _log_sigmoid(ratio).sum() / pairs
        return loss, mx.stack([(lam * ratio).sum(), wins.sum(), logp[:b].sum(), logp[b:].sum()]) / pairs
    nll = -(logp[:b].sum() / mx.maximum(counts[:b].sum(), 1.0))
    loss = nll - lam * _log_sigmoid(ratio).mean()
    metrics = mx.stack([(lam * ratio).mean(), wins.mean(), logp[:b].mean(), logp[b:].mean()])
    return loss, metrics


def chosen_tokens(x, y, w, ref=None, idx=None):
    """How many answer tokens the chosen sides of a batch's arrays (:func:`batch_arrays`) hold."""
    b = x.shape[0] // 2
    if idx is None:
        return float(w[:b].sum().item())
    rows = idx // x.shape[1]
    return float((w * (rows < b)).sum().item())


def group_norm(group, arrays, pairs: int, tokens: int) -> tuple[list, float, float]:
    """The step-wide totals a group's ranks divide by (:func:`dpo_terms`, :func:`orpo_terms`): one
    collective adds this rank's pairs, chosen answer tokens, answer tokens and ``tokens`` (all its
    rows' tokens) to the other ranks'. Returns ([pairs, chosen answer tokens] of the whole step, its
    answer tokens, its tokens)."""
    n_here = float(arrays[2].sum().item())
    pairs_all, chosen_all, n_all, tokens_all = group.sum_floats(float(pairs), chosen_tokens(*arrays), n_here,
                                                                float(tokens))
    return [pairs_all, chosen_all], n_all, tokens_all


def preference_loss(model, method: str, beta: float, lam: float, label_smoothing: float,
                    x, y, w, ref, idx=None, attn=None, norm=None):
    """(loss, answer tokens, metrics) of one batch of pairs; ``ref`` holds the reference log-probs
    (DPO; ignored by ORPO). With ``norm`` (a group's rank) the loss and metrics are the rank's share
    of the whole step's (see :func:`dpo_terms`)."""
    logp, counts = sequence_logps(model, x, y, w, idx, attn)
    if method == "dpo":
        loss, metrics = dpo_terms(logp, ref, beta, label_smoothing, norm)
    elif method == "orpo":
        loss, metrics = orpo_terms(logp, counts, lam, norm)
    else:
        raise ValueError(f"not a preference method: {method}")
    return loss, counts.sum(), metrics


# ---------------------------------------------------------------------------
# The reference model: the same weights with the adapter switched off
# ---------------------------------------------------------------------------

@contextmanager
def adapter_off(model):
    """The base model inside the block: every adapter layer swapped for the layer it wraps."""
    from core.generate import _adapter_modules

    swaps = _adapter_modules(model)
    for parent, key, _adapted, base in swaps:
        parent[key] = base
    try:
        yield model
    finally:
        for parent, key, adapted, _base in swaps:
            parent[key] = adapted


def reference_logps(model, pairs: list[EncodedPair], batch: int, pad_id: int, max_len: int,
                    select: bool, cancel=None, group=None) -> list[tuple[float, float]]:
    """(chosen, rejected) summed answer log-probs of every pair under the base model.

    In a group (``group``, core.distributed) each rank computes every size-th batch of pairs, the
    same batches one process would, and one collective gives every rank all of them (a sum with
    zeros elsewhere: the values are the ones a single process computes, bit for bit)."""
    import mlx.core as mx
    import numpy as np

    from core.train.batches import pad_batch

    rank, size = (group.rank, group.size) if group is not None and group.distributed else (0, 1)
    vals = np.zeros((len(pairs), 2), dtype=np.float32)
    with adapter_off(model):
        for k, i in enumerate(range(0, len(pairs), batch)):
            if k % size != rank:
                continue
            if cancel is not None:
                cancel.raise_if_cancelled()
            chunk = pairs[i:i + batch]
            arrays = pad_batch(pair_rows(chunk), pad_id, max_len, select)
            logp, _ = sequence_logps(model, *arrays)
            logp = logp.astype(mx.float32)
            mx.eval(logp)
            b = len(chunk)
            got = np.array(logp, dtype=np.float32)
            vals[i:i + b, 0], vals[i:i + b, 1] = got[:b], got[b:]
    if size > 1 and len(pairs):
        total = group.all_sum(mx.array(vals))
        mx.eval(total)
        vals = np.array(total, dtype=np.float32)
    return [(float(c), float(r)) for c, r in vals.tolist()]


def preference_accuracy(model, pairs: list[EncodedPair], batch: int, pad_id: int, max_len: int,
                        select: bool) -> float | None:
    """Share of pairs whose chosen answer the model gives a higher log-probability than the rejected."""
    import mlx.core as mx

    from core.train.batches import pad_batch

    if not pairs:
        return None
    wins = 0
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        logp, _ = sequence_logps(model, *pad_batch(pair_rows(chunk), pad_id, max_len, select))
        mx.eval(logp)
        vals = logp.tolist()
        b = len(chunk)
        wins += sum(1 for c, r in zip(vals[:b], vals[b:]) if c > r)
    return wins / len(pairs)


def valid_method(method: str) -> str:
    if method not in METHODS:
        from core.events import TuneloomError

        raise TuneloomError(f"Unknown training method {method!r}.", f"Choose one of: {', '.join(METHODS)}.")
    return method


__all__ = ["METHODS", "METHOD_TEXT", "METRIC_KEYS", "EncodedPair", "encode_pair", "pair_rows",
           "sequence_logps", "dpo_terms", "orpo_terms", "preference_loss", "adapter_off", "reference_logps",
           "preference_accuracy", "valid_method", "chosen_tokens", "group_norm"]


# ---------------------------------------------------------------------------
# Data for the trainer
# ---------------------------------------------------------------------------

def split_pairs(ds, valid_fraction: float, seed: int, skip_invalid: bool, test_fraction: float = 0.0,
                has_test_file: bool = False):
    """The dataset's preference pairs as (training, validation, test) pairs, drawn as
    :func:`core.data.train_valid_test` draws chat records: deterministic, duplicates on one side; the
    test pairs (``test_fraction`` of the distinct pairs, drawn first with the test draw's own seed;
    none when the data has a test file, ``has_test_file``, or fewer than 3 distinct pairs) are never
    trained on. Refuses a dataset without pairs, or with problems unless ``skip_invalid``."""
    from core.data import TEST_SEED, DatasetError, split_records

    if not 0 <= test_fraction < 1:
        raise DatasetError(f"The test share must be between 0 and 1, not {test_fraction}.", "Use e.g. 0.1 for 10%.")
    pairs = [p for p in ds.preference if p.paired]
    if not pairs:
        raise DatasetError("Preference tuning needs pairs of answers (a chosen and a rejected answer to each "
                           f"prompt), and none of the {ds.total} examples is one.",
                           "Use a file with chosen / rejected answers, or train with the Supervised method.")
    if ds.issues and not skip_invalid:
        shown = "\n".join(str(i) for i in ds.issues[:10])
        raise DatasetError(f"{len(ds.issues)} problem(s) in the dataset:\n{shown}",
                           "Fix them, or choose to skip invalid examples (--skip-invalid).")
    test = []
    if test_fraction > 0 and not has_test_file and len({p.key() for p in pairs}) >= 3:
        pairs, test = split_records(pairs, test_fraction, seed + TEST_SEED)
    return (*split_records(pairs, valid_fraction, seed), test)


def encode_pairs(encoder, records, max_len: int) -> list[EncodedPair]:
    """Every pair record encoded (pairs with no answer token left within ``max_len`` are left out)."""
    out = []
    for r in records:
        e = encode_pair(encoder, r.prompt, r.chosen, r.rejected, max_len, getattr(r, "tools", None))
        if e is not None:
            out.append(e)
    return out


def batch_arrays(pairs: list[EncodedPair], refs: list[tuple[float, float]] | None, pad_id: int, max_len: int,
                 select: bool):
    """The arrays one step of preference training takes: (x, y, w, reference log-probs[, idx])."""
    import mlx.core as mx

    from core.train.batches import pad_batch

    arrays = pad_batch(pair_rows(pairs), pad_id, max_len, select)
    ref = (mx.array([c for c, _ in refs] + [r for _, r in refs], dtype=mx.float32) if refs is not None
           else mx.zeros((2 * len(pairs),), dtype=mx.float32))
    return (*arrays[:3], ref, *arrays[3:])


def evaluate_pairs(model, pairs: list[EncodedPair], refs: list[tuple[float, float]] | None, cfg, pad_id: int,
                   select: bool, max_batches: int = -1, group=None) -> dict:
    """The preference loss and metrics over ``pairs`` (no gradients), as ``valid_*`` metrics: each
    batch's values weighted by its pairs. In a group each rank takes every size-th batch and the sums
    are added over the ranks, so the result is the single-process one."""
    import mlx.core as mx

    rank, size = (group.rank, group.size) if group is not None and group.distributed else (0, 1)
    total, sums, n, nb = 0.0, [0.0] * len(METRIC_KEYS), 0, 0
    for i in range(0, len(pairs), cfg.batch):
        if 0 <= max_batches <= nb:
            break
        nb += 1
        if (nb - 1) % size != rank:
            continue
        chunk = pairs[i:i + cfg.batch]
        arrays = batch_arrays(chunk, refs[i:i + cfg.batch] if refs is not None else None, pad_id,
                              cfg.max_seq_len, select)
        loss, _, metrics = preference_loss(model, cfg.method, cfg.beta, cfg.orpo_lambda, cfg.label_smoothing,
                                           *arrays)
        mx.eval(loss, metrics)
        total += loss.item() * len(chunk)
        sums = [s + v * len(chunk) for s, v in zip(sums, metrics.tolist())]
        n += len(chunk)
    if size > 1:
        total, n, *sums = group.sum_floats(total, n, *sums)
    if not n:
        return {}
    return {"valid_loss": total / n, **{f"valid_{k}": s / n for k, s in zip(METRIC_KEYS, sums)}}
