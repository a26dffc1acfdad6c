"""The Hugging Face settings as they are now: endpoint, cache folder, offline mode, token file.

huggingface_hub reads its environment once, at import; a desktop app lives long, and the user may
sign in or change a setting meanwhile, so these read it at call time. Used by core.hub (download)
and core.export.hub_push (upload); importable from core.hub too."""
from __future__ import annotations

import os
from pathlib import Path


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_endpoint() -> str:
    """HF_ENDPOINT as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    """The hub cache as set now: HF_HUB_CACHE, else $HF_HOME/hub, else huggingface_hub's default."""
    from huggingface_hub import constants

    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(os.path.expanduser(explicit)))
    home = os.environ.get("HF_HOME")
    if home:
        return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"
    return Path(constants.HF_HUB_CACHE)


def is_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, or as huggingface_hub saw it at import."""
    from huggingface_hub import constants

    if "HF_HUB_OFFLINE" in os.environ:
        return _env_true("HF_HUB_OFFLINE")
    return _env_true("TRANSFORMERS_OFFLINE") or constants.is_offline_mode()


def token_path() -> Path:
    """Where huggingface_hub keeps the token that ``hf auth login`` saves (and reads it from)."""
    from huggingface_hub import constants

    return Path(constants.HF_TOKEN_PATH)


def token_hint() -> str:
    return ("Give Tuneloom a Hugging Face access token (https://huggingface.co/settings/tokens, 'read' is enough): "
            "run `hf auth login` (or huggingface_hub.login() in Python) and it is stored in "
            f"{token_path()}; or set the HF_TOKEN environment variable.")
