"""The Jinja side: a model's chat template, its special tokens, and rendering it as training did."""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Sequence

from core.events import TuneloomError

Messages = Sequence[dict]


class TemplateNotSupported(TuneloomError):
    """The model's chat template cannot be reproduced as an Ollama Go template."""



def chat_template_of(tokenizer_config: dict) -> str:
    """The Jinja chat template of a tokenizer config (the ``default`` one when there are several)."""
    tpl = tokenizer_config.get("chat_template")
    if isinstance(tpl, list):
        named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
        tpl = named.get("default") or next(iter(named.values()), None)
    if not isinstance(tpl, str) or not tpl.strip():
        raise TemplateNotSupported(
            "This model has no chat template, so Ollama cannot be told how to build its prompt.",
            "Use a chat (instruct) model, or add a chat_template to its tokenizer_config.json.")
    return tpl


def _token_text(tok: Any) -> str | None:
    if isinstance(tok, dict):  # an AddedToken written as {"content": ...}
        tok = tok.get("content")
    return tok if isinstance(tok, str) else None


def special_tokens(tokenizer_config: dict) -> dict[str, str]:
    """The special-token strings a chat template may use (``bos_token``, ``eos_token``, ...)."""
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
        text = _token_text(tokenizer_config.get(key))
        if text is not None:
            out[key] = text
    return out


def _make_env():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        # lets templates with {% generation %} blocks (assistant masks) parse; renders the body as is
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    # The environment transformers' apply_chat_template uses.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@lru_cache(maxsize=64)
def _compiled(template: str):
    return _make_env().from_string(template)


def render_jinja(template: str, messages: Messages, *, add_generation_prompt: bool = True,
                 tokens: dict[str, str] | None = None, **kwargs) -> str:
    """Render a Hugging Face chat template the way ``apply_chat_template`` does.

    ``enable_thinking=False`` is always passed: Tuneloom trains and serves with
    thinking off (templates that do not know the flag ignore it).
    """
    ctx = dict(tokens or {})
    ctx.update(kwargs)
    ctx.setdefault("enable_thinking", False)
    return _compiled(template).render(messages=[dict(m) for m in messages],
                                      add_generation_prompt=add_generation_prompt, **ctx)
