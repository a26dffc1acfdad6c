"""LoRA / DoRA / QLoRA fine-tuning on mlx-lm's model code, with a loop we own.

Why our own loop: mlx-lm's ``train()`` cannot be paused or cancelled cleanly and its
resume drops optimizer state. This loop keeps mlx-lm's pieces (loader, LoRA/DoRA
layers, schedules) and adds pause/resume/cancel, checkpoints that hold everything a
resume needs (adapters, optimizer state, step; the data order and the dropout RNG are
pure functions of seed and step), a NaN guard, and one metric event per optimizer step.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from core import arch, checkpoints, runs
from core.atomic import atomic_path, write_error, write_json
from core.data import load_dataset, require_clean, test_files, train_valid, train_valid_test
from core.divergence import DivergenceGuard
from core.events import NULL_EVENTS, CancelToken, Cancelled, Events, Progress, StepReport, TuneloomError
from core.options import OPTION_RANGES, OPTION_TEXT, OPTIONS, metadata, option_allows, _check_option  # noqa: F401,E501 - re-exported
from core.tokens import ChatEncoder, Encoded

# the modules train adapts, of every family together (core.arch; a model has the ones its layers have)
ATTENTION_KEYS = list(arch.ATTENTION_KEYS)
MLP_KEYS = list(arch.MLP_KEYS)
DELTANET_KEYS = list(arch.RECURRENT_KEYS)  # Qwen3.5's Gated DeltaNet projections (core.arch.DELTANET)


class TrainingDiverged(TuneloomError):
    """The loss became NaN, or stayed at a uniform guess (core.divergence): status.json says "diverged"."""

    state = "diverged"

    def __init__(self, message: str, hint: str = "", onset: int | None = None):
        super().__init__(message, hint)
        self.onset = onset  # the first step that may be spoilt: checkpoints from it on are set aside


class ConfigError(TuneloomError):
    """A TrainConfig option outside its valid range (the CLI exits 2, as for a bad flag)."""

    exit_code = 2


MAX_NAME = 100


@dataclass
class TrainConfig:
    model: str = field(metadata=metadata("model"))
    data: list[str] = field(default_factory=list, metadata=metadata("data"))
    out: str | None = field(default=None, metadata=metadata("out"))
    name: str = field(default="run", metadata=metadata("name"))
    iters: int | None = field(default=None, metadata=metadata("iters"))
    epochs: float = field(default=1.0, metadata=metadata("epochs"))
    rank: int = field(default=8, metadata=metadata("rank"))
    alpha: float = field(default=16.0, metadata=metadata("alpha"))
    dropout: float = field(default=0.0, metadata=metadata("dropout"))
    targets: str = field(default="all", metadata=metadata("targets"))
    num_layers: int = field(default=-1, metadata=metadata("num_layers"))
    lr: float = field(default=1e-4, metadata=metadata("lr"))
    warmup: int = field(default=10, metadata=metadata("warmup"))
    min_lr_ratio: float = field(default=0.1, metadata=metadata("min_lr_ratio"))
    weight_decay: float = field(default=0.0, metadata=metadata("weight_decay"))
    batch: int = field(default=4, metadata=metadata("batch"))
    grad_accum: int = field(default=1, metadata=metadata("grad_accum"))
    max_seq_len: int = field(default=512, metadata=metadata("max_seq_len"))
    grad_checkpoint: bool = field(default=False, metadata=metadata("grad_checkpoint"))
    seed: int = field(default=0, metadata=metadata("seed"))
    mask_prompt: bool = field(default=True, metadata=metadata("mask_prompt"))
    last_turn_only: bool = field(default=False, metadata=metadata("last_turn_only"))
    dora: bool = field(default=False, metadata=metadata("dora"))
    valid_every: int = field(default=50, metadata=metadata("valid_every"))
    valid_batches: int = field(default=32, metadata=metadata("valid_batches"))
    checkpoint_every: int = field(default=50, metadata=metadata("checkpoint_every"))
    valid_fraction: float = field(default=0.1, metadata=metadata("valid_fraction"))
    test_fraction: float = field(default=0.1, metadata=metadata("test_fraction"))
    early_stop: int = field(default=0, metadata=metadata("early_stop"))
    skip_invalid: bool = field(default=False, metadata=metadata("skip_invalid"))
    mapping: dict | None = field(default=None, metadata=metadata("mapping"))
    user_template: str | None = field(default=None, metadata=metadata("user_template"))
    assistant_template: str | None = field(default=None, metadata=metadata("assistant_template"))
    system_prompt: str | None = field(default=None, metadata=metadata("system_prompt"))
    use: str | None = field(default=None, metadata=metadata("use"))
    fill: dict | None = field(default=None, metadata=metadata("fill"))
    chunk: bool = field(default=False, metadata=metadata("chunk"))
    thinking: bool = field(default=False, metadata=metadata("thinking"))
    pack: bool = field(default=False, metadata=metadata("pack"))
    compile: bool = field(default=True, metadata=metadata("compile"))
    method: str = field(default="sft", metadata=metadata("method"))
    beta: float = field(default=0.1, metadata=metadata("beta"))
    orpo_lambda: float = field(default=0.1, metadata=metadata("orpo_lambda"))
    label_smoothing: float = field(default=0.0, metadata=metadata("label_smoothing"))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse impossible options (with their valid range) before anything is loaded: ConfigError."""
        problems = [p for p in (_check_option(self, name, rule) for name, rule in OPTION_RANGES.items()) if p]
        if not isinstance(self.name, str) or len(self.name) > MAX_NAME:
            problems.append(f"--name is {len(self.name) if isinstance(self.name, str) else repr(self.name)} "
                            f"characters long, must be at most {MAX_NAME} (it becomes part of a folder name)")
        if self.method not in OPTIONS["method"].choices:
            problems.append(f"--method is {self.method!r}, must be one of {', '.join(OPTIONS['method'].choices)}")
        if problems:
            raise ConfigError("Impossible training options: " + "; ".join(problems) + ".",
                              "Change them to a value in the range given (`tuneloom train --help` says what "
                              "each option does).")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def run_config(saved: dict) -> TrainConfig:
    """A run folder's config.json as a TrainConfig. Runs from before the test split (no
    ``test_fraction`` saved) had none: their split stays the one they trained on."""
    return TrainConfig.from_dict({"test_fraction": 0.0, **saved})


# the presets, the default one and the memory shares live in core.presets (the catalog reads them too)
from core.presets import (DEFAULT_PRESET, METHOD_PRESETS, PRESET_TEXT, PRESETS, REFUSE_SHARE,  # noqa: E402,F401
                          WARN_SHARE, preset_values)


def option_help(name: str) -> str:
    """The plain-words help of a TrainConfig option (the GUI's tooltip, the CLI's --help)."""
    f = {f.name: f for f in fields(TrainConfig)}[name]
    return f.metadata.get("help", "")


def option_label(name: str) -> str:
    f = {f.name: f for f in fields(TrainConfig)}[name]
    return f.metadata.get("label") or name.replace("_", " ").capitalize()


def preset_config(preset: str, method: str = "sft", **overrides) -> dict:
    """Every TrainConfig value a preset gives for a run of ``method`` (core.presets.preset_values;
    defaults filled in), with ``overrides`` on top."""
    if preset not in PRESETS:
        raise TuneloomError(f"Unknown preset {preset!r}.", f"Choose one of: {', '.join(PRESETS)}.")
    base = {f.name: getattr(TrainConfig(model=""), f.name) for f in fields(TrainConfig)}
    return {**base, **preset_values(preset, method), **overrides}


