"""`tuneloom`: the headless front end. With no subcommand it opens the GUI
(or, with no display, runs the demo)."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    if os.environ.get("QT_QPA_PLATFORM") in ("offscreen", "minimal"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _cancel_on_sigint():
    from core.events import CancelToken

    token = CancelToken()

    def handler(signum, frame):
        if token.cancelled:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        print("\nStopping after the current step (Ctrl-C again to abort)...", file=sys.stderr)
        token.cancel()

    signal.signal(signal.SIGINT, handler)
    return token


def cmd_demo(a) -> int:
    # Tuneloom never uses PyTorch: transformers' "PyTorch was not found" advice is noise here
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from app.console import ConsoleEvents, demo_summary_lines
    from core.demo import run_demo
    from core.events import Cancelled, TuneloomError

    out = Path(a.out or "demo-out")
    ev = ConsoleEvents()
    try:
        summary = run_demo(out, events=ev, cancel=_cancel_on_sigint())
    except Cancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 130
    except TuneloomError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        return 1
    finally:
        ev.close()  # a live bar must not be left on the screen
    print("\n".join(demo_summary_lines(summary)))
    return 0 if summary["ok"] else 1


def _parse_map(items: list[str] | None) -> dict | None:
    if not items:
        return None
    out = {}
    for item in items:
        ours, sep, theirs = item.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise SystemExit(f"error: --map expects OURS=THEIRS (e.g. prompt=Frage), got {item!r}")
        out[ours.strip().lower()] = theirs.strip()
    return out


def _parse_fill(items: list[str] | None) -> dict | None:
    """--fill NAME=VALUE (repeatable): the placeholders {{NAME}} / {NAME} to fill."""
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"error: --fill expects NAME=VALUE (e.g. --fill name=Tuneloom), got {item!r}")
        out[name.strip()] = value
    return out


def _data_options(a) -> dict:
    """load_dataset's keyword arguments from the shared data flags (--map, templates, --system, --use, --fill)."""
    return {"mapping": _parse_map(a.map), "user_template": a.user_template,
            "assistant_template": a.assistant_template, "system": a.system, "use": a.use, "fill": _parse_fill(a.fill)}


def add_option_flags(p, helptext) -> None:
    """`tuneloom train`'s flags for the training options, generated from their table (core.options: kind,
    choices, how the flag is given); --iters and --epochs exclude each other."""
    from core.options import OPTIONS

    types_ = {"int": int, "float": float, "str": str}
    length = p.add_mutually_exclusive_group()
    for name, o in OPTIONS.items():
        if not o.flag:
            continue
        flag, where = "--" + name.replace("_", "-"), (length if name in ("iters", "epochs") else p)
        if o.flag == "switch":
            where.add_argument(flag, action="store_true", help=helptext(name))
        elif o.flag == "toggle":
            where.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=helptext(name))
        else:
            where.add_argument(flag, type=types_[o.kind], choices=list(o.choices) or None, metavar=o.metavar,
                               help=helptext(name))


def option_flag_values(a) -> dict:
    """The training options given as flags (None: not given; a switch left off is not given either)."""
    from core.options import OPTIONS

    return {name: (True if getattr(a, name) else None) if o.flag == "switch" else getattr(a, name)
            for name, o in OPTIONS.items() if o.flag}


def _add_template_options(p) -> None:
    """--user-template, --assistant-template, --system: help from the TrainConfig fields they set."""
    from dataclasses import fields

    from core.train import TrainConfig

    help_ = {f.name: f.metadata.get("help", "") for f in fields(TrainConfig)}
    p.add_argument("--user-template", metavar="TEXT", help=help_["user_template"])
    p.add_argument("--assistant-template", metavar="TEXT", help=help_["assistant_template"])
    p.add_argument("--system", metavar="TEXT", help=help_["system_prompt"])


_CHUNK_HELP = ("split text documents longer than the maximum length into windows of that length, so that nothing "
               "is cut away")


def _add_data_options(p) -> None:
    p.add_argument("--map", action="append", metavar="OURS=THEIRS",
                   help="use column THEIRS for field OURS, e.g. --map prompt=Frage (repeatable)")
    _add_template_options(p)
    _add_answer_options(p)


def _add_answer_options(p) -> None:
    """--use chosen, --fill NAME=VALUE (issue 26): shared by data check / export and train."""
    p.add_argument("--use", choices=["chosen"],
                   help="preference data (chosen / rejected answers): train on the chosen answers")
    p.add_argument("--fill", action="append", metavar="NAME=VALUE",
                   help="fill the placeholder {{NAME}} (or {NAME}) with VALUE, e.g. --fill name=Tuneloom (repeatable)")


def _load_for_cli(a):
    """(dataset, None) or (None, exit code) after printing the reason."""
    from core.data import DatasetError, load_dataset

    try:
        return load_dataset(a.files, **_data_options(a)), None
    except DatasetError as exc:
        if getattr(a, "json", False):
            print(json.dumps({"error": str(exc), "hint": exc.hint, "file": exc.file}, ensure_ascii=False))
        else:
            print(f"error: {exc.user_message()}", file=sys.stderr)
        return None, 2


def _template_source(model_dir: str) -> str:
    """Where a model folder keeps its chat template, for people (core.model_folder), or why it cannot be read."""
    from core.model_folder import ModelFolderError, read_tokenizer_info

    try:
        return read_tokenizer_info(model_dir).describe_source()
    except ModelFolderError as exc:
        return f"unreadable ({exc})"


