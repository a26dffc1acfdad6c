"""Answer prompts with a model and its adapter: streaming chat for Try and the CLI, greedy for evaluation.

:class:`ChatModel` is one model folder loaded once. With a run's adapter it holds both
models of a side-by-side comparison in one set of weights: the adapter layers are put in
for the fine-tuned model and taken out for the base model (LoRA, DoRA and quantized bases
alike), so the base model's answers are exactly those of the plain folder and the memory
is that of one model, not two.

:class:`ChatSession` is a conversation with one or both of them ("base", "tuned"): the same
system prompt and user turns for both, each side continuing from its own earlier answers
(what talking to that model alone would be). The two answers to a question are generated
token by token in turn, so both columns fill as they go, and one :class:`CancelToken`
stops both within a token. Prompts are rendered by :class:`core.tokens.ChatEncoder`,
exactly as training renders them. Each side keeps its KV cache between questions, so a
follow-up only computes the tokens the conversation added.

Tools: a session given ``tools`` (OpenAI's form, see :mod:`core.tools`) renders them in every
prompt (the template's tool prompt, as training renders a record's tools) and reads the calls a
finished answer writes (:func:`core.tools.parse_tool_calls`). Such an answer joins the history as
a call turn (``tool_calls``), so :meth:`ChatSession.tool_result` can answer it with what the
function returned (a ``tool`` message) and let that side continue. The two sides may call
different functions, so results are given per side.

The generation loop is ours (not ``mlx_lm.generate_step``) because the adapter has to be
switched in and out between single forward passes and a stop must land between them.
"""
from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from core import runs
from core.events import NULL_EVENTS, CancelToken, Events, Progress, TuneloomError
# runs: base model, encoder, trained system prompt (re-exported here for the callers of this module)
from core.run_inputs import run_base_model, run_encoder, trained_system_prompt  # noqa: F401
from core.tokens import ChatEncoder

SIDES = ("base", "tuned")
PREFILL_CHUNK = 128  # prompt tokens per forward pass while reading a prompt: a stop lands between chunks


@dataclass
class Sampling:
    """How the next token is chosen. ``temperature`` 0 is greedy (always the likeliest token)."""

    temperature: float = field(default=0.7, metadata={"help": "randomness: 0 always picks the likeliest word"})
    top_p: float = field(default=0.9, metadata={"help": "pick only among the likeliest words making up this share"})
    max_tokens: int = field(default=512, metadata={"help": "longest answer, in tokens"})
    seed: int | None = field(default=0, metadata={"help": "same seed, same answers (empty: different each time)"})

    def check(self) -> "Sampling":
        if not (self.temperature >= 0):
            raise TuneloomError(f"The temperature must be 0 or more, not {self.temperature}.",
                                "Use 0 for fixed answers, 0.7 for varied ones.")
        if not (0 < self.top_p <= 1):
            raise TuneloomError(f"Top-p must be above 0 and at most 1, not {self.top_p}.", "Use e.g. 0.9.")
        if int(self.max_tokens) < 1:
            raise TuneloomError(f"The answer length must be at least 1 token, not {self.max_tokens}.")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @classmethod
    def from_dict(cls, d: dict | None) -> "Sampling":
        d = d or {}
        return cls(**{k: d[k] for k in ("temperature", "top_p", "max_tokens", "seed") if k in d}).check()


GREEDY = Sampling(temperature=0.0, top_p=1.0, max_tokens=512, seed=0)


