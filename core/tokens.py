"""Chat records -> token ids and loss masks, exactly as inference will see them.

The sequence trained on for a conversation is what inference feeds and produces for
its last assistant turn: ``prompt_ids(messages[:last])`` (the model's own chat template
with ``add_generation_prompt=True``, tokenized as one prompt, BOS as inference adds it)
followed by the answer's tokens up to and including the end-of-turn token. Templates
that render history differently from a fresh prompt (Qwen3 puts an empty
``<think></think>`` block only after the last user turn) are therefore handled by
construction: earlier assistant turns are trained in the form the template gives them
as history, and the last one in the form inference gives it.

Tokenization follows the runtime the model is shipped to. Byte-level BPE models
(Qwen) tokenize the same in transformers and llama.cpp. SentencePiece models
(``tokenizer.model``: TinyLlama, Llama 2, Mistral) do not: transformers' fast
tokenizer splits whitespace runs differently and does not add the SentencePiece
leading space after special tokens, while llama.cpp (and so Ollama) runs SentencePiece
itself, splits special tokens out first and puts a space before every run of text that
starts the prompt or follows a special token. :class:`_LlamaCppSentencePiece`
reproduces that (written by hand: no library exposes llama.cpp's tokenizer rules
without a GGUF file; the tests check it against llama.cpp itself).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.events import TuneloomError
from core.tools import ollama_tools

# Stands in for one message's content to find where the template puts that content.
_SENTINEL = "\ue000tuneloom-content\ue001"


@dataclass
class Encoded:
    ids: list[int]
    mask: list[bool]  # True where the loss is computed (the token is predicted)

    @property
    def trained(self) -> int:
        return sum(self.mask)


class _LlamaCppSentencePiece:
    """SentencePiece tokenization the way llama.cpp does it for a 'llama' (SPM) vocab.

    llama.cpp (llama-vocab.cpp, ``LLAMA_VOCAB_TYPE_SPM``): special tokens (control,
    unknown and added tokens) are cut out of the text first, longest first; every
    remaining run of text is escaped (space -> U+2581) and tokenized with SentencePiece's
    merge rules and byte fallback, with a space put in front when the run starts the
    text or follows a special token (``add_space_prefix``), and no other normalization.
    """

    def __init__(self, model_file: Path, config: dict):
        try:
            from sentencepiece import SentencePieceProcessor
            from sentencepiece import sentencepiece_model_pb2 as pb
        except ImportError as exc:  # protobuf comes with mlx-lm
            raise TuneloomError(f"Cannot read {model_file.name}: {exc}",
                                "Install sentencepiece and protobuf (pip install sentencepiece protobuf).") from exc
        proto = pb.ModelProto()
        try:
            proto.ParseFromString(model_file.read_bytes())
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise TuneloomError(f"{model_file} is not a SentencePiece model ({exc}).",
                                "Download the model again.") from exc
        # llama.cpp applies no normalizer and adds the leading space itself
        ns = proto.normalizer_spec
        ns.name = "identity"
        ns.precompiled_charsmap = b""
        ns.add_dummy_prefix = False
        ns.remove_extra_whitespaces = False
        ns.escape_whitespaces = True
        self.sp = SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(proto.SerializeToString())
        prefix = config.get("add_prefix_space")
        self.add_space_prefix = True if prefix is None else bool(prefix)

        # the token texts llama.cpp cuts out, as core.export.gguf writes the vocab
        specials: dict[str, int] = {}
        for i in range(self.sp.vocab_size()):
            if self.sp.IsControl(i) or self.sp.IsUnknown(i):
                specials[self.sp.IdToPiece(i)] = i
        added = model_file.parent / "added_tokens.json"
        if added.is_file():
            for text, tid in json.loads(added.read_text(encoding="utf-8")).items():
                specials[text] = int(tid)
        for tid, data in (config.get("added_tokens_decoder") or {}).items():
            text = data.get("content", "")
            if not data.get("special"):
                text = text.replace("\u2581", " ")
            if text:
                specials[text] = int(tid)
        self.specials = sorted(specials.items(), key=lambda kv: len(kv[0]), reverse=True)

    def _partition(self, text: str) -> list[tuple[int, int, int | None]]:
        """(start, end, special token id or None for plain text) covering ``text`` in order."""
        parts: list[tuple[int, int, int | None]] = [(0, len(text), None)]
        for special, tid in self.specials:
            if special not in text:
                continue
            out: list[tuple[int, int, int | None]] = []
            for start, end, kind in parts:
                if kind is not None:
                    out.append((start, end, kind))
                    continue
                pos = start
                while True:
                    k = text.find(special, pos, end)
                    if k < 0:
                        break
                    if k > pos:
                        out.append((pos, k, None))
                    out.append((k, k + len(special), tid))
                    pos = k + len(special)
                if pos < end:
                    out.append((pos, end, None))
            parts = out
        return parts

    def tokenize(self, text: str, prev_special: bool = True, offsets: list | None = None) -> tuple[list[int], bool]:
        """Ids of ``text``; ``prev_special`` says whether it follows a special token (or starts
        the prompt). Returns the ids and the same flag for whatever follows. With ``offsets``
        (a list), appends each token's (start, end) character span in ``text``."""
        ids: list[int] = []
        for start, end, tid in self._partition(text):
            if tid is not None:
                ids.append(tid)
                prev_special = True
                if offsets is not None:
                    offsets.append((start, end))
                continue
            if start == end:
                continue
            part = text[start:end]
            space = self.add_space_prefix and prev_special
            piece_text = " " + part if space else part
            prev_special = False
            if offsets is None:
                ids += self.sp.encode(piece_text)
                continue
            # SentencePiece reports byte offsets into piece_text: map them to characters of text
            char_at = [0] * (len(piece_text.encode("utf-8")) + 1)
            b = 0
            for i, ch in enumerate(piece_text):
                n = len(ch.encode("utf-8", "surrogatepass"))
                char_at[b:b + n] = [i] * n
                b += n
            char_at[b] = len(piece_text)
            for p in self.sp.encode(piece_text, out_type="proto").pieces:
                ids.append(p.id)
                lo, hi = char_at[p.begin] - space, char_at[p.end] - space
                offsets.append((start + max(lo, 0), start + max(hi, 0)))
        return ids, prev_special


