"""A run's options: TrainConfig (its fields' metadata is core.options), the presets (core.presets) and the
fit of a preset to a dataset (enough steps, a short enough warm-up)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from core.data import load_dataset, require_clean, test_files, train_valid_test
from core.events import CancelToken, TuneloomError
from core.options import OPTION_RANGES, OPTIONS, _check_option, metadata
# the presets, the default one and the memory shares live in core.presets (the catalog reads them too)
from core.presets import (DEFAULT_PRESET, METHOD_PRESETS, PRESET_TEXT, PRESETS, REFUSE_SHARE,  # noqa: F401
                          WARN_SHARE, preset_values)


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
    from core.train import preference as pref

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