def _share(x: float) -> str:
    """A share as a percentage that never rounds a small one to 0% or a cut one to 100%."""
    if 0 < x < 0.01:
        return f"{x:.2%}" if x >= 0.0001 else "<0.01%"
    if 0.99 < x < 1:
        return f"{x:.1%}" if x < 0.999 else ">99.9%"
    return f"{x:.0%}"


def cmd_data_check(a) -> int:
    from core.data import issue_dicts, reasoning_summary
    from core.events import TuneloomError

    ds, rc = _load_for_cli(a)
    if ds is None:
        return rc
    tokens, problems, thinks = None, list(ds.issues), None
    if a.chunk and not a.model:
        print("error: --chunk needs --model: the windows are counted in the model's tokens", file=sys.stderr)
        return 2
    if a.model:
        from core.tokens import ChatEncoder, chunk_records, token_stats

        try:
            probe = ChatEncoder(a.model)
            thinks = probe.supports_thinking
            enc = ChatEncoder(a.model, thinking=bool(ds.reasoning) and thinks) if ds.reasoning and thinks else probe
            chunked = None
            if a.chunk:
                ds.records, docs, windows = chunk_records(enc, ds.records, a.max_seq_len)
                chunked = {"documents": docs, "windows": windows}
            st = token_stats(enc, ds.records, a.max_seq_len)
        except TuneloomError as exc:
            print(f"error: {exc.user_message()}", file=sys.stderr)
            return 2
        tokens = {k: st[k] for k in ("min", "median", "p95", "max", "truncated", "trained_share", "trained", "total",
                                     "cut")}
        tokens["thinking"] = enc.thinking
        tokens["reasoning_dropped"] = st["reasoning_dropped"]
        tokens["chunked"] = chunked
        problems += st["problems"]
    reasoning = reasoning_summary(ds, thinks)
    template_source = _template_source(a.model) if a.model else None
    from core.data import preference_summary

    pref = preference_summary(ds)
    if a.json:
        print(json.dumps({"format": ds.format, "formats": ds.formats, "records": ds.total, "valid": ds.valid,
                          "invalid": ds.invalid, "duplicates": ds.duplicates(), "tool_calls": ds.tool_calls,
                          "tools": ds.tools, "problems": issue_dicts(problems),
                          "notes": [n.to_json() for n in ds.notes], "reasoning": ds.reasoning,
                          "reasoning_summary": reasoning, "tokens": tokens,
                          "chat_template_source": template_source, "preference": pref}, ensure_ascii=False))
    else:
        print(f"format: {ds.format}")
        for f, fmt in ds.formats.items():
            print(f"  {f}: {fmt}")
        print(f"records: {ds.total}  valid: {ds.valid}  invalid: {ds.invalid}  duplicates: {ds.duplicates()}")
        if ds.tool_calls or ds.tools:
            print(f"tool calling: {ds.tool_calls} example(s) with calls, {ds.tools} with tool definitions")
        if pref and pref["pairs"]:
            print(f"preference pairs: {pref['pairs']} ({'; '.join(sorted(set(pref['shapes'].values())))})"
                  + ("; training on the chosen answers" if pref["use"] == "chosen" else ""))
        if tokens:
            print(f"tokens per example: min {tokens['min']}, median {tokens['median']}, p95 {tokens['p95']}, "
                  f"max {tokens['max']}; {tokens['truncated']} longer than {a.max_seq_len} (truncated"
                  + (f": {tokens['cut']} tokens cut away" if tokens["cut"] else "") + "); "
                  f"{_share(tokens['trained_share'])} of tokens trained on ({tokens['trained']} tokens)")
            if tokens["chunked"] is not None:
                print(f"chunked: {tokens['chunked']['documents']} documents longer than {a.max_seq_len} tokens split "
                      f"into {tokens['chunked']['windows']} windows of at most {a.max_seq_len} tokens (--chunk)")
        print(f"reasoning: {reasoning}")
        if a.model:
            print(f"chat template: {template_source}")
        for n in ds.notes:
            print(f"note: {n}")
        for i in problems:
            print(f"problem: {i}")
    return 1 if problems else 0


def cmd_data_export(a) -> int:
    from core.data import export_jsonl
    from core.events import TuneloomError

    ds, rc = _load_for_cli(a)
    if ds is None:
        return rc
    chunked = None
    if a.chunk:
        if not a.model:
            print("error: --chunk needs --model: the windows are counted in the model's tokens", file=sys.stderr)
            return 2
        from core.tokens import ChatEncoder, chunk_records

        try:
            ds.records, docs, windows = chunk_records(ChatEncoder(a.model), ds.records, a.max_seq_len)
        except TuneloomError as exc:
            print(f"error: {exc.user_message()}", file=sys.stderr)
            return 2
        chunked = f"chunked: {docs} documents longer than {a.max_seq_len} tokens split into {windows} windows (--chunk)"
    pairs_only = ds.unused_pairs and not ds.records  # what preference tuning reads: the pairs, as TRL writes them
    try:
        n = export_jsonl(ds.preference if pairs_only else ds.records, a.out)
    except (OSError, TuneloomError) as exc:
        print(f"error: cannot write {a.out}: {exc}", file=sys.stderr)
        return 2
    if pairs_only:
        print(f"wrote {n} of {ds.total} examples to {a.out} as preference pairs (TRL's conversational prompt / "
              f"chosen / rejected; format read: {ds.format}); --use chosen writes the chosen conversations instead")
    else:
        print(f"wrote {n} of {ds.total} examples to {a.out} (OpenAI chat format; format read: {ds.format})")
    if chunked:
        print(chunked)
    if ds.unused_pairs and not pairs_only:
        print(f"{ds.unused_pairs} preference pair(s) not written: supervised training cannot use them as they are; "
              "--use chosen writes their chosen conversations")
    for note in ds.notes:
        print(f"note: {note}")
    for i in ds.issues:
        print(f"problem: {i}")
    if ds.reasoning:
        print(f"{ds.reasoning} example(s) carry reasoning: written as reasoning_content on their answers")
    if ds.issues:
        print(f"{ds.invalid} invalid example(s) not written; fix the problems above and export again.",
              file=sys.stderr)
    return 1 if ds.issues else 0