# A run shorter than this cannot show whether the data teaches anything (the loss of a few steps is noise).
MIN_STEPS = 30
# The warm-up takes at most this share of a run: a warm-up longer than the run never reaches the learning rate.
MAX_WARMUP_SHARE = 0.1


def planned_steps(values: dict, n_train: int) -> int:
    """Optimizer steps a run with ``values`` (TrainConfig fields) takes on ``n_train`` examples, as train()
    counts them (unpacked): the given step count, else passes x full batches per pass."""
    if values.get("iters"):
        return int(values["iters"])
    batch = max(1, min(int(values.get("batch") or 1), max(1, n_train)))
    per_epoch = max(1, (max(0, n_train) // batch) // max(1, int(values.get("grad_accum") or 1)))
    return max(1, int(round(float(values.get("epochs") or 1.0) * per_epoch)))


def fit_to_data(values: dict, n_train: int) -> tuple[dict, list[str]]:
    """A preset's values made to fit a dataset of ``n_train`` training examples: at least MIN_STEPS steps
    (more passes over a small file, unless a step count was given) and a warm-up of at most a tenth of the
    run. Returns the new values and one sentence per change (the Train page shows them)."""
    out = dict(values)
    notes = []
    steps = planned_steps(out, n_train)
    if not out.get("iters") and steps < MIN_STEPS:
        out["iters"] = MIN_STEPS
        notes.append(f"{MIN_STEPS} steps instead of {steps}: {n_train:,} examples make too few steps to learn "
                     f"from in {float(out.get('epochs') or 1):g} pass(es), so the run goes over them more often")
        steps = MIN_STEPS
    warm = int(out.get("warmup") or 0)
    cap = int(steps * MAX_WARMUP_SHARE)
    if warm > cap:
        out["warmup"] = cap
        notes.append(f"warm-up {cap} steps instead of {warm}: at most a tenth of the run's {steps} steps")
    return out, notes


def _load_data(cfg: TrainConfig, cancel: CancelToken | None = None):
    return load_dataset(cfg.data, mapping=cfg.mapping, user_template=cfg.user_template,
                        assistant_template=cfg.assistant_template, system=cfg.system_prompt, cancel=cancel,
                        use=cfg.use, fill=cfg.fill, skip_splits={"test"})  # the test file is never opened by training


def training_examples(cfg: TrainConfig) -> int:
    """How many examples a new run with ``cfg`` trains on (train()'s split of its data; pairs for
    preference tuning): what fit_to_data needs before the run starts. Raises TuneloomError as train()
    would on the same data."""
    from core import preference as pref

    ds = _load_data(cfg)
    if pref.valid_method(cfg.method) != "sft":
        return len(pref.split_pairs(ds, cfg.valid_fraction, cfg.seed, cfg.skip_invalid, cfg.test_fraction,
                                    bool(test_files(cfg.data)))[0])
    require_clean(ds, cfg.skip_invalid)
    return len(train_valid_test(ds, cfg.valid_fraction, cfg.test_fraction, cfg.seed,
                                has_test_file=bool(test_files(cfg.data)))[0])


def fit_config(cfg: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """``cfg`` made to fit its data (fit_to_data on its training examples), and a sentence per change:
    `tuneloom train` runs what the Train page would start on the same data and options."""
    out, notes = fit_to_data(asdict(cfg), training_examples(cfg))
    changed = {k: v for k, v in out.items() if v != getattr(cfg, k)}
    return (replace(cfg, **changed) if changed else cfg), notes


def apply_preset(cfg_kwargs: dict, preset: str | None) -> dict:
    if not preset:
        return cfg_kwargs
    if preset not in PRESETS:
        raise TuneloomError(f"Unknown preset {preset!r}.", f"Choose one of: {', '.join(PRESETS)}.")
    given = {k: v for k, v in cfg_kwargs.items() if v is not None}
    return {**preset_values(preset, given.get("method")), **given}


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------

def load_base(model_dir: str | Path):
    """Load a model folder with mlx-lm; float weights in float32 on the CPU, as stored on a GPU."""
    import mlx.core as mx
    from mlx_lm.utils import load_model

    from core.hub import validate_model_dir

    # the one model-folder check fetch and export use too: a config.json that disagrees with the weights
    wrong = [p for p in validate_model_dir(model_dir, load_tokenizer=False).problems if p.code == "config_mismatch"]
    if wrong:
        raise TuneloomError(f"Cannot train on {model_dir}: {wrong[0].message}", wrong[0].hint)
    try:
        model, config = load_model(Path(model_dir))
    except FileNotFoundError as exc:
        raise TuneloomError(f"{model_dir} is not a complete model folder: {exc}",
                            "It needs config.json and *.safetensors weights.") from exc
    except ValueError as exc:
        raise TuneloomError(f"Cannot load the model in {model_dir}: {exc}") from exc
    if mx.default_device() == mx.cpu:
        model.set_dtype(mx.float32)
    # read the weights now: MLX 0.32 keeps a stream per thread, so weights left lazy on this thread's stream
    # could not be evaluated by another ("no Stream(cpu, 0) in current thread"): the window loads in one job
    # and answers in another
    mx.eval(model.parameters())
    return model, config


def add_adapters(model, cfg: TrainConfig) -> dict:
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mixers = ATTENTION_KEYS + DELTANET_KEYS  # each model has the ones its layers have
    keys = mixers if cfg.targets == "attention" else mixers + MLP_KEYS
    present = set()
    for layer in model.layers:
        for name, _ in layer.named_modules():
            present.add(name)
    keys = [k for k in keys if k in present]
    n_layers = len(model.layers) if cfg.num_layers < 0 else min(cfg.num_layers, len(model.layers))
    params = {"rank": cfg.rank, "scale": cfg.scale, "dropout": cfg.dropout, "keys": keys}
    model.freeze()
    linear_to_lora_layers(model, n_layers, params, use_dora=cfg.dora)
    return {"fine_tune_type": "dora" if cfg.dora else "lora", "num_layers": n_layers, "lora_parameters": params}


def adapter_weights(model) -> dict:
    from mlx.utils import tree_flatten

    return dict(tree_flatten(model.trainable_parameters()))


def save_adapters(model, dest_dir: Path, adapter_config: dict) -> None:
    import mlx.core as mx

    dest_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest_dir / "adapters.safetensors", suffix=".safetensors") as tmp:
        mx.save_safetensors(str(tmp), adapter_weights(model))
    write_json(dest_dir / "adapter_config.json", adapter_config)


# ---------------------------------------------------------------------------
# Best adapter, early stop, memorising
# ---------------------------------------------------------------------------

MEMORISING_RISE = 0.02  # validation loss this share above its best (with training loss falling): memorising


def save_best_adapters(model, run_dir: Path, adapter_config: dict) -> None:
    """Write the current adapter as the run's best (``adapters_best.safetensors``)."""
    import mlx.core as mx

    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / runs.BEST_ADAPTERS, suffix=".safetensors") as tmp:
        mx.save_safetensors(str(tmp), adapter_weights(model))
    if not (run_dir / "adapter_config.json").exists():
        write_json(run_dir / "adapter_config.json", adapter_config)


class BestKeeper:
    """Follows the validation losses of a run: the best step (lowest validation loss; its adapter is
    saved through ``save``), validations in a row without improvement (early stop after
    ``patience`` of them; 0: never) and memorising (two validations without improvement, the latest
    :data:`MEMORISING_RISE` above the best, while the training loss kept falling), said in the log
    (again only after a new best). Fed every training loss (``train``) and every
    validation (``valid``); a resume replays the kept metrics first (``replay``) so that the
    best-so-far and the count carry on."""

    def __init__(self, patience: int = 0, events: Events | None = None):
        self.patience = max(0, int(patience or 0))
        self.events = events or NULL_EVENTS
        self.best_step: int | None = None
        self.best_loss = math.inf
        self.last_loss: float | None = None
        self.bad = 0
        self.memorising: dict | None = None  # {"best_step", "step", "best_valid_loss", "valid_loss"}
        self._since: list[float] = []
        self._interval: dict[int, float | None] = {}  # validation step -> mean training loss since the one before

    def train(self, loss: float) -> None:
        self._since.append(float(loss))

    def replay(self, history: list) -> None:
        """``history``: [step, train_loss or None, valid_loss or None] in file order (a resume)."""
        for step, tl, vl in history:
            if tl is not None:
                self.train(tl)
            if vl is not None:
                self.valid(int(step), float(vl), quiet=True)

    def valid(self, step: int, loss: float, save=None, quiet: bool = False) -> bool:
        """Note a validation loss; True when the run should stop early."""
        mean_train = sum(self._since) / len(self._since) if self._since else None
        self._since = []
        self._interval[step] = mean_train
        self.last_loss = loss
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.bad = loss, step, 0
            self.memorising = None  # it got better again: that was a bump, not memorising
            if save is not None:
                save(step, loss)
            return False
        self.bad += 1
        ref = self._interval.get(self.best_step)
        if ref is None:  # best before any training (step 0): the first training interval is the reference
            ref = next((v for s, v in sorted(self._interval.items()) if v is not None and s != step), None)
        # memorising: two validations in a row without improvement, the latest clearly above the best,
        # while the training loss went on falling (a single bump is often the noise of a large step)
        if (self.memorising is None and self.bad >= 2 and mean_train is not None and ref is not None
                and mean_train < ref and loss > self.best_loss * (1 + MEMORISING_RISE)):
            self.memorising = {"best_step": self.best_step, "step": step, "best_valid_loss": self.best_loss,
                               "valid_loss": loss}
            if not quiet:
                self.events.log("warning", memorising_text(self.memorising))
        return bool(self.patience) and self.bad >= self.patience


def memorising_text(m: dict) -> str:
    """The words for the memorising warning (the run log, the Train page)."""
    return (f"The model has started to memorise the training examples: at step {m['step']} the validation loss "
            f"is {m['valid_loss']:.4f}, up from {m['best_valid_loss']:.4f} at step {m['best_step']}, while the "
            f"training loss keeps falling. The best adapter (step {m['best_step']}) is kept as "
            f"{runs.BEST_ADAPTERS}; Try, Evaluate and Export use it.")


def _write_report(run_dir: Path, events: Events) -> None:
    from core.report import write_report

    try:
        write_report(run_dir)
    except (OSError, ValueError) as exc:  # the run is done; only its report card is missing
        events.log("warning", f"could not write the report card in {run_dir}: {exc}")


def _record_best(run_dir: Path, step: int, loss: float) -> None:
    """best_step (and its validation loss) in config.json and status.json."""
    runs.update_json(run_dir / "config.json", best_step=step, best_valid_loss=loss)
    runs.update_json(run_dir / "status.json", best_step=step, best_valid_loss=loss)


# ---------------------------------------------------------------------------
# Memory estimate
# ---------------------------------------------------------------------------

def total_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def estimate_memory(model_config: dict, weight_bytes: int, lora_params: int, batch: int, seq_len: int,
                    grad_checkpoint: bool, act_bytes: int = 4) -> int:
    """Rough peak bytes: weights + LoRA (param, grad, Adam m, v) + activations + logits."""
    model_config = {**model_config, **(model_config.get("text_config") or {})}  # Qwen3.5 nests its dimensions
    hidden = model_config.get("hidden_size", 1024)
    layers = model_config.get("num_hidden_layers", 24)
    inter = model_config.get("intermediate_size", 4 * hidden)
    vocab = model_config.get("vocab_size", 32000)
    tokens = batch * seq_len
    per_layer = tokens * (10 * hidden + 3 * inter) * act_bytes
    acts = per_layer * (2 if grad_checkpoint else layers)
    if model_config.get("linear_num_value_heads"):
        # Qwen3.5's Gated DeltaNet layers train through mlx-lm's step-by-step recurrence,
        # whose backward pass keeps about three state-sized arrays (value heads x value dim
        # x key dim floats) per token and layer: measured 2.1 (eager) to 2.9 (mx.compile)
        # on Qwen3.5-0.8B's dimensions (3 MiB per token and layer), one layer at a time
        # with checkpointing. For this family it is most of the memory.
        state = (model_config["linear_num_value_heads"] * model_config["linear_value_head_dim"]
                 * model_config["linear_key_head_dim"] * 4)
        kinds = model_config.get("layer_types") or [
            "full_attention" if (i + 1) % model_config.get("full_attention_interval", 4) == 0 else "linear_attention"
            for i in range(layers)]
        n_linear = sum(1 for k in kinds if k == "linear_attention")
        acts += tokens * state * 3 * (1 if grad_checkpoint else n_linear)
    logits = tokens * vocab * 4 * 3  # logits, softmax, grad
    return int(weight_bytes + lora_params * 4 * 4 + acts + logits)


# ---------------------------------------------------------------------------
# Data order: a pure function of (seed, epoch) so a resume replays it exactly
# ---------------------------------------------------------------------------

class BatchPlan:
    def __init__(self, lengths: list[int], batch: int, seed: int):
        self.lengths, self.batch, self.seed = lengths, batch, seed
        if len(lengths) < batch:
            self.batch = max(1, len(lengths))
        self._cache: dict[int, list[list[int]]] = {}

    def epoch(self, e: int) -> list[list[int]]:
        if e not in self._cache:
            rng = random.Random(self.seed * 1000003 + e)
            idx = list(range(len(self.lengths)))
            rng.shuffle(idx)
            # Group by length within windows to cut padding, keep randomness across windows.
            window = self.batch * 16
            grouped = []
            for i in range(0, len(idx), window):
                grouped += sorted(idx[i:i + window], key=lambda j: self.lengths[j])
            batches = [grouped[i:i + self.batch] for i in range(0, len(grouped) - self.batch + 1, self.batch)]
            rng.shuffle(batches)
            self._cache = {e: batches}
        return self._cache[e]

    @property
    def per_epoch(self) -> int:
        return len(self.lengths) // self.batch

    def micro(self, k: int) -> list[int]:
        """The k-th micro-batch of the whole run (0-based)."""
        e, i = divmod(k, self.per_epoch)
        return self.epoch(e)[i]


# core.arch: the families whose __call__ is head(body(x)), and those whose layers carry a recurrent state
# along the sequence (packing is refused for them: the run trains unpacked and says why)
SELECTIVE_HEAD_TYPES = arch.SELECTIVE_HEAD_TYPES
RECURRENT_TYPES = arch.RECURRENT_TYPES


def packing_unavailable(model_type: str | None) -> str | None:
    """Why sequence packing cannot be used for ``model_type`` (None when it can)."""
    if model_type in RECURRENT_TYPES:
        return ("Packing is off for this model: its linear-attention (Gated DeltaNet) layers carry a memory from "
                "one token to the next, so examples packed into one row would leak into each other. "
                "Training unpacked (padding each batch instead).")
    return None


def selective_head(model) -> bool:
    """Whether we may compute logits only where the loss needs them.

    The output projection is the largest matmul of a small model with a large vocabulary
    (Qwen: 152k x hidden), and prompt and padding positions never need logits. For the
    architectures whose ``__call__`` is exactly ``head(model(x))`` we run the body and the
    head ourselves, the head on trained positions only.
    """
    return getattr(getattr(model, "args", None), "model_type", None) in SELECTIVE_HEAD_TYPES


def _body(model, x, mask):
    """The transformer body with an explicit attention mask (qwen2/qwen3/llama: the same loop
    their ``Model.model.__call__`` runs with a causal mask, without pipeline parallelism)."""
    inner = model.model
    h = inner.embed_tokens(x)
    for layer in inner.layers:
        h = layer(h, mask, None)
    return inner.norm(h)


def pack_sequences(seqs: list[Encoded], capacity: int) -> list[tuple[Encoded, list[int]]]:
    """First-fit-decreasing packing of examples into rows of at most ``capacity`` tokens.

    Returns (row, segment lengths). Attention stays within each example (a block-diagonal
    causal mask is built per batch) and RoPE only sees distances within an example, so a
    packed example trains exactly as it would alone, with no padding in between.
    """
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i].ids))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = min(len(seqs[i].ids), capacity)
        for r, f in enumerate(free):
            if f >= n:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(capacity - n)
    out = []
    for members in rows:
        ids, mask, segs = [], [], []
        for i in members:
            s = seqs[i]
            n = min(len(s.ids), capacity)
            ids += s.ids[:n]
            mask += [False] + list(s.mask[1:n])  # the first token is never predicted from another example
            segs.append(n)
        out.append((Encoded(ids, mask), segs))
    return out


