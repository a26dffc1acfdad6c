"""A run's report card: ``report.json`` and a readable ``report.md`` in the run folder.

Rebuilt from what the run folder holds whenever something new is known (training ends, an
evaluation, a forgetting check, an export or a quantization measurement), so it never goes stale.

``report.json`` (schema 1; a key whose thing was not done yet is null, or {} / []):

    {
      "schema": 1,
      "run": "<folder name>", "title": str, "state": "done" | "cancelled" | ..., "updated": ISO time,
      "base_model": "<model folder>",
      "data": {"files": [str], "examples": {"train": int, "validation": int, "test": int | null},
               "trained_tokens": int | null, "notes": [str]},
      "settings": {TrainConfig values: rank, alpha, lr, epochs, iters, batch, ..., early_stop, test_fraction},
      "curve": {"steps": int, "total_steps": int | null,
                "train_loss": {"first": x, "last": x, "min": x} | null,
                "validation": [[step, loss], ...],
                "best_step": int | null, "best_valid_loss": x | null, "final_valid_loss": x | null,
                "stopped_early": int | null,
                "memorising": {"best_step", "step", "best_valid_loss", "valid_loss"} | null},
      "evaluation": null | {"split": "test" | "validation" | "files", "examples": int, "adapter": str,
                            "base": {exact_match, json_valid, json_field_accuracy, loss, perplexity, examples},
                            "tuned": {... the same}, "time": ISO time},
      "forgetting": null | {"kl_per_token", "loglik_change", "changed_share", "verdict", "probes": [...],
                            "probe_count", "thresholds", ...} (core.drift),
      "quantization": null | {"quants": {quant: {"top1_agreement", "kl_per_token", "bytes"}}, "split",
                              "examples", "adapter_file", "time"} (core.export.quant_price),
      "exports": [{"gguf": path, "quant": str, "size": int, "ollama": name | null, "adapter_file": str | null,
                   "price": {"top1_agreement", "kl_per_token", "bytes"} | null (measured before the export)}]
    }
"""
from __future__ import annotations

import time
from pathlib import Path

from core import runs
from core.atomic import write_json, write_text

SCHEMA = 1
EVAL_FILE = runs.EVALUATION
DRIFT_FILE = runs.DRIFT
SETTINGS = ("rank", "alpha", "dropout", "targets", "num_layers", "lr", "warmup", "min_lr_ratio", "weight_decay",
            "epochs", "iters", "batch", "grad_accum", "max_seq_len", "seed", "mask_prompt", "last_turn_only", "dora",
            "pack", "valid_every", "valid_fraction", "test_fraction", "early_stop", "system_prompt", "thinking")