def cmd_train(a) -> int:
    from dataclasses import fields

    from app.console import ConsoleEvents
    from core.events import Cancelled, TuneloomError
    from core.train import DEFAULT_PRESET, TrainConfig, apply_preset, train

    kwargs = {**option_flag_values(a), "mapping": _parse_map(a.map), "user_template": a.user_template,
              "assistant_template": a.assistant_template, "system_prompt": a.system, "use": a.use,
              "fill": _parse_fill(a.fill), "chunk": True if a.chunk else None}
    if getattr(a, "hosts", None):
        return _train_group(a)
    # a new run starts from the chosen preset, else the default one (the Train page's too); a resumed run
    # keeps its own options
    kwargs = apply_preset(kwargs, a.preset or (None if a.resume else DEFAULT_PRESET))
    names = {f.name for f in fields(TrainConfig)}
    kwargs = {k: v for k, v in kwargs.items() if v is not None and k in names}
    from core.distributed import current_group

    main_rank = current_group().is_main  # in a group run (--hosts) only rank 0 reports
    ev = ConsoleEvents(stream=sys.stdout, metrics=True) if main_rank else None
    if a.resume:
        clash = _resume_conflicts(a, kwargs)
        if clash:
            print(f"error: --resume continues {a.resume} with the options it was started with; "
                  f"{'; '.join(clash)}.\nLeave these options out to continue it, or start a new run "
                  f"(--out NEW_FOLDER) with them.", file=sys.stderr)
            return 2
    from core.runs import RunFinished

    try:
        if a.resume:
            res = train(TrainConfig(model=""), resume=a.resume, events=ev, cancel=_cancel_on_sigint())
        else:
            if not a.model or not a.data:
                print("error: --model and --data are required (or --resume RUN_DIR)", file=sys.stderr)
                return 2
            cfg = TrainConfig(model=a.model, data=a.data, out=a.out, **kwargs)
            cfg = _fit_to_data(cfg, main_rank)
            res = train(cfg, events=ev, cancel=_cancel_on_sigint())
    except Cancelled as exc:
        if main_rank:
            print(json.dumps({**(exc.result or {}), "state": "cancelled"}))
        return 130
    except RunFinished as exc:  # nothing to train: not a failure
        print(exc.user_message(), file=sys.stderr)
        if main_rank:
            print(json.dumps({"state": "done", "run_dir": str(a.resume), "already_finished": True}))
        return 0
    except TuneloomError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        if main_rank:
            print(json.dumps({"state": getattr(exc, "state", "failed"), "error": str(exc)}))
        return getattr(exc, "exit_code", 1)
    if main_rank:
        print(json.dumps(res))
    return 0


def _fit_to_data(cfg, say: bool):
    """The run's options fitted to its data as the Train page fits them (core.train.fit_to_data: enough
    steps to learn from, a warm-up of at most a tenth of the run); each change said on stderr. Data that
    cannot be read is left to train(), which says what is wrong with it."""
    from core.events import TuneloomError
    from core.train import fit_config

    try:
        cfg, notes = fit_config(cfg)
    except (TuneloomError, OSError, ValueError):
        return cfg
    for note in notes if say else ():
        print(f"note: {note}", file=sys.stderr)
    return cfg


def _resume_conflicts(a, kwargs: dict) -> list[str]:
    """The options given with --resume that differ from the run's own (a resume never changes them silently)."""
    from core import runs

    saved = runs.RunFolder(a.resume).config
    if not saved:
        return []  # train() says what is wrong with the folder
    out = []
    if a.preset:
        out.append(f"--preset {a.preset} (a preset starts a new run)")
    given = {"model": a.model, **{k: v for k, v in kwargs.items() if v is not None}}
    if a.data:
        given["data"] = list(a.data)
    for k, v in given.items():
        if v is None or k not in saved or k == "name":
            continue
        have = saved[k]
        same = (str(Path(v)) == str(Path(have))) if k == "model" and have else (
            [str(x) for x in v] == [str(x) for x in have] if k == "data" and isinstance(have, list) else
            (isinstance(have, (int, float)) and not isinstance(have, bool) and not isinstance(v, bool)
             and float(v) == float(have)) or v == have)
        if not same:
            flag = {"system_prompt": "system"}.get(k, k).replace("_", "-")
            out.append(f"--{flag} {v} differs from the run's {have}")
    return out


