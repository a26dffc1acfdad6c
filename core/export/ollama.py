"""Ollama: a Modelfile whose prompt equals the training prompt, and registration.

The prompt format itself (Jinja <-> Go templates, what Ollama does with them, the template embedded
in the GGUF) is :mod:`core.chat_templates`; this module re-exports the names its callers use.

**Registration** through Ollama's REST API with the official ``ollama`` client: hash the GGUF,
upload it as a blob unless the server has it, create the model with
``files``/``template``/``parameters``/``system``, then check that it is listed and answers. Every
failure a user can meet is its own :class:`OllamaError` subclass with a next step; when the server
is the problem the hint carries the ``ollama create`` command that registers the Modelfile left on
disk.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any, Sequence

from core.atomic import write_text
from core.events import NULL_EVENTS, CancelToken, Events, Progress, StageClock, Throttle, TuneloomError

# The chat-template names callers of this module used before the split (core.chat_templates holds them).
from core.chat_templates import (  # noqa: F401
    NATIVE_SINCE, OLLAMA_SCENARIOS, PROBE_CONVERSATIONS, TOOL_PROBES, ChatFormat, EmbeddedTemplate, Messages,
    OllamaSetup, TemplateNotSupported, _compiled, _needs_object_arguments, _pyjson, chat_format_for,
    chat_template_capabilities, chat_template_has_tool_round_trip, chat_template_kind, chat_template_of,
    check_ollama_prompts, check_tool_prompts, default_think, derive_chat_format, embedded_chat_template,
    export_chat_format, filter_think_tags, go_json, go_template_capabilities, go_template_for,
    go_template_think_tags, llama_server_messages, model_capabilities, ollama_prompt, ollama_tool_messages,
    render_jinja, should_prefer_chat_template, special_tokens, template_path, template_tools, tool_calls_of,
    tool_parser_tag, tools_as_ollama_holds_them, tools_chat_format, tools_jinja,
)
# tokenizer_config.json with its chat template folded in: the one reader, core.model_folder's (core.demo
# uses this name)
from core.model_folder import load_tokenizer_config  # noqa: F401
from core.tools import _ollama_property, _sorted_any, ollama_tools  # noqa: F401  (Ollama's form of tool definitions)


class OllamaError(TuneloomError):
    """Registration in Ollama failed; ``create_command`` registers the Modelfile by hand."""

    def __init__(self, message: str, hint: str = "", *, create_command: str | None = None):
        super().__init__(message, hint)
        self.create_command = create_command


class OllamaNotRunning(OllamaError):
    """No Ollama server answered (not running, or not installed)."""

    def __init__(self, message: str, hint: str = "", *, create_command: str | None = None, installed: bool = True):
        super().__init__(message, hint, create_command=create_command)
        self.installed = installed


class OllamaTooOld(OllamaError):
    """The server's API predates what Tuneloom needs (or cannot load this architecture)."""


class OllamaDiskFull(OllamaError):
    """The server ran out of disk space while storing the model."""


class OllamaUploadInterrupted(OllamaError):
    """The GGUF upload did not complete; running the same registration again is safe."""


class OllamaNameInvalid(OllamaError):
    """The model name breaks Ollama's naming rules; ``suggestion`` is a valid one."""

    def __init__(self, message: str, hint: str = "", *, suggestion: str | None = None, **kw):
        super().__init__(message, hint, **kw)
        self.suggestion = suggestion


class OllamaNameTaken(OllamaError):
    """A model of that name exists and ``force`` was not given."""


# --------------------------------------------------------------------------------------
# Modelfile
# --------------------------------------------------------------------------------------

DEFAULT_TEMPERATURE = 0.7
DEFAULT_NUM_CTX = 4096
MAX_DEFAULT_NUM_CTX = 8192  # a model's full context (Qwen: 131072) would make Ollama reserve gigabytes


def default_num_ctx(tokenizer_config: dict) -> int:
    """The model's context length, capped so that Ollama does not reserve a huge KV cache."""
    n = tokenizer_config.get("model_max_length")
    if isinstance(n, (int, float)) and 0 < n < 10**7:
        return int(min(n, MAX_DEFAULT_NUM_CTX))
    return DEFAULT_NUM_CTX