class PromptCache:
    """The KV cache of one conversation side, and exactly which tokens it holds.

    A new prompt that starts with those tokens only computes the rest (the cache is cut back
    to the common prefix where the model's cache type allows it, else started over)."""

    def __init__(self) -> None:
        self.cache = None
        self.tokens: list[int] = []
        self.adapter: bool | None = None

    def reset(self) -> None:
        self.cache, self.tokens, self.adapter = None, [], None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class TextStream:
    """Token ids in, new text out: holds back an incomplete UTF-8 character (a byte-level token
    may carry half of one), so every chunk is printable and the chunks add up to the answer."""

    def __init__(self, encoder: ChatEncoder):
        self.encoder = encoder
        self.ids: list[int] = []
        self.text = ""

    def add(self, tid: int) -> str:
        self.ids.append(tid)
        full = self.encoder.decode(self.ids)
        if full.endswith("\ufffd") or not full.startswith(self.text):
            return ""
        new, self.text = full[len(self.text):], full
        return new

    def flush(self) -> str:
        full = self.encoder.decode(self.ids)
        new = full[len(self.text):] if full.startswith(self.text) else ""
        self.text += new
        return new


def _adapter_modules(model) -> list[tuple[object, object, object, object]]:
    """(parent, attribute name or list index, adapter layer, the layer it wraps) for every adapter layer."""
    from mlx_lm.tuner.dora import DoRAEmbedding, DoRALinear
    from mlx_lm.tuner.lora import LoRAEmbedding, LoRALinear, LoRASwitchLinear

    kinds = (LoRALinear, LoRASwitchLinear, LoRAEmbedding, DoRALinear, DoRAEmbedding)
    out = []

    def walk(obj):
        items = enumerate(obj) if isinstance(obj, (list, tuple)) else obj.items() if isinstance(obj, dict) else ()
        for key, child in list(items):
            if isinstance(child, kinds):
                inner = child.get("linear") if "linear" in child else child.get("embedding")
                if inner is None:
                    raise TuneloomError(f"Unexpected adapter layer {type(child).__name__} at {key}.")
                if isinstance(obj, tuple):
                    raise TuneloomError("Adapter layers inside a tuple cannot be switched off.")
                out.append((obj, key, child, inner))
            elif isinstance(child, (dict, list, tuple)):
                walk(child)

    walk(model)
    return out