def _train_group(a) -> int:
    """`tuneloom train --hosts HOSTFILE ...`: check every host, then run one rank per host through
    mlx.launch, each running this same `train` command on the same run folder."""
    from core import distributed as dist
    from core import runs
    from core.events import TuneloomError

    argv = list(getattr(a, "argv", None) or sys.argv[1:])
    try:
        hosts = dist.read_hostfile(a.hosts)
        if a.resume:
            run_dir = Path(a.resume)
            saved = runs.RunFolder(run_dir).config
            if not saved:
                raise TuneloomError(f"{run_dir} is not a run folder (no config.json).", "Pick a folder under runs/.")
            paths = [saved["model"], *saved.get("data", [])]
        else:
            if not a.model or not a.data:
                print("error: --model and --data are required (or --resume RUN_DIR)", file=sys.stderr)
                return 2
            run_dir = Path(a.out) if a.out else runs.new_run_dir(a.name or "run")
            paths = [a.model, *a.data]
        checks = dist.check_hosts(hosts, paths)
        for c in checks:
            print(c.line(), file=sys.stderr)
        bad = [c for c in checks if not c.ok]
        if bad and a.copy_missing and all(c.missing and c.versions for c in bad):
            dist.copy_missing(bad)
            bad = [c for c in dist.check_hosts(hosts, paths) if not c.ok]
        if bad:
            raise dist.GroupError(f"{len(bad)} of {len(hosts)} hosts are not ready: " + bad[0].line(), bad[0].hint)
    except TuneloomError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        return 1
    rank_args, skip = [], False
    for x in argv[1:] if argv and argv[0] == "train" else argv:
        if skip:
            skip = False
            continue
        if x in ("--hosts", "--backend"):
            skip = True
            continue
        if x.startswith(("--hosts=", "--backend=")) or x == "--copy-missing":
            continue
        rank_args.append(x)
    if not a.resume and not a.out:
        rank_args += ["--out", str(run_dir)]
    print(f"training on {len(hosts)} Macs: " + ", ".join(h.ssh for h in hosts), file=sys.stderr)
    res = dist.launch(hosts, rank_args, run_dir=run_dir, backend=a.backend, cancel=_cancel_on_sigint(),
                      on_line=print)
    if res.returncode == 0:
        return 0
    run = runs.RunFolder(run_dir)
    if run.status.get("state") == "cancelled":
        return 130
    if run.status.get("state") == "done":
        # A rank died after rank 0 had finished and saved the run: nothing to resume.
        print(f"error: {res.message or 'The group stopped.'} {runs.finished_before_failure(run.status)}",
              file=sys.stderr)
        return 1
    print(f"error: {res.message or 'The group stopped.'} {runs.checkpoint_kept(run_dir)}: resume it with "
          f"tuneloom train --resume {run_dir} --hosts {a.hosts}", file=sys.stderr)
    return 1


def cmd_export(a) -> int:
    from app.console import ConsoleEvents
    from core.events import TuneloomError
    from core.export.pipeline import export, resolve_source, write_export_record

    if a.measure:
        return _export_measure(a)
    from app import cli_ship

    if cli_ship.wants_targets(a):  # --adapter-only, --lmstudio, --mlx, --peft (issue 29)
        return cli_ship.cmd_export_targets(a)
    if not a.gguf and not a.modelfile:
        print("error: give --gguf OUT.gguf (the GGUF and its Modelfile), --modelfile PATH (only the Modelfile), "
              "or both", file=sys.stderr)
        return 2
    ev = ConsoleEvents()
    try:
        _base, run = resolve_source(a.source, a.adapter)  # run: the run folder whose adapter is merged, if any
        system = a.system
        if system is None and run is not None:
            # as the Export page does: the Modelfile's SYSTEM is the system prompt the run was trained with, so
            # `ollama run` builds the training prompt (--system "" writes none)
            from core.generate import trained_system_prompt

            system = trained_system_prompt(run)
            if system:
                print(f"Modelfile SYSTEM: the system prompt the run was trained with ({system[:60]!r}"
                      f"{'...' if len(system) > 60 else ''}); --system \"\" for none", file=sys.stderr)
        # as the Export page does (core.export.run): a run registered in Ollama is asked a held-out question
        # greedily, and Ollama's answer is set beside Tuneloom's own
        from core.export.run import VERIFY_OPTIONS, answer_check, tuneloom_answer, verify_messages

        cancel = _cancel_on_sigint()
        msgs = verify_messages(run) if a.ollama and a.gguf and run is not None else None
        res = export(a.source, adapter=a.adapter, gguf=a.gguf, quant=a.quant, ollama=a.ollama, system=system or None,
                     force=a.force, modelfile=a.modelfile, events=ev, cancel=cancel, replace_files=a.force,
                     final=a.final, verify_messages=msgs, verify_options=VERIFY_OPTIONS if msgs else None)
        if msgs and res.get("ollama"):
            res["verify_messages"] = msgs
            res["tuneloom_answer"] = tuneloom_answer(run, msgs, cancel)
            check = answer_check(res)
            res["answer_check"] = check
            print(f"check: {'Ollama and Tuneloom give the same answer' if check['same'] else 'the answers differ'} "
                  f"to {check['question'][:60]!r}", file=sys.stderr)
    except TuneloomError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        return 1
    # an export of a run is recorded in the run's exports/ as the app's Export step records it, so the
    # History lists it wherever the GGUF was written
    if run is not None:
        try:
            write_export_record(run, res)
        except OSError as exc:  # the GGUF is written; only the note in the run folder is missing
            print(f"warning: could not record the export in {run / 'exports'}: {exc}", file=sys.stderr)
    print(json.dumps(res, ensure_ascii=False))
    return 0


