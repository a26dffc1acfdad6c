"""Chat templates: the prompt format a fine-tune was trained on, for Ollama and for the GGUF.

Ollama builds a prompt with a Go ``text/template`` (the Modelfile ``TEMPLATE``); training used the
model's Jinja ``chat_template``. For the chat formats Tuneloom knows (ChatML with or without a
default system prompt as in Qwen2.5, Qwen3 with thinking off, Zephyr as in TinyLlama) we write the
Go template by hand; for any other Jinja template we *derive* one from renderings with sentinel
messages. Either way a format is only used after the Jinja template and a Python mirror of the Go
template render the same text for every conversation in :data:`PROBE_CONVERSATIONS`; the tests
then prove mirror == Go engine == Hugging Face on a larger set. No library translates Jinja to Go
templates, so this part is hand-written. Hub validation and the GGUF export use it too.

What the Go templates do *not* reproduce (documented in :attr:`ChatFormat.notes`): for a run
without tool data, roles other than system/user/assistant (a run trained on tool calls gets
templates that render tools, calls and results: :mod:`core.chat_templates.tools`), Qwen3
assistant turns that carry their own ``<think>...</think>`` reasoning, and consecutive messages of
one role, which Ollama merges (blank line between) before the template sees them.

Modules, each importing only those above it:

* :mod:`~core.chat_templates.jinja`: the model's Jinja template and its rendering;
* :mod:`~core.chat_templates.formats`: the hand-written formats (Go TEMPLATE, mirror, Jinja);
* :mod:`~core.chat_templates.derive`: formats derived from any other template; :func:`chat_format_for`;
* :mod:`~core.chat_templates.serving`: what Ollama does with the two templates (from its source);
* :mod:`~core.chat_templates.tools`: tools, calls and results in both templates;
* :mod:`~core.chat_templates.embedded`: the GGUF's template; the format an export writes.

Registration, Modelfiles and the Ollama API live in :mod:`core.export.ollama`, which re-exports the names
of this package its callers used before the split.
"""
from __future__ import annotations

from core.chat_templates.jinja import (  # noqa: F401
    Messages, TemplateNotSupported, _compiled, chat_template_of, render_jinja, special_tokens,
)
from core.chat_templates.formats import (  # noqa: F401
    PROBE_CONVERSATIONS, ChatFormat,
)
from core.chat_templates.derive import (  # noqa: F401
    chat_format_for, chat_template_kind, derive_chat_format,
)
from core.chat_templates.serving import (  # noqa: F401
    NATIVE_SINCE, OLLAMA_SCENARIOS, OllamaSetup, _needs_object_arguments, chat_template_capabilities,
    chat_template_has_tool_round_trip, default_think, filter_think_tags, go_json, go_template_capabilities,
    go_template_think_tags, llama_server_messages, model_capabilities, ollama_prompt, ollama_tool_messages,
    should_prefer_chat_template, template_path, template_tools, tool_calls_of, tools_as_ollama_holds_them,
)
from core.chat_templates.tools import (  # noqa: F401
    TOOL_PROBES, _pyjson, check_tool_prompts, tool_parser_tag, tools_chat_format, tools_jinja,
)
from core.chat_templates.embedded import (  # noqa: F401
    EmbeddedTemplate, check_ollama_prompts, embedded_chat_template, export_chat_format, go_template_for,
)