class ChatModel:
    """A model folder loaded once, optionally with a run's adapter that can be switched on and off.

    Use it from one thread at a time per call; calls from several threads are serialized
    (one forward pass at a time), never mixed."""

    def __init__(self, model_dir: str | Path, adapter_dir: str | Path | None = None,
                 encoder: ChatEncoder | None = None, adapter: str = "best"):
        from core import train as _train

        self.model_dir = Path(model_dir)
        self.adapter_dir = Path(adapter_dir) if adapter_dir is not None else None
        # which of a run's adapters: "best" (lowest validation loss, where the run kept one) or "final"
        self.adapter_file = runs.adapter_file(self.adapter_dir, adapter) if self.adapter_dir is not None else None
        self.model, self.config = _train.load_base(model_dir)
        self._swaps: list = []
        if self.adapter_dir is not None:
            self._load_adapter(self.adapter_dir)
        self.model.eval()
        import mlx.core as mx

        mx.eval(self.model.parameters())  # the adapter's weights too: another thread may answer (see load_base)
        self.encoder = encoder or ChatEncoder(model_dir)
        self._lock = threading.RLock()
        self._adapter_on = self.has_adapter
        self._no_batch = False

    def _load_adapter(self, adapter_dir: Path) -> None:
        from mlx_lm.tuner.utils import load_adapters

        if not runs.RunFolder(adapter_dir).has_adapter:
            raise TuneloomError(f"{adapter_dir} has no adapters yet (adapters.safetensors, adapter_config.json).",
                                "Train the run until its first checkpoint, or pick a finished run.")
        from core.checkpoints import check_run_adapter

        check_run_adapter(adapter_dir)  # a damaged file: its name and the checkpoint to take it from
        try:
            load_adapters(self.model, str(adapter_dir))
            if self.adapter_file is not None and self.adapter_file.name != runs.FINAL_ADAPTERS:
                self.model.load_weights(str(self.adapter_file), strict=False)
        except (ValueError, KeyError, FileNotFoundError) as exc:
            raise TuneloomError(f"The adapters in {adapter_dir} do not fit the model {self.model_dir.name}: {exc}",
                                "Pick the run's own base model.") from exc
        self._swaps = _adapter_modules(self.model)

    @property
    def has_adapter(self) -> bool:
        return bool(self._swaps)

    def _use_adapter(self, on: bool) -> None:
        """Put the adapter layers in (fine-tuned model) or the layers they wrap (base model)."""
        if on and not self._swaps:
            raise TuneloomError("This model was loaded without adapters: there is no fine-tuned model to ask.")
        if on == self._adapter_on:
            return
        for parent, key, adapted, base in self._swaps:
            parent[key] = adapted if on else base
        self._adapter_on = on

    # -- token level ----------------------------------------------------------------------------
    def stream_ids(self, prompt_ids: list[int], sampling: Sampling | None = None, cancel: CancelToken | None = None,
                   *, adapter: bool | None = None, cache: PromptCache | None = None,
                   stop_ids: set[int] | None = None) -> Iterator[int]:
        """Yield the answer's token ids one at a time (the end-of-turn token is not yielded).

        The generator's return value (``StopIteration.value``) says why it ended: "stop" (end of
        turn), "length" (``max_tokens``) or "cancelled"."""
        import mlx.core as mx
        from mlx_lm.models import cache as kv

        sampling = (sampling or GREEDY).check()
        adapter = self.has_adapter if adapter is None else adapter
        if not prompt_ids:
            raise TuneloomError("The prompt is empty.")
        stop = set(self.encoder.eos_ids) if stop_ids is None else stop_ids
        pc = cache if cache is not None else PromptCache()

        with self._lock:
            start = 0
            if pc.cache is not None and pc.adapter == adapter:
                start = min(_common_prefix(pc.tokens, prompt_ids), len(prompt_ids) - 1)
                extra = len(pc.tokens) - start
                if extra > 0:
                    if kv.can_trim_prompt_cache(pc.cache) and kv.trim_prompt_cache(pc.cache, extra) == extra:
                        pc.tokens = pc.tokens[:start]
                    else:
                        pc.reset()
                        start = 0
            else:
                pc.reset()
            if pc.cache is None:
                pc.cache, pc.tokens, pc.adapter = kv.make_prompt_cache(self.model), [], adapter

        key = None
        if not sampling.greedy:
            seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(4), "little")
            key = mx.random.key(int(seed) % 2**32)

        def forward(ids: list[int]):
            with self._lock:
                self._use_adapter(adapter)
                try:
                    logits = self.model(mx.array(ids)[None], cache=pc.cache)[:, -1, :]
                    mx.eval(logits)
                except BaseException:
                    pc.reset()
                    raise
                pc.tokens.extend(ids)
                return logits

        def sample(logits):
            nonlocal key
            if key is None:
                return int(mx.argmax(logits, axis=-1).item())
            key, sub = mx.random.split(key)
            logits = logits.astype(mx.float32) / sampling.temperature
            if sampling.top_p < 1.0:
                order = mx.argsort(-logits, axis=-1)
                ordered = mx.take_along_axis(logits, order, axis=-1)
                probs = mx.softmax(ordered, axis=-1)
                before = mx.cumsum(probs, axis=-1) - probs  # share of the likelier tokens
                ordered = mx.where(before < sampling.top_p, ordered, -float("inf"))
                pick = mx.random.categorical(ordered, key=sub)
                return int(mx.take_along_axis(order, pick[:, None], axis=-1).item())
            return int(mx.random.categorical(logits, key=sub).item())

        rest = list(prompt_ids[start:])
        logits = None
        while rest:
            if cancel is not None and cancel.cancelled:
                return "cancelled"
            chunk, rest = rest[:PREFILL_CHUNK], rest[PREFILL_CHUNK:]
            logits = forward(chunk)
        for n in range(int(sampling.max_tokens)):
            if cancel is not None and cancel.cancelled:
                return "cancelled"
            tok = sample(logits)
            if tok in stop:
                return "stop"
            yield tok
            if n + 1 == int(sampling.max_tokens):
                break
            if cancel is not None and cancel.cancelled:
                return "cancelled"
            logits = forward([tok])
        return "length"

    def generate_ids(self, prompt_ids: list[int], max_tokens: int = 96, cancel: CancelToken | None = None, *,
                     adapter: bool | None = None, sampling: Sampling | None = None) -> list[int]:
        """The whole answer's ids (greedy unless ``sampling`` says otherwise)."""
        s = sampling or Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=0)
        return list(self.stream_ids(prompt_ids, s, cancel, adapter=adapter))

    # -- text level -----------------------------------------------------------------------------
    def stream(self, messages: list[dict], sampling: Sampling | None = None, cancel: CancelToken | None = None, *,
               adapter: bool | None = None, cache: PromptCache | None = None, tools: list[dict] | None = None
               ) -> Iterator[str]:
        """Yield the answer to ``messages`` as text chunks, as it is generated (``tools``: the functions
        the model may call, rendered in the prompt; :meth:`calls` reads the calls out of the answer)."""
        text = TextStream(self.encoder)
        for tid in self.stream_ids(self.encoder.prompt_ids(messages, tools), sampling, cancel, adapter=adapter,
                                   cache=cache):
            piece = text.add(tid)
            if piece:
                yield piece
        tail = text.flush()
        if tail:
            yield tail

    def answer(self, messages: list[dict], max_tokens: int = 96, cancel: CancelToken | None = None, *,
               adapter: bool | None = None, sampling: Sampling | None = None, tools: list[dict] | None = None
               ) -> str:
        ids = self.generate_ids(self.encoder.prompt_ids(messages, tools), max_tokens, cancel, adapter=adapter,
                                sampling=sampling)
        return self.encoder.decode(ids)

    def calls(self, text: str, tools: list[dict] | None = None) -> list[dict]:
        """The function calls in an answer, [{"name", "arguments"}], read as this model's template writes
        them. Only an answer to a prompt with ``tools`` is read: without them a JSON answer that has a
        "name" would pass for a call."""
        if not tools:
            return []
        from core.tools import parse_tool_calls

        return parse_tool_calls(text, self.encoder.tok, tools)

    def greedy_batch(self, prompts: list[list[int]], max_tokens: list[int], *, adapter: bool | None = None
                     ) -> list[str]:
        """Greedy answers to several prompts at once, as text (:meth:`greedy_ids_batch`)."""
        return [self.encoder.decode(ids) for ids in self.greedy_ids_batch(prompts, max_tokens, adapter=adapter)]

    def greedy_ids_batch(self, prompts: list[list[int]], max_tokens: list[int] | int, *,
                         adapter: bool | None = None) -> list[list[int]]:
        """Greedy answers' ids to several prompts at once (mlx-lm's batched generation: one forward pass
        per token for the whole batch, the same ids as :meth:`generate_ids` one at a time, a few times
        less work). Falls back to one at a time where this mlx-lm or model cannot batch."""
        adapter = self.has_adapter if adapter is None else adapter
        budgets = [int(max_tokens)] * len(prompts) if isinstance(max_tokens, int) else [int(n) for n in max_tokens]
        if len(prompts) > 1 and not self._no_batch:
            try:
                from mlx_lm.generate import batch_generate

                encoder = self.encoder

                class _Tokenizer:  # what batch_generate reads of a tokenizer
                    eos_token_ids = set(encoder.eos_ids)
                    decode = staticmethod(encoder.decode)

                with self._lock:
                    self._use_adapter(adapter)
                    res = batch_generate(self.model, _Tokenizer(), [list(p) for p in prompts], max_tokens=budgets,
                                         return_token_ids=True)
                if res.token_ids is not None:  # (None: an mlx-lm that does not hand the ids back)
                    return [[int(t) for t in ids] for ids in res.token_ids]
                self._no_batch = True
            except (ImportError, AttributeError, NotImplementedError, TypeError, ValueError):
                self._no_batch = True  # e.g. a cache type mlx-lm cannot batch yet
        return [self.generate_ids(p, n, adapter=adapter) for p, n in zip(prompts, budgets)]

    def run_with(self, adapter: bool, fn: Callable):
        """Call ``fn(model)`` with the adapter in or out (for losses over the same weights)."""
        with self._lock:
            self._use_adapter(adapter)
            return fn(self.model)