def _export_measure(a) -> int:
    """`tuneloom export RUN --measure [--json]`: the price of each GGUF type (core.export.quant_price)."""
    from app.console import ConsoleEvents
    from core.events import Cancelled, TuneloomError
    from core.export.quant_price import measure_quants, price_lines

    if a.gguf or a.modelfile or a.ollama:
        print("error: --measure only measures; export with --gguf in a separate call", file=sys.stderr)
        return 2
    ev = ConsoleEvents(quiet=a.json and not sys.stderr.isatty())
    try:
        table = measure_quants(a.source, adapter=a.adapter, final=a.final, events=ev, cancel=_cancel_on_sigint())
    except Cancelled as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 130
    except TuneloomError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        return 1
    finally:
        getattr(ev, "close", lambda: None)()
    if a.json:
        print(json.dumps(table))
    else:
        print("\n".join(price_lines(table)))
    return 0


def cmd_chat(a) -> int:
    from core import runs
    from core.events import CancelToken, TuneloomError
    from core.generate import ChatModel, ChatSession, Sampling, run_base_model, trained_system_prompt

    model_dir, run = Path(a.model), a.adapter
    if run is None and (model_dir / runs.FINAL_ADAPTERS).is_file():  # MODEL is a run folder
        run = model_dir
    try:
        sampling = Sampling(**{k: v for k, v in (("temperature", a.temperature), ("top_p", a.top_p),
                                                 ("max_tokens", a.max_tokens), ("seed", a.seed)) if v is not None})
        sampling.check()
        if run is not None:
            from core.evaluate import run_encoder

            base = run_base_model(run) if run == model_dir else model_dir
            model = ChatModel(base, adapter_dir=run, encoder=run_encoder(run, base),
                              adapter="final" if a.final else "best")
        else:
            model = ChatModel(model_dir)
        system = a.system if a.system is not None else (trained_system_prompt(run) if run is not None else None)
        side = "tuned" if run is not None else "base"
        session = ChatSession(model, (side,), system=system, sampling=sampling)
        if a.tools:  # the functions the model may call (issue 31): a JSON list, or one function per line
            from core.tools import read_tools_text

            try:
                text = Path(a.tools).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                print(f"error: cannot read the tool definitions {a.tools}: {exc}", file=sys.stderr)
                return 1
            tools, problem = read_tools_text(text)
            if problem:
                print(f"error: {a.tools}: {problem}", file=sys.stderr)
                return 1
            session.tools = tools
            model.encoder.prompt_ids([{"role": "user", "content": "u"}], tools)  # a template without tools says so now
    except TuneloomError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        return 1
    one_shot = a.prompt is not None
    if not one_shot and sys.stdin.isatty():
        print(f"Chatting with {model_dir.name}" + (f" + {Path(run).name}" if run is not None else "")
              + (f" (system prompt: {system!r})" if system else "")
              + ". /new starts over, Ctrl-C stops an answer, Ctrl-D quits.", file=sys.stderr)
    from core.tools import call_text

    skipped = None  # the turn whose calls the user chose not to answer (/skip)
    while True:
        pending = session.pending_calls(side) if skipped != len(session.turns) else []
        if one_shot:
            text = a.prompt
        else:
            try:
                # after calls: what each function returned, for the model to answer with (/skip: ask instead)
                results = []
                for call in pending:
                    results.append(input(f"result of {call_text(call)}> "))
                    if results[-1].strip() in ("/skip", "/new", "/reset"):
                        text, pending, skipped = results[-1].strip(), [], len(session.turns)
                        break
                else:
                    text = input("you> ") if not pending else ""
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stderr)
                return 0
            if text.strip() in ("/new", "/reset"):
                session.reset()
                continue
            if text.strip() == "/skip" or (not text.strip() and not pending):
                continue
            print("model> ", end="", flush=True)
        cancel = CancelToken()
        previous = signal.signal(signal.SIGINT, lambda signum, frame: cancel.cancel())
        try:
            stream = (session.stream_results({side: results}, cancel) if pending and not one_shot
                      else session.stream(text, cancel))
            for chunk in stream:
                if chunk.text:
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
        except TuneloomError as exc:
            print(f"\nerror: {exc.user_message()}", file=sys.stderr)
            return 1
        finally:
            signal.signal(signal.SIGINT, previous)
        print()
        for call in session.turns[-1].calls.get(side) or [] if session.turns else []:
            print(f"-> call {call_text(call)}", flush=True)  # the calls, as the model wrote them (issue 31)
        if cancel.cancelled:
            print("(stopped)", file=sys.stderr)
            if one_shot:
                return 130
        if one_shot:
            return 0


def _fmt_metric(v, kind: str) -> str:
    if v is None:
        return "n/a"
    if kind == "share":
        return f"{v:.1%}"
    return f"{v:.4g}"


