"""The offline demo: the whole pipeline on the bundled model, stage by stage.

load model -> check data -> evaluate base -> LoRA-train -> evaluate fine-tune -> forgetting check
-> fuse -> GGUF F16 + Q8_0 -> llama.cpp agreement and the price of each quantization (when
installed) -> Modelfile / Ollama.
Each stage reports through the events API; the result says which stages passed.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import core  # noqa: F401  (OpenBLAS before MLX)
from core import demo_world as world
from core.events import NULL_EVENTS, CancelToken, Events, TuneloomError
from core.paths import demo_data_dir, demo_model_dir

# What the demo promises on the held-out topics (issue 15): the base model does not answer in the
# schema; the fine-tuned one does, names what it was asked about and gets whole answers right,
# still answers plain questions in prose; the GGUF files answer as MLX does.
BASE_JSON_MAX = 0.10
TUNED_JSON_MIN = 0.95
TUNED_NAME_MIN = 0.90
TUNED_EXACT_MIN = 0.70
PROSE_SURVIVAL_MIN = 0.90
F16_AGREE_MIN = 0.95
Q8_AGREE_MIN = 0.90

# test_fraction 0: the demo's held-out questions (heldout.json) are its test set, and all 320 examples train
DEMO_TRAIN = dict(iters=200, rank=8, alpha=16.0, lr=1e-3, batch=8, targets="all", max_seq_len=256,
                  warmup=10, valid_every=40, checkpoint_every=80, seed=0, test_fraction=0.0)


@dataclass
class Stage:
    name: str
    ok: bool | None = None  # None: skipped
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


def _eval_answers(model, prompts: list[dict], events: Events, what: str, cancel: CancelToken | None) -> list[str]:
    out = []
    for i, p in enumerate(prompts):
        if cancel:
            cancel.raise_if_cancelled()
        out.append(model.answer(p["messages"], max_tokens=64))
        events.progress(i + 1, len(prompts), what)
    return out


def score(structured: list[str], prose: list[str], base_prose: list[str] | None = None,
          topics: list[str] | None = None) -> dict:
    js = sum(world.is_valid_structured(a) for a in structured) / max(1, len(structured))
    pr = [world.is_prose(a) for a in prose]
    out = {"json_valid_rate": js, "prose_rate": sum(pr) / max(1, len(pr))}
    if topics is not None:  # stricter: the JSON names the topic that was asked about
        out["json_name_correct_rate"] = sum(world.is_valid_structured(a) and json.loads(a)["name"] == t
                                            for a, t in zip(structured, topics)) / max(1, len(structured))
        # strictest: the whole object is the expected one (name, category, features in order)
        out["json_exact_rate"] = sum(world.is_valid_structured(a) and json.loads(a) == world.expected_structured(t)
                                     for a, t in zip(structured, topics)) / max(1, len(structured))
    if base_prose is not None:
        base_ok = [world.is_prose(a) for a in base_prose]
        kept = sum(1 for b, a in zip(base_ok, pr) if b and a)
        out["prose_survival"] = kept / max(1, sum(base_ok))
    return out


def _clear_previous_demo_run(run_dir: Path) -> None:
    """A demo run again into the same folder replaces the demo's own earlier run (and nothing else: a
    folder holding another run, or one being trained, is left for train() to refuse)."""
    import shutil

    from core import runs

    cfg = runs.RunFolder(run_dir).config
    if (runs.run_contents(run_dir) and cfg.get("name") == "demo"
            and not runs.run_locked_by_other(run_dir)):
        shutil.rmtree(run_dir)


def run_demo(out_dir: str | Path, *, events: Events | None = None, cancel: CancelToken | None = None,
             train_overrides: dict | None = None, ollama_name: str = "tuneloom-demo",
             root: str | Path | None = None) -> dict:
    """Run every stage; ``root`` is a demo folder (model/, data/, heldout.json), default the bundled one."""
    from core.generate import ChatModel
    from core.tokens import ChatEncoder

    events = events or NULL_EVENTS
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages: list[Stage] = []
    t_all = time.perf_counter()

    def stage(name: str):
        s = Stage(name)
        stages.append(s)
        events.stage(name)
        return s

    def finish(s: Stage, ok: bool | None, **detail):
        s.ok, s.seconds = ok, round(time.perf_counter() - s.started, 2)
        s.detail.update(detail)
        events.stage_done(s.name, ok, s.seconds, detail)

    model_dir = Path(root) / "model" if root else demo_model_dir()
    data_dir = Path(root) / "data" if root else demo_data_dir()
    prompts = heldout_prompts(data_dir.parent)

    s = stage("load model")
    encoder = ChatEncoder(model_dir)
    base = ChatModel(model_dir, encoder=encoder)
    finish(s, True, model=str(model_dir), params=int(sum(v.size for v in _params(base.model))))

    s = stage("check data")
    from core.data import load_dataset

    ds = load_dataset([data_dir / "train.jsonl", data_dir / "valid.jsonl"], cancel=cancel)
    finish(s, not ds.issues and len(ds.records) > 0, format=ds.format, records=ds.total, valid=len(ds.records),
           problems=len(ds.issues))

    s = stage("evaluate base")
    b_struct = _eval_answers(base, prompts["structured"], events, "base: structured prompts", cancel)
    b_prose = _eval_answers(base, prompts["prose"], events, "base: prose prompts", cancel)
    topics = [p["topic"] for p in prompts["structured"]]
    base_score = score(b_struct, b_prose, topics=topics)
    finish(s, base_score["json_valid_rate"] <= BASE_JSON_MAX, **base_score, topics=len(topics),
           question=prompts["structured"][0]["messages"][-1]["content"], example=b_struct[0])

    s = stage("train")
    from core.train import TrainConfig, train

    cfg = TrainConfig(model=str(model_dir), data=[str(data_dir / "train.jsonl"), str(data_dir / "valid.jsonl")],
                      out=str(out / "run"), name="demo", **{**DEMO_TRAIN, **(train_overrides or {})})
    # the sample folder already separates train and valid: use that split
    cfg.data = [str(data_dir)]
    _clear_previous_demo_run(out / "run")
    tres = train(cfg, events=events, cancel=cancel)
    finish(s, tres["state"] == "done", steps=tres["steps"], valid_loss=tres["valid_loss"],
           tokens_per_sec=round(tres["tokens_per_sec"], 1), seconds_training=round(tres["seconds"], 1))

    s = stage("evaluate fine-tuned")
    tuned = ChatModel(model_dir, adapter_dir=out / "run", encoder=encoder)
    t_struct = _eval_answers(tuned, prompts["structured"], events, "fine-tuned: structured prompts", cancel)
    t_prose = _eval_answers(tuned, prompts["prose"], events, "fine-tuned: prose prompts", cancel)
    tuned_score = score(t_struct, t_prose, b_prose, topics=topics)
    answers = [{"question": p["messages"][-1]["content"], "base": b, "fine_tuned": t,
                **({"expected": world.expected_structured(p["topic"])} if kind == "structured" else {})}
               for kind, got_b, got_t in (("structured", b_struct, t_struct), ("prose", b_prose, t_prose))
               for p, b, t in zip(prompts[kind], got_b, got_t)]
    (out / "answers.json").write_text(json.dumps(answers, indent=1) + "\n")
    tuned_ok = (tuned_score["json_valid_rate"] >= TUNED_JSON_MIN and tuned_score["json_name_correct_rate"] >= TUNED_NAME_MIN
                and tuned_score["json_exact_rate"] >= TUNED_EXACT_MIN
                and tuned_score["prose_survival"] >= PROSE_SURVIVAL_MIN)
    finish(s, tuned_ok, **tuned_score, example=t_struct[0],
           answers=str(out / "answers.json"))

    s = stage("forgetting check")
    from core.drift import drift_check
    from core.report import record_evaluation

    # the toy model knows only its own world: it is probed with that world's questions (core.drift)
    probe_file = data_dir.parent / "probes.jsonl"
    if not probe_file.is_file():  # a demo folder of its own: probe with its held-out prose questions
        probe_file = out / "probes.jsonl"
        probe_file.write_text("".join(json.dumps({"prompt": p["messages"][-1]["content"]}) + "\n"
                                      for p in prompts["prose"]))
    drift = drift_check(out / "run", model=tuned, events=events, cancel=cancel, probes=[probe_file], bundled=False)
    record_evaluation(out / "run", None, drift)
    finish(s, True, verdict=drift["verdict"], kl_per_token=round(drift["kl_per_token"], 4),
           loglik_change=round(drift["loglik_change"], 4), changed_share=drift["changed_share"],
           probes=drift["probe_count"])

    s = stage("fuse")
    from core import runs
    from core.fuse import fuse_model

    # the best adapter (lowest validation loss), as Try, Evaluate and Export use it
    fused_dir = fuse_model(model_dir, out / "run", out / "fused", events=events, cancel=cancel,
                           adapter_file=runs.adapter_file(out / "run"))
    finish(s, True, path=str(fused_dir))

    s = stage("export gguf")
    from core.gguf_export import export_gguf

    ggufs = {}
    for q in ("f16", "q8_0"):
        res = export_gguf(fused_dir, out / f"demo-{q}.gguf", quant=q, events=events, cancel=cancel)
        ggufs[q] = res["path"]
    finish(s, True, files=ggufs)

    s = stage("llama.cpp agreement")
    from core import llamacpp

    agreement: dict[str, float] = {}
    if not llamacpp.available():
        finish(s, None, skipped="llama-cpp-python is not installed")
    else:
        fused = ChatModel(fused_dir)
        all_prompts = prompts["structured"] + prompts["prose"]
        ref = []
        for i, p in enumerate(all_prompts):
            ref.append(fused.generate_ids(encoder.prompt_ids(p["messages"]), max_tokens=64))
            events.progress(i + 1, len(all_prompts), "MLX greedy answers (fused)")
        for q, path in ggufs.items():
            llm = llamacpp.LlamaCppModel(path)
            same = 0
            for i, p in enumerate(all_prompts):
                got = llm.greedy(encoder.prompt_ids(p["messages"]), encoder.eos_ids, max_tokens=64)
                same += got == ref[i]
                events.progress(i + 1, len(all_prompts), f"llama.cpp greedy answers ({q})")
            llm.close()
            agreement[q] = same / len(all_prompts)
        finish(s, agreement["f16"] >= F16_AGREE_MIN and agreement["q8_0"] >= Q8_AGREE_MIN,
               **{f"{q}_agreement": v for q, v in agreement.items()},
               prompts=len(all_prompts))

    s = stage("quantization price")
    price: dict = {}
    if not llamacpp.available():
        finish(s, None, skipped="llama-cpp-python is not installed")
    else:
        from core.quant_price import measure_quants

        price = measure_quants(out / "run", events=events, cancel=cancel)
        finish(s, True, **{q: row for q, row in price.items()})

    s = stage("ollama")
    from core import ollama as ol

    tok_cfg = ol.load_tokenizer_config(fused_dir)
    modelfile = out / "Modelfile"
    ol.write_modelfile(modelfile, Path(ggufs["f16"]), tok_cfg, num_ctx=cfg.max_seq_len)
    create_cmd = ol.ollama_create_command(modelfile, ollama_name)
    host = ol.find_server()
    if host is None:
        finish(s, None, modelfile=str(modelfile), registered=False,
               message="no Ollama server answered; to register the model run: " + create_cmd)
    else:
        template, stops = ol.go_template_for(tok_cfg)
        try:
            reg = ol.register_model(Path(ggufs["f16"]), ollama_name, template=template, stops=stops, force=True,
                                    host=host, events=events, cancel=cancel)
            finish(s, True, modelfile=str(modelfile), registered=True, model=ollama_name, server=host,
                   detail=reg)
        except TuneloomError as exc:
            finish(s, False, modelfile=str(modelfile), registered=False, error=exc.user_message(),
                   command=create_cmd)

    summary = {
        "ok": all(st.ok is not False for st in stages),
        "seconds": round(time.perf_counter() - t_all, 1),
        "out": str(out),
        "base_json_valid_rate": base_score["json_valid_rate"],
        "tuned_json_valid_rate": tuned_score["json_valid_rate"],
        "prose_survival": tuned_score.get("prose_survival"),
        "tuned_json_name_correct_rate": tuned_score.get("json_name_correct_rate"),
        "base_json_exact_rate": base_score.get("json_exact_rate"),
        "tuned_json_exact_rate": tuned_score.get("json_exact_rate"),
        "f16_agreement": agreement.get("f16"),
        "q8_0_agreement": agreement.get("q8_0"),
        "forgetting_verdict": drift["verdict"],
        "forgetting_kl_per_token": drift["kl_per_token"],
        "quantization": price,
        "gguf": ggufs,
        "modelfile": str(modelfile),
        "stages": [{"stage": st.name, "ok": st.ok, "seconds": st.seconds, **st.detail} for st in stages],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def heldout_prompts(root: Path | None = None) -> dict[str, list[dict]]:
    """The held-out prompts: {"structured": [...], "prose": [...]}, each {"topic", "messages"}."""
    return json.loads(((root or demo_data_dir().parent) / "heldout.json").read_text())


def first_heldout_prompt() -> str:
    """A structured question on a topic the sample data never trains on (the Try page's fair first try)."""
    return heldout_prompts()["structured"][0]["messages"][-1]["content"]


def _params(model):
    from mlx.utils import tree_flatten

    return [v for _, v in tree_flatten(model.parameters())]
