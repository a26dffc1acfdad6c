"""Evaluate a run: the base model and the fine-tuned model on the same held-out examples.

For every example (by default the run's own test split, else its validation split, exactly as training drew them;
or the files given) the prompt is everything before the last assistant turn and the
expected answer is that turn. Both models answer greedily (deterministic, so the GUI's
table and ``tuneloom eval`` give the same numbers), one set of weights serving both
(:class:`core.generate.ChatModel` switches the adapter in and out).

Metrics per model:
- ``exact_match``: share of answers equal to the expected answer (surrounding whitespace ignored).
- ``json_valid``: over the examples whose expected answer is a JSON object or array, the share
  of answers that parse as one; None when no expected answer is JSON.
- ``json_field_accuracy``: over the examples whose expected answer is a JSON object, the share
  of all expected top-level keys the answer has with an equal value (booleans, numbers and
  strings are not equal to one another; 1 == 1.0); None when no expected answer is an object.
- ``loss`` / ``perplexity``: the mean cross-entropy per trained token over the examples,
  computed as training computes its validation loss (same encoding, masking, truncation);
  perplexity is ``exp(loss)``.
- ``tool_call_accuracy``: over the examples whose assistant calls functions, the share whose
  calls the model writes right (:func:`core.tools.tool_call_accuracy`: the same number of calls,
  each with the right function and arguments equal as JSON); None when no example has calls.
  Such an example is asked up to its first call turn, with its tools in the prompt (the
  template's tool prompt, as training rendered it), and the calls are read out of the answer
  with :func:`core.tools.parse_tool_calls`; its expected answer is that turn as the template
  writes it.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import core  # noqa: F401  (OpenBLAS before MLX)
from core.events import NULL_EVENTS, CancelToken, Cancelled, Events, Progress, TuneloomError
# which examples: what the run was trained from (below this module and core.generate; re-exported here)
from core.run_inputs import (  # noqa: F401
    _train_config, file_examples, run_base_model, run_encoder, run_pair_splits, run_pairs, run_split, run_splits,
)
from core.tools import json_equal  # JSON's own equality, shared with tool-call accuracy

SIDES = ("base", "tuned")
LOSS_BATCH_EXAMPLES = 32  # examples per loss call: progress and a stop between calls
ANSWER_BATCH = 8  # examples answered together (one batched generation per side); a stop lands between batches


# ---------------------------------------------------------------------------
# Scoring one answer (pure functions: the numbers are checkable by hand)
# ---------------------------------------------------------------------------

def parse_json(text: str) -> Any | None:
    """The JSON object or array ``text`` is (surrounding whitespace allowed), else None."""
    try:
        value = json.loads(text.strip())
    except (ValueError, TypeError, AttributeError):
        return None
    return value if isinstance(value, (dict, list)) else None


@dataclass
class AnswerScore:
    exact: bool
    json_valid: bool | None  # None: the expected answer is not JSON
    fields: int | None  # expected top-level keys (None: the expected answer is not a JSON object)
    fields_equal: int | None
    calls_right: bool | None = None  # None: the example expects no tool call

    @property
    def field_accuracy(self) -> float | None:
        if not self.fields:
            return None
        return self.fields_equal / self.fields


def score_answer(expected: str, answer: str) -> AnswerScore:
    exact = answer.strip() == expected.strip()
    want = parse_json(expected)
    if want is None:
        return AnswerScore(exact, None, None, None)
    got = parse_json(answer)
    if not isinstance(want, dict):
        return AnswerScore(exact, got is not None, None, None)
    same = 0
    if isinstance(got, dict):
        same = sum(1 for k, v in want.items() if k in got and json_equal(got[k], v))
    return AnswerScore(exact, got is not None, len(want), same)


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------

@dataclass
class EvalRow:
    index: int
    messages: list[dict]  # the prompt: every message before the expected answer
    expected: str
    file: str = ""
    line: int | None = None
    answers: dict[str, str] = field(default_factory=dict)
    scores: dict[str, AnswerScore] = field(default_factory=dict)
    conversation: list[dict] | None = field(default=None, repr=False)  # the whole example, as trained on
    tools: list[dict] | None = field(default=None, repr=False)  # the functions the example declares
    expected_calls: list[dict] | None = None  # [{"name", "arguments"}] of the turn asked for; None: no call
    calls: dict[str, list[dict]] = field(default_factory=dict)  # per side: the calls read out of the answer

    @property
    def prompt(self) -> str:
        """The last user message (what the table shows)."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return str(m.get("content", ""))
        return ""

    def to_json(self) -> dict:
        out: dict[str, Any] = {"index": self.index, "file": self.file, "line": self.line, "prompt": self.prompt,
                               "expected": self.expected}
        for side in SIDES:
            if side in self.answers:
                s = self.scores[side]
                out.update({f"{side}_answer": self.answers[side], f"{side}_exact": s.exact,
                            f"{side}_json_valid": s.json_valid, f"{side}_field_accuracy": s.field_accuracy})
                if self.expected_calls is not None:
                    out.update({f"{side}_calls": self.calls.get(side, []), f"{side}_calls_right": s.calls_right})
        if self.expected_calls is not None:
            out["expected_calls"] = self.expected_calls
        if self.tools:
            out["tools"] = self.tools
        out["messages"] = self.messages
        return out


