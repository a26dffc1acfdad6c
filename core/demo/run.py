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
from core.demo import world
from core.events import NULL_EVENTS, CancelToken, Events, Progress, TuneloomError
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


ANSWER_BATCH = 16  # prompts answered at once (the same greedy ids as one at a time, a few times less work)


def _greedy_ids(model, prompts: list[dict], events: Events, what: str, cancel: CancelToken | None,
                encoder=None) -> list[list[int]]:
    """The greedy answer ids (64 tokens at most) to ``prompts`` (rendered by ``encoder``, else the
    model's own), ANSWER_BATCH at a time."""
    encoder = encoder or model.encoder
    out = []
    for start in range(0, len(prompts), ANSWER_BATCH):
        if cancel:
            cancel.raise_if_cancelled()
        batch = [encoder.prompt_ids(p["messages"]) for p in prompts[start:start + ANSWER_BATCH]]
        out += model.greedy_ids_batch(batch, 64)
        events.report_progress(Progress(len(out), len(prompts), "prompt", what))
    return out


def _eval_answers(model, prompts: list[dict], events: Events, what: str, cancel: CancelToken | None) -> list[str]:
    return [model.encoder.decode(ids) for ids in _greedy_ids(model, prompts, events, what, cancel)]


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
    demo = _DemoRun(Path(out_dir), events or NULL_EVENTS, cancel, root, train_overrides or {}, ollama_name)
    for stage in (demo.load_model, demo.check_data, demo.evaluate_base, demo.train, demo.evaluate_tuned,
                  demo.forgetting_check, demo.fuse, demo.export_gguf, demo.llamacpp_agreement,
                  demo.quantization_price, demo.ollama):
        stage()
    return demo.summary()


