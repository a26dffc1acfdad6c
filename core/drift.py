"""The forgetting check: did the fine-tune keep what the base model knew?

A probe set bundled with the app (``resources/probes.jsonl``: short prompts on general knowledge,
arithmetic, instruction following, writing, code and a few languages; users may add their own JSONL
files, one ``{"prompt": ...}`` per line) is answered greedily by the base model once per base model
(cached in the user's cache folder, :func:`core.paths.cache_dir`). The fine-tune is then measured on
those very answers, teacher-forced, in one set of weights (the adapter switched in and out):

- ``kl_per_token``: the mean KL divergence KL(base || fine-tune) between the two models' next-token
  distributions over the base answers' tokens (and their end-of-turn token), in nats per token;
- ``loglik_change``: the fine-tune's mean change in log-likelihood of those tokens (nats per token;
  below 0: it finds the base model's answers less likely);
- ``changed_share``: the share of probes whose greedy answer changes in substance: the two answers'
  word sequences (lower case, punctuation dropped) are less than :data:`SAME_RATIO` alike
  (difflib's ratio), so a changed comma or an answer cut one word later is no change.

The verdict in words ("kept" / "some drift" / "forgot") comes from ``kl_per_token`` against
:data:`KEPT_KL` and :data:`FORGOT_KL`, calibrated on the demo model: the demo's own fine-tune and a
run with a learning rate that wrecks its prose land on either side (tests/test_trust.py). The demo
model is a toy that knows only its own little world, so its check (and that calibration) uses that
world's probe file, ``resources/demo/probes.jsonl``, instead of the general set.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from core.events import NULL_EVENTS, CancelToken, Events, Progress, TuneloomError

PROBE_MAX_TOKENS = 40  # tokens of each base answer measured (answers are cut there)
SAME_RATIO = 0.6  # word-sequence similarity at or above which two answers say the same
# Calibrated on the demo model with its own world's probes (resources/demo/probes.jsonl; the toy model
# knows nothing else): its gentle fine-tune (core.demo) measured 0.007 and 0.009 nats per token (seeds
# 0 and 1), a learning rate of 1e-2 that turns its prose into runs of quotes 5.2 and 5.0.
KEPT_KL = 0.1  # nats per token: below, the fine-tune kept the base model's behaviour
FORGOT_KL = 1.0  # nats per token: at or above, it forgot it
TOP_PROBES = 5  # the most-moved probes listed with both answers
VERDICTS = ("kept", "some drift", "forgot")


@dataclass
class Probe:
    id: str
    prompt: str
    category: str = ""
    source: str = ""


def load_probes(extra: list[str | Path] | None = None, *, bundled: bool = True) -> list[Probe]:
    """The bundled probes and those in ``extra`` files (JSONL, a ``prompt`` per line)."""
    from core.paths import probes_file

    files = ([probes_file()] if bundled else []) + [Path(p) for p in (extra or [])]
    out: list[Probe] = []
    for f in files:
        try:
            lines = f.read_text(encoding="utf-8-sig").splitlines()
        except OSError as exc:
            raise TuneloomError(f"Cannot read the probe file {f}: {exc}", "Give a JSONL file with one "
                                '{"prompt": "..."} per line.') from exc
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TuneloomError(f"{f.name}, line {n}: not valid JSON ({exc.msg}).",
                                    'Write one object per line, e.g. {"prompt": "What is 2 + 2?"}.') from exc
            prompt = obj.get("prompt") if isinstance(obj, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise TuneloomError(f'{f.name}, line {n}: no "prompt" text.',
                                    'Write one object per line, e.g. {"prompt": "What is 2 + 2?"}.')
            out.append(Probe(str(obj.get("id") or f"{f.stem}-{n}"), prompt, str(obj.get("category") or f.stem),
                             f.name))
    if not out:
        raise TuneloomError("There are no probe prompts to check forgetting with.", "Give a probe file with prompts.")
    return out


def verdict(kl_per_token: float) -> str:
    if kl_per_token < KEPT_KL:
        return "kept"
    if kl_per_token < FORGOT_KL:
        return "some drift"
    return "forgot"


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def changed_in_substance(a: str, b: str) -> bool:
    wa, wb = _words(a), _words(b)
    if wa == wb:
        return False
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio() < SAME_RATIO


# ---------------------------------------------------------------------------
# The base model's answers, once per base model
# ---------------------------------------------------------------------------

def _model_key(model_dir: Path) -> str:
    """Names a base model folder's contents: its path, config and weight files (size, time)."""
    h = hashlib.sha256(str(Path(model_dir).resolve()).encode())
    for f in sorted(Path(model_dir).iterdir()):
        if f.is_file() and (f.suffix in (".json", ".safetensors", ".jinja") or f.name == "tokenizer.model"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:24]