def cmd_eval(a) -> int:
    from app.console import ConsoleEvents
    from core.evaluate import evaluate
    from core.events import Cancelled, TuneloomError

    ev = ConsoleEvents(quiet=a.json and not sys.stderr.isatty())
    result, code, drift = None, 0, None
    try:
        result = evaluate(a.run_dir, a.data, limit=a.limit, max_tokens=a.max_tokens, events=ev,
                          cancel=_cancel_on_sigint(), adapter="final" if a.final else "best", split=a.split)
        if a.drift:
            from core.drift import drift_check

            drift = drift_check(a.run_dir, probes=a.probes, adapter="final" if a.final else "best", events=ev,
                                cancel=_cancel_on_sigint())
    except Cancelled as exc:
        result, code = exc.result, 130
        print(f"stopped: {exc}", file=sys.stderr)
    except TuneloomError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        return 1
    finally:
        getattr(ev, "close", lambda: None)()  # a live progress bar must not stay on the screen
    if result is None:
        return code or 1
    try:
        if a.csv:
            print(f"table written to {result.write_csv(a.csv)}", file=sys.stderr)
        if a.jsonl:
            print(f"table written to {result.write_jsonl(a.jsonl)}", file=sys.stderr)
    except OSError as exc:
        print(f"error: cannot write the table: {exc}", file=sys.stderr)
        return 1
    if code:
        return code
    out = result.to_json()
    if drift is not None:
        out["drift"] = drift
    try:
        from core.report import record_evaluation

        record_evaluation(a.run_dir, result, drift)
    except OSError as exc:
        print(f"warning: could not update the run's report: {exc}", file=sys.stderr)
    if a.json:
        print(json.dumps(out))
        return 0
    rows = [("exact match", "exact_match", "share"), ("valid JSON", "json_valid", "share"),
            ("JSON field accuracy", "json_field_accuracy", "share"), ("validation loss", "loss", "num"),
            ("perplexity", "perplexity", "num"), ("examples", "examples", "num")]
    if out["base"].get("preference_accuracy") is not None:
        rows.insert(0, ("preference accuracy", "preference_accuracy", "share"))
    if out["base"].get("tool_call_accuracy") is not None:
        rows.insert(0, ("tool-call accuracy", "tool_call_accuracy", "share"))
    where = (f"the run's {result.source} examples" if result.source in ("test", "validation")
             else ", ".join(result.data))
    print(f"Evaluation of {a.run_dir} on {where} (greedy answers)")
    print(f"  {'':22s}{'base':>12s}{'fine-tuned':>12s}")
    for label, key, kind in rows:
        print(f"  {label:22s}{_fmt_metric(out['base'][key], kind):>12s}{_fmt_metric(out['tuned'][key], kind):>12s}")
    if drift is not None:
        from core.drift import drift_lines

        print("\n".join(drift_lines(drift)))
    return 0


def cmd_fetch(a) -> int:
    from app.hub_cli import fetch_main

    return fetch_main(a.model_id, a.revision)


def cmd_models(a) -> int:
    from app.hub_cli import models_main

    return models_main()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneloom", description="Fine-tune a small chat model and run it in Ollama.")
    sub = p.add_subparsers(dest="cmd")

    _add_demo_and_data_parsers(sub)
    _add_train_parser(sub)
    _add_export_parser(sub)
    _add_model_and_run_parsers(sub)
    return p


def _add_demo_and_data_parsers(sub) -> None:
    """The `demo` and `data` subcommands."""
    d = sub.add_parser("demo", help="run the whole pipeline on the bundled demo model (offline)")
    d.add_argument("--out", help="output folder (default: ./demo-out)")
    d.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="dataset tools")
    dsub = data.add_subparsers(dest="data_cmd", required=True)
    c = dsub.add_parser("check", help="validate dataset files and report problems")
    c.add_argument("files", nargs="+")
    c.add_argument("--model", help="model folder: also report token lengths with its tokenizer")
    c.add_argument("--max-seq-len", type=int, default=512)
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--chunk", action="store_true", help=_CHUNK_HELP)
    _add_data_options(c)
    c.set_defaults(func=cmd_data_check)
    x = dsub.add_parser("export", help="write the normalised examples as JSONL in OpenAI's chat format")
    x.add_argument("files", nargs="+")
    x.add_argument("--out", required=True, metavar="OUT.jsonl", help="the JSONL file to write")
    x.add_argument("--chunk", action="store_true", help=_CHUNK_HELP + " (needs --model)")
    x.add_argument("--model", help="model folder whose tokenizer counts the windows of --chunk")
    x.add_argument("--max-seq-len", type=int, default=512, help="the window length of --chunk, in tokens")
    _add_data_options(x)
    x.set_defaults(func=cmd_data_export)


def _add_train_parser(sub) -> None:
    """The `train` subcommand: its training-option flags come from core.options."""
    from core.train import DEFAULT_PRESET, PRESET_TEXT, option_help

    def opt(name: str) -> str:  # the option's help, as the GUI's tooltip says it, with the default
        from core.train import TrainConfig

        default = getattr(TrainConfig(model=""), name)
        return option_help(name) + ("" if default is None else f" (default: {default})")

    presets = "; ".join(f"{k} = {PRESET_TEXT[k][0]}: {PRESET_TEXT[k][1]}" for k in PRESET_TEXT)
    t = sub.add_parser("train", help="LoRA fine-tune a model on a dataset")
    t.add_argument("--model", help=option_help("model"))
    t.add_argument("--data", nargs="+", help=option_help("data"))
    t.add_argument("--out", help=option_help("out"))
    t.add_argument("--preset", choices=list(PRESET_TEXT), help=f"start from a preset (default: {DEFAULT_PRESET}, as "
                   "the Train page; flags given override it; the steps and warm-up then fit the data as the Train "
                   "page fits them): " + presets)
    add_option_flags(t, opt)
    t.add_argument("--map", action="append", metavar="OURS=THEIRS",
                   help="use column THEIRS for field OURS, e.g. --map prompt=Frage (repeatable)")
    _add_template_options(t)
    _add_answer_options(t)
    t.add_argument("--chunk", action="store_true", help=_CHUNK_HELP)
    t.add_argument("--resume", metavar="RUN_DIR")
    t.add_argument("--hosts", metavar="HOSTFILE",
                   help="train on several Macs at once (MLX's distributed runtime, ring backend): a file with one "
                        "host per line (this Mac first; `HOST` or `HOST IP`) or mlx.launch's JSON host file. Every "
                        "Mac needs the same Tuneloom, and the model and data at the same paths")
    t.add_argument("--copy-missing", action="store_true",
                   help="with --hosts: copy the model or data to the Macs that lack them (rsync over ssh)")
    t.add_argument("--backend", choices=["ring", "mpi"], default="ring", help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_train)