def _check_modelfile_value(value: str, what: str) -> None:
    """Refuse what Ollama's Modelfile parser would change: triple quotes end the value, non-printables vanish."""
    if '"""' in value:
        raise TuneloomError(f"The {what} contains three double quotes in a row, which a Modelfile cannot hold.",
                            f"Remove the triple quotes from the {what}.")
    bad = [c for c in value if not (c in "\n\r\t" or c.isprintable())]
    if bad:
        raise TuneloomError(f"The {what} contains non-printable characters ({bad[0]!r}) that Ollama's Modelfile "
                            "parser drops.", f"Remove them from the {what}.")


def _modelfile_quoted(value: str, what: str) -> str:
    """``value`` in triple quotes (Ollama's parser keeps everything between them verbatim, no escapes)."""
    _check_modelfile_value(value, what)
    return f'"""{value}"""'


def _modelfile_value(value: str, what: str) -> str:
    """A one-word value bare, one with spaces in double quotes, anything else in triple quotes."""
    _check_modelfile_value(value, what)
    if value and not any(c.isspace() for c in value) and not value.startswith('"'):
        return value
    if '"' not in value and "\n" not in value and "\r" not in value:
        return f'"{value}"'
    return f'"""{value}"""'


def _param_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return _modelfile_value(v, "parameter value")
    return str(v)


def modelfile_text(gguf_path: str | os.PathLike, modelfile_dir: str | os.PathLike, template: str,
                   stops: Sequence[str], *, parameters: dict | None = None, system: str | None = None,
                   license_text: str | None = None, modelfile_name: str = "Modelfile") -> str:
    """The text of a Modelfile; FROM is relative to ``modelfile_dir``; ``modelfile_name``: its file name,
    for the ``ollama create`` line in its header."""
    gguf_path = Path(gguf_path).resolve()
    rel = os.path.relpath(gguf_path, Path(modelfile_dir).resolve())
    if not rel.startswith(".."):
        rel = "./" + rel
    frm = _modelfile_value(rel, "GGUF path")
    lines = ["# Written by Tuneloom. Register it with:  ollama create NAME -f "
             + (modelfile_name if re.fullmatch(r"[A-Za-z0-9._-]+", modelfile_name) else "Modelfile"),
             f"FROM {frm}",
             f"TEMPLATE {_modelfile_quoted(template, 'chat template')}"]
    for stop in stops:  # always quoted, as Ollama's examples write them
        value = _modelfile_value(stop, "stop string")
        lines.append(f'PARAMETER stop "{stop}"' if value == stop else f"PARAMETER stop {value}")
    for k, v in (parameters or {}).items():
        if k == "stop":
            continue
        for item in v if isinstance(v, (list, tuple)) else [v]:
            lines.append(f"PARAMETER {k} {_param_value(item)}")
    if system:
        lines.append(f"SYSTEM {_modelfile_quoted(system, 'system prompt')}")
    if license_text:
        lines.append(f"LICENSE {_modelfile_quoted(license_text, 'licence text')}")
    return "\n".join(lines) + "\n"


def modelfile_parameters(tokenizer_config: dict, *, num_ctx: int | None = None,
                         temperature: float | None = DEFAULT_TEMPERATURE) -> dict:
    """The PARAMETERs besides ``stop`` that Tuneloom writes: ``num_ctx`` (default: the model's context capped at
    8192; pass the training maximum length) and ``temperature``. Pass the same dict to :func:`register_model`."""
    params: dict = {"num_ctx": int(num_ctx) if num_ctx else default_num_ctx(tokenizer_config)}
    if temperature is not None:
        params["temperature"] = temperature
    return params


def write_modelfile(out_path: str | os.PathLike, gguf_path: str | os.PathLike, tokenizer_config: dict, *,
                    system: str | None = None, num_ctx: int | None = None,
                    temperature: float | None = DEFAULT_TEMPERATURE, license_text: str | None = None,
                    parameters: dict | None = None, thinking: bool = False, tools: bool = False) -> str:
    """Write (atomically) a Modelfile for ``gguf_path`` next to ``out_path``; return its text.

    ``num_ctx`` defaults to the model's context capped at 8192 (pass the training
    maximum length); ``parameters`` adds further ``PARAMETER`` lines; ``thinking``: the
    fine-tune was trained with thinking on; ``tools``: on tool calls.
    """
    fmt = export_chat_format(tokenizer_config, thinking=thinking, tools=tools)
    params = modelfile_parameters(tokenizer_config, num_ctx=num_ctx, temperature=temperature)
    params.update(parameters or {})
    out_path = Path(out_path)
    text = modelfile_text(gguf_path, out_path.parent, fmt.template, fmt.stops, parameters=params,
                          system=system, license_text=license_text)
    write_text(out_path, text)
    return text