def _head(model, h):
    lm = getattr(model, "language_model", model)  # Qwen3.5 wraps its text model
    if lm.args.tie_word_embeddings:
        return lm.model.embed_tokens.as_linear(h)
    return lm.lm_head(h)


def pad_batch(seqs: list[Encoded], pad_id: int, max_len: int, select: bool = False,
              segments: list[list[int]] | None = None):
    """(inputs, targets, weights) as arrays; with ``select`` the targets and weights are those
    of the trained positions only, plus ``idx``, their flat positions (padded to a bucket size so
    that mx.compile sees few shapes; padded entries have weight 0)."""
    import mlx.core as mx
    import numpy as np

    L = min(max(len(s.ids) for s in seqs), max_len)
    L = min(int(math.ceil(L / 16) * 16), max_len)  # few shapes: small mx.compile cache
    ids = np.full((len(seqs), L), pad_id, dtype=np.int32)
    w = np.zeros((len(seqs), L), dtype=np.float32)
    for r, s in enumerate(seqs):
        n = min(len(s.ids), L)
        ids[r, :n] = s.ids[:n]
        w[r, :n] = s.mask[:n]
    x, y, wt = ids[:, :-1], ids[:, 1:], w[:, 1:]
    attn = None
    if segments is not None:  # block-diagonal causal mask for packed rows
        seg = np.zeros((len(seqs), L), dtype=np.int32)
        for r, lens in enumerate(segments):
            pos = 0
            for k, n in enumerate(lens):
                seg[r, pos:pos + n] = k + 1
                pos += n
        seg = seg[:, :-1]
        causal = np.tril(np.ones((L - 1, L - 1), dtype=bool))
        attn = mx.array((seg[:, :, None] == seg[:, None, :]) & causal[None])[:, None]
    if not select:
        if attn is not None:
            raise ValueError("packing needs the selective-head path")
        return mx.array(x), mx.array(y), mx.array(wt)
    flat = np.flatnonzero(wt.reshape(-1) > 0).astype(np.int32)
    bucket = max(64, (wt.size // 4 + 63) // 64 * 64)  # at most 4 sizes per batch shape
    k = max(bucket, int(math.ceil(len(flat) / bucket) * bucket))
    idx = np.zeros(k, dtype=np.int32)
    idx[: len(flat)] = flat
    wsel = np.zeros(k, dtype=np.float32)
    wsel[: len(flat)] = wt.reshape(-1)[flat]
    ysel = y.reshape(-1)[idx]
    out = (mx.array(x), mx.array(ysel), mx.array(wsel), mx.array(idx))
    return out + (attn,) if attn is not None else out


def encode_records(encoder: ChatEncoder, records, cfg: TrainConfig) -> list[Encoded]:
    out = []
    for r in records:
        e = encoder.encode(r.messages, mask_prompt=cfg.mask_prompt, last_turn_only=cfg.last_turn_only,
                           tools=getattr(r, "tools", None))
        if len(e.ids) > cfg.max_seq_len:
            e = Encoded(e.ids[: cfg.max_seq_len], e.mask[: cfg.max_seq_len])
        if sum(e.mask[1:]) > 0:
            out.append(e)
    return out


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------

def _loss(model, x, y, w, idx=None, attn=None):
    import mlx.core as mx
    import mlx.nn as nn

    if idx is None:
        logits = model(x).astype(mx.float32)
    else:  # logits only at the trained positions (see selective_head)
        h = model.model(x) if attn is None else _body(model, x, attn)
        h = h.reshape(-1, h.shape[-1])[idx]
        logits = _head(model, h).astype(mx.float32)
    ce = nn.losses.cross_entropy(logits, y) * w
    ntoks = w.sum()
    return ce.sum() / mx.maximum(ntoks, 1.0), ntoks


def evaluate_loss(model, seqs: list[Encoded], batch: int, pad_id: int, max_len: int, max_batches: int = -1,
                  group=None) -> float:
    """Token-weighted mean loss over ``seqs``. In a group each rank takes every size-th batch and
    the sums are added over the ranks, so the result is the single-process one."""
    import mlx.core as mx

    total, count = 0.0, 0.0
    nb = 0
    select = selective_head(model)
    rank, size = (group.rank, group.size) if group is not None else (0, 1)
    for i in range(0, len(seqs), batch):
        if 0 <= max_batches <= nb:
            break
        nb += 1
        if (nb - 1) % size != rank:
            continue
        loss, n = _loss(model, *pad_batch(seqs[i:i + batch], pad_id, max_len, select))
        mx.eval(loss, n)
        total += loss.item() * n.item()
        count += n.item()
    if size > 1:
        total, count = group.sum_floats(total, count)
    return total / max(count, 1.0)


def _schedule(cfg: TrainConfig, total_steps: int):
    import mlx.optimizers as optim

    warm = max(0, min(cfg.warmup, total_steps - 1))
    decay = optim.cosine_decay(cfg.lr, max(1, total_steps - warm), cfg.lr * cfg.min_lr_ratio)
    if warm == 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(cfg.lr * 0.01, cfg.lr, warm), decay], [warm])


