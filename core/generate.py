"""Answer prompts with a model (optionally with adapters): greedy by default, for Try and evaluation."""
from __future__ import annotations

from pathlib import Path

import core  # noqa: F401  (OpenBLAS before MLX)
from core.events import CancelToken
from core.tokens import ChatEncoder


class ChatModel:
    def __init__(self, model_dir: str | Path, adapter_dir: str | Path | None = None, encoder: ChatEncoder | None = None):
        from mlx_lm.tuner.utils import load_adapters

        from core.train import load_base

        self.model_dir = Path(model_dir)
        self.model, self.config = load_base(model_dir)
        if adapter_dir is not None:
            load_adapters(self.model, str(adapter_dir))
        self.model.eval()
        self.encoder = encoder or ChatEncoder(model_dir)

    def generate_ids(self, prompt_ids: list[int], max_tokens: int = 96, cancel: CancelToken | None = None) -> list[int]:
        import mlx.core as mx
        from mlx_lm.generate import generate_step

        eos = set(self.encoder.eos_ids)
        out: list[int] = []
        for tok, _ in generate_step(mx.array(prompt_ids), self.model, max_tokens=max_tokens,
                                    sampler=lambda logits: mx.argmax(logits, axis=-1)):
            t = int(tok)
            if t in eos:
                break
            out.append(t)
            if cancel is not None and cancel.cancelled:
                break
        return out

    def answer(self, messages: list[dict], max_tokens: int = 96, cancel: CancelToken | None = None) -> str:
        ids = self.generate_ids(self.encoder.prompt_ids(messages), max_tokens, cancel)
        return self.encoder.decode(ids)