def _prompt_key(prompt_ids: list[int]) -> str:
    return hashlib.sha1(json.dumps([PROBE_MAX_TOKENS, prompt_ids]).encode()).hexdigest()


PROBE_BATCH = 16  # probes answered at once (one forward pass per token for all), between progress and cancel


def _answer_in_batches(model, prompts: list[list[int]], adapter: bool, cancel: CancelToken | None):
    """Greedy answer ids to ``prompts``, PROBE_BATCH at a time: yields (answered so far, this batch's ids)."""
    for start in range(0, len(prompts), PROBE_BATCH):
        if cancel is not None:
            cancel.raise_if_cancelled()
        batch = prompts[start:start + PROBE_BATCH]
        yield start + len(batch), model.greedy_ids_batch(batch, PROBE_MAX_TOKENS, adapter=adapter)


def base_answers(model, prompts: list[list[int]], *, events: Events | None = None,
                 cancel: CancelToken | None = None) -> list[list[int]]:
    """The base model's greedy answer ids to each prompt, from the cache where it has them."""
    from core.atomic import write_json
    from core.paths import cache_dir

    events = events or NULL_EVENTS
    path = cache_dir() / "probes" / f"{_model_key(model.model_dir)}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8")).get("answers", {})
    except (OSError, ValueError, AttributeError):
        cached = {}
    keys = [_prompt_key(p) for p in prompts]
    missing = [i for i, k in enumerate(keys) if k not in cached]
    new = len(missing)
    for done, ids in _answer_in_batches(model, [prompts[i] for i in missing], False, cancel):
        for i, answer in zip(missing[done - len(ids):done], ids):
            cached[keys[i]] = answer
        events.report_progress(Progress(done, new, "prompt", "base model: probe answers"))
    out = [list(cached[k]) for k in keys]
    if new:
        try:
            write_json(path, {"model": str(model.model_dir), "answers": cached})
        except OSError as exc:  # only the cache is lost: the next check answers again
            events.log("warning", f"could not cache the base model's probe answers in {path}: {exc}")
    return out


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------

def _log_probs(model, adapter: bool, ids: list[int], start: int):
    """log-softmax of the next-token logits at positions start-1 .. len(ids)-2 (numpy, float64)."""
    import mlx.core as mx
    import numpy as np

    def fwd(m):
        logits = m(mx.array(ids[:-1])[None])[0, start - 1:].astype(mx.float32)
        out = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        mx.eval(out)
        return np.array(out, dtype=np.float64)

    return model.run_with(adapter, fwd)


def score_probe(model, prompt_ids: list[int], answer_ids: list[int]) -> tuple[float, float, int]:
    """(summed KL(base || tuned), summed log-likelihood change, tokens) over the answer and its end."""
    import numpy as np

    eos = model.encoder.eos_ids[:1]
    ids = list(prompt_ids) + list(answer_ids) + (eos if len(answer_ids) < PROBE_MAX_TOKENS else [])
    start = len(prompt_ids)
    targets = np.array(ids[start:])
    lb = _log_probs(model, False, ids, start)
    lt = _log_probs(model, True, ids, start)
    kl = float(np.sum(np.exp(lb) * (lb - lt)))
    rows = np.arange(len(targets))
    ll = float(np.sum(lt[rows, targets] - lb[rows, targets]))
    return max(kl, 0.0), ll, len(targets)