def _object_arguments(calls: list) -> list:
    """Calls with their arguments as objects (the Qwen templates ``tojson`` them: a JSON string
    would be written as a quoted string)."""
    from core.tools import ToolDataError, normalise_calls

    try:
        return normalise_calls(calls)
    except ToolDataError as exc:
        raise TuneloomError(f"A tool call cannot be rendered: {exc.field} {exc.message}.", exc.hint) from None


class ChatEncoder:
    """Training sequences of chat records for one model's template and tokenizer.

    ``thinking``: render with the template's thinking mode on (Qwen3's ``enable_thinking``),
    for data whose answers carry reasoning; otherwise thinking is off, as inference runs it.
    Reasoning (``reasoning_content``) goes where the template puts it; a template with no
    place for it gets it back inline as ``<think>...</think>`` before the answer, as the user
    wrote it. ``"weight": 0`` on an assistant message (OpenAI's format) keeps that turn out
    of the loss."""

    def __init__(self, model_dir: str | Path, thinking: bool = False):
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        try:
            self.tok = AutoTokenizer.from_pretrained(str(self.model_dir))
        except Exception as exc:  # noqa: BLE001 - transformers raises many types
            raise TuneloomError(f"Cannot load the tokenizer in {self.model_dir}: {exc}",
                                "The model folder needs tokenizer.json or tokenizer.model.") from exc
        cfg_path = self.model_dir / "tokenizer_config.json"
        self.config = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
        if not self.tok.chat_template:
            raise TuneloomError(f"{self.model_dir.name} has no chat template.",
                                "Choose an instruct/chat model, or one whose tokenizer_config.json has chat_template.")
        template = self.tok.chat_template if isinstance(self.tok.chat_template, str) else str(self.tok.chat_template)
        self.supports_thinking = "enable_thinking" in template
        self.supports_reasoning = "reasoning_content" in template
        self.supports_tool_calls = "tool_calls" in template
        self.thinking = bool(thinking) and self.supports_thinking
        self.template_kwargs = {}
        if self.supports_thinking:
            self.template_kwargs["enable_thinking"] = self.thinking
        self._role_ok: dict[str, bool] = {}
        self._tools_ok: bool | None = None
        self.reasoning_dropped = 0  # answers whose reasoning a thinking-off render left out (counted, not silent)
        # The same rule as core.export.gguf: SentencePiece vocab when there is a tokenizer.model.
        spm_file = self.model_dir / "tokenizer.model"
        self.spm = _LlamaCppSentencePiece(spm_file, self.config) if spm_file.is_file() else None
        self.bos_id = self.tok.bos_token_id
        self.add_bos = self._adds_bos()
        self.eos_ids = self._eos_ids()
        self.eos_id = self.tok.eos_token_id if self.tok.eos_token_id is not None else (self.eos_ids or [None])[0]
        self._eot_texts = sorted({t for t in self.tok.convert_ids_to_tokens(self.eos_ids) if t}, key=len, reverse=True)

    def _adds_bos(self) -> bool:
        """Whether inference puts BOS in front of a prompt (llama.cpp's tokenizer.ggml.add_bos_token,
        written by core.export.gguf from the same facts)."""
        if self.bos_id is None:
            return False
        if "add_bos_token" in self.config:
            return bool(self.config["add_bos_token"])
        if self.spm is not None:  # HF's LlamaTokenizer and llama.cpp's SPM default
            return True
        with_special = self.tok.encode("a", add_special_tokens=True)
        without = self.tok.encode("a", add_special_tokens=False)
        return len(with_special) > len(without) and with_special[0] == self.bos_id

    def _eos_ids(self) -> list[int]:
        ids = set()
        if self.tok.eos_token_id is not None:
            ids.add(self.tok.eos_token_id)
        gen = self.model_dir / "generation_config.json"
        if gen.exists():
            e = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id")
            ids.update(e if isinstance(e, list) else [e] if e is not None else [])
        vocab = self.tok.get_vocab()
        for t in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
            if t in vocab:
                ids.add(vocab[t])
        return sorted(ids)

    # -- rendering and tokenizing -----------------------------------------------
    def render(self, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
        """The chat template applied (as transformers' apply_chat_template does, with ``tools``: the tool
        prompt of a tool-calling conversation)."""
        # in the form Ollama hands a client's tools to the template (core.tools.ollama_tools), so that an
        # /api/chat request with the same definitions builds this text token for token
        extra = {"tools": ollama_tools(tools)} if tools else {}
        try:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                **extra, **self.template_kwargs)
        except Exception as exc:  # noqa: BLE001 - jinja raises whatever the template raises
            raise TuneloomError(f"The chat template of {self.model_dir.name} cannot render this conversation: {exc}",
                                "Check the roles and order of the messages.") from exc

    def tokenize(self, text: str, prev_special: bool = True, offsets: list | None = None) -> tuple[list[int], bool]:
        """Ids of ``text`` (no BOS) as inference tokenizes it, special tokens included.

        ``prev_special`` (SentencePiece only): the text starts a prompt or follows a special
        token. Returns the ids and that flag for text that would follow. With ``offsets`` (a
        list), appends each token's (start, end) character span in ``text``."""
        if self.spm is not None:
            return self.spm.tokenize(text, prev_special, offsets)
        if offsets is None:
            return self.tok.encode(text, add_special_tokens=False), False
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets.extend(tuple(o) for o in enc["offset_mapping"])
        return list(enc["input_ids"]), False

    def _with_bos(self, ids: list[int]) -> list[int]:
        # a template that writes BOS itself gets no second one
        if self.add_bos and not (ids and ids[0] == self.bos_id):
            return [self.bos_id] + ids
        return ids

    def prompt_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Token ids of the prompt for generating the next assistant turn (what inference feeds),
        with the ``tools`` the model may call in the template's tool prompt."""
        return self._with_bos(self.tokenize(self.render(self.prepare(messages, tools), add_generation_prompt=True,
                                                        tools=tools))[0])

    @property
    def supports_tools(self) -> bool:
        """Whether the template shows tool definitions (rendering one puts its name in the prompt)."""
        if self._tools_ok is None:
            probe = [{"type": "function", "function": {"name": "tuneloom_probe_fn", "description": "d",
                                                       "parameters": {"type": "object", "properties": {}}}}]
            try:
                text = self.render([{"role": "user", "content": "u"}], add_generation_prompt=True, tools=probe)
                self._tools_ok = "tuneloom_probe_fn" in text
            except TuneloomError:
                self._tools_ok = False
        return self._tools_ok

    def _no_tools(self, what: str) -> TuneloomError:
        return TuneloomError(f"The chat template of {self.model_dir.name} has no tool support: {what}",
                             "Remove the tools, calls and tool results from the data, or choose a model whose "
                             "chat template supports tools (Qwen2.5, Qwen3, Qwen3.5).")

    # -- what the template can show -------------------------------------------------
    def prepare(self, messages: list[dict], tools: list[dict] | None = None) -> list[dict]:
        """The messages as the template is given them: no ``weight`` (the loss mask's business),
        reasoning where this template and mode can show it, call arguments as objects. Raises
        TuneloomError, naming the role, for a message the template would leave out, and for
        ``tools`` a template without tool support would leave out."""
        if tools and not self.supports_tools:
            raise self._no_tools("it has no place for the tool definitions (the functions the model may call): "
                                 "they would be left out of the training text.")
        out = []
        for m in messages:
            role = m.get("role")
            if role not in ("user", "assistant") and not self._renders_role(role):
                if role == "tool":
                    raise self._no_tools("it has no place for 'tool' messages (tool results): they would be left "
                                         "out of the training text.")
                raise TuneloomError(f"The chat template of {self.model_dir.name} has no place for {role!r} messages: "
                                    "they would be left out of the training text.",
                                    f"Remove the {role} messages, or choose a model whose chat template supports "
                                    f"them (e.g. Qwen).")
            if role == "assistant" and m.get("tool_calls") and not self.supports_tool_calls:
                raise self._no_tools("it cannot show tool calls: the assistant's tool_calls would be left out of "
                                     "the training text.")
            m = {k: v for k, v in m.items() if k != "weight"}
            if role == "assistant" and m.get("tool_calls"):
                m["tool_calls"] = _object_arguments(m["tool_calls"])
            reasoning = m.get("reasoning_content") if role == "assistant" else None
            if reasoning and not (self.supports_reasoning and self.thinking):
                m.pop("reasoning_content")
                if not self.supports_thinking:  # nowhere to put it: keep it as the user wrote it
                    m["content"] = f"<think>\n{reasoning}\n</think>\n\n{m.get('content') or ''}"
                else:  # a thinking template with thinking off: its prompt already closed the think block
                    self.reasoning_dropped += 1
            out.append(m)
        return out

    def _renders_role(self, role) -> bool:
        if role not in self._role_ok:
            if role == "system":
                probe = [{"role": "system", "content": _SENTINEL}, {"role": "user", "content": "u"},
                         {"role": "assistant", "content": "a"}]
            else:
                probe = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"},
                         {"role": role, "content": _SENTINEL}, {"role": "assistant", "content": "b"}]
            try:
                ok = _SENTINEL in self.render(probe, add_generation_prompt=False)
            except TuneloomError:
                ok = False
            self._role_ok[role] = ok
        return self._role_ok[role]

    # -- where the template puts things -------------------------------------------
    def _first_eot(self, text: str, start: int = 0) -> int:
        """End (exclusive) of the first end-of-turn token in ``text[start:]``, or -1."""
        best = -1
        for eot in self._eot_texts:
            k = text.find(eot, start)
            if k >= 0 and (best < 0 or k + len(eot) < best):
                best = k + len(eot)
        return best

    def _turn_span(self, messages: list[dict], j: int, add_generation_prompt: bool, rendered: str,
                   tools: list[dict] | None = None) -> tuple[int, int] | None:
        """Char span in ``rendered`` of message ``j``'s content through its end-of-turn token.

        Found by rendering the same conversation with a sentinel as that content: what comes
        before and after it must then frame the real rendering. None if the template renders
        other parts differently depending on this content.

        A turn that only calls functions (empty content) is the exception: templates write a
        separator before text content that they leave out when there is none (Qwen2.5's newline
        after the role), so the sentinel's frame overlaps the real rendering. Its span is then
        from where the content would start through the turn's end-of-turn token: the calls."""
        probe = list(messages)
        probe[j] = {**messages[j], "content": _SENTINEL}
        text = self.render(probe, add_generation_prompt, tools)
        i = text.find(_SENTINEL)
        if i < 0 or text.find(_SENTINEL, i + 1) >= 0:
            return None
        before, after = text[:i], text[i + len(_SENTINEL):]
        if len(before) + len(after) > len(rendered) or not (rendered.startswith(before) and rendered.endswith(after)):
            calls_only = messages[j].get("tool_calls") and not (messages[j].get("content") or "").strip()
            if calls_only and rendered.startswith(before):
                eot = self._first_eot(rendered, len(before))
                if eot > len(before):
                    return len(before), eot
            return None
        end = len(rendered) - len(after)
        eot = self._first_eot(rendered, end)
        return len(before), (eot if eot >= 0 else end)

    def _answer_text(self, conversation: list[dict], prompt: str, tools: list[dict] | None = None
                     ) -> tuple[str, bool]:
        """The text the model must generate after ``prompt`` for the conversation's last turn,
        through its end-of-turn token; and whether that token is in it."""
        full = self.render(conversation, add_generation_prompt=False, tools=tools)
        content = conversation[-1].get("content")
        if full.startswith(prompt):
            region = full[len(prompt):]
            k = region.find(content.strip()) if isinstance(content, str) and content.strip() else -1
            eot = self._first_eot(region, k + len(content.strip()) if k >= 0 else 0)
            if eot >= 0:
                return region[:eot], True
            return region.rstrip(), False
        # The template renders this turn differently once answered (e.g. it drops a reasoning
        # block the generation prompt opens): train on the turn as the template renders it.
        span = self._turn_span(conversation, len(conversation) - 1, False, full, tools)
        if span is not None:
            text = full[span[0]:span[1]]
            eot = self._first_eot(text)
            return (text, True) if eot == len(text) else (text.rstrip(), False)
        return (content if isinstance(content, str) else ""), False

    # -- training sequences -----------------------------------------------------------
    def encode(self, messages: list[dict], *, mask_prompt: bool = True, last_turn_only: bool = False,
               tools: list[dict] | None = None) -> Encoded:
        """Token ids and loss mask of one conversation.

        The ids are ``prompt_ids(messages[:last])`` + the last answer + its end-of-turn token.
        With ``mask_prompt`` the loss is on every assistant turn's content, tool calls and
        end-of-turn token, never on role headers, the tool prompt or tool results;
        ``last_turn_only`` keeps only the last turn's. ``tools``: the record's tool definitions,
        rendered by the template (its tool prompt)."""
        from core.data import is_plain_text

        if is_plain_text(messages):  # raw text: no template, every token trained
            ids = self._with_bos(self.tokenize(messages[0]["content"])[0])
            if self.eos_id is not None:
                ids.append(self.eos_id)
            return Encoded(ids, [False] + [True] * (len(ids) - 1))
        # turns with "weight": 0 are shown, never trained; the sequence ends with the last trained one
        turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant" and m.get("weight", 1) != 0]
        if not turns:
            raise TuneloomError("This conversation has no assistant turn to learn from"
                                + (" (every assistant turn has weight 0)." if any(
                                    m.get("role") == "assistant" for m in messages) else "."))
        messages = self.prepare(messages, tools)
        last = turns[-1]
        if self.thinking:  # Qwen3's template keeps the reasoning of the turns after the last question only
            asked = max((i for i, m in enumerate(messages[:last]) if m.get("role") == "user"), default=-1)
            self.reasoning_dropped += sum(1 for m in messages[:asked] if m.get("role") == "assistant"
                                          and m.get("reasoning_content"))
        history = messages[:last]
        prompt = self.render(history, add_generation_prompt=True, tools=tools)
        answer, has_eot = self._answer_text(messages[: last + 1], prompt, tools)

        prompt_tokens, state = self.tokenize(prompt)
        prompt_ids = self._with_bos(prompt_tokens)
        mask = [not mask_prompt] * len(prompt_ids)
        if mask_prompt and not last_turn_only and len(turns) > 1:
            mask = self._history_mask(history, turns[:-1], prompt, prompt_ids, tools) or mask

        answer_ids, _ = self.tokenize(answer, state)
        if not has_eot and self.eos_id is not None and not (answer_ids and answer_ids[-1] in self.eos_ids):
            answer_ids.append(self.eos_id)
        ids = prompt_ids + answer_ids
        mask = mask + [True] * len(answer_ids)
        if mask:
            mask[0] = False  # the first token is never predicted
        return Encoded(ids, mask)

    def _history_mask(self, history: list[dict], turns: list[int], prompt: str, prompt_ids: list[int],
                      tools: list[dict] | None = None) -> list[bool] | None:
        """Loss mask over ``prompt_ids`` that trains the earlier assistant turns: every token that
        lies inside one of their spans (a token straddling a span's edge, such as a newline
        merged with the header's, stays untrained). None if no turn can be located."""
        spans = [sp for sp in (self._turn_span(history, j, True, prompt, tools) for j in turns) if sp and sp[1] > sp[0]]
        if not spans:
            return None
        offsets: list[tuple[int, int]] = []
        try:
            ids, _ = self.tokenize(prompt, True, offsets)
        except (NotImplementedError, ValueError, KeyError):  # a tokenizer without offsets
            return None
        with_bos = self._with_bos(ids)
        if with_bos != prompt_ids:
            return None
        mask = []
        for lo, hi in offsets:
            mask.append(any(s <= lo and hi <= e and (lo < e or lo == hi == s) for s, e in spans))
        return [False] * (len(with_bos) - len(ids)) + mask

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


