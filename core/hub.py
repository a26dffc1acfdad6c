"""Models from the Hugging Face hub or a local folder: download, import, validate.

Download. ``fetch_model(repo_id, revision)`` puts the files training and export need
(config, generation config, tokenizer files, safetensors weights and their index,
licence, chat template) into huggingface_hub's own cache (``$HF_HOME/hub``, the
``models--org--name/{blobs,snapshots,refs}`` layout), so every other tool that reads
that cache (transformers, mlx-lm, ``hf``) finds them, and returns the snapshot folder.
It honours HF_HOME / HF_HUB_CACHE, HF_ENDPOINT, HF_HUB_OFFLINE and the token
huggingface_hub stores (``hf auth login`` / ``huggingface_hub.login`` / HF_TOKEN), all
read at call time.

What comes from huggingface_hub: the file listing (``HfApi.model_info`` with
``files_metadata``: sizes and the LFS sha256), the per-file metadata
(``get_hf_file_metadata``: etag, commit, CDN location), URLs (``hf_hub_url``), auth
headers, its HTTP session and its error types. What is written here, and why: the
transfer loop of each file. ``hf_hub_download`` / ``snapshot_download`` (huggingface_hub
2.x) only report progress through a tqdm class, cannot be cancelled except by raising
out of that tqdm, and write each attempt to a process-unique temporary file that is
deleted on any failure: after a cancel, a crash or a dropped connection that outlasts
its in-process retries, the next call starts the file again from byte 0. A one-gigabyte
download on a laptop's Wi-Fi needs better: the loop here streams into
``blobs/<etag>.incomplete``, which survives a cancel, a crash or a lost connection, and
the next attempt (in the same call or a later one) asks for ``Range: bytes=<size on
disk>-``, so no byte is fetched twice. Each file is checked against the size and hash
the hub publishes (sha256 for LFS files, the git blob sha1 for the others) before it
is moved into place; a file that fails is deleted, never left looking complete.

Validation (validate_model_dir, ModelCheck) is core.model_check; its names are importable from here too.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable
from urllib.parse import urlparse

from core.hub_env import _env_true, hub_cache_dir, hub_endpoint, is_offline, token_hint, token_path  # noqa: F401
from core.events import NULL_EVENTS, CancelToken, Cancelled, Events, Progress, Throttle, TuneloomError
# validation lives in core.model_check; these names stay importable from core.hub
from core.model_check import (FALLBACK_TEMPLATES, SUPPORTED_SUMMARY, TOKENIZER_FILES, ModelCheck,  # noqa: F401
                              ModelInvalid, ModelProblem, _arch_names, _check_ollama_template, _display_name,
                              _model_type_supported_by_mlx, _note_qwen35_extras, config_shape_mismatch,
                              expected_tensors, fallback_chat_template, validate_model_dir)

# Top-level repo files that training and export need (matched case-insensitively).
NEEDED_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "license*",
    "licence*",
)

# Free space kept in reserve beyond what the download needs.
DISK_MARGIN_BYTES = 64 * 2**20
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


# --------------------------------------------------------------------------- errors

class HubError(TuneloomError):
    """A download or hub look-up failed in a way the user can act on."""


class ModelNotFoundError(HubError):
    pass


class GatedModelError(HubError):
    pass


class IntegrityError(HubError):
    pass


class DiskSpaceError(HubError):
    pass


class OfflineError(HubError):
    pass



def save_token(token: str) -> Path:
    """Store ``token`` where huggingface_hub keeps it (``login`` checks it with the hub's whoami first)."""
    from huggingface_hub import login

    try:
        login(token=token, add_to_git_credential=False)
    except Exception as exc:  # noqa: BLE001 - ValueError for a bad token, HTTP errors offline
        raise HubError(f"The token was not accepted: {exc}", "Copy a 'read' token from "
                       "https://huggingface.co/settings/tokens and try again.") from exc
    return token_path()


def repo_cache_dir(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return Path(cache_dir or hub_cache_dir()) / repo_folder_name(repo_id=repo_id, repo_type="model")


def is_needed(filename: str, patterns: Iterable[str] = NEEDED_PATTERNS) -> bool:
    if "/" in filename:  # only the top level: subfolders hold ONNX, GGUF, other formats
        return False
    name = filename.lower()
    return any(fnmatch.fnmatchcase(name, p.lower()) for p in patterns)


def _read_ref(repo_dir: Path, revision: str) -> str | None:
    if _COMMIT_RE.fullmatch(revision):
        return revision
    ref = repo_dir / "refs" / revision
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def folder_complete(path: str | os.PathLike) -> bool:
    """A cheap presence check: config, a tokenizer, and every weight shard."""
    p = Path(path)
    if not (p / "config.json").is_file() or not any((p / f).is_file() for f in TOKENIZER_FILES):
        return False
    index = p / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return all((p / s).is_file() for s in shards)
    return any(p.glob("*.safetensors"))


def cached_snapshot(repo_id: str, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The complete cached snapshot of ``repo_id`` at ``revision`` (branch, tag or commit), if any."""
    repo_dir = repo_cache_dir(repo_id, cache_dir)
    commit = _read_ref(repo_dir, revision or "main")
    if commit is None:
        return None
    snap = repo_dir / "snapshots" / commit
    return snap if snap.is_dir() and folder_complete(snap) else None


# --------------------------------------------------------------------------- progress

from core.model_folder import read_safetensors_header  # noqa: E402,F401  (the one reader; importers use this name)
from core.units import fmt_bytes  # noqa: E402,F401  (one formatter for every size; importers use this name)


def _fmt_eta(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class _ByteProgress:
    """Byte progress over all files, with speed over the last few seconds and an ETA.

    ``done`` never decreases: when a partial file has to be thrown away (the server
    ignored a Range request, a file failed its check) the work grew, so ``total`` grows.
    """

    WINDOW_S = 5.0

    def __init__(self, events: Events, total: int, done: int):
        self.events = events
        self.total = total
        self.done = done
        self.fetched = 0  # bytes received over the network in this call
        self._samples: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])
        self._throttle = Throttle(0.1)
        self.current = ""

    def add(self, n: int) -> None:
        self.done += n
        self.fetched += n
        self.emit()

    def redo(self, n: int) -> None:
        self.total += n

    def speed(self) -> float:
        """Bytes per second over the last few seconds (0 until half a second has passed)."""
        now = time.monotonic()
        self._samples.append((now, self.fetched))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.WINDOW_S:
            self._samples.popleft()
        t0, b0 = self._samples[0]
        return (self.fetched - b0) / (now - t0) if now - t0 >= 0.5 else 0.0

    def emit(self, final: bool = False) -> None:
        """A typed byte Progress (rate in bytes per second, eta in seconds; front ends read these fields)
        with a line for people in ``what``."""
        if not self._throttle.ready(final):
            return
        speed = self.speed()
        if final:
            self.events.report_progress(Progress(
                self.done, self.total, "byte", f"ready: {self.current} ({fmt_bytes(self.total)}, "
                f"{fmt_bytes(self.fetched)} downloaded)", eta=0.0, item=self.current))
            return
        text = f"downloading {self.current}: {fmt_bytes(self.done)} of {fmt_bytes(self.total)}"
        eta = max(0, self.total - self.done) / speed if speed > 0 else None
        if eta is not None:
            text += f", {fmt_bytes(speed)}/s, {_fmt_eta(eta)} left"
        self.events.report_progress(Progress(self.done, self.total, "byte", text, rate=speed or None, eta=eta,
                                             item=self.current))


# --------------------------------------------------------------------------- fetch

@dataclass
class RemoteFile:
    name: str
    size: int
    lfs_sha256: str | None = None  # set for LFS files: the hub's sha256 of the content
    blob_id: str | None = None  # git blob sha1 (of the content for regular files)
    etag: str = ""
    url: str = ""


@dataclass
class FetchResult:
    repo_id: str
    revision: str
    commit: str
    path: Path  # the snapshot folder: a model folder in Hugging Face layout
    files: list[str] = field(default_factory=list)
    downloaded_bytes: int = 0  # fetched over the network by this call
    total_bytes: int = 0
    offline: bool = False  # served from the cache without asking the hub
    message: str = ""
    check: "ModelCheck | None" = None

    def as_dict(self) -> dict:
        return {"repo_id": self.repo_id, "revision": self.revision, "commit": self.commit, "path": str(self.path),
                "files": self.files, "downloaded_bytes": self.downloaded_bytes, "total_bytes": self.total_bytes,
                "offline": self.offline, "message": self.message,
                "ok": None if self.check is None else self.check.ok,
                "problems": [] if self.check is None else [p.message for p in self.check.problems]}


def _token_refused(endpoint: str | None = None) -> bool:
    """Whether a token is configured and the hub says it is not valid (whoami: 401): a 401 then means a
    wrong token, not a gated or private model."""
    try:
        from huggingface_hub import HfApi, get_token
        from huggingface_hub.errors import HfHubHTTPError

        token = get_token()
        if not token:
            return False
        try:
            HfApi(endpoint=endpoint).whoami(token=token)
        except HfHubHTTPError as exc:
            return getattr(exc.response, "status_code", None) == 401
    except Exception:  # noqa: BLE001 - offline or an old huggingface_hub: say what the error said
        return False
    return False


def _hub_error(exc: BaseException, repo_id: str, revision: str, endpoint: str) -> HubError:
    """A huggingface_hub / HTTP error as a message that says what to do."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RemoteEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    page = f"{endpoint}/{repo_id}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, (GatedRepoError, RepositoryNotFoundError)) and status == 401 and _token_refused(endpoint):
        return HubError("The hub refused your Hugging Face token (it is invalid, expired or revoked), so "
                        f"{repo_id} could not be opened.",
                        "Make a new 'read' token at https://huggingface.co/settings/tokens and give it to "
                        "Tuneloom: " + token_hint())
    if isinstance(exc, GatedRepoError):
        status = exc.response.status_code if exc.response is not None else None
        if status == 403:
            return GatedModelError(
                f"{repo_id} is a gated model and your token has not been granted access to it.",
                f"Open {page}, accept the conditions its authors ask for, wait for access, then try again. "
                + token_hint())
        return GatedModelError(
            f"{repo_id} is a gated model: its authors require you to accept their conditions and to download it "
            "with an access token.",
            f"Open {page} and accept the conditions, then: " + token_hint())
    if isinstance(exc, RevisionNotFoundError):
        return ModelNotFoundError(f"{repo_id} has no revision {revision!r}.",
                                  f"Check the branch, tag or commit on {page}, or leave the revision out.")
    if isinstance(exc, RepositoryNotFoundError):
        status = exc.response.status_code if exc.response is not None else None
        private = " or it is private and needs a token" if status == 401 else ""
        return ModelNotFoundError(
            f"No model {repo_id!r} on {endpoint}{private}.",
            "Check the spelling (organisation/name, e.g. Qwen/Qwen2.5-0.5B-Instruct). "
            + (token_hint() if status == 401 else ""))
    if isinstance(exc, RemoteEntryNotFoundError):
        return ModelNotFoundError(f"A file of {repo_id} disappeared from the hub while downloading: {exc}",
                                  "Try again; if it persists, pin another revision.")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        return HubError(f"The hub answered {status} for {repo_id}: {str(exc).strip().splitlines()[0]}",
                        "Try again later; if it persists, check HF_ENDPOINT and your proxy settings.")
    return HubError(f"Cannot reach the Hugging Face hub at {endpoint}: {exc}",
                    "Check your connection (and HF_ENDPOINT / proxy settings), or set HF_HUB_OFFLINE=1 to "
                    "use models already downloaded.")


def _is_connection_error(exc: BaseException) -> bool:
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled

    return isinstance(exc, (httpx2.TransportError, OfflineModeIsEnabled, ConnectionError, TimeoutError))


def _origin(url: str) -> tuple[str, str, int | None]:
    u = urlparse(url)
    return (u.scheme, (u.hostname or "").lower(), u.port or {"http": 80, "https": 443}.get(u.scheme))


def _from_cache(repo_id: str, revision: str, cache: Path, why: str, events: Events, validate: bool) -> FetchResult:
    snap = cached_snapshot(repo_id, revision, cache)
    if snap is None:
        raise OfflineError(
            f"{why} and {repo_id}" + ("" if revision == "main" else f" at {revision}")
            + f" is not in the model cache ({cache}).",
            "Connect to the internet and unset HF_HUB_OFFLINE to download it, or import a model folder "
            "you already have.")
    files = sorted(p.name for p in snap.iterdir() if p.is_file())
    msg = f"{why}: using the cached copy of {repo_id} ({snap.name[:12]}) in {snap}"
    events.log("warning", msg)
    res = FetchResult(repo_id, revision, snap.name, snap, files, 0, _dir_bytes(snap), True, msg)
    if validate:
        res.check = validate_model_dir(snap)
    return res


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.iterdir() if f.is_file())


def fetch_model(repo_id: str, revision: str | None = None, *, events: Events | None = None,
                cancel: CancelToken | None = None, token: str | bool | None = None,
                cache_dir: str | os.PathLike | None = None, endpoint: str | None = None,
                patterns: Iterable[str] = NEEDED_PATTERNS, retries: int = 5, keep_partial: bool = True,
                validate: bool = True) -> FetchResult:
    """Download (or find in the cache) the files of ``repo_id`` that training and export need.

    ``revision``: branch, tag or commit (default ``main``). ``token``: None uses the one
    huggingface_hub stores (or HF_TOKEN). ``retries``: consecutive connection failures
    without progress tolerated per file before giving up (the partial file stays for the
    next call). ``keep_partial``: keep the partial file on cancel so a later call resumes.
    Raises :class:`Cancelled`, or a :class:`HubError` subclass with a message and a hint.

    The steps: look the repository up (:func:`_look_up`), plan its files (:func:`_plan_files`,
    :func:`_count_on_disk`), transfer each one (:func:`_transfer_files`), finish (:func:`_finish_fetch`).
    """
    from huggingface_hub.utils import build_hf_headers

    events = events or NULL_EVENTS
    cancel = cancel or CancelToken()
    revision = revision or "main"
    endpoint = (endpoint or hub_endpoint()).rstrip("/")
    cache = Path(cache_dir) if cache_dir else hub_cache_dir()
    repo_dir = repo_cache_dir(repo_id, cache)

    if is_offline():
        return _from_cache(repo_id, revision, cache, "Offline mode (HF_HUB_OFFLINE=1)", events, validate)
    # A pinned commit already complete in the cache needs no network at all.
    if _COMMIT_RE.fullmatch(revision) and cached_snapshot(repo_id, revision, cache) is not None:
        snap = repo_dir / "snapshots" / revision
        res = FetchResult(repo_id, revision, revision, snap, sorted(p.name for p in snap.iterdir() if p.is_file()),
                          0, _dir_bytes(snap), False, f"{repo_id} {revision[:12]} is already downloaded")
        events.log("info", res.message)
        if validate:
            res.check = validate_model_dir(snap)
        return res

    info = _look_up(repo_id, revision, cache, endpoint, token, events, validate)
    if isinstance(info, FetchResult):  # the hub is out of reach, the cache has it
        return info
    commit = info.sha or revision
    listing, wanted = _wanted_files(repo_id, info, patterns)
    headers = build_hf_headers(token=token)
    files, commit = _plan_files(repo_id, revision, commit, listing, wanted, token, endpoint, cancel)

    snap = repo_dir / "snapshots" / commit
    blobs = repo_dir / "blobs"
    total, have, counted = _count_on_disk(files, snap, blobs)
    remaining = total - have
    _check_disk(blobs, remaining, repo_id)
    events.log("info", f"{repo_id} {commit[:12]}: {len(files)} files, {fmt_bytes(total)}"
               + (f", {fmt_bytes(remaining)} to download" if remaining else ", all in the cache"))

    progress = _ByteProgress(events, total, have)
    _transfer_files(files, counted, snap, blobs, repo_id, repo_dir, endpoint, headers, progress, cancel, retries,
                    keep_partial)
    return _finish_fetch(repo_id, revision, commit, repo_dir, snap, files, progress, total, events, validate)


def _look_up(repo_id: str, revision: str, cache: Path, endpoint: str, token: str | bool | None, events: Events,
             validate: bool):
    """The hub's model info of ``repo_id`` (with per-file metadata); where the hub cannot be reached
    and the cache holds the revision, the :class:`FetchResult` of the cached copy instead."""
    from huggingface_hub import HfApi

    events.report_progress(Progress(0, None, "file", f"looking up {repo_id}", item=repo_id))
    api = HfApi(endpoint=endpoint, token=token)
    try:
        return api.model_info(repo_id, revision=revision, files_metadata=True, token=token)
    except Exception as exc:  # noqa: BLE001 - mapped below
        if _is_connection_error(exc) and cached_snapshot(repo_id, revision, cache) is not None:
            return _from_cache(repo_id, revision, cache, f"Cannot reach {endpoint} ({type(exc).__name__})", events,
                               validate)
        if _is_connection_error(exc) or isinstance(exc, _hub_error_types()):
            raise _hub_error(exc, repo_id, revision, endpoint) from exc
        if type(exc).__name__ == "HFValidationError":
            raise ModelNotFoundError(f"{repo_id!r} is not a valid model id: {exc}",
                                     "A hub id looks like organisation/name, e.g. Qwen/Qwen2.5-0.5B-Instruct.") from exc
        raise


def _wanted_files(repo_id: str, info, patterns: Iterable[str]) -> tuple[dict, list[str]]:
    """The repository's listing (file name -> the hub's sibling entry) and the names of it to fetch;
    raises :class:`HubError` where it is no Transformers repository or holds no safetensors weights."""
    siblings = info.siblings or []
    listing = {s.rfilename: s for s in siblings}
    if "config.json" not in listing:
        raise HubError(f"{repo_id} has no config.json: it is not a Transformers model repository.",
                       "Pick a model published in Hugging Face (safetensors) format.")
    wanted = [name for name in listing if is_needed(name, patterns)]
    if not any(n.endswith(".safetensors") for n in wanted):
        other = [n for n in listing if n.endswith((".bin", ".gguf", ".pt", ".pth", ".ckpt"))]
        raise HubError(f"{repo_id} has no safetensors weights" + (f" (only {', '.join(sorted(other)[:3])})"
                                                                   if other else "") + ".",
                       "Tuneloom needs weights in safetensors format; pick another model or a converted copy.")
    return listing, wanted


def _plan_files(repo_id: str, revision: str, commit: str, listing: dict, wanted: list[str],
                token: str | bool | None, endpoint: str, cancel: CancelToken) -> tuple[list[RemoteFile], str]:
    """Per-file metadata as hf_hub_download gets it: etag (the blob name), size, CDN location; and the
    commit, as the files' metadata name it."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    files: list[RemoteFile] = []
    for name in sorted(wanted):
        cancel.raise_if_cancelled("download cancelled")
        s = listing[name]
        url = hf_hub_url(repo_id, name, revision=commit, endpoint=endpoint)
        try:
            meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
        except Exception as exc:  # noqa: BLE001 - mapped below
            if _is_connection_error(exc) or isinstance(exc, _hub_error_types()):
                raise _hub_error(exc, repo_id, revision, endpoint) from exc
            raise
        lfs_sha = s.lfs.sha256 if s.lfs else None
        size = s.lfs.size if s.lfs else s.size
        if meta.size is not None and size is not None and meta.size != size:
            raise IntegrityError(f"The hub reports two sizes for {name} of {repo_id} ({meta.size} and {size}).",
                                 "Try again in a moment; the repository may be changing.")
        etag = meta.etag or lfs_sha or s.blob_id
        if not etag or not re.fullmatch(r"[A-Za-z0-9_-]{8,128}", etag):  # it names a file in the cache
            raise HubError(f"The hub gave no usable ETag for {name} of {repo_id} ({etag!r}).",
                           "Check that HF_ENDPOINT points to a Hugging Face hub.")
        files.append(RemoteFile(name, meta.size if meta.size is not None else (size or 0), lfs_sha,
                                s.blob_id, etag, meta.location or url))
        if meta.commit_hash:
            commit = meta.commit_hash
    return files, commit


def _count_on_disk(files: list[RemoteFile], snap: Path, blobs: Path) -> tuple[int, int, dict[str, int]]:
    """(total bytes, bytes already on disk, files to download -> bytes of them already on disk)."""
    total = sum(f.size for f in files)
    have = 0
    counted: dict[str, int] = {}
    for f in files:
        if (snap / f.name).exists() or (blobs / f.etag).exists():
            have += f.size
            continue
        part = blobs / f"{f.etag}.incomplete"
        counted[f.name] = min(part.stat().st_size, f.size) if part.exists() else 0
        have += counted[f.name]
    return total, have, counted


def _transfer_files(files: list[RemoteFile], counted: dict[str, int], snap: Path, blobs: Path, repo_id: str,
                    repo_dir: Path, endpoint: str, headers: dict, progress: _ByteProgress, cancel: CancelToken,
                    retries: int, keep_partial: bool) -> None:
    """Download each file not yet on disk (resuming its partial file) and link the snapshot to the blobs."""
    for f in files:
        cancel.checkpoint()
        pointer = snap / f.name
        blob = blobs / f.etag
        progress.current = f.name
        if f.name in counted:
            _download_file(f, blob, repo_id, repo_dir, endpoint, headers, progress, counted[f.name], cancel,
                           retries, keep_partial)
        if not pointer.exists():
            _link(blob, pointer)


def _finish_fetch(repo_id: str, revision: str, commit: str, repo_dir: Path, snap: Path, files: list[RemoteFile],
                  progress: _ByteProgress, total: int, events: Events, validate: bool) -> FetchResult:
    """The last progress, the branch's ref, the log line, the result (checked where ``validate``)."""
    progress.current = repo_id
    progress.emit(final=True)
    if not _COMMIT_RE.fullmatch(revision) and revision != commit:
        ref = repo_dir / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
    msg = (f"downloaded {fmt_bytes(progress.fetched)} of {repo_id} into {snap}" if progress.fetched
           else f"{repo_id} is already downloaded ({snap})")
    events.log("info", msg)
    res = FetchResult(repo_id, revision, commit, snap, [f.name for f in files], progress.fetched, total, False, msg)
    if validate:
        res.check = validate_model_dir(snap)
        for p in res.check.problems:
            events.log("warning", p.message)
    return res


def _hub_error_types() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError

    return (HfHubHTTPError,)


def _check_disk(blobs: Path, needed: int, repo_id: str) -> None:
    if needed <= 0:
        return
    probe = blobs
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed + DISK_MARGIN_BYTES:
        raise DiskSpaceError(
            f"Not enough free disk space for {repo_id}: it needs {fmt_bytes(needed)} more, "
            f"but only {fmt_bytes(free)} is free on the disk holding {probe}.",
            "Free some space, or point HF_HOME at a disk with more room.")


def _link(blob: Path, pointer: Path) -> None:
    pointer.parent.mkdir(parents=True, exist_ok=True)
    tmp = pointer.with_name(pointer.name + ".tmp-link")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), tmp)
        os.replace(tmp, pointer)
    except OSError:  # no symlinks (Windows without developer mode): the blob moves, as huggingface_hub does
        os.replace(blob, pointer)