def ollama_create_command(modelfile_path: str | os.PathLike, name: str) -> str:
    """The shell command that registers a Modelfile by hand (absolute path: works from any folder)."""
    return f"ollama create {shlex.quote(name)} -f {shlex.quote(str(Path(modelfile_path).resolve()))}"


# --------------------------------------------------------------------------------------
# Model names
# --------------------------------------------------------------------------------------

_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"
_NAMESPACE = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"  # no dots: with two parts the first is the namespace
_NAME_RE = re.compile(rf"\A(?:{_PART}/{_NAMESPACE}/|{_NAMESPACE}/)?(?P<model>{_PART})(?::(?P<tag>{_PART}))?\Z")
NAME_RULES = ("letters, digits, '_', '-' and '.', starting with a letter, digit or '_'; an optional ':tag' "
              "and 'namespace/' prefix; at most 128 characters")


def suggest_model_name(text: str) -> str:
    """A valid Ollama model name close to ``text``."""
    base, _, tag = text.strip().lower().partition(":")
    slug = re.sub(r"[^a-z0-9_.-]+", "-", base).strip("-.") or "tuneloom-model"
    slug = re.sub(r"\.{2,}", ".", slug)[:80]
    tag = re.sub(r"[^a-z0-9_.-]+", "-", tag).strip("-.")[:80]
    return f"{slug}:{tag}" if tag else slug


def validate_model_name(name: str) -> str:
    """Check ``name`` against Ollama's naming rules; return it with an explicit tag (``name:latest``)."""
    m = _NAME_RE.match(name or "")
    if not name or len(name) > 128 or not m or ".." in name:
        suggestion = suggest_model_name(name or "")
        raise OllamaNameInvalid(
            f"{name!r} is not a valid Ollama model name.",
            f"Use {NAME_RULES}, for example {suggestion!r}.", suggestion=suggestion)
    return name if m.group("tag") else name + ":latest"


def _canonical(name: str) -> str:
    n = name.lower()
    for prefix in ("http://", "https://", "registry.ollama.ai/", "library/"):
        if n.startswith(prefix):
            n = n[len(prefix):]
    return n if ":" in n.rsplit("/", 1)[-1] else n + ":latest"


# --------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------

MIN_OLLAMA_VERSION = (0, 5, 5)  # /api/create with "files" (the JSON create API) arrived in 0.5.5
QUANTIZE_TYPES = ("q4_K_M", "q4_K_S", "q8_0")
CHUNK = 1 << 20
_DISK_FULL = re.compile(r"no space left on device|not enough space|disk (is )?full|insufficient (disk )?space", re.I)
_OLD_API = re.compile(r"path or modelfile are required|neither 'from' or 'files'", re.I)
_UNKNOWN_ARCH = re.compile(r"unknown model architecture|unsupported (model )?architecture", re.I)


def default_host() -> str:
    return _base_url(os.environ.get("OLLAMA_HOST") or "")


def _base_url(host: str) -> str:
    """``host`` (as OLLAMA_HOST accepts it) as a base URL; 0.0.0.0 (a listen address) becomes 127.0.0.1."""
    from urllib.parse import urlsplit

    host = (host or "").strip()
    scheme, sep, rest = host.partition("://")
    if not sep:
        scheme, rest = "http", host
    default_port = {"http": 11434 if not sep else 80, "https": 443}.get(scheme, 11434)
    parts = urlsplit(f"{scheme}://{rest}")
    hostname = parts.hostname or "127.0.0.1"
    if hostname in ("0.0.0.0", "::"):
        hostname = "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    path = parts.path.strip("/")
    return f"{scheme}://{hostname}:{parts.port or default_port}" + (f"/{path}" if path else "")


def _http_options(base: str) -> dict:
    # plain http needs no CA bundle; loading one costs ~0.1 s per client
    return {"verify": False} if base.startswith("http://") else {}


def _answers_like_ollama(base: str, http) -> bool:
    """Whether the server answers GET /api/tags as every Ollama does (a JSON object with "models")."""
    import httpx

    try:
        r = http.get(f"{base}/api/tags", timeout=2.0)
        return r.status_code == 200 and isinstance(r.json(), dict) and "models" in r.json()
    except (httpx.HTTPError, ValueError):
        return False


