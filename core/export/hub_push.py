"""Share a run on the Hugging Face Hub: ``tuneloom push RUN --repo OWNER/NAME [--what ...] [--private]``.

huggingface_hub does the work (``create_repo``, ``preupload_lfs_files``, ``create_commit``) with its
own stored token (``hf auth login``) or one given for this push only; Tuneloom never writes a token
anywhere. What is pushed is staged in a temporary folder first:

- ``adapter``: the PEFT folder (core.export.peft) with its model card,
- ``merged``: the merged model as a transformers folder (core.export.fuse) with a model card,
- ``gguf``: the run's newest exported GGUF (its Modelfile beside it), else a fresh q4_k_m export.

The first kind asked for goes at the repository's root (that is what ``PeftModel.from_pretrained``
or ``from_pretrained`` open), any further one in a subfolder named after it. Files are uploaded one
by one (progress in bytes, a cancel between files) and committed together in one commit: a
cancelled push leaves the repository as it was (bar its creation).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from core import runs
from core.events import NULL_EVENTS, CancelToken, Events, Progress, StageClock, TuneloomError

WHAT = ("adapter", "merged", "gguf")
NO_TOKEN_HINT = "log in with `hf auth login` or paste a token"


class NotLoggedIn(TuneloomError):
    pass


def _token(token: str | None) -> str:
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise NotLoggedIn("Pushing to the Hugging Face Hub needs a token with write access, and none is stored.",
                          "To push, " + NO_TOKEN_HINT + " (Export page, Share; used for this push only).")
    return found


def _newest_gguf(run: Path) -> Path | None:
    best = None
    for rec in runs.RunFolder(run).export_records():
        p = Path(rec.get("gguf") or "")
        if p.is_file() and (best is None or p.stat().st_mtime > best.stat().st_mtime):
            best = p
    return best


def stage(run: str | Path, what: list[str], dest: Path, *, repo: str, events: Events,
          cancel: CancelToken | None) -> list[str]:
    """Write everything ``what`` asks for into ``dest``; returns the subfolders used ('' for the root)."""
    from core.export.pipeline import resolve_source
    from core.export.model_card import write_model_card

    base, adapter_dir = resolve_source(run)
    if adapter_dir is None:
        raise TuneloomError(f"{run} is not a run folder.", "Give a run folder (it has adapters.safetensors).")
    placed = []
    for i, kind in enumerate(what):
        sub = "" if i == 0 else kind
        folder = dest / sub if sub else dest
        folder.mkdir(parents=True, exist_ok=True)
        if cancel is not None:
            cancel.checkpoint()
        if kind == "adapter":
            from core.export.peft import export_peft

            events.log("info", "Writing the PEFT adapter")
            tmp = dest.parent / f"peft-{i}"
            export_peft(run, tmp, events=events, cancel=cancel)
            for p in tmp.iterdir():
                if not p.name.startswith("."):
                    shutil.move(str(p), folder / p.name)
            write_model_card(folder, adapter_dir, base, kind="peft", repo=repo)
        elif kind == "merged":
            from core.export.fuse import fuse_model

            events.log("info", "Merging the adapter into the base model")
            fused = fuse_model(base, adapter_dir, dest.parent / f"fused-{i}", events=events, cancel=cancel)
            for p in fused.iterdir():
                if p.name != "README.md":
                    shutil.move(str(p), folder / p.name)
            write_model_card(folder, adapter_dir, base, kind="merged", repo=repo)
        elif kind == "gguf":
            gguf = _newest_gguf(adapter_dir)
            if gguf is None:
                from core.export.pipeline import default_gguf_name, export

                events.log("info", "No exported GGUF found in the run; exporting one (q4_k_m)")
                out = dest.parent / f"gguf-{i}" / default_gguf_name(adapter_dir, "q4_k_m")
                export(run, gguf=out, quant="q4_k_m", modelfile=out.with_name("Modelfile"), events=events,
                       cancel=cancel)
                gguf = out
            (folder / gguf.name).symlink_to(gguf.resolve())
            write_model_card(folder, adapter_dir, base, kind="gguf", repo=repo)
        else:
            raise TuneloomError(f"Unknown --what {kind!r}.", "Choose adapter, merged or gguf.")
        placed.append(sub)
    return placed


def push(run: str | Path, repo: str, *, what: list[str] | tuple[str, ...] = ("adapter",), private: bool = False,
         token: str | None = None, endpoint: str | None = None, events: Events | None = None,
         cancel: CancelToken | None = None) -> dict:
    """Create ``repo`` (if needed) and upload what ``what`` names in one commit. Returns ``{"repo", "url",
    "commit", "files", "bytes", "what"}``."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.utils import HfHubHTTPError

    events = events or NULL_EVENTS
    what = list(dict.fromkeys(what or ["adapter"]))
    for w in what:
        if w not in WHAT:
            raise TuneloomError(f"Unknown --what {w!r}.", "Choose adapter, merged or gguf.")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise TuneloomError(f"{repo!r} is not a repository name OWNER/NAME.", "For example: --repo me/my-fine-tune")
    tok = _token(token)
    from core.hub_env import hub_endpoint

    api = HfApi(endpoint=endpoint or hub_endpoint(), token=tok)
    work = Path(tempfile.mkdtemp(prefix="tuneloom-push-"))
    try:
        staged = work / "repo"
        staged.mkdir()
        stage(run, what, staged, repo=repo, events=events, cancel=cancel)
        files = sorted(p for p in staged.rglob("*") if p.is_file())
        total = sum(p.stat().st_size for p in files)
        if cancel is not None:
            cancel.checkpoint()
        stages = StageClock(events)
        stages.start("upload")
        try:
            url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
            ops = []
            done = 0
            events.report_progress(Progress(0, total, "byte", f"uploading {len(files)} file(s) to {repo}"))
            for p in files:
                if cancel is not None:
                    cancel.checkpoint()
                op = CommitOperationAdd(path_in_repo=p.relative_to(staged).as_posix(), path_or_fileobj=str(p))
                api.preupload_lfs_files(repo, additions=[op], repo_type="model")
                ops.append(op)
                done += p.stat().st_size
                events.report_progress(Progress(done, total, "byte", f"uploaded {op.path_in_repo}", item=op.path_in_repo))
            if cancel is not None:
                cancel.checkpoint()
            info = api.create_commit(repo, operations=ops, repo_type="model",
                                     commit_message=f"Upload {', '.join(what)} from Tuneloom")
        except ValueError as exc:  # huggingface_hub: the Hub found the model card's metadata invalid
            raise TuneloomError(f"The Hub refused the model card (README.md) for {repo}: {exc}",
                                "This is a Tuneloom bug; please report it with the message.") from exc
        except HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status in (401, 403):
                raise NotLoggedIn(f"The Hub refused the token for {repo} ({status}): it cannot write there.",
                                  "Use a token with write access: " + NO_TOKEN_HINT + ".") from exc
            raise TuneloomError(f"The Hub refused the upload to {repo}: {exc}",
                                "Check the repository name and your connection, then push again.") from exc
        stages.done("upload")
        link = str(getattr(url, "url", url) or f"{api.endpoint}/{repo}")
        return {"repo": repo, "url": link, "commit": getattr(info, "oid", None), "what": what,
                "files": [p.relative_to(staged).as_posix() for p in files], "bytes": total, "private": private}
    finally:
        shutil.rmtree(work, ignore_errors=True)