def _add_export_parser(sub) -> None:
    """The `export` subcommand (and `push`)."""
    e = sub.add_parser("export", help="fuse adapters and write a GGUF (and an Ollama Modelfile)")
    e.add_argument("source", help="a run folder (base + adapters) or a model folder")
    e.add_argument("--adapter", metavar="RUN_DIR", help="a run folder whose adapter to merge into SOURCE (then a "
                   "model folder)")
    e.add_argument("--gguf", metavar="OUT.gguf", help="write the GGUF here (and its Modelfile, OUT.Modelfile, next to "
                   "it unless --modelfile says where); without --gguf only the Modelfile is written")
    from core.export.quants import DEFAULT as QUANT_DEFAULT
    from core.export.quants import QUANTS

    e.add_argument("--quant", default=QUANT_DEFAULT, choices=list(QUANTS),
                   help=f"the GGUF's type (default {QUANT_DEFAULT}): "
                        + "; ".join(f"{q.name}: {q.blurb.rstrip('.')}" for q in QUANTS.values()).replace("%", "%%"))
    e.add_argument("--ollama", metavar="NAME", help="register in Ollama under this name")
    e.add_argument("--system", help="system prompt for the Modelfile (default: the one the run was trained with; "
                   "\"\" for none)")
    e.add_argument("--force", action="store_true", help="replace an Ollama model of the same name, the GGUF "
                   "(and its Modelfile) an earlier export wrote at --gguf or in LM Studio, and a --mlx / --peft "
                   "folder Tuneloom did not write")
    e.add_argument("--modelfile", metavar="PATH", help="write the Modelfile here; alone, writes only the Modelfile, "
                   "whose FROM names the GGUF an export would write next to it (SOURCE-QUANT.gguf)")
    from app.cli_ship import add_export_flags, add_push_parser

    add_export_flags(e)
    e.add_argument("--final", action="store_true",
                   help="merge the run's final adapter instead of its best one (lowest validation loss)")
    e.add_argument("--measure", action="store_true",
                   help="measure what each GGUF type costs instead of exporting: on the run's test (else "
                        "validation) examples, how often llama.cpp reading that file picks the same next token as "
                        "the MLX model, and the mean KL divergence; recorded in the run's exports/")
    e.set_defaults(func=cmd_export)
    add_push_parser(sub)


def _add_model_and_run_parsers(sub) -> None:
    """`fetch`, `models`, `chat`, `eval`, `runs`, `selfcheck`."""
    f = sub.add_parser("fetch", help="download a model into the Hugging Face cache (or check a model folder)")
    f.add_argument("model_id", metavar="MODEL_ID",
                   help="hub id (org/name), a name from `tuneloom models`, or a local folder")
    f.add_argument("--revision", help="branch, tag or commit (default: the catalog's pinned revision, else main)")
    f.set_defaults(func=cmd_fetch)

    m = sub.add_parser("models", help="list the curated models: size, training memory, fit, downloaded")
    m.set_defaults(func=cmd_models)

    ch = sub.add_parser("chat", help="chat with a model (and adapters) in the terminal")
    ch.add_argument("model", help="a model folder, or a run folder (its base model with its adapter)")
    ch.add_argument("--adapter", metavar="RUN", help="a run folder whose adapter to apply")
    ch.add_argument("--system", help="system prompt (default: the one the run was trained with)")
    ch.add_argument("--prompt", help="answer this one prompt and exit")
    from dataclasses import fields as _fields

    from core.generate import Sampling

    _sampling_help = {f.name: f.metadata["help"] for f in _fields(Sampling)}
    ch.add_argument("--temperature", type=float, help=_sampling_help["temperature"] + " (default 0.7)")
    ch.add_argument("--top-p", type=float, help=_sampling_help["top_p"] + " (default 0.9)")
    ch.add_argument("--max-tokens", type=int, help=_sampling_help["max_tokens"] + " (default 512)")
    ch.add_argument("--seed", type=int, help=_sampling_help["seed"] + " (default 0)")
    ch.add_argument("--final", action="store_true", help="the run's final adapter instead of its best one")
    ch.add_argument("--tools", metavar="FILE", help="tool definitions the model may call (a JSON list of functions in "
                    "OpenAI's form, or one per line): its calls are printed as '-> call name(args)', and the next "
                    "line you type is what the function returned (/skip asks something else)")
    ch.set_defaults(func=cmd_chat)

    ev = sub.add_parser("eval", help="compare the base and the fine-tuned model on held-out examples")
    ev.add_argument("run_dir", metavar="RUN_DIR", help="a run folder")
    ev.add_argument("--data", nargs="+", action="extend", metavar="FILE",
                    help="evaluate on these files instead of the run's validation examples (repeatable)")
    ev.add_argument("--limit", type=int, metavar="N", help="only the first N examples")
    ev.add_argument("--max-tokens", type=int, metavar="N",
                    help="longest answer (default: the expected answer's length and half again)")
    ev.add_argument("--json", action="store_true", help="print one JSON object {base: {...}, tuned: {...}}")
    ev.add_argument("--csv", metavar="OUT.csv", help="also write the table of answers as CSV")
    ev.add_argument("--jsonl", metavar="OUT.jsonl", help="also write the table of answers as JSONL")
    ev.add_argument("--split", choices=["test", "validation"],
                    help="which of the run's splits (default: test, never seen in training; validation when the "
                         "run has no test split)")
    ev.add_argument("--final", action="store_true",
                    help="use the final adapter instead of the best one (lowest validation loss)")
    ev.add_argument("--drift", action="store_true",
                    help="also check for forgetting: the fine-tune against the base model on general prompts")
    ev.add_argument("--probes", metavar="FILE.jsonl", action="append",
                    help="with --drift: your own probe prompts (JSONL with a \"prompt\" per line) beside the "
                         "bundled ones (repeatable)")
    ev.set_defaults(func=cmd_eval)

    rs = sub.add_parser("runs", help="list the run folders as the History does (state, steps; damaged runs too)")
    rs.add_argument("--json", action="store_true", help="print a JSON list: name, path, state, step, total_steps "
                    "(and problem, for a damaged run)")
    rs.add_argument("--root", metavar="DIR", help="the runs folder (default: Tuneloom's own)")
    rs.set_defaults(func=cmd_runs)

    sc = sub.add_parser("selfcheck", help="check that this installation can run a job in a process of its own "
                                          "(the window trains that way); prints one JSON line")
    sc.set_defaults(func=cmd_selfcheck)


