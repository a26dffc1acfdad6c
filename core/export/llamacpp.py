"""An independent reader for our GGUF files: llama.cpp through llama-cpp-python (optional)."""
from __future__ import annotations

import os
from pathlib import Path

from core.events import TuneloomError


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken build is as good as absent
        return False
    return True


class LlamaCppModel:
    def __init__(self, gguf_path: str | Path, n_ctx: int = 512, logits_all: bool = True):
        # logits_all: llama-cpp-python 0.3 fills `scores` only then (otherwise they read as zeros)
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise TuneloomError("llama-cpp-python is not installed.",
                                "pip install llama-cpp-python (CMAKE_ARGS=-DGGML_NATIVE=OFF on Linux)") from exc
        self.llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx, logits_all=logits_all, verbose=False,
                         n_threads=max(1, min(4, os.cpu_count() or 1)), seed=0)

    def tokenize(self, text: str, add_bos: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def greedy(self, prompt_ids: list[int], eos_ids: list[int], max_tokens: int = 96) -> list[int]:
        import numpy as np

        llm = self.llm
        llm.reset()
        llm.eval(prompt_ids)
        out: list[int] = []
        for _ in range(max_tokens):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if tok in eos_ids:
                break
            out.append(tok)
            llm.eval([tok])
        return out

    def logits(self, ids: list[int]):
        """Next-token logits at every position (needs logits_all=True)."""
        import numpy as np

        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)])

    def close(self) -> None:
        close = getattr(self.llm, "close", None)
        if close:
            close()
