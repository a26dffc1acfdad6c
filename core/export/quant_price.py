"""The price of each quantization: what a GGUF type changes in the model's next-token choices.

For every type the Export page offers, the run is fused once (its best adapter by default) and
written as a GGUF of that type; llama.cpp's own loader (llama-cpp-python) reads it back, and on
the run's test examples (its validation examples when it has no test split), teacher-forced,
each file's next-token distributions at the answer tokens are compared with those of the MLX
model the file came from (the fused folder, float32):

- ``top1_agreement``: the share of answer positions where both pick the same likeliest token;
- ``kl_per_token``: the mean KL divergence KL(MLX || GGUF), nats per token;
- ``bytes``: the GGUF's size.

The table is recorded in the run folder (``exports/quant_price.json``), where the Export page,
the History and the report card read it.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from core import runs
from core.events import NULL_EVENTS, CancelToken, Events, Progress, TuneloomError
from core.export.quants import OFFERED, checked  # noqa: F401  (OFFERED: the Export page's types, largest first)
from core.units import fmt_bytes

MEASURE_EXAMPLES = 32  # examples measured (the first of the split)
PRICE_FILE = "quant_price.json"


def _examples(run_dir: Path, limit: int, events: Events, cancel: CancelToken):
    from core.evaluate import run_splits

    splits = run_splits(run_dir, events=events, cancel=cancel)
    split = "test" if splits["test"] else "validation"
    recs = splits[split][:limit]
    if not recs:
        raise TuneloomError("The run has no test or validation examples to measure on.",
                            "Train with a validation split (the default).")
    return split, recs


def read_price(run_dir: str | Path) -> dict:
    """The run's last measurement ({} when none): {"quants": {quant: {...}}, "split", "examples", ...}."""
    return runs.RunFolder(run_dir).export_record(PRICE_FILE)


def measure_quants(source, *, adapter=None, final: bool = False, quants=OFFERED, limit: int = MEASURE_EXAMPLES,
                   events: Events | None = None, cancel: CancelToken | None = None) -> dict:
    """{quant: {"top1_agreement", "kl_per_token", "bytes"}} for a run (see the module docstring)."""
    import mlx.core as mx
    import numpy as np

    from core.export import llamacpp
    from core.evaluate import _train_config, run_encoder
    from core.export.pipeline import resolve_source
    from core.export.fuse import fuse_model
    from core.generate import ChatModel
    from core.export.gguf import export_gguf
    from core.train import encode_records

    events = events or NULL_EVENTS
    cancel = cancel or CancelToken()
    base, run = resolve_source(source, adapter)
    if run is None:
        raise TuneloomError("Measuring the quantization needs a run (its adapter and its held-out examples).",
                            "Give a run folder: tuneloom export RUN --measure.")
    if not llamacpp.available():
        raise TuneloomError("llama-cpp-python is not installed, so the GGUF files cannot be read back.",
                            "pip install llama-cpp-python")
    for q in quants:
        checked(q)
    t0 = time.perf_counter()
    cfg = _train_config(run)
    split, recs = _examples(Path(run), limit, events, cancel)
    encoder = run_encoder(run, base)
    seqs = [s for s in encode_records(encoder, recs, cfg) if sum(s.mask[1:])]
    adapter_file = runs.adapter_file(run, "final" if final else "best")
    work = Path(tempfile.mkdtemp(prefix=".tuneloom-measure-", dir=Path(run)))
    table: dict[str, dict] = {}
    try:
        fused = fuse_model(base, run, work / "fused", events=events, cancel=cancel, adapter_file=adapter_file)
        ref_model = ChatModel(fused, encoder=encoder).model
        refs = []  # (positions, log-probs at them) per example, from MLX
        for s in seqs:
            cancel.raise_if_cancelled()
            pos = np.array([t - 1 for t in range(1, len(s.ids)) if s.mask[t]])
            logits = ref_model(mx.array(s.ids)[None])[0].astype(mx.float32)
            lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            refs.append((pos, np.array(lp, dtype=np.float64)[pos]))
        n_ctx = max(len(s.ids) for s in seqs) + 8
        for qi, q in enumerate(quants):
            cancel.raise_if_cancelled()
            path = work / f"{q}.gguf"
            events.report_progress(Progress(qi, len(quants), "quant", f"writing {q.upper()}", item=q.upper()))
            export_gguf(fused, path, quant=q, events=NULL_EVENTS, cancel=cancel)
            llm = llamacpp.LlamaCppModel(path, n_ctx=n_ctx)
            same = total = 0
            kl = 0.0
            try:
                for s, (pos, ref) in zip(seqs, refs):
                    cancel.raise_if_cancelled()
                    got = llm.logits(s.ids).astype(np.float64)[pos]
                    got = got - got.max(axis=-1, keepdims=True)
                    got = got - np.log(np.exp(got).sum(axis=-1, keepdims=True))
                    same += int(np.sum(ref.argmax(-1) == got.argmax(-1)))
                    kl += float(np.sum(np.exp(ref) * (ref - got)))
                    total += len(pos)
            finally:
                llm.close()
            table[q] = {"top1_agreement": same / max(total, 1), "kl_per_token": max(kl, 0.0) / max(total, 1),
                        "bytes": path.stat().st_size}
            path.unlink()
            events.report_progress(Progress(qi + 1, len(quants), "quant", f"measured {q.upper()}", item=q.upper()))
            events.log("info", f"{q.upper()}: {table[q]['top1_agreement']:.1%} same next token, KL "
                               f"{table[q]['kl_per_token']:.4f} nats per token, {table[q]['bytes']:,} bytes")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {"quants": table, "split": split, "examples": len(seqs), "tokens": sum(len(p) for p, _ in refs),
              "adapter_file": adapter_file.name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "seconds": round(time.perf_counter() - t0, 1)}
    try:
        from core.atomic import write_json

        write_json(runs.RunFolder(run).exports_dir / PRICE_FILE, record)
        from core.report import write_report

        write_report(run)
    except OSError as exc:
        events.log("warning", f"could not record the measurement in {run}: {exc}")
    return table


def price_text(quant: str, row: dict) -> str:
    """"Q4_K_M · 740.3 KB · 97.9% same next token" (the Export page, the CLI)."""
    n = row.get("bytes") or 0
    return f"{quant.upper()} · {fmt_bytes(n)} · {row['top1_agreement']:.1%} same next token"


def price_lines(table: dict) -> list[str]:
    lines = ["The price of each quantization (same next token as the MLX model; KL in nats per token):"]
    for q, row in table.items():
        lines.append(f"  {price_text(q, row)} · KL {row['kl_per_token']:.4f}")
    return lines