def cmd_runs(a) -> int:
    """`tuneloom runs [--json]`: the runs folder as the History lists it; a damaged run is listed as
    damaged with what is wrong, the others as usual."""
    from core import runs

    rows = []
    for info in runs.list_runs(Path(a.root) if a.root else None):
        row = {"name": info.name, "title": info.title, "path": str(info.path), "state": info.state,
               "step": info.steps, "total_steps": info.total_steps, "base_model": info.base_model}
        if info.problem:
            row["problem"] = info.problem
        elif info.state == "running":
            row["pid"] = runs.lock_holder(info.path) or info.status.get("pid")
        rows.append(row)
    if a.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    if not rows:
        print("no runs yet")
    for r in rows:
        total = f"/{r['total_steps']}" if r["total_steps"] else ""
        extra = f"  ({r['problem']})" if r.get("problem") else ""
        print(f"{r['name']}  {r['state']}  step {r['step']}{total}  {r['path']}{extra}")
    return 0


def cmd_selfcheck(a) -> int:
    from core.isolated import probe, run_in_process

    got = run_in_process(probe, what="The check")
    ok = got.get("parent") == os.getpid() and got.get("pid") != os.getpid()
    # the K-quant kernels shipped as bitcode: usable here (else exports compile them with numba, slower)
    from core.export import kquants_aot

    shipped = {k: v is not None for k, v in kquants_aot.load(["Q4_K", "Q5_K", "Q6_K"]).items()}
    print(json.dumps({"ok": ok, "parent": os.getpid(), "child": got.get("pid"), "nice": got.get("nice"),
                      "shipped_kernels": shipped}))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """`tuneloom [SUBCOMMAND ...]`; also the app bundle's launcher (Tuneloom.app/Contents/MacOS/Tuneloom).

    No subcommand (or only files, as "Open with" passes them) opens the window. The window's
    start, and everything in a bundle, runs under a guard: an import failure, a missing display
    or Qt plugin, or any uncaught error leaves a readable crash report in the log folder
    (app.logs) instead of an app that vanishes. ``--quit-after-paint`` (or
    TUNELOOM_QUIT_AFTER_PAINT=1) closes the window after its first paint: the bundle smoke test."""
    args = list(sys.argv[1:] if argv is None else argv)
    args = [x for x in args if not x.startswith("-psn_")]  # the process serial number older Finders add
    quit_after_paint = "--quit-after-paint" in args
    args = [x for x in args if x != "--quit-after-paint"]
    parser = build_parser()
    subcommands = next(x.choices for x in parser._actions if isinstance(x, argparse._SubParsersAction))
    files = [x for x in args if not x.startswith("-")]
    opens_files = bool(files) and files[0] not in subcommands and all(Path(x).exists() for x in files)
    gui = not args or opens_files
    frozen = bool(getattr(sys, "frozen", False))
    if not (gui or frozen):
        a = parser.parse_args(args)
        a.argv = args
        return a.func(a)
    from app import logs

    try:
        logs.setup_logging()
        if not gui:
            a = parser.parse_args(args)
            a.argv = args
            return a.func(a)
        if _has_display():
            from app.gui.main import run_gui

            return run_gui([sys.argv[0] if sys.argv else "tuneloom", *files], quit_after_paint=quit_after_paint or None)
        print("No display found: running the headless demo instead of the window.", file=sys.stderr)
        return cmd_demo(argparse.Namespace(out=None))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - the last line of defence: say what happened, in a file
        report = logs.write_crash_report(sys.exc_info())
        import traceback

        traceback.print_exc()
        print(f"\nTuneloom stopped: {exc}\nA crash report was written to {report}", file=sys.stderr)
        logs.notify_crash(report)
        return 1


if __name__ == "__main__":
    sys.exit(main())
