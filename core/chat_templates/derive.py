"""Derived formats: a Go template for any other Jinja template, found from sentinel renderings;
the format a tokenizer config gets (:func:`chat_format_for`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from core.chat_templates.formats import (
    ChatFormat, _chatml_format, _go_quote, _jinja_wrapped, _qwen35_format, _qwen35_thinking_format, _qwen3_format,
    _qwen3_thinking_format, _stops, _zephyr_format,
)
from core.chat_templates.jinja import Messages, TemplateNotSupported, chat_template_of, render_jinja, special_tokens


# ---- Derived formats -----------------------------------------------------------------


@dataclass(frozen=True)
class _Wrapped:
    """prefix (depends on whether the first message is a system one) + wrapped turns + generation prompt."""

    first_system: str
    no_system: str
    wraps: dict  # role -> (before, after)
    generation: str

    def render(self, messages: Messages) -> str:
        out = [self.first_system if messages and messages[0]["role"] == "system" else self.no_system]
        for m in messages:
            w = self.wraps.get(m["role"])
            if w is not None:
                out += [w[0], m["content"], w[1]]
        out.append(self.generation)
        return "".join(out)

    def go_template(self) -> str:
        def lit(s: str) -> str:
            return "{{ " + _go_quote(s) + " }}" if s else ""

        parts = []
        if self.first_system == self.no_system:
            if self.no_system:
                parts.append("{{- " + _go_quote(self.no_system) + " }}\n")
        else:
            parts.append('{{- if and .Messages (eq (index .Messages 0).Role "system") }}'
                         f"{lit(self.first_system)}{{{{ else }}}}{lit(self.no_system)}{{{{ end }}}}\n")
        parts.append("{{- range .Messages }}\n")
        first = True
        for role, (before, after) in self.wraps.items():
            kw = "if" if first else "else if"
            parts.append(f'{{{{- {kw} eq .Role {_go_quote(role)} }}}}{lit(before)}{{{{ .Content }}}}{lit(after)}\n')
            first = False
        if self.wraps:
            parts.append("{{- end }}\n")
        parts.append("{{- end }}" + lit(self.generation))
        return "".join(parts)


_SENTINELS = {"system": "Sx7q", "user": "Ux7q", "user2": "Vx7q", "assistant": "Ax7q", "system2": "Tx7q"}


def _split_once(text: str, needle: str, what: str) -> tuple[str, str]:
    if text.count(needle) != 1:
        raise TemplateNotSupported(f"The chat template does not show {what} exactly once in its output.")
    a, b = text.split(needle)
    return a, b


def derive_chat_format(template: str, tokens: dict[str, str] | None = None) -> ChatFormat:
    """Derive a Go template from renderings of the Jinja template with sentinel messages.

    The model: an optional prefix (one when the first message is a system message,
    one when it is not), then each system/user/assistant message wrapped in fixed
    text, then the generation prompt. Raises :class:`TemplateNotSupported` when the
    template does not fit that model or when the result differs from the Jinja
    rendering for any conversation in :data:`PROBE_CONVERSATIONS`.
    """
    try:
        return _derive(template, tokens or {})
    except TemplateNotSupported as exc:
        if exc.hint:
            raise
        why = str(exc)
        raise TemplateNotSupported(
            f"Tuneloom cannot reproduce this model's chat template for Ollama: {why[:1].lower()}{why[1:]}",
            "Export the GGUF without Ollama registration and write the Modelfile TEMPLATE by hand, or train a "
            "model with a ChatML, Qwen3 or Zephyr chat template.") from exc


def _derive(template: str, tokens: dict[str, str]) -> ChatFormat:
    S = _SENTINELS

    def r(pairs, gen=False):
        msgs = [{"role": role, "content": content} for role, content in pairs]
        try:
            return render_jinja(template, msgs, add_generation_prompt=gen, tokens=tokens)
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot derive"
            raise TemplateNotSupported(
                f"The chat template failed on a simple conversation ({exc}).",
                "Tuneloom can only hand Ollama templates it can reproduce exactly.") from exc

    def strip_prefix(text: str, prefix: str, what: str) -> str:
        if not text.startswith(prefix):
            raise TemplateNotSupported(f"The chat template renders {what} differently depending on what follows.")
        return text[len(prefix):]

    def strip_suffix(text: str, suffix: str, what: str) -> str:
        if suffix and not text.endswith(suffix):
            raise TemplateNotSupported(f"The chat template renders {what} differently depending on its position.")
        return text[: len(text) - len(suffix)] if suffix else text

    u = r([("user", S["user"])])
    before_u, after_u = _split_once(u, S["user"], "a user message")
    ua = r([("user", S["user"]), ("assistant", S["assistant"])])
    rest = strip_prefix(ua, u, "a user message")
    pre_a, post_a = _split_once(rest, S["assistant"], "an assistant message")
    uau = r([("user", S["user"]), ("assistant", S["assistant"]), ("user", S["user2"])])
    rest = strip_prefix(uau, ua, "an assistant message")
    pre_u, post_u2 = _split_once(rest, S["user2"], "a second user message")
    if post_u2 != after_u:
        raise TemplateNotSupported("The chat template ends user messages differently depending on their position.")
    no_system = strip_suffix(before_u, pre_u, "the first user message")

    su = r([("system", S["system"]), ("user", S["user"])])
    before_s, rest = _split_once(su, S["system"], "a system message")
    mid, tail = _split_once(rest, S["user"], "a user message after a system message")
    if tail != after_u:
        raise TemplateNotSupported("The chat template ends user messages differently after a system message.")
    post_s = strip_suffix(mid, pre_u, "a user message after a system message")
    first_system, pre_s = "", before_s
    try:  # a system message in the middle tells the system wrapper apart from the prefix
        uasu = r([("user", S["user"]), ("assistant", S["assistant"]), ("system", S["system2"]), ("user", S["user2"])])
        mid_sys, _ = _split_once(strip_prefix(uasu, ua, "an assistant message"), S["system2"], "a system message")
        if before_s.endswith(mid_sys):
            first_system, pre_s = before_s[: len(before_s) - len(mid_sys)], mid_sys
    except TemplateNotSupported:
        pass
    generation = strip_prefix(r([("user", S["user"])], gen=True), u, "the conversation")

    wrapped = _Wrapped(first_system=first_system, no_system=no_system,
                       wraps={"system": (pre_s, post_s), "user": (pre_u, after_u), "assistant": (pre_a, post_a)},
                       generation=generation)
    eos = tokens.get("eos_token")
    notes = ["Derived from renderings of the Jinja template with sentinel messages and checked against it."]
    bos = tokens.get("bos_token")
    if bos and (first_system.startswith(bos) or no_system.startswith(bos)):
        notes.append(f"The template writes the BOS token {bos!r} itself; the GGUF must not make llama.cpp add "
                     "a second one (tokenizer.ggml.add_bos_token false).")
    fmt = ChatFormat("derived", wrapped.go_template(),
                     _stops(eos, post_a.strip() or None, pre_u.strip() or None), wrapped.render, tuple(notes),
                     jinja=_jinja_wrapped(first_system, no_system, wrapped.wraps, generation))
    _check_against_jinja(fmt, template, tokens)
    return fmt


def _first_difference(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"at character {i}: Jinja {a[max(0, i - 20):i + 20]!r} vs Ollama {b[max(0, i - 20):i + 20]!r}"


def _check_against_jinja(fmt: ChatFormat, template: str, tokens: dict[str, str]) -> None:
    checked = 0
    for conv in fmt.probes():
        try:
            want = render_jinja(template, conv, tokens=tokens)
        except Exception:  # noqa: BLE001 - a conversation training could not render either
            continue
        got = fmt.render(conv)
        if got != want:
            raise TemplateNotSupported(
                "Tuneloom cannot reproduce this model's chat template for Ollama exactly: for the conversation "
                f"{[(m['role'], m['content']) for m in conv]!r} the prompts differ {_first_difference(want, got)}.",
                "Export the GGUF without Ollama registration and write a TEMPLATE by hand, or train a model "
                "with a ChatML, Qwen3 or Zephyr chat template.")
        checked += 1
    if checked == 0:
        raise TemplateNotSupported("The chat template failed on every test conversation.")


def _matches(fmt: ChatFormat | None, template: str, tokens: dict[str, str]) -> bool:
    if fmt is None:
        return False
    try:
        _check_against_jinja(fmt, template, tokens)
    except TemplateNotSupported:
        return False
    return True


_DEFAULT_SYSTEM_RE = re.compile(r"\A<\|im_start\|>system\n(.*)<\|im_end\|>\n\Z", re.S)


def chat_format_for(tokenizer_config: dict, *, thinking: bool = False) -> ChatFormat:
    """The :class:`ChatFormat` reproducing this tokenizer config's chat template in Ollama.

    ``thinking``: the fine-tune was trained with thinking on (its data carried reasoning), so
    the template is rendered with ``enable_thinking=True`` as training rendered it; otherwise
    with ``enable_thinking=False``. Templates without a thinking mode ignore the flag.
    """
    template = chat_template_of(tokenizer_config)
    # the render context travels with the special tokens through derive/check (render_jinja reads it)
    tokens = {**special_tokens(tokenizer_config), "enable_thinking": bool(thinking)}
    candidates: list[ChatFormat | None] = []
    try:
        head = render_jinja(template, [{"role": "user", "content": _SENTINELS["user"]}], tokens=tokens)
        head = head.split("<|im_start|>user\n" + _SENTINELS["user"])[0] if "<|im_start|>user\n" in head else None
    except Exception:  # noqa: BLE001
        head = None
    if head == "":
        candidates.append(_chatml_format(tokenizer_config, None))
    elif head is not None and (m := _DEFAULT_SYSTEM_RE.match(head)):
        candidates.append(_chatml_format(tokenizer_config, m.group(1)))
    candidates += [_qwen3_thinking_format(tokenizer_config) if thinking else _qwen3_format(tokenizer_config),
                   _zephyr_format(tokenizer_config)]
    candidates.append(_qwen35_thinking_format(tokenizer_config) if thinking else _qwen35_format(tokenizer_config))
    for fmt in candidates:
        if _matches(fmt, template, tokens):
            return fmt
    return derive_chat_format(template, tokens)


def chat_template_kind(tokenizer_config: dict, *, thinking: bool = False) -> str:
    """``"chatml"``, ``"qwen3"``, ``"qwen3-thinking"``, ``"qwen3.5"``, ``"qwen3.5-thinking"``, ``"zephyr"`` or
    ``"derived"``; raises
    :class:`TemplateNotSupported`."""
    return chat_format_for(tokenizer_config, thinking=thinking).kind