class _DemoRun:
    """The demo's stages, one method each, in the order :func:`run_demo` calls them; each one reads what the
    stages before it left on ``self``."""

    def __init__(self, out: Path, events: Events, cancel: CancelToken | None, root, train_overrides: dict,
                 ollama_name: str):
        self.out, self.events, self.cancel = out, events, cancel
        self.train_overrides, self.ollama_name = train_overrides, ollama_name
        out.mkdir(parents=True, exist_ok=True)
        self.stages: list[Stage] = []
        self.t_all = time.perf_counter()
        self.model_dir = Path(root) / "model" if root else demo_model_dir()
        self.data_dir = Path(root) / "data" if root else demo_data_dir()
        self.prompts = heldout_prompts(self.data_dir.parent)
        self.topics = [p["topic"] for p in self.prompts["structured"]]
        self.agreement: dict[str, float] = {}
        self.price: dict = {}

    def _stage(self, name: str) -> Stage:
        s = Stage(name)
        self.stages.append(s)
        self.events.stage(name)
        return s

    def _finish(self, s: Stage, ok: bool | None, **detail) -> None:
        s.ok, s.seconds = ok, round(time.perf_counter() - s.started, 2)
        s.detail.update(detail)
        self.events.stage_done(s.name, ok, s.seconds, detail)

    def _answers(self, model, who: str) -> tuple[list[str], list[str]]:
        return tuple(_eval_answers(model, self.prompts[kind], self.events, f"{who}: {kind} prompts", self.cancel)
                     for kind in ("structured", "prose"))

    def load_model(self) -> None:
        from core.generate import ChatModel
        from core.tokens import ChatEncoder

        s = self._stage("load model")
        self.encoder = ChatEncoder(self.model_dir)
        self.base = ChatModel(self.model_dir, encoder=self.encoder)
        self._finish(s, True, model=str(self.model_dir), params=int(sum(v.size for v in _params(self.base.model))))

    def check_data(self) -> None:
        from core.data import load_dataset

        s = self._stage("check data")
        ds = load_dataset([self.data_dir / "train.jsonl", self.data_dir / "valid.jsonl"], cancel=self.cancel)
        self._finish(s, not ds.issues and len(ds.records) > 0, format=ds.format, records=ds.total,
                     valid=len(ds.records), problems=len(ds.issues))

    def evaluate_base(self) -> None:
        s = self._stage("evaluate base")
        self.b_struct, self.b_prose = self._answers(self.base, "base")
        self.base_score = score(self.b_struct, self.b_prose, topics=self.topics)
        self._finish(s, self.base_score["json_valid_rate"] <= BASE_JSON_MAX, **self.base_score,
                     topics=len(self.topics), question=self.prompts["structured"][0]["messages"][-1]["content"],
                     example=self.b_struct[0])

    def train(self) -> None:
        from core.train import TrainConfig, train

        s = self._stage("train")
        d = self.data_dir
        self.cfg = cfg = TrainConfig(model=str(self.model_dir), data=[str(d / "train.jsonl"), str(d / "valid.jsonl")],
                                     out=str(self.out / "run"), name="demo", **{**DEMO_TRAIN, **self.train_overrides})
        # the sample folder already separates train and valid: use that split
        cfg.data = [str(d)]
        _clear_previous_demo_run(self.out / "run")
        tres = train(cfg, events=self.events, cancel=self.cancel)
        self._finish(s, tres["state"] == "done", steps=tres["steps"], valid_loss=tres["valid_loss"],
                     tokens_per_sec=round(tres["tokens_per_sec"], 1), seconds_training=round(tres["seconds"], 1))

    def evaluate_tuned(self) -> None:
        from core.generate import ChatModel

        s = self._stage("evaluate fine-tuned")
        out, prompts = self.out, self.prompts
        self.tuned = ChatModel(self.model_dir, adapter_dir=out / "run", encoder=self.encoder)
        t_struct, t_prose = self._answers(self.tuned, "fine-tuned")
        self.tuned_score = tuned_score = score(t_struct, t_prose, self.b_prose, topics=self.topics)
        answers = [{"question": p["messages"][-1]["content"], "base": b, "fine_tuned": t,
                    **({"expected": world.expected_structured(p["topic"])} if kind == "structured" else {})}
                   for kind, got_b, got_t in (("structured", self.b_struct, t_struct), ("prose", self.b_prose, t_prose))
                   for p, b, t in zip(prompts[kind], got_b, got_t)]
        (out / "answers.json").write_text(json.dumps(answers, indent=1) + "\n")
        tuned_ok = (tuned_score["json_valid_rate"] >= TUNED_JSON_MIN
                    and tuned_score["json_name_correct_rate"] >= TUNED_NAME_MIN
                    and tuned_score["json_exact_rate"] >= TUNED_EXACT_MIN
                    and tuned_score["prose_survival"] >= PROSE_SURVIVAL_MIN)
        self._finish(s, tuned_ok, **tuned_score, example=t_struct[0], answers=str(out / "answers.json"))

    def forgetting_check(self) -> None:
        from core.drift import drift_check
        from core.report import record_evaluation

        s = self._stage("forgetting check")
        # the toy model knows only its own world: it is probed with that world's questions (core.drift)
        probe_file = self.data_dir.parent / "probes.jsonl"
        if not probe_file.is_file():  # a demo folder of its own: probe with its held-out prose questions
            probe_file = self.out / "probes.jsonl"
            probe_file.write_text("".join(json.dumps({"prompt": p["messages"][-1]["content"]}) + "\n"
                                          for p in self.prompts["prose"]))
        self.drift = drift = drift_check(self.out / "run", model=self.tuned, events=self.events, cancel=self.cancel,
                                         probes=[probe_file], bundled=False)
        record_evaluation(self.out / "run", None, drift)
        self._finish(s, True, verdict=drift["verdict"], kl_per_token=round(drift["kl_per_token"], 4),
                     loglik_change=round(drift["loglik_change"], 4), changed_share=drift["changed_share"],
                     probes=drift["probe_count"])

    def fuse(self) -> None:
        from core import runs
        from core.export.fuse import fuse_model

        s = self._stage("fuse")
        # the best adapter (lowest validation loss), as Try, Evaluate and Export use it
        self.fused_dir = fuse_model(self.model_dir, self.out / "run", self.out / "fused", events=self.events,
                                    cancel=self.cancel, adapter_file=runs.adapter_file(self.out / "run"))
        self._finish(s, True, path=str(self.fused_dir))

    def export_gguf(self) -> None:
        from core.export.gguf import export_gguf

        s = self._stage("export gguf")
        self.ggufs = {}
        for q in ("f16", "q8_0"):
            res = export_gguf(self.fused_dir, self.out / f"demo-{q}.gguf", quant=q, events=self.events,
                              cancel=self.cancel)
            self.ggufs[q] = res["path"]
        self._finish(s, True, files=self.ggufs)

    def llamacpp_agreement(self) -> None:
        from core.export import llamacpp
        from core.generate import ChatModel

        s = self._stage("llama.cpp agreement")
        if not llamacpp.available():
            self._finish(s, None, skipped="llama-cpp-python is not installed")
            return
        encoder, events = self.encoder, self.events
        fused = ChatModel(self.fused_dir)
        all_prompts = self.prompts["structured"] + self.prompts["prose"]
        ref = _greedy_ids(fused, all_prompts, events, "MLX greedy answers (fused)", self.cancel, encoder)
        for q, path in self.ggufs.items():
            llm = llamacpp.LlamaCppModel(path)
            same = 0
            for i, p in enumerate(all_prompts):
                got = llm.greedy(encoder.prompt_ids(p["messages"]), encoder.eos_ids, max_tokens=64)
                same += got == ref[i]
                events.report_progress(Progress(i + 1, len(all_prompts), "prompt", f"llama.cpp greedy answers ({q})",
                                                item=q))
            llm.close()
            self.agreement[q] = same / len(all_prompts)
        self._finish(s, self.agreement["f16"] >= F16_AGREE_MIN and self.agreement["q8_0"] >= Q8_AGREE_MIN,
                     **{f"{q}_agreement": v for q, v in self.agreement.items()}, prompts=len(all_prompts))

    def quantization_price(self) -> None:
        from core.export import llamacpp

        s = self._stage("quantization price")
        if not llamacpp.available():
            self._finish(s, None, skipped="llama-cpp-python is not installed")
            return
        from core.export.quant_price import measure_quants

        self.price = measure_quants(self.out / "run", events=self.events, cancel=self.cancel)
        self._finish(s, True, **{q: row for q, row in self.price.items()})

    def ollama(self) -> None:
        from core.chat_templates import go_template_for
        from core.export import ollama as ol
        from core.model_folder import load_tokenizer_config

        s = self._stage("ollama")
        tok_cfg = load_tokenizer_config(self.fused_dir)
        self.modelfile = modelfile = self.out / "Modelfile"
        ol.write_modelfile(modelfile, Path(self.ggufs["f16"]), tok_cfg, num_ctx=self.cfg.max_seq_len)
        create_cmd = ol.ollama_create_command(modelfile, self.ollama_name)
        host = ol.find_server()
        if host is None:
            self._finish(s, None, modelfile=str(modelfile), registered=False,
                         message="no Ollama server answered; to register the model run: " + create_cmd)
            return
        template, stops = go_template_for(tok_cfg)
        try:
            reg = ol.register_model(Path(self.ggufs["f16"]), self.ollama_name, template=template, stops=stops,
                                    force=True, host=host, events=self.events, cancel=self.cancel)
            self._finish(s, True, modelfile=str(modelfile), registered=True, model=self.ollama_name, server=host,
                         detail=reg)
        except TuneloomError as exc:
            self._finish(s, False, modelfile=str(modelfile), registered=False, error=exc.user_message(),
                         command=create_cmd)

    def summary(self) -> dict:
        base_score, tuned_score, drift = self.base_score, self.tuned_score, self.drift
        summary = {
            "ok": all(st.ok is not False for st in self.stages),
            "seconds": round(time.perf_counter() - self.t_all, 1),
            "out": str(self.out),
            "base_json_valid_rate": base_score["json_valid_rate"],
            "tuned_json_valid_rate": tuned_score["json_valid_rate"],
            "prose_survival": tuned_score.get("prose_survival"),
            "tuned_json_name_correct_rate": tuned_score.get("json_name_correct_rate"),
            "base_json_exact_rate": base_score.get("json_exact_rate"),
            "tuned_json_exact_rate": tuned_score.get("json_exact_rate"),
            "f16_agreement": self.agreement.get("f16"),
            "q8_0_agreement": self.agreement.get("q8_0"),
            "forgetting_verdict": drift["verdict"],
            "forgetting_kl_per_token": drift["kl_per_token"],
            "quantization": self.price,
            "gguf": self.ggufs,
            "modelfile": str(self.modelfile),
            "stages": [{"stage": st.name, "ok": st.ok, "seconds": st.seconds, **st.detail} for st in self.stages],
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
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