def _peak_memory() -> float:
    import mlx.core as mx

    fn = getattr(mx, "get_peak_memory", None) or getattr(getattr(mx, "metal", None), "get_peak_memory", None)
    try:
        return float(fn()) if fn else 0.0
    except Exception:  # noqa: BLE001 - not every backend reports
        return 0.0


def _vocab_size(model_config: dict) -> int | None:
    v = (model_config.get("text_config") or {}).get("vocab_size") or model_config.get("vocab_size")
    return int(v) if isinstance(v, (int, float)) and v > 1 else None


def _judge(why: str | None, cfg: TrainConfig, onset: int | None = None) -> None:
    """Stop the run as diverged when core.divergence found something wrong."""
    if why:
        raise TrainingDiverged(f"Training diverged: {why}.", "", onset=onset)


def _set_aside_diverged(run_dir: Path, onset: int | None) -> int | None:
    """Keep the last good checkpoint: checkpoints from the divergence's first step on are renamed
    ``diverged-step-N`` (never resumed from), and the run's adapters are the last good checkpoint's.
    Returns the step of that checkpoint (None when there is none)."""
    ck_dir = Path(run_dir) / "checkpoints"
    if onset is not None and ck_dir.is_dir():
        for d in list(ck_dir.iterdir()):
            if d.name.startswith("step-") and d.name[5:].isdigit() and int(d.name[5:]) >= onset:
                aside = ck_dir / f"diverged-{d.name}"
                if aside.exists():
                    shutil.rmtree(aside, ignore_errors=True)
                os.replace(d, aside)
    good = runs.latest_checkpoint(run_dir)
    if good is None:
        return None
    for name in ("adapters.safetensors", "adapter_config.json"):
        if (good / name).is_file():
            with atomic_path(Path(run_dir) / name, suffix=Path(name).suffix) as tmp:
                shutil.copyfile(good / name, tmp)
    return int(good.name.split("-")[1])