def plain_http_warning(base: str) -> str | None:
    """A warning when the GGUF would go over plain HTTP to a host that is not this machine."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    if parts.scheme != "http":
        return None
    host = (parts.hostname or "").lower()
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = host in ("localhost", "") or host.endswith(".localhost")
    if local:
        return None
    return (f"Uploading the model to {base} over plain HTTP: anyone on the way can read it or change it. "
            f"Use https:// in OLLAMA_HOST, or an SSH tunnel to the Ollama machine.")


def server_version(host: str, timeout: float = 2.0, *, http=None) -> str | None:
    """The server's version string, or None if it has no /api/version; raises httpx errors if unreachable."""
    import httpx

    url = f"{host}/api/version"
    r = http.get(url, timeout=timeout) if http is not None else httpx.get(url, timeout=timeout,
                                                                           **_http_options(host))
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return str(r.json().get("version", "")) or None


def find_server(host: str | None = None, timeout: float = 1.5) -> str | None:
    """Base URL of a running Ollama server (``host``, else OLLAMA_HOST, else 127.0.0.1:11434), or None."""
    import httpx

    base = _base_url(host) if host else default_host()
    try:
        server_version(base, timeout=timeout)
    except (httpx.HTTPError, ValueError):
        return None
    return base


def _parse_version(v: str | None) -> tuple[int, ...] | None:
    m = re.match(r"v?(\d+)\.(\d+)\.(\d+)", v or "")
    return tuple(int(x) for x in m.groups()) if m else None


def ollama_installed() -> bool:
    return bool(shutil.which("ollama")) or Path("/Applications/Ollama.app").exists()


def file_sha256(path: str | os.PathLike, *, events: Events | None = None, cancel: CancelToken | None = None) -> str:
    """``sha256:<hex>`` of a file, reporting progress."""
    events = events or NULL_EVENTS
    path = Path(path)
    total = path.stat().st_size
    h = hashlib.sha256()
    done = 0
    throttle = Throttle(0.1)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            if cancel is not None:
                cancel.checkpoint()
            h.update(chunk)
            done += len(chunk)
            if throttle.ready(final=done == total):
                events.report_progress(Progress(done, total, "byte", f"checking {path.name}", item=path.name))
    if total == 0:
        events.report_progress(Progress(0, 0, "byte", f"checking {path.name}", item=path.name))
    return "sha256:" + h.hexdigest()


def _blob_exists(http, host: str, digest: str) -> bool:
    r = http.head(f"{host}/api/blobs/{digest}")
    if r.status_code == 200:
        return True
    if r.status_code == 404:
        return False
    raise OllamaError(f"Ollama answered {r.status_code} when asked for blob {digest}: {_error_text(r)}")


def _error_text(response) -> str:
    try:
        return str(response.json().get("error") or response.text)
    except Exception:  # noqa: BLE001
        return response.text


