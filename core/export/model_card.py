"""A model card (``README.md`` with the Hugging Face Hub's YAML front matter) for what a run exports.

Front matter: ``base_model`` (the hub id when the base came from the hub cache), ``library_name``
(``peft`` for a PEFT adapter, ``transformers`` for a merged folder, ``mlx`` for an MLX folder,
``gguf`` files get ``gguf``), ``license`` (the base's: its README's front matter), ``tags`` and
``datasets`` when the run's data are hub datasets. The body comes from the run's report
(``report.json`` when the run has one) or else from its config, status and metrics: the data,
the settings, the loss curve, the evaluation and the forgetting check when known.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from core import runs

LIBRARY = {"peft": "peft", "merged": "transformers", "mlx": "mlx", "mlx-adapter": "mlx", "gguf": "gguf"}


def _front_matter(path: Path) -> dict:
    """The YAML front matter of a README.md (license, ...), {} when none or unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    m = re.match(r"---\s*\n(.*?)\n---\s*\n", text, re.S)
    if not m:
        return {}
    try:
        import yaml

        data = yaml.safe_load(m.group(1))
        return data if isinstance(data, dict) else {}
    except Exception:  # noqa: BLE001 - a card we cannot parse costs only its fields
        out = {}
        for line in m.group(1).splitlines():
            k, sep, v = line.partition(":")
            if sep and v.strip() and not line.startswith(" "):
                out[k.strip()] = v.strip()
        return out


def _yaml(front: dict) -> str:
    lines = []
    for k, v in front.items():
        if v is None or v == []:
            continue
        if isinstance(v, list):
            lines.append(f"{k}:")
            lines += [f"- {json.dumps(x)}" for x in v]
        else:
            lines.append(f"{k}: {json.dumps(v)}")
    return "---\n" + "\n".join(lines) + "\n---\n"


def _dataset_ids(data: list) -> list[str]:
    from core.export.peft import hub_id_of

    out = []
    for d in data or []:
        m = re.search(r"datasets--([^/\\]+?)--([^/\\]+)", str(d))
        if m:
            out.append(f"{m.group(1)}/{m.group(2)}")
        elif str(d).startswith("hf://datasets/"):
            out.append("/".join(str(d)[len("hf://datasets/"):].split("/")[:2]))
        elif hub_id_of(d) and not Path(str(d)).exists():
            out.append(str(d))
    return sorted(set(out))


def card_data(run_dir: Path, base: Path, kind: str) -> dict:
    from core.export.peft import hub_id_of

    run_dir, base = Path(run_dir), Path(base)
    run = runs.RunFolder(run_dir)
    cfg, acfg, status, report = run.config, run.adapter_config, run.status, run.report
    base_front = _front_matter(base / "README.md")
    base_id = hub_id_of(acfg.get("base_model") or cfg.get("model") or base)
    method = (acfg.get("fine_tune_type") or ("dora" if cfg.get("dora") else "lora"))
    quantized = bool((runs.read_json(base / "config.json") or {}).get("quantization"))
    tags = ["tuneloom", "mlx-lm", method] + (["qlora"] if quantized else []) + ["sft"]
    if kind == "peft":
        tags.append("peft")
    if kind == "gguf":
        tags.append("gguf")
    front = {"base_model": base_id, "library_name": LIBRARY.get(kind, "transformers"),
             "license": base_front.get("license"), "license_name": base_front.get("license_name"),
             "tags": tags, "datasets": _dataset_ids(cfg.get("data") or []),
             "pipeline_tag": "text-generation"}
    return {"front": front, "config": cfg, "adapter": acfg, "status": status, "report": report,
            "metrics": run.metrics, "base": base, "base_id": base_id, "run": run_dir,
            "method": method, "quantized": quantized, "kind": kind}


def _curve(metrics: list[dict]) -> list[str]:
    steps, train = runs.series(metrics, "train_loss")
    vsteps, valid = runs.series(metrics, "valid_loss")
    if not steps and not vsteps:
        return ["No loss values were recorded."]
    vmap = dict(zip(vsteps, valid))
    all_steps = sorted(set(steps) | set(vsteps))
    picks = sorted({all_steps[round(i * (len(all_steps) - 1) / 9)] for i in range(10)}) if len(all_steps) > 10 \
        else all_steps
    tmap = dict(zip(steps, train))
    lines = ["| step | training loss | validation loss |", "|---:|---:|---:|"]
    for s in picks:
        t, v = tmap.get(s), vmap.get(s)
        lines.append(f"| {s} | {'' if t is None else f'{t:.4f}'} | {'' if v is None else f'{v:.4f}'} |")
    return lines