def training_runs(encoder: ChatEncoder, messages: list[dict], mask_prompt: bool = True,
                  tools: list[dict] | None = None) -> list[tuple[str, bool]]:
    """The text the model is trained on for ``messages`` (chat template applied, as tokenized),
    split into runs the loss is (True) or is not (False) computed on: role headers, prompts
    and assistant turns with ``"weight": 0`` are untrained runs.

    Each run is cut out of the decoded prefix, so a character made of several tokens, or
    a tokenizer that drops a leading space when decoding a lone piece, never garbles it."""
    enc = encoder.encode(messages, mask_prompt=mask_prompt, tools=tools)
    bounds: list[tuple[int, bool]] = []  # (end index, trained) of each run
    for i, m in enumerate(enc.mask):
        if bounds and bounds[-1][1] == m:
            bounds[-1] = (i + 1, m)
        else:
            bounds.append((i + 1, m))
    out, prev = [], ""
    for end, trained in bounds:
        text = encoder.tok.decode(enc.ids[:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        piece = text[len(prev):] if text.startswith(prev) else text
        prev = text
        if piece:
            out.append((piece, trained))
    return out


def chunk_records(encoder: ChatEncoder, records, max_seq_len: int, cancel=None) -> tuple[list, int, int]:
    """Plain-text records (a text corpus: one assistant message, no prompt) longer than
    ``max_seq_len`` tokens, split into consecutive windows that each fit, cut at token
    boundaries so that no text is lost or repeated. Conversations are kept as they are.

    Returns (records, documents split, windows they became)."""
    from core.data import ChatRecord, is_plain_text

    out, split, windows = [], 0, 0
    extra = (1 if encoder.add_bos else 0) + (1 if encoder.eos_id is not None else 0)
    budget = max(1, max_seq_len - extra)
    for r in records:
        if cancel is not None:
            cancel.raise_if_cancelled()
        if not is_plain_text(r.messages):
            out.append(r)
            continue
        text = r.messages[0]["content"]
        offsets: list = []
        ids = encoder.tokenize(text, True, offsets)[0]
        if len(ids) <= budget:
            out.append(r)
            continue
        split += 1
        start_tok = 0
        while start_tok < len(ids):
            n = min(budget, len(ids) - start_tok)
            while True:  # a window tokenized on its own may take a token more at its edges: shrink until it fits
                end_tok = start_tok + n
                a = offsets[start_tok][0]
                b = offsets[end_tok][0] if end_tok < len(ids) else len(text)
                piece = text[a:b]
                got = len(encoder.encode([{"role": "assistant", "content": piece}]).ids)
                if got <= max_seq_len or n == 1:
                    break
                n = max(1, n - (got - max_seq_len))
            if piece.strip():
                out.append(ChatRecord([{"role": "assistant", "content": piece}], r.file, r.line))
                windows += 1
            start_tok = end_tok
    return out, split, windows


def token_stats(encoder: ChatEncoder, records, max_seq_len: int, mask_prompt: bool = True,
                cancel=None) -> dict:
    """Length statistics of the encoded records: min/median/p95/max, truncation, trained share.

    Training keeps the first ``max_seq_len`` tokens of an example: ``truncated`` counts the
    examples longer than that, ``cut`` the tokens cut away, ``trained`` the tokens trained on
    after cutting, and ``trained_share`` is ``trained`` over all the data's tokens (``total``).
    A record the model's template cannot show (a role it has no place for) is not counted:
    it is listed in ``problems`` (DatasetIssues with its file and line)."""
    from core.data import DatasetIssue

    lengths, trained, problems, cut = [], 0, [], 0
    dropped_before = encoder.reasoning_dropped
    for r in records:
        if cancel is not None:
            cancel.raise_if_cancelled()
        try:
            e = encoder.encode(r.messages, mask_prompt=mask_prompt, tools=getattr(r, "tools", None))
        except TuneloomError as exc:
            problems.append(DatasetIssue(getattr(r, "file", ""), getattr(r, "line", None), None, str(exc), exc.hint))
            continue
        lengths.append(len(e.ids))
        if len(e.ids) > max_seq_len:
            cut += len(e.ids) - max_seq_len
            trained += sum(e.mask[:max_seq_len])
        else:
            trained += e.trained
    if not lengths:
        return {"min": 0, "median": 0, "p95": 0, "max": 0, "truncated": 0, "total": 0, "trained_share": 0.0,
                "trained": 0, "cut": 0, "lengths": [], "problems": problems,
                "reasoning_dropped": encoder.reasoning_dropped - dropped_before}
    s = sorted(lengths)

    def pct(p):  # nearest rank
        return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]

    total = sum(lengths)
    return {"min": s[0], "median": pct(0.5), "p95": pct(0.95), "max": s[-1],
            "truncated": sum(1 for n in lengths if n > max_seq_len), "total": total,
            "trained_share": trained / total if total else 0.0, "trained": trained, "cut": cut, "lengths": lengths,
            "problems": problems, "reasoning_dropped": encoder.reasoning_dropped - dropped_before}