def _upload_blob(http, host: str, path: Path, digest: str, events: Events, cancel: CancelToken | None,
                 create_command: str) -> None:
    import httpx

    size = path.stat().st_size
    throttle = Throttle(0.1)

    def body():
        sent = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                if cancel is not None:
                    cancel.checkpoint()
                sent += len(chunk)
                yield chunk
                if throttle.ready(final=sent == size):
                    events.report_progress(Progress(sent, size, "byte", f"uploading {path.name}", item=path.name))

    try:
        r = http.post(f"{host}/api/blobs/{digest}", content=body(),
                      headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
    except httpx.TransportError as exc:
        raise OllamaUploadInterrupted(
            f"The upload of {path.name} to Ollama was interrupted ({exc.__class__.__name__}: {exc}).",
            "Run the registration again: it checks which data Ollama already has and uploads again only what "
            f"is missing. Or register by hand:\n  {create_command}", create_command=create_command) from exc
    if r.status_code in (200, 201):
        return
    text = _error_text(r)
    if _DISK_FULL.search(text):
        raise _disk_full(text, create_command)
    if r.status_code == 400 and "digest" in text.lower():
        raise OllamaUploadInterrupted(
            f"Ollama received a damaged copy of {path.name} ({text}).",
            "Run the registration again; if it keeps failing, export the GGUF again.",
            create_command=create_command)
    raise OllamaError(f"Ollama refused the upload of {path.name}: {text} (HTTP {r.status_code}).",
                      f"Register by hand:\n  {create_command}", create_command=create_command)


def _disk_full(text: str, create_command: str) -> OllamaDiskFull:
    return OllamaDiskFull(
        f"The Ollama server ran out of disk space: {text}",
        "Free space where Ollama keeps its models (~/.ollama/models, or OLLAMA_MODELS), for example with "
        "`ollama rm` on models you no longer need, then run the registration again. By hand:\n  "
        f"{create_command}", create_command=create_command)


def _map_response_error(exc, create_command: str, what: str) -> OllamaError:
    text = str(getattr(exc, "error", exc))
    if _DISK_FULL.search(text):
        return _disk_full(text, create_command)
    if _OLD_API.search(text):
        return OllamaTooOld(f"This Ollama server does not understand Tuneloom's {what} request: {text}",
                            "Update Ollama (https://ollama.com/download) and run the registration again.",
                            create_command=create_command)
    if _UNKNOWN_ARCH.search(text):
        return OllamaTooOld(f"This Ollama version cannot run the model's architecture: {text}",
                            "Update Ollama (https://ollama.com/download) and try again.",
                            create_command=create_command)
    return OllamaError(f"Ollama failed to {what}: {text}", f"Register by hand:\n  {create_command}",
                       create_command=create_command)


def _files_key(gguf_path: Path) -> str:
    name = gguf_path.name
    return name if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.gguf", name) else "model.gguf"


def register_model(gguf_path: str | os.PathLike, name: str, *, template: str, stops: Sequence[str],
                   system: str | None = None, parameters: dict | None = None, quantize: str | None = None,
                   force: bool = False, host: str | None = None, license_text: str | list | None = None,
                   modelfile_path: str | os.PathLike | None = None, verify: bool = True,
                   verify_prompt: str = "Say hello.", verify_messages: list | None = None,
                   verify_options: dict | None = None, events: Events | None = None,
                   cancel: CancelToken | None = None, adapter_path: str | os.PathLike | None = None,
                   verify_tools: dict | None = None) -> dict:
    """Register ``gguf_path`` in Ollama as ``name`` through its REST API.

    ``adapter_path``: a GGUF LoRA adapter (core.export.adapter) uploaded too and passed as
    ``adapters`` in ``/api/create``, so the model is ``gguf_path`` (the base) with the adapter.

    Steps: validate the name, find the server and check its version, refuse an
    existing name unless ``force``, hash the GGUF, upload it as a blob unless the
    server has that digest already, create the model (``files``, ``template``,
    ``parameters`` with ``stop``, ``system``, optional ``quantize`` to q4_K_M /
    q4_K_S / q8_0 from an F16 GGUF), then check it is listed and answers
    ``verify_prompt``. ``modelfile_path`` (default: ``Modelfile`` next to the GGUF)
    only feeds the ``ollama create`` command in error hints. ``verify_messages`` (default: one user
    message, ``verify_prompt``) and ``verify_options`` (default ``{"num_predict": 16}``) are what the
    verify step sends to ``/api/chat``. Named stages are reported as they start and end
    (``events.stage(name)`` / ``events.stage_done(name, ok, seconds)``): "upload", "create", "verify".

    ``verify_tools`` (a run trained on tool calls, see :func:`check_tool_answer`): the verify step also
    asks ``{"messages", "tools", "expected"}`` with its tools and compares the calls Ollama parses with
    those; the result's ``"tool_check"`` says how it went (a mismatch is a warning, not an error).

    Returns ``{"model" (= "name"): "name:tag", "host", "version", "digest", "uploaded", "replaced",
    "quantize", "answer"}``.
    """
    import httpx
    import ollama

    events = events or NULL_EVENTS
    gguf_path = Path(gguf_path)
    full_name = validate_model_name(name)
    modelfile_path = Path(modelfile_path) if modelfile_path else gguf_path.with_name("Modelfile")
    create_command = ollama_create_command(modelfile_path, name)
    if quantize is not None:
        match = {q.lower(): q for q in QUANTIZE_TYPES}.get(quantize.lower())
        if match is None:
            raise OllamaError(f"Ollama cannot quantize to {quantize!r}.", f"Use one of {', '.join(QUANTIZE_TYPES)}.")
        quantize = match
    if not gguf_path.is_file():
        raise OllamaError(f"{gguf_path} does not exist.", "Export the GGUF first.")
    if adapter_path is not None and not Path(adapter_path).is_file():
        raise OllamaError(f"{adapter_path} does not exist.", "Export the adapter GGUF first.")

    base = _base_url(host) if host else default_host()
    # blob traffic goes through httpx directly (HEAD, and a streamed POST with progress); the rest through
    # the official client
    http = httpx.Client(timeout=httpx.Timeout(30.0, read=600.0, write=600.0), **_http_options(base))
    client = ollama.Client(host=base, timeout=httpx.Timeout(30.0, read=600.0), **_http_options(base))
    try:
        return _register(http, client, base, gguf_path, full_name, create_command, template=template,
                         stops=stops, system=system, parameters=parameters, quantize=quantize, force=force,
                         license_text=license_text, verify=verify, verify_prompt=verify_prompt, events=events,
                         cancel=cancel, verify_messages=verify_messages, verify_options=verify_options,
                         adapter_path=Path(adapter_path) if adapter_path is not None else None,
                         verify_tools=verify_tools)
    finally:
        client.close()
        http.close()


def _not_running(base: str, create_command: str) -> OllamaNotRunning:
    if ollama_installed():
        return OllamaNotRunning(
            f"Ollama is not running (nothing answered at {base}).",
            "Start it (open the Ollama app, or run `ollama serve` in a terminal) and try again. The GGUF and "
            f"Modelfile stay on disk; once Ollama runs you can also register by hand:\n  {create_command}",
            create_command=create_command, installed=True)
    return OllamaNotRunning(
        f"Ollama does not seem to be installed (nothing answered at {base}).",
        "Install it from https://ollama.com/download and start it, then try again. The GGUF and Modelfile "
        f"stay on disk; you can also register by hand:\n  {create_command}",
        create_command=create_command, installed=False)


def _register(http, client, base: str, gguf_path: Path, full_name: str, create_command: str, *, template, stops, system,
              parameters, quantize, force, license_text, verify, verify_prompt, events: Events,
              cancel: CancelToken | None, verify_messages=None, verify_options=None, adapter_path=None,
              verify_tools=None) -> dict:
    import httpx
    import ollama

    stages = StageClock(events)
    version = _check_server(http, base, create_command, events)
    try:
        existing = {_canonical(m.model or "") for m in client.list().models}
    except (ollama.ResponseError, ConnectionError, httpx.HTTPError) as exc:
        raise _map_response_error(exc, create_command, "list its models") from exc
    taken = _canonical(full_name) in existing
    if taken and not force:
        raise OllamaNameTaken(
            f"Ollama already has a model named {full_name}.",
            "Choose another name, or replace it (--force on the command line).", create_command=create_command)
    if cancel is not None:
        cancel.checkpoint()

    stages.start("upload")
    digest, have, adapters = _upload_files(http, base, gguf_path, adapter_path, events, cancel, create_command)
    stages.done("upload")
    params = dict(parameters) if parameters is not None else {"temperature": DEFAULT_TEMPERATURE}
    params["stop"] = list(stops)
    stages.start("create")
    _create(client, full_name, create_command, events, cancel, files={_files_key(gguf_path): digest},
            template=template, parameters=params, system=system or None, license=license_text, quantize=quantize,
            **({"adapters": adapters} if adapters else {}))
    stages.done("create")
    result: dict = {"model": full_name, "name": full_name, "host": base, "version": version, "digest": digest,
                    "uploaded": not have, "replaced": taken, "quantize": quantize, "answer": None}
    if adapters:
        result["adapters"] = adapters
    if not verify:
        return result
    stages.start("verify")
    result["answer"] = _verify_answers(client, full_name, template, create_command, events,
                                       verify_messages or [{"role": "user", "content": verify_prompt}],
                                       verify_options or {"num_predict": 16})
    if verify_tools:
        result["tool_check"] = check_tool_answer(client, full_name, verify_tools, events=events,
                                                 create_command=create_command)
    stages.done("verify")
    return result


def _check_server(http, base: str, create_command: str, events: Events) -> str | None:
    """The server's version, once it is known to be an Ollama new enough; refuses anything else."""
    import httpx

    try:
        version = server_version(base, timeout=2.0, http=http)
    except (httpx.HTTPError, ValueError) as exc:
        raise _not_running(base, create_command) from exc
    if not version and not _answers_like_ollama(base, http):
        raise OllamaNotRunning(
            f"The server at {base} answered, but it is not Ollama (it has no /api/version or /api/tags).",
            f"Point OLLAMA_HOST at Ollama (default 127.0.0.1:11434), or register by hand:\n  {create_command}",
            create_command=create_command, installed=True)
    parsed = _parse_version(version)
    need = ".".join(map(str, MIN_OLLAMA_VERSION))
    if parsed is None or (parsed < MIN_OLLAMA_VERSION and parsed != (0, 0, 0)):  # 0.0.0: a source build
        raise OllamaTooOld(
            f"Ollama {version or '(version unknown)'} is too old: Tuneloom needs {need} or newer.",
            f"Update Ollama from https://ollama.com/download, then try again or run:\n  {create_command}",
            create_command=create_command)
    events.log("info", f"Ollama {version} at {base}")
    plain = plain_http_warning(base)
    if plain:
        events.log("warning", plain)
    return version


def _has_blob(http, base: str, digest: str, create_command: str) -> bool:
    import httpx

    try:
        return _blob_exists(http, base, digest)
    except httpx.HTTPError as exc:
        raise OllamaNotRunning(f"Ollama at {base} stopped answering ({exc}).",
                               f"Restart Ollama and try again, or register by hand:\n  {create_command}",
                               create_command=create_command) from exc


def _upload_files(http, base: str, gguf_path: Path, adapter_path: Path | None, events: Events,
                  cancel: CancelToken | None, create_command: str) -> tuple[str, bool, dict | None]:
    """(the GGUF's digest, whether Ollama had it already, {adapter file: digest} or None): each file
    uploaded as a blob unless the server has it."""
    import httpx

    digest = file_sha256(gguf_path, events=events, cancel=cancel)
    have = _has_blob(http, base, digest, create_command)
    if have:
        events.log("info", f"Ollama already has {gguf_path.name} ({digest[:19]}); not uploading it again")
    else:
        events.log("info", f"uploading {gguf_path.name} to Ollama")
        _upload_blob(http, base, gguf_path, digest, events, cancel, create_command)
        try:
            ok = _blob_exists(http, base, digest)
        except httpx.HTTPError:
            ok = False
        if not ok:
            raise OllamaUploadInterrupted(
                f"Ollama does not list {gguf_path.name} after the upload.",
                f"Run the registration again, or register by hand:\n  {create_command}",
                create_command=create_command)
    adapters = None
    if adapter_path is not None:
        adapter_digest = file_sha256(adapter_path, events=events, cancel=cancel)
        if not _has_blob(http, base, adapter_digest, create_command):
            events.log("info", f"uploading {adapter_path.name} to Ollama")
            _upload_blob(http, base, adapter_path, adapter_digest, events, cancel, create_command)
        adapters = {_files_key(adapter_path): adapter_digest}
    return digest, have, adapters


def _create(client, full_name: str, create_command: str, events: Events, cancel: CancelToken | None,
            **create) -> None:
    """``client.create`` streamed into events; refuses a create that did not report success."""
    import httpx
    import ollama

    quantize = create.get("quantize")
    events.log("info", f"creating {full_name}" + (f" (quantizing to {quantize})" if quantize else ""))
    try:
        last = None
        for part in client.create(model=full_name, stream=True, **create):
            last = part.status
            if part.total and part.completed is not None:
                events.report_progress(Progress(part.completed, part.total, "byte", part.status or f"creating {full_name}",
                                                 item=full_name))
            elif part.status:
                events.log("info", part.status)
            if cancel is not None:
                cancel.checkpoint()
    except (ollama.ResponseError, ConnectionError, httpx.HTTPError) as exc:
        raise _map_response_error(exc, create_command, "create the model") from exc
    if last != "success":
        raise OllamaError(f"Ollama stopped creating {full_name} before it reported success (last: {last!r}).",
                          f"Try again, or register by hand:\n  {create_command}", create_command=create_command)


def _verify_answers(client, full_name: str, template: str, create_command: str, events: Events,
                    messages: list[dict], options: dict) -> str:
    """The model is listed and answers ``messages``: its answer."""
    import httpx
    import ollama

    try:
        listed = {_canonical(m.model or "") for m in client.list().models}
        if _canonical(full_name) not in listed:
            raise OllamaError(f"Ollama created {full_name} but does not list it.",
                              f"Check `ollama list`; register by hand with:\n  {create_command}",
                              create_command=create_command)
        shown = client.show(full_name)
        if shown.template is not None and shown.template != template:
            events.log("warning", f"Ollama stored a different template for {full_name} than the one sent")
        events.log("info", f"asking {full_name} a short question")
        reply = client.chat(model=full_name, messages=messages, options=options, keep_alive=0, stream=False)
    except (ollama.ResponseError, ConnectionError, httpx.HTTPError) as exc:
        raise _map_response_error(exc, create_command, f"run {full_name}") from exc
    if not reply.done:
        raise OllamaError(f"{full_name} did not finish answering a short prompt.",
                          f"Try `ollama run {full_name}`.", create_command=create_command)
    return reply.message.content if reply.message else ""


def _tuneloom_parse(text: str, model: Any) -> list[dict] | None:
    """Tuneloom's own parse of a model's text (core.tools.parse_tool_calls); None while that module is absent."""
    try:
        from core.tools import parse_tool_calls
    except ImportError:
        return None
    if not text or model is None:
        return []
    return [{"name": c.get("name"), "arguments": c.get("arguments")} for c in parse_tool_calls(text, model)]


def check_tool_answer(client, full_name: str, case: dict, *, events: Events | None = None,
                      create_command: str = "") -> dict:
    """Ask the registered model ``case["messages"]`` with ``case["tools"]`` (a held-out record) and compare the
    calls Ollama parses out of its answer with ``case["expected"]`` (the record's calls, [{"name",
    "arguments"}]). ``case["model"]`` (a model folder) lets Tuneloom parse what Ollama passes on as text
    (core.tools.parse_tool_calls): a call there that Ollama did not parse is named in the result.

    Returns ``{"question", "expected", "ollama", "tuneloom", "content", "match"}``."""
    import httpx
    import ollama

    events = events or NULL_EVENTS
    messages = []
    for m in case["messages"]:  # in the client's form: arguments as objects, a tool result's name as tool_name
        msg = {"role": m["role"], "content": m.get("content") or ""}
        if m.get("tool_calls"):
            msg["tool_calls"] = [{"function": c} for c in tool_calls_of(m)]
        if m["role"] == "tool" and m.get("name"):
            msg["tool_name"] = m["name"]
        messages.append(msg)
    question = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
    events.log("info", f"asking {full_name} a held-out question with its tools")
    try:
        reply = client.chat(model=full_name, messages=messages, tools=ollama_tools(case.get("tools")),
                            options=case.get("options") or {"num_predict": 256, "temperature": 0}, keep_alive=0,
                            stream=False)
    except (ollama.ResponseError, ConnectionError, httpx.HTTPError) as exc:
        raise _map_response_error(exc, create_command, f"run {full_name} with tools") from exc
    msg = reply.message
    got = [{"name": tc.function.name, "arguments": dict(tc.function.arguments or {})}
           for tc in (getattr(msg, "tool_calls", None) or [])]
    content = (msg.content or "") if msg else ""
    expected = [{"name": c["name"], "arguments": c["arguments"]} for c in case.get("expected") or []]
    check = {"question": question, "expected": expected, "ollama": got, "tuneloom": _tuneloom_parse(content, case.get(
        "model")), "content": content, "match": got == expected,
             "tools_as_trained": True}  # training rendered them in Ollama's form (core.tools.ollama_tools)
    if check["match"]:
        events.log("info", f"tool check: Ollama parsed the expected call(s): {_calls_text(got)}")
    else:
        events.log("warning", f"tool check: Ollama parsed {_calls_text(got) or 'no call'}, the held-out answer has "
                              f"{_calls_text(expected) or 'no call'}" + (
                                  f"; the text Ollama passed on holds {_calls_text(check['tuneloom'])}, which "
                                  "Ollama did not parse" if check["tuneloom"] else ""))
    return check


def _calls_text(calls) -> str:
    return ", ".join(f"{c['name']}({json.dumps(c['arguments'], ensure_ascii=False)})" for c in calls or [])


def model_exists(name: str, host: str | None = None, timeout: float = 2.0) -> bool | None:
    """Whether Ollama already has a model called ``name`` (tag ``latest`` when none is given);
    None when no server answers. For asking "replace it?" before anything is written."""
    import httpx

    full = _canonical(validate_model_name(name))
    base = _base_url(host) if host else default_host()
    try:
        r = httpx.get(f"{base}/api/tags", timeout=timeout, **_http_options(base))
        r.raise_for_status()
        models = r.json().get("models") or []
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return any(_canonical(str(m.get("model") or m.get("name") or "")) == full for m in models)
