"""`tuneloom export` targets beyond the merged GGUF (adapter GGUF, LM Studio, MLX, PEFT) and `tuneloom push`.

Kept apart from app/cli.py so that file only gains the flags and one dispatch line. Each command prints
the paths it wrote, one ``what: path`` line each, or with ``--json`` one JSON object.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def add_export_flags(e) -> None:
    e.add_argument("--adapter-only", action="store_true",
                   help="write the LoRA as a GGUF adapter at --gguf (a few MB) and the base model once, in "
                        "Tuneloom's data folder, shared by every adapter of that base; the Modelfile says FROM the "
                        "base and ADAPTER the adapter")
    e.add_argument("--lmstudio", action="store_true",
                   help="place the merged GGUF in LM Studio's models folder (~/.lmstudio/models/tuneloom/RUN/), "
                        "through `lms import` when it is installed")
    e.add_argument("--mlx", metavar="DIR", help="write DIR/merged (the merged model as an MLX folder that mlx_lm.load "
                   "and LM Studio's MLX engine open) and DIR/adapter (mlx-lm's adapter folder)")
    e.add_argument("--mlx-bits", type=int, choices=[16, 8, 4], default=16,
                   help="the MLX folder's weights: 16 (float16, default), 8 or 4 bits (mlx quantization)")
    e.add_argument("--peft", metavar="DIR", help="write the adapter as a PEFT folder (adapter_config.json, "
                   "adapter_model.safetensors, README.md model card) that PeftModel.from_pretrained loads")
    e.add_argument("--json", action="store_true", help="print the paths as one JSON object (with --measure: "
                   "{quant: {top1_agreement, kl_per_token, bytes}})")


def wants_targets(a) -> bool:
    return bool(getattr(a, "adapter_only", False) or getattr(a, "lmstudio", False) or getattr(a, "mlx", None)
                or getattr(a, "peft", None))


def _print(out: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(out, ensure_ascii=False))
        return
    for k, v in out.items():
        if isinstance(v, str) and v:
            print(f"{k}: {v}")


def cmd_export_targets(a) -> int:
    from app.console import ConsoleEvents
    from core.events import TuneloomError
    from core.export.pipeline import resolve_source, write_export_record

    ev = ConsoleEvents()
    cancel = _cancel()
    out: dict = {}
    try:
        base, run = resolve_source(a.source, a.adapter)
        if (a.adapter_only or a.mlx or a.peft) and (run is None or a.adapter):
            print("error: --adapter-only, --mlx and --peft take a run folder as SOURCE", file=sys.stderr)
            return 2
        if a.adapter_only and a.lmstudio:
            print("error: LM Studio opens merged GGUF files; drop --adapter-only for --lmstudio", file=sys.stderr)
            return 2
        system = a.system
        if system is None and run is not None:
            from core.generate import trained_system_prompt

            system = trained_system_prompt(run)
        if a.adapter_only:
            if not a.gguf:
                print("error: --adapter-only needs --gguf OUT.gguf (the adapter's path)", file=sys.stderr)
                return 2
            from core.export.adapter import export_adapter

            res = export_adapter(a.source, gguf=a.gguf, quant=a.quant, ollama=a.ollama, system=system or None,
                                 force=a.force, modelfile=a.modelfile, events=ev, cancel=cancel,
                                 final=getattr(a, "final", False))
            out.update(adapter_gguf=res["adapter_gguf"], base_gguf=res["base_gguf"], modelfile=res["modelfile"],
                       base_reused=res["base_reused"], quant=res["quant"])
            if res.get("ollama"):
                out["ollama"] = res["ollama"].get("model")
            else:
                out["ollama_command"] = res.get("ollama_command")
            try:
                write_export_record(run, res, kind="adapter", base_gguf=res["base_gguf"])
            except OSError as exc:
                print(f"warning: could not record the export in {run / 'exports'}: {exc}", file=sys.stderr)
        elif a.gguf or a.lmstudio:
            from core.export.pipeline import default_gguf_name, export

            gguf = a.gguf
            if gguf is None:  # --lmstudio alone: the GGUF goes straight into LM Studio's folder
                from core.export.lmstudio import target_path

                name = Path(run or base).name
                gguf = target_path(default_gguf_name(run or base, a.quant), name)
                if gguf.exists():
                    raise TuneloomError(f"LM Studio already has {gguf}; Tuneloom does not replace it.",
                                        "Remove it in LM Studio (My Models) or export under another name.")
            res = export(a.source, adapter=a.adapter, gguf=gguf, quant=a.quant, ollama=a.ollama,
                         system=system or None, force=a.force, modelfile=a.modelfile, events=ev, cancel=cancel,
                         final=getattr(a, "final", False))
            out.update(gguf=res["gguf"], modelfile=res["modelfile"], quant=res["quant"])
            if res.get("ollama"):
                out["ollama"] = res["ollama"].get("model")
            if run is not None:
                try:
                    write_export_record(run, res)
                except OSError as exc:
                    print(f"warning: could not record the export in {run / 'exports'}: {exc}", file=sys.stderr)
            if a.lmstudio:
                if a.gguf is None:
                    out["lmstudio"] = res["gguf"]
                else:
                    from core.export.lmstudio import place_gguf

                    placed = place_gguf(res["gguf"], Path(run or base).name, events=ev, force=a.force)
                    out["lmstudio"] = placed["path"]
                    out["lmstudio_method"] = placed["method"]
        if a.mlx:
            from core.export.mlx import export_mlx

            res = export_mlx(a.source, a.mlx, bits=a.mlx_bits, events=ev, cancel=cancel,
                             final=getattr(a, "final", False), force=a.force)
            out.update(mlx_merged=res["merged"], mlx_adapter=res["adapter"], mlx_bits=res["bits"])
        if a.peft:
            from core.export.peft import export_peft

            res = export_peft(a.source, a.peft, events=ev, cancel=cancel, final=getattr(a, "final", False),
                              force=a.force)
            out["peft"] = res["path"]
        if not out:
            print("error: nothing to export: give --gguf, --adapter-only --gguf, --lmstudio, --mlx or --peft",
                  file=sys.stderr)
            return 2
    except TuneloomError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        return 1
    _print(out, a.json)
    return 0


def _cancel():
    from app.cli import _cancel_on_sigint

    return _cancel_on_sigint()


def add_push_parser(sub) -> None:
    p = sub.add_parser("push", help="share a run on the Hugging Face Hub (adapter, merged model, GGUF)")
    p.add_argument("run_dir", metavar="RUN", help="a run folder")
    p.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the Hub repository (created if needed)")
    p.add_argument("--what", action="append", choices=["adapter", "merged", "gguf"],
                   help="what to upload (repeatable; default adapter): the PEFT adapter, the merged transformers "
                        "folder, the newest exported GGUF. The first goes at the repository's root, others in "
                        "subfolders named after them")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_push)


def cmd_push(a) -> int:
    from app.console import ConsoleEvents
    from core.events import TuneloomError
    from core.export.hub_push import push

    try:
        res = push(a.run_dir, a.repo, what=a.what or ["adapter"], private=a.private, events=ConsoleEvents(),
                   cancel=_cancel())
    except TuneloomError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(res, ensure_ascii=False))
    else:
        print(f"repo: {res['url']}")
        for f in res["files"]:
            print(f"file: {f}")
    return 0