def _diverged_hint(cfg: TrainConfig, kept: int | None) -> str:
    keep = (f"The last good adapters (step {kept}) are kept." if kept else
            "No checkpoint was written before it went wrong, so no good adapters are kept.")
    return (f"{keep} Lower the learning rate (now {cfg.lr:g}; try {cfg.lr / 10:g}) and start the run again "
            f"with it (--lr {cfg.lr / 10:g}).")


def refuse_finished(run_dir: Path) -> None:
    """A resume of a run that has done all its steps trains nothing: say so (core.runs.RunFinished)."""
    st = runs.read_json(Path(run_dir) / "status.json", {})
    if isinstance(st, dict) and st.get("state") == "done":
        steps = st.get("steps") or st.get("step")
        raise runs.RunFinished(
            f"{run_dir} is finished" + (f": all {steps} steps are done" if steps else "") + "; nothing to resume.",
            "Try or export it; to train more, start a new run (e.g. with more --iters).")


def _save_checkpoint(run_dir: Path, step: int, model, opt, adapter_config: dict) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    ck = run_dir / "checkpoints" / f"step-{step:06d}"
    tmp = run_dir / "checkpoints" / f".step-{step:06d}.part"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        mx.save_safetensors(str(tmp / "adapters.safetensors"), adapter_weights(model))
        opt_state = dict(tree_flatten(opt.state))
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), opt_state)
        (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
        # sizes and checksums, checked before a resume trusts the checkpoint (core.checkpoints)
        state = checkpoints.checkpoint_state(tmp, step, runs.read_json(run_dir / "config.json"))
        (tmp / "state.json").write_text(json.dumps(state))
        if ck.exists():
            shutil.rmtree(ck)
        os.replace(tmp, ck)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # no half-written checkpoint stays behind
        if isinstance(exc, OSError):
            raise write_error(exc, f"the checkpoint of step {step}", run_dir) from exc
        raise
    # keep the two newest checkpoints
    olds = sorted(d for d in ck.parent.iterdir() if d.is_dir() and d.name.startswith("step-"))[:-2]
    for d in olds:
        shutil.rmtree(d, ignore_errors=True)


def _restore_verified(run_dir: Path, model, opt, config: dict, events) -> tuple[Path | None, int]:
    """Restore the newest checkpoint that verifies (core.checkpoints); damaged ones are set aside with a
    message and the previous one is used. A checkpoint of another config is refused."""
    for ck in checkpoints.candidates(run_dir):
        why = checkpoints.problem(ck)
        if why is None and not checkpoints.belongs_to(ck, config):
            raise TuneloomError(
                f"Checkpoint {ck} was written for another configuration than {run_dir / 'config.json'}: "
                f"resuming from it would mix two runs.",
                "Start a new run (another --out), or move the checkpoints of the other run out of this folder.")
        if why is None:
            try:
                return ck, _restore_checkpoint(ck, model, opt)
            except Exception as exc:  # noqa: BLE001 - mlx's loaders raise RuntimeError / ValueError
                why = f"it does not load ({str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r})"
        aside = checkpoints.set_aside(ck)
        events.log("warning", f"checkpoint {ck.name} is damaged: {why}. It is set aside as {aside.name}; "
                              f"resuming from the checkpoint before it.")
    return None, 0


def _restore_checkpoint(ck: Path, model, opt) -> int:
    import mlx.core as mx
    from mlx.utils import tree_unflatten

    # everything is read before anything is applied: a file that fails leaves the model as it was
    weights = mx.load(str(ck / "adapters.safetensors"))
    state = mx.load(str(ck / "optimizer.safetensors"))
    mx.eval(list(weights.values()), list(state.values()))
    step = json.loads((ck / "state.json").read_text())["step"]
    model.load_weights(list(weights.items()), strict=False)
    opt.state = tree_unflatten(list(state.items()))
    return step


def train(cfg: TrainConfig, *, resume: str | Path | None = None, events: Events | None = None,
          cancel: CancelToken | None = None) -> dict:
    """Run (or resume) a LoRA fine-tune. Returns the run summary; raises Cancelled / TrainingDiverged.

    The run folder belongs to this call while it runs (core.runs.claim_run: an OS lock; a new run
    is refused on a folder that holds another run, a resume of a finished run trains nothing)."""
    with contextlib.ExitStack() as held:
        return _train(cfg, resume=resume, events=events, cancel=cancel, held=held)


def _train(cfg: TrainConfig, *, resume, events, cancel, held: contextlib.ExitStack) -> dict:
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten

    from core.distributed import GroupError, current_group, shard

    # A group run (core.distributed, started by mlx.launch): every rank trains on its share of each
    # batch; rank 0 alone reports and writes the run folder, and hands its state to the others.
    group = current_group()
    main = group.is_main
    events = (events or NULL_EVENTS) if main else NULL_EVENTS
    cancel = cancel or CancelToken()
    if resume:
        run_dir = Path(resume)
        saved = group.broadcast_json(runs.read_json(run_dir / "config.json") if main else None)
        if not saved:
            raise TuneloomError(f"{run_dir} is not a run folder (no config.json).", "Pick a folder under runs/.")
        if main:
            held.enter_context(runs.claim_run(run_dir, resume=True))
            refuse_finished(run_dir)
        cfg = run_config(saved)
    else:
        if group.distributed and not cfg.out:
            raise GroupError("A group run needs its run folder given (--out), the same for every rank.",
                             "Start group runs with `tuneloom train --hosts HOSTFILE`.")
        run_dir = Path(cfg.out) if cfg.out else runs.new_run_dir(cfg.name)
        if main:
            held.enter_context(runs.claim_run(run_dir))  # refuses a folder that holds another run
            write_json(run_dir / "config.json", asdict(cfg))
            runs.remember(run_dir)  # a folder outside runs/ (--out) still shows in the history
    events.progress(0, None, "loading data")
    ds = _load_data(cfg, cancel)
    from core import preference as pref

    preference = pref.valid_method(cfg.method) != "sft"
    if preference:  # pairs of answers: DPO / ORPO (core.preference); the test pairs are set aside, never encoded
        train_recs, valid_recs, test_recs = pref.split_pairs(ds, cfg.valid_fraction, cfg.seed, cfg.skip_invalid,
                                                             cfg.test_fraction, bool(test_files(cfg.data)))
        n_test = len(test_recs) if test_recs or not test_files(cfg.data) else None  # None: a test file, unread
        del test_recs
    else:
        require_clean(ds, cfg.skip_invalid)
        # the test examples drawn from the data are set aside here and never encoded
        train_recs, valid_recs, test_recs = train_valid_test(ds, cfg.valid_fraction, cfg.test_fraction, cfg.seed,
                                                             has_test_file=bool(test_files(cfg.data)))
        n_test = len(test_recs) if test_recs or not test_files(cfg.data) else None  # None: a test file, unread
        del test_recs
    # thinking follows the data (a resumed run keeps its own); config.json records it for the export
    encoder = ChatEncoder(cfg.model, thinking=cfg.thinking if resume else bool(ds.reasoning))
    if not resume and cfg.thinking != encoder.thinking:
        cfg.thinking = encoder.thinking
        if main:
            write_json(run_dir / "config.json", asdict(cfg))
    if main and not resume and any(getattr(r, "tools", None) for r in ds.records): runs.update_json(run_dir / "config.json", tools=True)  # noqa: E501,E701 - issue 31: the export renders tools (core.export.run_tools)
    if cfg.chunk and not preference:  # issue 26: long text documents become windows of max_seq_len instead of being cut
        from core.tokens import chunk_records

        train_recs, docs, windows = chunk_records(encoder, train_recs, cfg.max_seq_len, cancel)
        valid_recs = chunk_records(encoder, valid_recs, cfg.max_seq_len, cancel)[0]
        events.log("info", f"chunked: {docs} documents longer than {cfg.max_seq_len} tokens split into {windows} "
                           "windows")
    if preference:
        train_seqs = pref.encode_pairs(encoder, train_recs, cfg.max_seq_len)
        valid_seqs = pref.encode_pairs(encoder, valid_recs, cfg.max_seq_len)
    else:
        train_seqs = encode_records(encoder, train_recs, cfg)
        valid_seqs = encode_records(encoder, valid_recs, cfg)
    if not train_seqs:
        raise TuneloomError("No training example has any token to learn from.",
                            "Check that examples have assistant answers and fit the max sequence length.")
    pad_id = encoder.tok.pad_token_id if encoder.tok.pad_token_id is not None else (encoder.eos_ids or [0])[0]

    events.progress(0, None, "loading model")
    mx.random.seed(cfg.seed)
    model, model_config = load_base(cfg.model)
    weight_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    adapter_config = add_adapters(model, cfg)
    adapter_config["base_model"] = str(cfg.model)
    lora_params = sum(v.size for v in adapter_weights(model).values())
    rows = cfg.batch * (2 if preference else 1)  # a pair is two sequences
    est = estimate_memory(model_config, weight_bytes, lora_params, rows, cfg.max_seq_len, cfg.grad_checkpoint)
    avail = total_memory_bytes()
    from core.units import fmt_memory

    events.log("info", f"model {fmt_memory(weight_bytes)}, {lora_params:,} trainable parameters, "
                       f"estimated peak memory {fmt_memory(est)} of {fmt_memory(avail)}")
    if avail and est > REFUSE_SHARE * avail:
        raise TuneloomError(f"This run needs about {fmt_memory(est)} but the machine has {fmt_memory(avail)}.",
                            "Use a smaller batch, a shorter max sequence length, gradient checkpointing, "
                            "or a quantized (4-bit) model.")
    if avail and est > WARN_SHARE * avail:
        events.log("warning", "This run will use most of the memory; close other apps or lower the batch size.")
    if cfg.grad_checkpoint:
        from mlx_lm.tuner.trainer import grad_checkpoint

        grad_checkpoint(model.layers[0])

    select = selective_head(model)
    segments: list[list[int]] | None = None
    no_packing = packing_unavailable(model_config.get("model_type"))
    if cfg.pack and preference:
        events.log("warning", "Packing is off for preference tuning: each pair's two answers are compared whole.")
    elif cfg.pack and no_packing:
        events.log("warning", no_packing)
    elif cfg.pack and not select:
        events.log("warning", f"packing is not available for {model_config.get('model_type')}; training unpacked")
    elif cfg.pack:
        packed = pack_sequences(train_seqs, cfg.max_seq_len)
        events.log("info", f"packed {len(train_seqs)} examples into {len(packed)} rows of up to {cfg.max_seq_len} tokens")
        train_seqs = [p for p, _ in packed]
        segments = [segs for _, segs in packed]
    plan = BatchPlan([s.length if preference else len(s.ids) for s in train_seqs], cfg.batch, cfg.seed)
    if group.distributed and plan.batch < group.size:
        raise GroupError(f"A batch of {plan.batch} examples cannot be shared by {group.size} Macs.",
                         f"Use a batch size of at least {group.size} (one example per Mac and step).")
    per_epoch_steps = max(1, plan.per_epoch // cfg.grad_accum)
    total_steps = cfg.iters if cfg.iters else max(1, int(round(cfg.epochs * per_epoch_steps)))
    opt = optim.AdamW(learning_rate=_schedule(cfg, total_steps), weight_decay=cfg.weight_decay)
    opt.init(model.trainable_parameters())
    start = 0
    if resume and main:
        ck, start = _restore_verified(run_dir, model, opt, runs.read_json(run_dir / "config.json"), events)
        if ck is not None:
            events.log("info", f"resumed from {ck.name}")
        kept = [m for m in runs.read_metrics(run_dir) if m.get("step", 0) <= start]
        from core.atomic import write_text

        write_text(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in kept))
    if group.distributed:  # every rank starts from rank 0's adapters, optimizer state and step
        from mlx.utils import tree_unflatten

        start = int(group.sum_floats(start if main else 0)[0])
        model.load_weights(list(group.broadcast_arrays(adapter_weights(model)).items()), strict=False)
        opt.state = tree_unflatten(list(group.broadcast_arrays(dict(tree_flatten(opt.state))).items()))
        events.log("info", f"training on {group.size} Macs: {cfg.batch} examples per step shared between them")
    train_refs = valid_refs = None
    if cfg.method == "dpo":  # the base model's log-probabilities, once per pair (the adapter switched off)
        events.progress(0, None, "reference log-probabilities")
        model.eval()
        # in a group each rank computes its share of the pairs, and every rank gets all of them
        train_refs = pref.reference_logps(model, train_seqs, cfg.batch, pad_id, cfg.max_seq_len, select, cancel,
                                          group)
        valid_refs = pref.reference_logps(model, valid_seqs, cfg.batch, pad_id, cfg.max_seq_len, select, cancel,
                                          group)
    model.train()

    def preference_step_loss(model, x, y, w, ref, *rest):
        return pref.preference_loss(model, cfg.method, cfg.beta, cfg.orpo_lambda, cfg.label_smoothing,
                                    x, y, w, ref, *rest)

    def preference_share_loss(model, norm, x, y, w, ref, *rest):
        # a group's rank: its share of the whole step's loss (norm: the step's pairs and chosen answer
        # tokens over every rank), so that the step's loss and gradient are the sums over the ranks
        return pref.preference_loss(model, cfg.method, cfg.beta, cfg.orpo_lambda, cfg.label_smoothing,
                                    x, y, w, ref, *rest, norm=norm)

    step_loss_fn = _loss
    if preference:
        step_loss_fn = preference_share_loss if group.distributed else preference_step_loss
    loss_and_grad = nn.value_and_grad(model, step_loss_fn)
    state = [model.state, opt.state, mx.random.state]

    def micro_step(*batch):  # (loss, trained tokens[, preference metrics]), gradients
        return loss_and_grad(model, *batch)

    def full_step(*batch):
        out, grads = micro_step(*batch)
        opt.update(model, grads)
        return out

    def make_batch(members):
        """The step's arrays and its token count (every row's tokens, padding excluded)."""
        if preference:
            chunk = [train_seqs[i] for i in members]
            refs = [train_refs[i] for i in members] if train_refs is not None else None
            return (pref.batch_arrays(chunk, refs, pad_id, cfg.max_seq_len, select),
                    sum(min(len(s.ids), cfg.max_seq_len) for s in pref.pair_rows(chunk)))
        batch = [train_seqs[i] for i in members]
        segs = [segments[i] for i in members] if segments else None
        return (pad_batch(batch, pad_id, cfg.max_seq_len, select, segs),
                sum(min(len(s.ids), cfg.max_seq_len) for s in batch))

    def validate() -> dict:
        model.eval()
        if preference:
            vals = pref.evaluate_pairs(model, valid_seqs, valid_refs, cfg, pad_id, select, cfg.valid_batches,
                                       group)
        else:
            vals = {"valid_loss": evaluate_loss(model, valid_seqs, cfg.batch, pad_id, cfg.max_seq_len,
                                                cfg.valid_batches, group)}
        model.train()
        return vals

    if group.distributed:
        from mlx.utils import tree_map

        def full_step(factor, *batch):  # noqa: F811 - the group's step
            # Each rank's loss is its own token mean; weighting its gradient by its share of the
            # step's tokens (factor = n_rank * size / n_all) makes the average over the ranks the
            # gradient of the single-process loss over the whole batch. A preference rank's loss is
            # already its share of the step's (preference_share_loss): factor = size makes the
            # average the sum over the ranks.
            out, grads = micro_step(*batch)
            grads = nn.average_gradients(tree_map(lambda g: g * factor, grads), group=group.handle)
            opt.update(model, grads)
            return out

    if cfg.compile:
        full_step = mx.compile(full_step, inputs=state, outputs=state)

    def set_status(state_: str, **extra):
        if main:
            saved = runs.read_json(run_dir / "config.json", {}) or {}
            for k in ("best_step", "best_valid_loss"):  # the best so far stays named in status.json
                if k in saved:
                    extra.setdefault(k, saved[k])
            runs.set_status(run_dir, state_, **extra)

    set_status("running", step=start, total=total_steps)
    metrics_fh = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if main else open(os.devnull, "w")

    def record(step: int, **vals):
        metrics_fh.write(json.dumps({"step": step, **vals}) + "\n")
        metrics_fh.flush()

    def emit(step: int, **vals):
        record(step, **vals)
        if isinstance(vals.get("valid_loss"), (int, float)):
            _judge(guard.valid_loss(step, vals["valid_loss"]), cfg, guard.onset)  # onset: set by valid_loss
        for k, v in vals.items():
            if isinstance(v, (int, float)):
                events.metric(k, step, float(v))

    kept_metrics = runs.read_metrics(run_dir) if main else []
    keeper = BestKeeper(cfg.early_stop, events)
    keeper.replay(group.broadcast_json([[m.get("step", 0), m.get("train_loss"), m.get("valid_loss")]
                                        for m in kept_metrics] if main else None) or [])
    if cfg.early_stop and not cfg.valid_every:
        events.log("warning", "Early stop needs validations during training (Check every > 0); it is off for this run.")

    def on_best(step: int, loss: float) -> None:
        if main:
            save_best_adapters(model, run_dir, adapter_config)
            _record_best(run_dir, step, loss)
        events.metric("best_valid_loss", step, loss)

    stopped_early: int | None = None
    trained_tokens = sum(int(m.get("trained_tokens_step", 0)) for m in kept_metrics)
    # the time already spent on this run before a resume, so elapsed runs on across restarts
    prior_elapsed = max((float(m["elapsed"]) for m in kept_metrics if "elapsed" in m), default=0.0)
    paused_seconds = 0.0
    t_start = time.perf_counter()
    tokens_since = 0
    last_good_step = start
    guard = DivergenceGuard(_vocab_size(model_config), min(cfg.warmup, total_steps - 1))
    result: dict[str, Any] = {"run_dir": str(run_dir), "total_steps": total_steps}
    try:
        if start == 0 and valid_seqs:
            vals = validate()
            emit(0, **vals)
            keeper.valid(0, vals["valid_loss"], on_best)
        for step in range(start + 1, total_steps + 1):
            def parked(s=step - 1):
                events.log("info", f"paused after step {s}")
                events.state("paused", s)

            def unparked(s=step - 1):
                events.log("info", f"resumed at step {s + 1}")
                events.state("running", s)

            if group.distributed:  # the ranks stop together: a cancel on any rank ends the step for all
                if group.sum_floats(1.0 if cancel.cancelled else 0.0)[0] > 0:
                    raise Cancelled()
                try:
                    paused_seconds += cancel.checkpoint(on_pause=parked, on_resume=unparked)
                except Cancelled:
                    pass  # seen by every rank at the next step's check
            else:
                paused_seconds += cancel.checkpoint(on_pause=parked, on_resume=unparked)
            # RNG (dropout) is a pure function of (seed, step): a resume replays it exactly
            mx.random.seed((cfg.seed * 1_000_003 + step) % 2**32)
            t0 = time.perf_counter()
            step_loss, step_tokens, step_trained = 0.0, 0, 0
            step_extra: list[float] = []  # preference metrics (core.preference.METRIC_KEYS)
            if cfg.grad_accum == 1:
                members = plan.micro(step - 1)
                if group.distributed:
                    members = shard(members, group)
                arrays, step_tokens = make_batch(members)
                if group.distributed and preference:  # the pairs' sums over the ranks, weighted by pairs
                    norm, n_all, step_tokens = pref.group_norm(group, arrays, len(members), step_tokens)
                    out = full_step(mx.array(float(group.size)), mx.array(norm, dtype=mx.float32), *arrays)
                    mx.eval(state, out)
                    step_loss, *step_extra = group.sum_floats(out[0].item(), *out[2].tolist())
                    step_trained, step_tokens = int(n_all), int(step_tokens)
                elif group.distributed:
                    n_here = float(arrays[2].sum().item())
                    n_all, step_tokens = group.sum_floats(n_here, step_tokens)
                    loss, ntoks = full_step(mx.array(n_here * group.size / max(n_all, 1.0)), *arrays)
                    mx.eval(state, loss, ntoks)
                    step_loss = group.sum_floats(loss.item() * n_here)[0] / max(n_all, 1.0)
                    step_trained, step_tokens = int(n_all), int(step_tokens)
                else:
                    out = full_step(*arrays)
                    mx.eval(state, out)
                    step_loss = out[0].item()
                    step_trained = int(out[1].item())
                    step_extra = out[2].tolist() if preference else []
            else:
                from mlx.utils import tree_map

                acc = None
                for a in range(cfg.grad_accum):
                    members = plan.micro((step - 1) * cfg.grad_accum + a)
                    if group.distributed:
                        members = shard(members, group)
                    arrays, n_tokens = make_batch(members)
                    if group.distributed and preference:  # as in the group's full_step: shares of the step's
                        norm, n_here, n_tokens = pref.group_norm(group, arrays, len(members), n_tokens)
                        out, grads = micro_step(mx.array(norm, dtype=mx.float32), *arrays)
                        mx.eval(grads, out)
                        loss_value, *micro_extra = group.sum_floats(out[0].item(), *out[2].tolist())
                        grads = tree_map(lambda g: g * group.size, grads)
                    else:
                        out, grads = micro_step(*arrays)
                        mx.eval(grads, out)
                        loss_value, n_here = out[0].item(), float(out[1].item())
                        micro_extra = out[2].tolist() if preference else []
                    if preference:
                        step_extra = [a + b / cfg.grad_accum for a, b in
                                      zip(step_extra or [0.0] * len(pref.METRIC_KEYS), micro_extra)]
                    elif group.distributed:  # as in the group's full_step: weight by the share of tokens
                        n_all, n_tokens = group.sum_floats(n_here, n_tokens)
                        factor = n_here * group.size / max(n_all, 1.0)
                        grads = tree_map(lambda g: g * factor, grads)
                        loss_value = group.sum_floats(loss_value * n_here)[0] / max(n_all, 1.0)
                        n_here = n_all
                    acc = grads if acc is None else tree_map(mx.add, acc, grads)
                    mx.eval(acc)
                    step_loss += loss_value / cfg.grad_accum
                    step_trained += int(n_here)
                    step_tokens += int(n_tokens)
                if group.distributed:
                    acc = nn.average_gradients(acc, group=group.handle)
                opt.update(model, tree_map(lambda g: g / cfg.grad_accum, acc))
                mx.eval(state)
            dt = time.perf_counter() - t0
            if not math.isfinite(step_loss):
                raise TrainingDiverged(
                    f"The loss became {step_loss} at step {step}: training diverged.",
                    f"The last good adapters (step {last_good_step}) are kept. Lower the learning rate "
                    f"(now {cfg.lr:g}) and resume or start again.", onset=step)
            trained_tokens += step_trained
            tokens_since += step_tokens
            lr = float(opt.learning_rate.item()) if hasattr(opt.learning_rate, "item") else float(cfg.lr)
            here = time.perf_counter() - t_start - paused_seconds  # this session's training time
            eta = here / (step - start) * (total_steps - step)
            report = StepReport(step=step, total=total_steps, epoch=step * cfg.grad_accum / plan.per_epoch,
                                train_loss=step_loss, learning_rate=lr, tokens_per_sec=step_tokens / dt,
                                trained_tokens=trained_tokens, peak_memory=_peak_memory(),
                                elapsed=prior_elapsed + here, eta_seconds=eta,
                                trained_tokens_per_sec=step_trained / dt, trained_tokens_step=step_trained)
            extra = dict(zip(pref.METRIC_KEYS, step_extra))
            record(step, **{k: v for k, v in asdict(report).items() if k not in ("step", "total")}, **extra)
            keeper.train(step_loss)
            _judge(guard.train_loss(step, step_loss), cfg, guard.onset)
            events.step(report)
            for k, v in extra.items():
                events.metric(k, step, float(v))
            events.report_progress(Progress(step, total_steps, "step", f"step {step}/{total_steps}, loss "
                                            f"{step_loss:.3f}, ETA {eta:.0f}s", rate=(step - start) / here
                                            if here > 0 else None, eta=eta))
            if cfg.valid_every and step % cfg.valid_every == 0 and step != total_steps and valid_seqs:
                vals = validate()
                emit(step, **vals)
                if keeper.valid(step, vals["valid_loss"], on_best):
                    stopped_early = step
                    events.log("info", f"stopped early at step {step}: {keeper.bad} validations in a row did not "
                                       f"improve on the best (step {keeper.best_step}, validation loss "
                                       f"{keeper.best_loss:.4f})")
                    last_good_step = step
                    break
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != total_steps and main:
                _save_checkpoint(run_dir, step, model, opt, adapter_config)
                save_adapters(model, run_dir, adapter_config)
            last_good_step = step
        final_vals = validate() if valid_seqs and not stopped_early else {}
        model.eval()
        steps_done = stopped_early or total_steps
        if stopped_early:
            final_valid = keeper.last_loss
        else:
            final_valid = final_vals.get("valid_loss")
            if final_vals:
                emit(total_steps, **final_vals)
                keeper.valid(total_steps, final_valid, on_best)
        if main:
            save_adapters(model, run_dir, adapter_config)
        elapsed = time.perf_counter() - t_start - paused_seconds
        result.update(best_step=keeper.best_step,
                      best_valid_loss=None if keeper.best_step is None else keeper.best_loss,
                      stopped_early=stopped_early, memorising=keeper.memorising,
                      data_notes=[n.message for n in ds.notes])
        result.update(state="done", steps=steps_done, valid_loss=final_valid,
                      train_examples=len(train_seqs), valid_examples=len(valid_seqs), test_examples=n_test,
                      trained_tokens=trained_tokens,
                      tokens_per_sec=tokens_since / elapsed if elapsed else 0.0, seconds=elapsed)
        if group.distributed:
            result["hosts"] = group.size
        set_status("done", **{k: v for k, v in result.items() if k not in ("run_dir", "state")})
        if main:
            _write_report(run_dir, events)
        return result
    except Cancelled:
        if main:
            save_adapters(model, run_dir, adapter_config)
            _save_checkpoint(run_dir, last_good_step, model, opt, adapter_config)
        result.update(state="cancelled", steps=last_good_step)
        set_status("cancelled", step=last_good_step, total=total_steps)
        raise Cancelled(f"cancelled at step {last_good_step} of {total_steps}; adapters saved",
                        "Resume it later from the run list.", result=result)
    except TrainingDiverged as exc:
        kept = _set_aside_diverged(run_dir, exc.onset) if main else None
        exc.hint = _diverged_hint(cfg, kept)
        set_status("diverged", error=str(exc), hint=exc.hint, step=kept or 0, total=total_steps)
        raise
    except BaseException as exc:
        if isinstance(exc, OSError):  # a full disk, a folder gone read-only: said in words, not a traceback
            err = write_error(exc, "the run", run_dir)
            set_status("failed", error=str(err), step=last_good_step)
            raise err from exc
        set_status("failed", error=str(exc), step=last_good_step)
        raise
    finally:
        with contextlib.suppress(OSError):  # a full disk can refuse the last flush too
            metrics_fh.close()