# ---------------------------------------------------------------------------
# The conversation
# ---------------------------------------------------------------------------

_CALL_BLOCK = re.compile(r"<tool_call>.*?(?:</tool_call>|\Z)", re.S)


def assistant_message(text: str, calls: list[dict] | None) -> dict:
    """The history's assistant message for an answer: prose, or a call turn (OpenAI's ``tool_calls``,
    arguments as objects) whose content is the prose around the calls."""
    if not calls:
        return {"role": "assistant", "content": text}
    prose = _CALL_BLOCK.sub("", text).strip() if "<tool_call>" in text else ""
    return {"role": "assistant", "content": prose,
            "tool_calls": [{"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                           for c in calls]}


@dataclass
class Chunk:
    """A piece of one side's answer; the last one of a side has ``done`` and says why it ended
    ("stop", "length", "cancelled", or "error" with the message in ``text``)."""

    side: str
    text: str
    done: bool = False
    reason: str | None = None
    calls: list[dict] = field(default_factory=list)  # on the last chunk: the calls in the answer


@dataclass
class Turn:
    """One exchange: the user's message (None for a turn that continues after tool results) and each
    side's answer. ``calls[side]``: the function calls the answer writes ([{"name", "arguments"}],
    empty for prose). ``results[side]``: the tool messages given to that side before it answered
    (what its calls of the turn before returned); a side without results did not answer."""

    user: str | None
    replies: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # side -> why its answer ended
    calls: dict[str, list[dict]] = field(default_factory=dict)
    results: dict[str, list[dict]] = field(default_factory=dict)


class ChatSession:
    """A multi-turn chat with the base model, the fine-tuned model, or both side by side.

    ``ask()`` / ``stream()`` take the user's message, answer it on every side and add the
    exchange to the history; ``reset()`` starts a new chat. Changing ``system``, ``sampling``
    or ``tools`` applies from the next question on. With ``tools``, an answer that calls
    functions waits for their results: ``tool_result()`` / ``stream_results()`` give them to a
    side, which answers again."""

    def __init__(self, model: ChatModel, sides: tuple[str, ...] = SIDES, *, system: str | None = None,
                 sampling: Sampling | None = None, tools: list[dict] | None = None):
        for s in sides:
            if s not in SIDES:
                raise TuneloomError(f"Unknown side {s!r}.", f"Use {' and/or '.join(SIDES)}.")
        if "tuned" in sides and not model.has_adapter:
            raise TuneloomError("A fine-tuned side needs the run's adapter.", "Load the model with a run.")
        self.model = model
        self.sides = tuple(sides)
        self.system = system
        self.sampling = sampling or Sampling()
        self.turns: list[Turn] = []
        self._caches = {s: PromptCache() for s in self.sides}
        self.tools = tools

    @property
    def tools(self) -> list[dict] | None:
        """The functions the models may call (OpenAI's form), or None."""
        return self._tools

    @tools.setter
    def tools(self, tools) -> None:
        from core.tools import ToolDataError, normalise_tools

        try:
            self._tools = normalise_tools(tools)
        except ToolDataError as exc:
            raise TuneloomError(f"The tool definitions cannot be used: {exc.field} {exc.message}.",
                                exc.hint) from None

    @classmethod
    def for_run(cls, run_dir: str | Path, sides: tuple[str, ...] = SIDES, *, sampling: Sampling | None = None,
                events: Events | None = None, cancel: CancelToken | None = None,
                adapter: str = "best") -> "ChatSession":
        """Load a run's base model with its adapter (once) and prefill its trained system prompt."""
        events = events or NULL_EVENTS
        base = run_base_model(run_dir)
        if cancel is not None:
            cancel.raise_if_cancelled()
        events.report_progress(Progress(0, None, "model", f"loading {base.name} with the adapter of "
                                                          f"{Path(run_dir).name}", item=base.name))
        model = ChatModel(base, adapter_dir=run_dir, encoder=run_encoder(run_dir, base), adapter=adapter)
        events.report_progress(Progress(1, 1, "model", "model loaded", item=base.name))
        return cls(model, sides, system=trained_system_prompt(run_dir), sampling=sampling)

    # -- history --------------------------------------------------------------------------------
    def reset(self) -> None:
        """New chat: history and caches cleared; the model stays loaded."""
        self.turns = []
        for c in self._caches.values():
            c.reset()

    def messages(self, side: str, user: str | None = None, results: list[dict] | None = None) -> list[dict]:
        """The conversation as ``side`` sees it (system, its own earlier answers, its calls and their
        results), plus ``user`` or the tool messages ``results``."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        for t in self.turns:
            if t.user is not None:
                msgs.append({"role": "user", "content": t.user})
            msgs.extend(t.results.get(side, []))
            if t.user is not None or side in t.replies:
                msgs.append(assistant_message(t.replies.get(side, ""), t.calls.get(side)))
        if user is not None:
            msgs.append({"role": "user", "content": user})
        msgs.extend(results or [])
        return msgs

    def prompt_ids(self, side: str, user: str | None = None, results: list[dict] | None = None) -> list[int]:
        return self.model.encoder.prompt_ids(self.messages(side, user, results), self.tools)

    def pending_calls(self, side: str) -> list[dict]:
        """The calls of ``side``'s last answer that wait for results ([] when it answered in prose,
        or when a question came after it)."""
        for t in reversed(self.turns):
            if side in t.replies:
                return list(t.calls.get(side) or [])
            if t.user is not None:
                return []
        return []

    def _results(self, side: str, contents) -> list[dict]:
        """Tool messages for ``side``'s pending calls: one content per call, in order (fewer is
        allowed; the calls without a result stay unanswered)."""
        calls = self.pending_calls(side)
        if not calls:
            raise TuneloomError(f"The {side} model's last answer calls no function: there is nothing to give a "
                                "result to.", "Ask a question instead.")
        if isinstance(contents, (str, dict)):
            contents = [contents]
        contents = list(contents)
        if not contents:
            raise TuneloomError("No tool result given.", "Type what the function returned.")
        if len(contents) > len(calls):
            raise TuneloomError(f"{len(contents)} tool results for {len(calls)} call"
                                f"{'s' if len(calls) != 1 else ''} of the {side} model.",
                                "Give one result per call.")
        out = []
        for call, c in zip(calls, contents):
            if isinstance(c, dict):  # a tool message already
                msg = {"role": "tool", "content": str(c.get("content", "")), "name": c.get("name") or call["name"]}
                if c.get("tool_call_id") is not None:
                    msg["tool_call_id"] = str(c["tool_call_id"])
            else:
                if not isinstance(c, str):
                    c = json.dumps(c, ensure_ascii=False)
                msg = {"role": "tool", "content": c, "name": call["name"]}
            out.append(msg)
        return out

    # -- asking ---------------------------------------------------------------------------------
    def stream(self, user: str, cancel: CancelToken | None = None, sampling: Sampling | None = None
               ) -> Iterator[Chunk]:
        """Answer ``user`` on every side, yielding chunks as tokens come (sides take turns token by
        token). The exchange joins the history when the answers end, stopped answers as far as
        they got."""
        if not isinstance(user, str) or not user.strip():
            raise TuneloomError("The message is empty.", "Type a question first.")
        turn = Turn(user)
        yield from self._answer(turn, {side: self.prompt_ids(side, user) for side in self.sides}, cancel, sampling)

    def stream_results(self, results: dict[str, object], cancel: CancelToken | None = None,
                       sampling: Sampling | None = None) -> Iterator[Chunk]:
        """Give tool results to the sides named in ``results`` (side -> what the function returned:
        text, or a list with one text per call of that side's last answer) and stream their new
        answers, as :meth:`stream` does. The other sides do not answer (their calls stay pending)."""
        if not results:
            raise TuneloomError("No tool result given.", "Type what the function returned.")
        for side in results:
            if side not in self.sides:
                raise TuneloomError(f"There is no {side!r} model in this chat.", f"Use {' or '.join(self.sides)}.")
        turn = Turn(None)
        turn.results = {side: self._results(side, c) for side, c in results.items()}
        prompts = {side: self.prompt_ids(side, results=turn.results[side]) for side in self.sides if side in results}
        yield from self._answer(turn, prompts, cancel, sampling)

    def tool_result(self, side: str, content, name: str | None = None, on_chunk: Callable[[Chunk], None] | None = None,
                    cancel: CancelToken | None = None, sampling: Sampling | None = None) -> Turn:
        """Give ``side`` what its pending call returned (``content``: text, or one text per call when
        the answer called several) and let it answer again; returns the new turn. ``name``: the
        function's name, when the result should carry another name than the call's."""
        if name is not None and not isinstance(content, (list, tuple)):
            content = {"content": content if isinstance(content, str) else json.dumps(content, ensure_ascii=False),
                       "name": name}
        for chunk in self.stream_results({side: content}, cancel, sampling):
            if on_chunk is not None:
                on_chunk(chunk)
        return self.turns[-1]

    def _answer(self, turn: Turn, prompts: dict[str, list[int]], cancel: CancelToken | None,
                sampling: Sampling | None) -> Iterator[Chunk]:
        """Generate every side of ``prompts`` token by token in turn; ``turn`` joins the history at the end."""
        s = (sampling or self.sampling).check()
        sides = list(prompts)
        texts = {side: TextStream(self.model.encoder) for side in sides}
        gens = {}
        for side in sides:
            gens[side] = self.model.stream_ids(prompts[side], s, cancel, adapter=(side == "tuned"),
                                               cache=self._caches[side])
        unfinished = "cancelled"  # why the sides still running at the end stopped
        try:
            while gens:
                for side in list(gens):
                    try:
                        tid = next(gens[side])
                    except StopIteration as end:
                        del gens[side]
                        tail = texts[side].flush()
                        turn.replies[side] = texts[side].text
                        turn.reasons[side] = end.value or "stop"
                        turn.calls[side] = self.model.calls(turn.replies[side], self.tools)
                        yield Chunk(side, tail, done=True, reason=turn.reasons[side], calls=turn.calls[side])
                        continue
                    piece = texts[side].add(tid)
                    if piece:
                        yield Chunk(side, piece)
        except GeneratorExit:  # the consumer stopped reading: as good as a stop
            raise
        except BaseException:
            unfinished = "error"
            raise
        finally:
            for side, g in gens.items():
                g.close()
                texts[side].flush()
                turn.replies.setdefault(side, texts[side].text)
                turn.reasons.setdefault(side, unfinished)
                turn.calls.setdefault(side, self.model.calls(turn.replies[side], self.tools))
            self.turns.append(turn)

    def ask(self, user: str, on_chunk: Callable[[Chunk], None] | None = None, cancel: CancelToken | None = None,
            sampling: Sampling | None = None) -> Turn:
        """``stream()`` to the end, calling ``on_chunk`` for each chunk; returns the new turn."""
        for chunk in self.stream(user, cancel, sampling):
            if on_chunk is not None:
                on_chunk(chunk)
        return self.turns[-1]

    def to_json(self) -> dict:
        out = {"system": self.system, "sampling": asdict(self.sampling), "turns": [asdict(t) for t in self.turns]}
        if self.tools:
            out["tools"] = self.tools
        return out

    def save(self, path: str | Path) -> None:
        from core.atomic import write_text

        write_text(path, json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n")