def build_report(run_dir: str | Path) -> dict:
    from core.export.quant_price import read_price

    run = Path(run_dir)
    info = runs.RunInfo.load(run, metrics=True)
    if info is None:
        raise FileNotFoundError(f"{run} is not a run folder (no config.json)")
    cfg, st = info.config, info.status
    _, train = info.series("train_loss")
    valid_steps, valid = info.series("valid_loss")
    best = info.best_step
    report = {
        "schema": SCHEMA, "run": info.name, "title": info.title, "state": info.state,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "base_model": info.base_model,
        "data": {"files": info.dataset,
                 "examples": {"train": st.get("train_examples"), "validation": st.get("valid_examples"),
                              "test": st.get("test_examples")},
                 "trained_tokens": st.get("trained_tokens"), "notes": list(st.get("data_notes") or [])},
        "settings": {k: cfg.get(k) for k in SETTINGS if k in cfg},
        "curve": {"steps": info.steps, "total_steps": info.total_steps,
                  "train_loss": {"first": train[0], "last": train[-1], "min": min(train)} if train else None,
                  "validation": [[s, v] for s, v in zip(valid_steps, valid)],
                  "best_step": best, "best_valid_loss": st.get("best_valid_loss", cfg.get("best_valid_loss")),
                  "final_valid_loss": valid[-1] if valid else None, "stopped_early": st.get("stopped_early"),
                  "memorising": st.get("memorising")},
        "evaluation": info.folder.evaluation,
        "forgetting": info.folder.forgetting,
        "quantization": read_price(run) or None,
        "exports": [{"gguf": str(e.path), "quant": e.record.get("quant"), "size": e.size,
                     "ollama": e.record.get("ollama"), "adapter_file": e.record.get("adapter_file"),
                     "price": e.record.get("price")}
                    for e in info.exports if e.kind == "gguf"],
    }
    return report


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _num(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def report_markdown(r: dict) -> str:
    d, c = r["data"], r["curve"]
    ex = d["examples"]
    lines = [f"# Report card: {r['title']}", "",
             f"Base model `{r['base_model']}` · run `{r['run']}` · {r['state']} · updated {r['updated']}", "",
             "## Data", "",
             f"- Files: {', '.join(f'`{f}`' for f in d['files']) or 'n/a'}",
             f"- Examples: {ex.get('train')} train, {ex.get('validation')} validation, "
             f"{'a test file' if ex.get('test') is None else ex.get('test')} test (never seen in training)",
             f"- Tokens trained on: {d['trained_tokens'] if d['trained_tokens'] is not None else 'n/a'}"]
    lines += [f"- Note: {n}" for n in d["notes"]]
    lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in r["settings"].items() if v is not None]
    tl = c["train_loss"] or {}
    lines += ["", "## Training curve", "",
              f"- Steps: {c['steps']} of {c['total_steps']}"
              + (f" (stopped early at step {c['stopped_early']})" if c["stopped_early"] else ""),
              f"- Training loss: first {_num(tl.get('first'))}, last {_num(tl.get('last'))}, lowest {_num(tl.get('min'))}",
              "- Validation loss: " + (", ".join(f"step {s}: {v:.4f}" for s, v in c["validation"]) or "none"),
              f"- Best step: {c['best_step'] if c['best_step'] is not None else 'n/a'} "
              f"(validation loss {_num(c['best_valid_loss'])}); its adapter is `adapters_best.safetensors`"]
    if c["memorising"]:
        m = c["memorising"]
        lines.append(f"- Memorising: from step {m['step']} the validation loss rose ({m['best_valid_loss']:.4f} "
                     f"-> {m['valid_loss']:.4f}) while the training loss kept falling")
    lines += ["", "## Base model vs fine-tune", ""]
    e = r["evaluation"]
    if e:
        lines += [f"On the {e.get('split')} split ({e.get('examples')} examples, {e.get('adapter') or 'best'} adapter):",
                  "", "| metric | base | fine-tuned |", "|---|---|---|"]
        for label, key, fmt in (("exact match", "exact_match", _pct), ("valid JSON", "json_valid", _pct),
                                ("JSON field accuracy", "json_field_accuracy", _pct), ("loss", "loss", _num),
                                ("perplexity", "perplexity", _num)):
            lines.append(f"| {label} | {fmt(e['base'].get(key))} | {fmt(e['tuned'].get(key))} |")
    else:
        lines.append("Not evaluated yet (`tuneloom eval RUN`, or Try > Evaluate).")
    lines += ["", "## Forgetting check", ""]
    f = r["forgetting"]
    if f:
        lines += [f"Verdict: **{f['verdict']}** · KL {f['kl_per_token']:.3f} nats per token · log-likelihood of the "
                  f"base answers {f['loglik_change']:+.3f} per token · {f['changed_share']:.0%} of "
                  f"{f.get('probe_count')} probes answered differently", ""]
        for p in f.get("probes", []):
            lines.append(f"- {p['prompt']!r}: base {p['base'][:80]!r} / fine-tuned {p['tuned'][:80]!r}")
    else:
        lines.append("Not checked yet (`tuneloom eval RUN --drift`).")
    lines += ["", "## Quantization", ""]
    q = r["quantization"]
    if q and q.get("quants"):
        lines += [f"Measured on {q.get('examples')} {q.get('split')} examples against the MLX model:", "",
                  "| type | size | same next token | KL per token |", "|---|---|---|---|"]
        for name, row in q["quants"].items():
            lines.append(f"| {name.upper()} | {row['bytes']:,} bytes | {row['top1_agreement']:.1%} | "
                         f"{row['kl_per_token']:.4f} |")
    else:
        lines.append("Not measured yet (`tuneloom export RUN --measure`).")
    if r["exports"]:
        lines += ["", "Exports:"] + [f"- `{x['gguf']}` ({(x['quant'] or '').upper()}, {x['size']:,} bytes"
                                     + (f", Ollama `{x['ollama']}`" if x["ollama"] else "") + ")"
                                     for x in r["exports"]]
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path) -> dict:
    """Build and write ``report.json`` and ``report.md``; returns the report."""
    r = build_report(run_dir)
    folder = runs.RunFolder(run_dir)
    write_json(folder.report_json_path, r)
    write_text(folder.report_md_path, report_markdown(r))
    return r


def record_evaluation(run_dir: str | Path, result, drift: dict | None = None) -> None:
    """Keep an evaluation (core.evaluate.EvalResult) and a forgetting check with the run; rewrite the report."""
    run = Path(run_dir)
    if not runs.RunFolder(run).is_run:
        return
    if result is not None and result.complete:
        out = result.to_json()
        write_json(run / EVAL_FILE, {"split": result.source, "examples": len(result.rows),
                                     "adapter": getattr(result, "adapter", None), "base": out["base"],
                                     "tuned": out["tuned"], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if drift is not None:
        write_json(run / DRIFT_FILE, drift)
    write_report(run)