def drift_check(run_dir: str | Path, *, probes: list[str | Path] | None = None, adapter: str = "best",
                model=None, events: Events | None = None, cancel: CancelToken | None = None,
                top: int = TOP_PROBES, bundled: bool = True) -> dict:
    """The forgetting check of a run (see the module docstring). ``model``: an already loaded
    :class:`core.generate.ChatModel` of the run, else one is loaded. Returns {"kl_per_token",
    "loglik_change", "changed_share", "verdict", "probes" (the ``top`` most moved: id, category,
    prompt, base, tuned, kl_per_token, loglik_change, changed), "probe_count", "tokens",
    "thresholds", "adapter", "seconds"}; it is also recorded in the run folder (``drift.json``).
    ``probes``: probe files of the user's beside the bundled ones (``bundled=False``: instead of them)."""
    from core.evaluate import run_chat_model

    events = events or NULL_EVENTS
    cancel = cancel or CancelToken()
    t0 = time.perf_counter()
    plist = load_probes(probes, bundled=bundled)
    model = run_chat_model(run_dir, model, adapter=adapter, events=events)
    enc = model.encoder
    prompts = [enc.prompt_ids([{"role": "user", "content": p.prompt}]) for p in plist]
    answers = base_answers(model, prompts, events=events, cancel=cancel)
    tuned_answers = []
    for done, ids in _answer_in_batches(model, prompts, True, cancel):
        tuned_answers += ids
        events.report_progress(Progress(done, len(prompts), "prompt", "fine-tune: probe answers"))
    rows, kl_sum, ll_sum, n_tok = [], 0.0, 0.0, 0
    for i, (p, ids, ans, tuned) in enumerate(zip(plist, prompts, answers, tuned_answers)):
        cancel.raise_if_cancelled()
        kl, ll, n = score_probe(model, ids, ans)
        base_text, tuned_text = enc.decode(ans), enc.decode(tuned)
        rows.append({"id": p.id, "category": p.category, "prompt": p.prompt, "base": base_text, "tuned": tuned_text,
                     "kl_per_token": kl / max(n, 1), "loglik_change": ll / max(n, 1),
                     "changed": changed_in_substance(base_text, tuned_text)})
        kl_sum, ll_sum, n_tok = kl_sum + kl, ll_sum + ll, n_tok + n
        events.report_progress(Progress(i + 1, len(plist), "prompt", "forgetting check: probes", item=p.id))
    kl_mean = kl_sum / max(n_tok, 1)
    out = {"kl_per_token": kl_mean, "loglik_change": ll_sum / max(n_tok, 1),
           "changed_share": sum(r["changed"] for r in rows) / len(rows), "verdict": verdict(kl_mean),
           "probes": sorted(rows, key=lambda r: -r["kl_per_token"])[:top], "probe_count": len(rows),
           "tokens": n_tok, "thresholds": {"kept_below": KEPT_KL, "forgot_from": FORGOT_KL},
           "adapter": model.adapter_file.name if model.adapter_file else None,
           "seconds": round(time.perf_counter() - t0, 2)}
    if not math.isfinite(kl_mean):
        out["verdict"] = "forgot"
    events.log("info", f"forgetting check: {out['verdict']} (KL {kl_mean:.3f} nats per token, "
                       f"{out['changed_share']:.0%} of {len(rows)} probes answered differently)")
    try:
        from core.atomic import write_json

        write_json(Path(run_dir) / "drift.json", out)
    except OSError as exc:
        events.log("warning", f"could not record the forgetting check in {run_dir}: {exc}")
    return out


def drift_lines(d: dict) -> list[str]:
    """The forgetting check in words (the CLI, the demo)."""
    words = {"kept": "kept what the base model knew", "some drift": "drifted somewhat from the base model",
             "forgot": "forgot much of what the base model knew"}
    lines = [f"Forgetting check ({d['probe_count']} general prompts): the fine-tune {words[d['verdict']]}",
             f"  KL divergence {d['kl_per_token']:.3f} nats per token (kept below {KEPT_KL}, forgot from {FORGOT_KL}); "
             f"log-likelihood of the base answers {d['loglik_change']:+.3f} per token; "
             f"{d['changed_share']:.0%} answered differently"]
    for r in d.get("probes", [])[:3]:
        lines.append(f"  moved most: {r['prompt']!r}: base {r['base'][:60]!r} -> fine-tuned {r['tuned'][:60]!r}")
    return lines