@dataclass
class Scores:
    exact_match: float | None
    json_valid: float | None
    json_field_accuracy: float | None
    loss: float | None
    perplexity: float | None
    examples: int
    tool_call_accuracy: float | None = None

    def to_json(self) -> dict:
        return {"exact_match": self.exact_match, "json_valid": self.json_valid,
                "json_field_accuracy": self.json_field_accuracy, "loss": self.loss,
                "perplexity": self.perplexity, "examples": self.examples,
                "tool_call_accuracy": self.tool_call_accuracy}


def aggregate(rows: list[EvalRow], side: str, loss: float | None) -> Scores:
    """The metrics of one side over the rows it answered (see the module docstring)."""
    scored = [r.scores[side] for r in rows if side in r.scores]
    n = len(scored)
    js = [s.json_valid for s in scored if s.json_valid is not None]
    fields = sum(s.fields for s in scored if s.fields)
    equal = sum(s.fields_equal for s in scored if s.fields)
    calls = [s.calls_right for s in scored if s.calls_right is not None]
    return Scores(
        exact_match=sum(s.exact for s in scored) / n if n else None,
        json_valid=sum(js) / len(js) if js else None,
        json_field_accuracy=equal / fields if fields else None,
        loss=loss,
        perplexity=perplexity(loss),
        examples=n,
        tool_call_accuracy=sum(calls) / len(calls) if calls else None,
    )


