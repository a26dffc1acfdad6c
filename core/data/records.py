"""What a dataset becomes: chat records, preference records, issues, notes, the suffixes read."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

from core.events import TuneloomError

TEXT_SUFFIXES = {".txt", ".md"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
KNOWN_SUFFIXES = JSONL_SUFFIXES | {".json", ".csv", ".tsv", ".parquet"} | TEXT_SUFFIXES
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                  "bot": "assistant", "system": "system", "tool": "tool", "function": "tool", "observation": "tool"}
SPLIT_NAMES = {"train": "train", "valid": "valid", "validation": "valid", "test": "test"}


class DatasetError(TuneloomError):
    """The file (or folder) cannot be used at all."""

    def __init__(self, message: str, hint: str = "", file: str | None = None):
        super().__init__(message, hint)
        self.file = file


@dataclass
class DatasetIssue:
    file: str
    line: int | None
    field: str | None
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}" + (f", line {self.line}" if self.line else "")
        fld = f" [{self.field}]" if self.field else ""
        tail = f" - {self.hint}" if self.hint else ""
        return f"{where}{fld}: {self.message}{tail}"

    def to_json(self) -> dict:
        return {"file": self.file, "line": self.line, "field": self.field, "message": self.message}


@dataclass
class DatasetNote:
    """Something normalisation changed or left out, counted over the valid examples."""
    kind: str  # extra_fields, message_fields, json_answer, think_blocks, untrained_turns, ...
    count: int  # examples it applies to
    message: str
    fields: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message

    lines: list[tuple[str, int | None]] = field(default_factory=list)  # where, for notes about single examples

    def to_json(self) -> dict:
        out = {"kind": self.kind, "count": self.count, "message": self.message, "fields": self.fields}
        if self.lines:
            out["lines"] = [{"file": f, "line": n} for f, n in self.lines]
        return out


@dataclass
class ChatRecord:
    messages: list[dict]
    file: str = ""
    line: int | None = None
    # the functions the conversation may call, in OpenAI's form (core.tools): rendered by the chat
    # template as the model's tool prompt; None for a record without tools
    tools: list[dict] | None = None

    def key(self) -> str:
        blob = json.dumps(self.messages if not self.tools else [self.messages, self.tools], sort_keys=True,
                          ensure_ascii=False, default=str)
        return hashlib.sha1(blob.encode("utf-8", "surrogatepass")).hexdigest()

    @property
    def has_calls(self) -> bool:
        return any(m.get("role") == "assistant" and m.get("tool_calls") for m in self.messages)


@dataclass
class PreferenceRecord:
    """One preference example, normalised whatever shape it came in; what preference tuning reads.

    ``prompt``: the conversation up to the answer, chat messages ({"role", "content"}; an optional
    system message first, then user / assistant / tool turns) that end with a user (or tool) turn.
    ``chosen`` / ``rejected``: the preferred and the dispreferred answer to that prompt, each a list
    of assistant messages (usually one; ``reasoning_content`` as on chat records).

    A pair (DPO / ORPO data) has both. KTO data is unpaired: exactly one of the two is set,
    ``chosen`` for an answer labelled desirable (``label`` / ``kto_tag`` true), ``rejected`` for one
    labelled undesirable. ``prompt + chosen`` is the chat record supervised training learns
    (``--use chosen``); it never learns ``rejected``.

    Written out (``data export``) in TRL's conversational form: ``{"prompt": [...], "chosen":
    [...], "rejected": [...]}``, which reads back as the same record."""
    prompt: list[dict]
    chosen: list[dict] | None
    rejected: list[dict] | None
    file: str = ""
    line: int | None = None
    # the functions the prompt offers (``tools``, OpenAI's form, as on ChatRecord): the template renders
    # them for both answers, which may call them (``tool_calls``); None for a pair without tools
    tools: list[dict] | None = None

    @property
    def paired(self) -> bool:
        return self.chosen is not None and self.rejected is not None

    @property
    def has_calls(self) -> bool:
        return any(m.get("role") == "assistant" and m.get("tool_calls")
                   for m in [*self.prompt, *(self.chosen or []), *(self.rejected or [])])

    def chosen_record(self) -> ChatRecord:
        return ChatRecord([dict(m) for m in self.prompt] + [dict(m) for m in self.chosen or []], self.file, self.line,
                          tools=self.tools)

    def key(self) -> str:
        parts = [self.prompt, self.chosen, self.rejected] + ([self.tools] if self.tools else [])
        blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha1(blob.encode("utf-8", "surrogatepass")).hexdigest()

    def to_json(self) -> dict:
        out: dict = {"prompt": [dict(m) for m in self.prompt]}
        if self.paired:
            out.update(chosen=[dict(m) for m in self.chosen], rejected=[dict(m) for m in self.rejected])
        else:  # TRL's unpaired (KTO) form
            out.update(completion=[dict(m) for m in (self.chosen or self.rejected)], label=self.chosen is not None)
        if self.tools:
            out["tools"] = self.tools
        return out


@dataclass
class Dataset:
    records: list[ChatRecord]
    issues: list[DatasetIssue]
    formats: dict[str, str]  # file -> detected format
    total: int  # records seen, valid or not
    # from train/valid(/test) files; files given beside them count as training data
    splits: dict[str, list[ChatRecord]] = field(default_factory=dict)
    notes: list[DatasetNote] = field(default_factory=list)  # what normalisation changed or left out
    # every valid preference / KTO example read (paired or not), in file order; ``records`` holds the
    # chosen (desirable) conversations only where supervised training takes them
    preference: list[PreferenceRecord] = field(default_factory=list)
    left_out: int = 0  # valid examples not in ``records``: pairs not used, KTO answers labelled undesirable
    use: str | None = None  # "chosen": pairs give their chosen answers to supervised training

    @property
    def pairs(self) -> int:
        return sum(1 for p in self.preference if p.paired)

    @property
    def unused_pairs(self) -> int:
        """Pairs supervised training cannot take as they are (no ``use``)."""
        return 0 if self.use == "chosen" else self.pairs

    @property
    def valid(self) -> int:
        """Valid examples read, training data or not (test split aside)."""
        return len(self.records) + self.left_out

    def _pairs_apart(self) -> list[PreferenceRecord]:
        """The preference examples that are not also in ``records`` (as their chosen conversation)."""
        return [p for p in self.preference if not (p.chosen is not None and (self.use == "chosen" or not p.paired))]

    @property
    def tool_calls(self) -> int:
        """Examples whose assistant turns call functions (``tool_calls``), preference examples included."""
        return sum(1 for r in self.records if r.has_calls) + sum(1 for p in self._pairs_apart() if p.has_calls)

    @property
    def tools(self) -> int:
        """Examples that declare the functions they may call (``tools``), preference examples included."""
        return sum(1 for r in self.records if r.tools) + sum(1 for p in self._pairs_apart() if p.tools)

    @property
    def reasoning(self) -> int:
        """Examples whose answers carry reasoning (``reasoning_content`` or ``<think>`` blocks)."""
        return sum(1 for r in self.records if has_reasoning(r.messages))

    @property
    def format(self) -> str:
        kinds = sorted(set(self.formats.values()))
        return kinds[0] if len(kinds) == 1 else ("mixed: " + ", ".join(kinds) if kinds else "none")

    @property
    def invalid(self) -> int:
        return self.total - self.valid - sum(len(v) for k, v in self.splits.items() if k == "test")

    def duplicates(self) -> int:
        counts = Counter(r.key() for r in self.records)
        return sum(c - 1 for c in counts.values() if c > 1)


def has_reasoning(messages: list[dict]) -> bool:
    return any(m.get("role") == "assistant" and m.get("reasoning_content") for m in messages)