def _new_hasher(f: RemoteFile):
    if f.lfs_sha256:
        return hashlib.sha256()
    if f.blob_id:
        h = hashlib.sha1()  # noqa: S324 - git's blob id, not a security hash
        h.update(b"blob %d\0" % f.size)
        return h
    return None


def _hash_prefix(f: RemoteFile, part: Path, n: int):
    h = _new_hasher(f)
    if h is not None and n:
        with open(part, "rb") as fh:
            left = n
            while left:
                block = fh.read(min(left, 4 * 2**20))
                if not block:
                    break
                h.update(block)
                left -= len(block)
    return h


def _download_file(f: RemoteFile, blob: Path, repo_id: str, repo_dir: Path, endpoint: str, headers: dict,
                   progress: _ByteProgress, counted: int, cancel: CancelToken, retries: int,
                   keep_partial: bool) -> None:
    """Stream ``f`` into ``<blob>.incomplete`` (resuming what is there), verify, move to ``blob``.

    ``counted``: bytes of this file already counted as done (the partial file found at the start).
    """
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import WeakFileLock, get_session, hf_raise_for_status

    blob.parent.mkdir(parents=True, exist_ok=True)
    part = blob.with_name(blob.name + ".incomplete")
    lock = repo_dir.parent / ".locks" / repo_dir.name / f"{f.etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    req_headers = dict(headers)
    req_headers["Accept-Encoding"] = "identity"  # sizes and offsets of the file itself, not of a gzip stream
    if _origin(f.url) != _origin(endpoint):
        req_headers.pop("authorization", None)  # a signed CDN URL: the token stays with the hub
    session = get_session()
    with WeakFileLock(lock):
        if blob.exists():  # another process finished it while we waited for the lock
            progress.done = min(progress.total, progress.done + f.size - counted)
            return
        failures = attempts = 0
        hasher, hashed = None, -1
        while True:
            cancel.checkpoint()
            attempts += 1
            if attempts > 4 * retries + 20:
                raise HubError(f"{f.name} could not be downloaded after {attempts - 1} attempts.",
                               "Try again later; check HF_ENDPOINT and proxy settings.")
            offset = part.stat().st_size if part.exists() else 0
            if offset > f.size:  # longer than the file: not a prefix we can trust
                progress.redo(f.size)
                part.unlink()
                offset = 0
            if hashed != offset:
                hasher, hashed = _hash_prefix(f, part, offset), offset
            if offset == f.size:
                break
            rh = dict(req_headers)
            if offset:
                rh["Range"] = f"bytes={offset}-"
            got = 0
            try:
                with session.stream("GET", f.url, headers=rh, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
                                    follow_redirects=True) as r:
                    if r.status_code == 416:  # our partial is not a prefix the server knows
                        progress.redo(offset)
                        part.unlink(missing_ok=True)
                        continue
                    hf_raise_for_status(r)
                    mode = "ab"
                    if offset and r.status_code != 206:  # Range ignored: start over
                        progress.redo(offset)
                        offset, mode = 0, "wb"
                        hasher, hashed = _new_hasher(f), 0
                    with open(part, mode) as fh:
                        for chunk in r.iter_bytes():
                            if cancel.cancelled or cancel.paused:
                                fh.flush()
                                cancel.checkpoint()  # raises on cancel; after a long pause a dropped
                                # connection is resumed like any other
                            if not chunk:
                                continue
                            fh.write(chunk)
                            if hasher is not None:
                                hasher.update(chunk)
                            got += len(chunk)
                            hashed = offset + got
                            progress.add(len(chunk))
                if offset + got != f.size:
                    raise httpx2.RemoteProtocolError(f"received {offset + got} of {f.size} bytes")
                break
            except Cancelled:
                if not keep_partial:
                    part.unlink(missing_ok=True)
                kept = part.stat().st_size if part.exists() else 0
                raise Cancelled(f"Download of {f.name} cancelled" + (
                    f"; {fmt_bytes(kept)} kept: fetching the model again resumes from there" if kept else ""),
                    result={"file": f.name, "partial_bytes": kept}) from None
            except HfHubHTTPError as exc:
                raise _hub_error(exc, repo_id, "", endpoint) from exc
            except httpx2.TransportError as exc:
                failures = 1 if got else failures + 1
                if failures > retries:
                    kept = part.stat().st_size if part.exists() else 0
                    raise HubError(
                        f"The connection was lost while downloading {f.name} ({fmt_bytes(kept)} of "
                        f"{fmt_bytes(f.size)} on disk): {exc}",
                        "Fetch the model again when the connection is back: the download resumes where it "
                        "stopped.") from exc
                progress.events.log("warning", f"connection lost during {f.name} ({exc}); resuming at byte "
                                    f"{part.stat().st_size if part.exists() else 0}")
                _sleep(min(0.25 * 2 ** (failures - 1), 8.0), cancel)
            except OSError as exc:
                raise HubError(f"Cannot write {part}: {exc}", "Check the disk and its free space.") from exc

        _verify(f, part, hasher)
        os.chmod(part, 0o644)
        os.replace(part, blob)