def perplexity(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(loss):
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


CSV_COLUMNS = ["index", "file", "line", "prompt", "expected", "base_answer", "tuned_answer", "base_exact",
               "tuned_exact", "base_json_valid", "tuned_json_valid", "base_field_accuracy", "tuned_field_accuracy"]


@dataclass
class EvalResult:
    rows: list[EvalRow]
    losses: dict[str, float | None]
    run_dir: str | None = None
    source: str = "validation"  # the run's "test" or "validation" split, or "files"
    data: list[str] = field(default_factory=list)
    complete: bool = True
    seconds: float = 0.0
    # per side: the share of held-out preference pairs whose chosen answer the model rates above the
    # rejected one (empty for chat data)
    preference: dict[str, float | None] = field(default_factory=dict)
    adapter: str | None = None  # the adapter weights file the fine-tuned side used

    def scores(self, side: str) -> Scores:
        return aggregate(self.rows, side, self.losses.get(side))

    def to_json(self) -> dict:
        """The contract of ``tuneloom eval --json``: {"base": {...}, "tuned": {...}}, each side naming the
        ``split`` it was evaluated on ("test" / "validation" / "files") and its ``preference_accuracy``
        (null for chat data)."""
        return {side: {**self.scores(side).to_json(), "split": self.source,
                       "preference_accuracy": self.preference.get(side)} for side in SIDES}

    def summary(self) -> dict:
        """to_json() plus where the examples came from (for a report or a saved evaluation)."""
        return {**self.to_json(), "run": self.run_dir, "source": self.source, "data": self.data,
                "examples": len(self.rows), "json_examples": sum(1 for r in self.rows if parse_json(r.expected)),
                "complete": self.complete, "seconds": round(self.seconds, 2)}

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.to_json().items()})
        return buf.getvalue()

    def write_csv(self, path: str | Path) -> Path:
        """One line per example (UTF-8 with a BOM so that spreadsheet apps read it as UTF-8)."""
        from core.atomic import write_text

        write_text(path, "\ufeff" + self.csv_text())
        return Path(path)

    def write_jsonl(self, path: str | Path) -> Path:
        """One JSON object per example, with the prompt messages."""
        from core.atomic import write_text

        write_text(path, "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in self.rows))
        return Path(path)


# ---------------------------------------------------------------------------
# Which examples
# ---------------------------------------------------------------------------

def run_chat_model(run_dir: str | Path, model=None, *, adapter: str = "best", events: Events | None = None):
    """``model`` (a loaded :class:`core.generate.ChatModel` of this run, e.g. the Try page's), else the run's base
    model with its ``adapter`` ("best" or "final"); refuses a model without the run's adapter."""
    from core.generate import ChatModel

    if model is None:
        (events or NULL_EVENTS).report_progress(Progress(0, None, what="loading the model"))
        base = run_base_model(run_dir)
        model = ChatModel(base, adapter_dir=run_dir, encoder=run_encoder(run_dir, base), adapter=adapter)
    if not model.has_adapter:
        raise TuneloomError("The model was loaded without the run's adapter.")
    return model


def to_rows(records, limit: int | None = None, events: Events | None = None) -> list[EvalRow]:
    """One row per record that has an answer to compare with (a prompt and a last assistant turn;
    for a record whose assistant calls functions, its first call turn)."""
    from core.tools import calls_of, first_call_turn

    events = events or NULL_EVENTS
    rows, skipped = [], 0
    for r in records:
        msgs = r.messages
        call = first_call_turn(msgs)
        if call is not None and any(m.get("role") == "user" for m in msgs[:call]):
            rows.append(EvalRow(len(rows), list(msgs[:call]), str(msgs[call].get("content") or ""),
                                getattr(r, "file", ""), getattr(r, "line", None),
                                conversation=list(msgs[: call + 1]), tools=getattr(r, "tools", None),
                                expected_calls=calls_of(msgs[call])))
            if limit is not None and len(rows) >= limit:
                break
            continue
        last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
        if last is None or not any(m.get("role") == "user" for m in msgs[:last]):
            skipped += 1
            continue
        content = msgs[last].get("content")
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        rows.append(EvalRow(len(rows), list(msgs[:last]), content, getattr(r, "file", ""), getattr(r, "line", None),
                            conversation=list(msgs[: last + 1]), tools=getattr(r, "tools", None)))
        if limit is not None and len(rows) >= limit:
            break
    if skipped:
        events.log("info", f"{skipped} example(s) without a question to answer (plain text) are left out")
    return rows


# ---------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------

def call_text(encoder, row: EvalRow) -> str:
    """The text a model writes for the call turn ``row`` asks for, as the template renders it after
    the row's prompt (what training taught it), without the end-of-turn token."""
    tools = row.tools
    prompt = encoder.render(encoder.prepare(row.messages, tools), add_generation_prompt=True, tools=tools)
    text, has_eot = encoder._answer_text(encoder.prepare(row.conversation, tools), prompt, tools)
    if has_eot:
        for eot in encoder._eot_texts:
            if text.endswith(eot):
                return text[: -len(eot)]
    return text


def score_row(encoder, row: EvalRow, side: str, answer: str) -> None:
    """Score one side's answer to ``row``, and the calls in it when the row expects calls."""
    from core.tools import calls_equal, parse_tool_calls

    score = score_answer(row.expected, answer)
    if row.expected_calls is not None:
        row.calls[side] = parse_tool_calls(answer, encoder.tok, row.tools)
        score.calls_right = calls_equal(row.expected_calls, row.calls[side])
    row.answers[side] = answer
    row.scores[side] = score


def answer_budget(encoder, expected: str, max_tokens: int | None = None) -> int:
    """Tokens an answer may take: fixed, or by default room for the expected answer and half again
    (a rambling answer is cut there; it cannot be an exact match any more)."""
    if max_tokens is not None:
        return max(1, int(max_tokens))
    n = len(encoder.tokenize(expected)[0])
    return max(16, min(2048, n + n // 2 + 8))


def _losses(model, rows: list[EvalRow], cfg, events: Events, cancel: CancelToken, progress) -> dict:
    from core.data import ChatRecord
    from core.train import encode_records, evaluate_loss

    enc = model.encoder
    recs = [ChatRecord(r.conversation or r.messages + [{"role": "assistant", "content": r.expected}], tools=r.tools)
            for r in rows]
    seqs = encode_records(enc, recs, cfg)
    pad_id = enc.tok.pad_token_id if enc.tok.pad_token_id is not None else (enc.eos_ids or [0])[0]
    out: dict[str, float | None] = {}
    for side in SIDES:
        total = count = 0.0
        for i in range(0, len(seqs), LOSS_BATCH_EXAMPLES):
            cancel.raise_if_cancelled()
            part = seqs[i:i + LOSS_BATCH_EXAMPLES]
            n = float(sum(sum(s.mask[1:]) for s in part))
            if n:
                loss = model.run_with(side == "tuned", lambda m, part=part: evaluate_loss(
                    m, part, cfg.batch, pad_id, cfg.max_seq_len, -1))
                total += loss * n
                count += n
            progress(f"{side}: validation loss")
        out[side] = total / count if count else None
    return out


def _preference_accuracy(model, pairs, cfg, limit: int | None) -> dict[str, float | None]:
    from core.train.preference import encode_pairs, preference_accuracy
    from core.train import selective_head

    enc = model.encoder
    encoded = encode_pairs(enc, pairs[:limit] if limit else pairs, cfg.max_seq_len)
    pad_id = enc.tok.pad_token_id if enc.tok.pad_token_id is not None else (enc.eos_ids or [0])[0]
    return {side: model.run_with(side == "tuned", lambda m: preference_accuracy(
        m, encoded, cfg.batch, pad_id, cfg.max_seq_len, selective_head(m))) for side in SIDES}


def evaluate(run_dir: str | Path, data: list[str | Path] | None = None, *, limit: int | None = None,
             max_tokens: int | None = None, model=None, events: Events | None = None,
             cancel: CancelToken | None = None, on_row: Callable[[EvalRow], None] | None = None,
             adapter: str = "best", split: str | None = None) -> EvalResult:
    """Evaluate a run's base and fine-tuned model. ``model``: an already loaded
    :class:`core.generate.ChatModel` of this run (the Try page's), else one is loaded.

    Reports progress (examples answered), calls ``on_row`` as each example's two answers are
    in; on cancel raises :class:`Cancelled` whose ``result`` holds the rows done so far."""

    events = events or NULL_EVENTS
    cancel = cancel or CancelToken()
    t0 = time.perf_counter()
    if limit is not None and limit < 1:
        raise TuneloomError(f"--limit must be at least 1, not {limit}.")
    cfg = _train_config(run_dir)
    events.report_progress(Progress(0, None, what="reading the examples"))
    if split not in (None, "test", "validation"):
        raise TuneloomError(f"Unknown split {split!r}.", "Use 'test' or 'validation'.")
    pairs, source = [], "files"
    if getattr(cfg, "method", "sft") != "sft":  # by default its test pairs, never trained on
        if data:
            pairs = run_pairs(run_dir, data, events=events, cancel=cancel)
        else:
            psplits = run_pair_splits(run_dir, events=events, cancel=cancel)
            source = split or ("test" if psplits["test"] else "validation")
            pairs = psplits[source]
            if pairs and split is None and source == "validation":
                events.log("info", "this run has no test pairs: evaluating on its validation pairs")
    if pairs:  # a preference run: the chosen answers of its held-out pairs are the expected ones
        records = [p.chosen_record() for p in pairs]
    elif data:
        records, source = file_examples([str(p) for p in data], cfg, events=events, cancel=cancel), "files"
    else:  # the test split by default (never seen in training); the validation split when there is none
        splits = run_splits(run_dir, events=events, cancel=cancel)
        source = split or ("test" if splits["test"] else "validation")
        records = splits[source]
        if not records:
            raise TuneloomError(f"The run has no {source} examples.",
                                "Evaluate on the validation split (--split validation) or give files (--data).")
        if split is None and source == "validation":
            events.log("info", "this run has no test split: evaluating on its validation examples")
    rows = to_rows(records, limit, events)
    if not rows:
        raise TuneloomError("None of the examples has a question and an answer to compare with.",
                            "Evaluate on chat, instruction or prompt/completion examples.")
    model = run_chat_model(run_dir, model, adapter=adapter, events=events)
    result = EvalResult(rows=[], losses={}, run_dir=str(run_dir), source=source,
                        data=[str(p) for p in (data or cfg.data)], complete=False,
                        adapter=model.adapter_file.name if getattr(model, "adapter_file", None) else None)
    n_loss_steps = 2 * math.ceil(len(rows) / LOSS_BATCH_EXAMPLES)
    total = n_loss_steps + 2 * len(rows)
    done = 0

    def progress(what: str) -> None:
        # a task: one batch of validation loss on one side, or one example answered by one side
        nonlocal done
        done += 1
        events.report_progress(Progress(done, total, "task", what))

    for row in rows:  # a call turn is expected as the template writes it
        if row.expected_calls is not None:
            row.expected = call_text(model.encoder, row)
    try:
        result.losses = _losses(model, rows, cfg, events, cancel, progress)
        if pairs:
            result.preference = _preference_accuracy(model, pairs, cfg, limit)
        for i in range(0, len(rows), ANSWER_BATCH):
            part = rows[i:i + ANSWER_BATCH]
            prompts = [model.encoder.prompt_ids(r.messages, r.tools) for r in part]
            budgets = [answer_budget(model.encoder, r.expected, max_tokens) for r in part]
            for side in SIDES:
                cancel.raise_if_cancelled()
                answers = model.greedy_batch(prompts, budgets, adapter=(side == "tuned"))
                for row, answer in zip(part, answers):
                    score_row(model.encoder, row, side, answer)
                    progress(f"{side}: example {row.index + 1} of {len(rows)}")
            for row in part:
                result.rows.append(row)
                if on_row is not None:
                    on_row(row)
    except Cancelled as exc:
        result.seconds = time.perf_counter() - t0
        raise Cancelled(f"evaluation stopped after {len(result.rows)} of {len(rows)} examples",
                        "The rows done so far are kept.", result=result) from exc
    result.complete = True
    result.seconds = time.perf_counter() - t0
    for side in SIDES:
        s = result.scores(side)
        loss = "n/a" if s.loss is None else f"{s.loss:.4f}"
        calls = "" if s.tool_call_accuracy is None else f", tool-call accuracy {s.tool_call_accuracy:.1%}"
        events.log("info", f"{side}: exact match {s.exact_match:.1%}, validation loss {loss}{calls}")
    return result
