"""One reader for a model folder's tokenizer configuration and chat template.

Hub folders keep the chat template in one of four places, depending on who saved them:

* inline in ``tokenizer_config.json`` as a string (transformers 4.x, the reference
  Qwen2.5 / Qwen3 / TinyLlama files),
* inline as a list of named templates (``[{"name": "default", "template": ...},
  {"name": "tool_use", ...}]``), of which ``default`` is the chat template,
* ``chat_template.jinja`` next to it (transformers >= 4.49 and 5, current mlx-lm
  ``save``, the Qwen3.5 hub repos), which wins over an inline template, as in
  transformers' own loader,
* ``chat_template.json`` (``{"chat_template": ...}``, the processor-style file older
  multimodal checkpoints carry), used only when neither of the above has one.

Export, the Modelfile, registration, validation and the demo all read the folder
through :func:`read_tokenizer_info`, so no caller can see a different template than
another (issue 21: export used to read ``tokenizer_config.json`` by itself and missed
``chat_template.jinja``).
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from core.events import TuneloomError

TOKENIZER_CONFIG = "tokenizer_config.json"
TEMPLATE_JINJA = "chat_template.jinja"
TEMPLATE_JSON = "chat_template.json"

# ModelCheck.chat_template_source values, in the order they are tried
SOURCE_JINJA = "chat_template.jinja"
SOURCE_INLINE = "tokenizer_config.json"
SOURCE_NAMED = "tokenizer_config.json (named templates)"
SOURCE_JSON = "chat_template.json"


class ModelFolderError(TuneloomError):
    """A tokenizer or template file of a model folder cannot be read."""


@dataclass(frozen=True)
class TokenizerInfo:
    """What a model folder says about its tokenizer and chat template.

    ``config`` is ``tokenizer_config.json`` with ``chat_template`` replaced by the one
    template that applies (a string), or without that key when the folder has none.
    ``source`` names where the template came from (one of the ``SOURCE_*`` values),
    ``templates`` holds every named template found (``{"default": ...}`` for a single
    one), ``template_name`` the chosen name for a list-form template.
    """

    folder: Path
    config: dict
    chat_template: str | None = None
    source: str | None = None
    templates: dict[str, str] = field(default_factory=dict)
    template_name: str | None = None

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template and self.chat_template.strip())

    def describe_source(self) -> str:
        """For people: where the template is, e.g. ``chat_template.jinja`` or
        ``tokenizer_config.json (template 'default' of 2)``; ``none`` without one."""
        if not self.has_chat_template:
            return "none"
        if self.source == SOURCE_NAMED:
            return f"tokenizer_config.json (template {self.template_name!r} of {len(self.templates)})"
        return str(self.source)


def _read_json(path: Path, what: str) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelFolderError(f"{path} is not UTF-8 text ({exc}).", f"Download the model's {what} again.") from exc
    except ValueError as exc:
        raise ModelFolderError(f"{path} is not valid JSON: {exc}.", f"Download the model's {what} again.") from exc
    except OSError as exc:
        raise ModelFolderError(f"{path} cannot be read: {exc}.", "Check the folder's permissions.") from exc


def _named(value) -> dict[str, str]:
    """{name: template} of a chat_template value (a string, or the list form)."""
    if isinstance(value, str):
        return {"default": value} if value.strip() else {}
    if isinstance(value, list):
        out = {}
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("template"), str) and item["template"].strip():
                out[str(item.get("name") or f"template{len(out)}")] = item["template"]
        return out
    if isinstance(value, dict):  # {"default": ..., "tool_use": ...} as transformers keeps them in memory
        return {str(k): v for k, v in value.items() if isinstance(v, str) and v.strip()}
    return {}


def read_tokenizer_info(model_dir: str | os.PathLike) -> TokenizerInfo:
    """Read ``tokenizer_config.json`` and the chat template of ``model_dir``.

    A folder without ``tokenizer_config.json`` gives an empty config; a file that is
    there but unreadable raises :class:`ModelFolderError` naming it.
    """
    folder = Path(model_dir)
    cfg_path = folder / TOKENIZER_CONFIG
    config: dict = {}
    if cfg_path.is_file():
        raw = _read_json(cfg_path, "tokenizer files")
        if not isinstance(raw, dict):
            raise ModelFolderError(f"{cfg_path} does not hold a JSON object.", "Download the model's tokenizer files again.")
        config = dict(raw)

    templates: dict[str, str] = {}
    source = None
    jinja_path = folder / TEMPLATE_JINJA
    if jinja_path.is_file():
        try:
            text = jinja_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelFolderError(f"{jinja_path} cannot be read: {exc}.", "Download the model's chat template again.") from exc
        if text.strip():
            templates, source = {"default": text}, SOURCE_JINJA
    if not templates:
        templates = _named(config.get("chat_template"))
        if templates:
            source = SOURCE_INLINE if isinstance(config.get("chat_template"), str) else SOURCE_NAMED
    if not templates and (folder / TEMPLATE_JSON).is_file():
        raw = _read_json(folder / TEMPLATE_JSON, "chat template")
        templates = _named(raw.get("chat_template") if isinstance(raw, dict) else raw)
        if templates:
            source = SOURCE_JSON

    name = template = None
    if templates:
        name = "default" if "default" in templates else next(iter(templates))
        template = templates[name]
        config["chat_template"] = template
    else:
        config.pop("chat_template", None)
    return TokenizerInfo(folder, config, template, source, templates, name if source == SOURCE_NAMED else None)


def load_tokenizer_config(model_dir: str | os.PathLike) -> dict:
    """``tokenizer_config.json`` of a model folder with its chat template (from wherever it is) folded in."""
    return read_tokenizer_info(model_dir).config


def run_thinking(run_dir: str | os.PathLike | None) -> bool:
    """Whether a training run kept reasoning (``"thinking": true`` in its config.json); False when absent."""
    if run_dir is None:
        return False
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return False
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(cfg.get("thinking")) if isinstance(cfg, dict) else False


def safetensors_layout(path: str | os.PathLike) -> tuple[dict, int, int]:
    """(header, offset of the data, bytes the whole file should have: 8 + header + the data its tensors'
    offsets promise) of a safetensors file, without reading a tensor: the one reader of these headers
    (the folder check, the GGUF export's plan, the export's size estimate, the Train page's estimate).
    Raises OSError, ValueError or EOFError when the file cannot be one."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 2**20 or 8 + n > size:
            raise EOFError(f"its header claims {n} bytes but the file has {size}")
        header = json.loads(fh.read(n))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    end = 0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        end = max(end, int(v["data_offsets"][1]))
    return header, 8 + n, 8 + n + end


# bytes per element of each safetensors dtype
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "U32": 4, "I16": 2, "I8": 1,
                           "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, int]:
    """(header, bytes the whole file should have) of a safetensors file (``safetensors_layout``)."""
    header, _, total = safetensors_layout(path)
    return header, total