def _sleep(seconds: float, cancel: CancelToken) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        cancel.checkpoint()
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))


def _verify(f: RemoteFile, part: Path, hasher) -> None:
    size = part.stat().st_size
    problem = None
    if size != f.size:
        problem = f"it has {size} bytes, the hub says {f.size}"
    elif f.lfs_sha256 and hasher is not None and hasher.hexdigest() != f.lfs_sha256:
        problem = f"its sha256 is {hasher.hexdigest()}, the hub says {f.lfs_sha256}"
    elif not f.lfs_sha256 and f.blob_id and hasher is not None and hasher.hexdigest() != f.blob_id:
        problem = f"its git blob id is {hasher.hexdigest()}, the hub says {f.blob_id}"
    if problem:
        part.unlink(missing_ok=True)
        raise IntegrityError(f"{f.name} arrived damaged ({problem}); it was deleted.",
                             "Fetch the model again; if it keeps failing, your network or a proxy is altering "
                             "downloads.")



# --------------------------------------------------------------------------- local folders

def _import_files(src: Path) -> list[Path]:
    return sorted(f for f in src.iterdir() if f.is_file() and is_needed(f.name))


def import_local_model(src: str | os.PathLike, *, dest_root: str | os.PathLike | None = None,
                       name: str | None = None, copy: bool = True, events: Events | None = None,
                       cancel: CancelToken | None = None) -> ModelCheck:
    """Validate a dropped-in model folder and (``copy=True``) copy the files we need into
    ``<app data>/models/<name>``. Returns the check of the folder to use; raises
    :class:`ModelInvalid` listing every problem when the source is not usable."""
    from core.paths import app_data_dir

    events = events or NULL_EVENTS
    cancel = cancel or CancelToken()
    src = Path(src).expanduser().resolve()
    events.report_progress(Progress(0, None, "file", f"checking {src.name}", item=src.name))
    check = validate_model_dir(src).raise_if_invalid()
    if not copy:
        return check
    root = Path(dest_root) if dest_root else app_data_dir() / "models"
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", name or src.name).strip("-.") or "model"
    dest, k = root / base, 2
    while dest.exists():
        dest, k = root / f"{base}-{k}", k + 1
    files = _import_files(src)
    total = sum(f.stat().st_size for f in files)
    tmp = root / f".{dest.name}.importing"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    done, throttle = 0, Throttle(0.1)
    try:
        for f in files:
            with open(f, "rb") as fi, open(tmp / f.name, "wb") as fo:
                while block := fi.read(8 * 2**20):
                    cancel.checkpoint()
                    fo.write(block)
                    done += len(block)
                    if throttle.ready():
                        events.report_progress(Progress(done, total, "byte", f"copying {f.name}", item=f.name))
        events.report_progress(Progress(total, total, "byte", f"copied {src.name}", item=src.name))
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    out = validate_model_dir(dest)
    events.log("info", f"imported {src} as {dest}")
    return out


def resolve_model(spec: str | os.PathLike, revision: str | None = None, *, events: Events | None = None,
                  cancel: CancelToken | None = None) -> Path:
    """A model folder for ``spec``: an existing folder as is, else a hub id, fetched (or found in the cache)."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return p
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(spec)):
        return fetch_model(str(spec), revision, events=events, cancel=cancel).path
    raise TuneloomError(f"{spec} is neither a model folder nor a hub id (organisation/name).",
                        "Give a folder holding config.json, or an id such as Qwen/Qwen2.5-0.5B-Instruct.")