def _eval_lines(report: dict) -> list[str]:
    ev = report.get("evaluation") or report.get("eval")
    out = []
    if isinstance(ev, dict) and ev:
        base, tuned = ev.get("base") or {}, ev.get("tuned") or {}
        keys = [k for k in tuned if isinstance(tuned.get(k), (int, float))] if isinstance(tuned, dict) else []
        if keys:
            out += ["| metric | base model | fine-tuned |", "|---|---:|---:|"]
            for k in keys:
                b = base.get(k) if isinstance(base, dict) else None
                out.append(f"| {k} | {'' if not isinstance(b, (int, float)) else f'{b:.4g}'} | {tuned[k]:.4g} |")
        else:
            out.append("```json\n" + json.dumps(ev, indent=2)[:3000] + "\n```")
    forget = report.get("forgetting") or report.get("forgetting_check")
    if forget:
        out += ["", "**Forgetting check** (general questions the base model answered, asked again):", "",
                "```json\n" + json.dumps(forget, indent=2)[:2000] + "\n```"]
    return out


USAGE = {
    "peft": """```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "{repo}")
tokenizer = AutoTokenizer.from_pretrained("{base}")
```""",
    "merged": """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{repo}")
tokenizer = AutoTokenizer.from_pretrained("{repo}")
```""",
    "mlx": """```python
from mlx_lm import load, generate

model, tokenizer = load("{repo}")
```""",
    "mlx-adapter": """```sh
mlx_lm.generate --model {base} --adapter-path {repo} --prompt "Hello"
```""",
    "gguf": """```sh
llama-cli -m {repo_file} -cnv     # or: ollama create NAME -f Modelfile
```""",
}


def card_text(run_dir: Path, base: Path, kind: str, repo: str | None = None) -> str:
    d = card_data(run_dir, base, kind)
    cfg, status, report, acfg = d["config"], d["status"], d["report"], d["adapter"]
    title = runs.RunFolder(run_dir).meta.get("title") or Path(run_dir).name
    lp = acfg.get("lora_parameters") or {}
    what = {"peft": "a LoRA adapter in PEFT's format", "merged": "the fine-tuned model, merged (transformers)",
            "mlx": "the fine-tuned model, merged, as an MLX folder", "mlx-adapter": "a LoRA adapter in mlx-lm's format",
            "gguf": "the fine-tuned model as GGUF (llama.cpp, Ollama, LM Studio)"}.get(kind, kind)
    base_name = d["base_id"] or Path(base).name
    lines = [_yaml(d["front"]), f"# {title}", "",
             f"{what[0].upper() + what[1:]}, fine-tuned from "
             f"{'[' + base_name + '](https://huggingface.co/' + base_name + ')' if d['base_id'] else base_name} "
             f"with Tuneloom ({d['method'].upper()}{' on a 4-bit base (QLoRA)' if d['quantized'] else ''}"
             ", mlx-lm).", ""]
    lines += ["## Use", "", USAGE.get(kind, "").format(base=base_name, repo=repo or "THIS_REPO",
                                                        repo_file=(repo or "model") + ".gguf"), ""]
    data = report.get("data") if isinstance(report.get("data"), dict) else {}
    lines += ["## Data", ""]
    files = cfg.get("data") or []
    lines += [f"- {Path(str(f)).name}" for f in files] or ["- (not recorded)"]
    for k in ("train_examples", "valid_examples", "test_examples", "dropped", "trained_tokens"):
        v = data.get(k, status.get(k))
        if v is not None:
            lines.append(f"- {k.replace('_', ' ')}: {v}")
    if cfg.get("system_prompt"):
        lines.append(f"- system prompt: {cfg['system_prompt']!r}")
    lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    settings = {"method": d["method"], "rank": lp.get("rank", cfg.get("rank")), "alpha": cfg.get("alpha"),
                "scale": lp.get("scale"), "targets": ", ".join(lp.get("keys") or []) or cfg.get("targets"),
                "layers": acfg.get("num_layers"), "learning rate": cfg.get("lr"), "epochs": cfg.get("epochs"),
                "iterations": cfg.get("iters"), "batch": cfg.get("batch"), "max length": cfg.get("max_seq_len"),
                "seed": cfg.get("seed"), "thinking": cfg.get("thinking")}
    lines += [f"| {k} | {v} |" for k, v in settings.items() if v not in (None, "")]
    lines += ["", "## Training curve", ""] + _curve(d["metrics"])
    ev = _eval_lines(report)
    if ev:
        lines += ["", "## Evaluation", ""] + ev
    lines += ["", "Made with Tuneloom; the numbers above come from the run's own records.", ""]
    return "\n".join(lines)


def write_model_card(folder: str | Path, run_dir: str | Path, base: str | Path, kind: str,
                     repo: str | None = None) -> Path:
    from core.atomic import write_text

    path = Path(folder) / "README.md"
    write_text(path, card_text(Path(run_dir), Path(base), kind, repo))
    return path
