"""The training options: what each one means in plain words, its kind, its valid range, how the window's
form offers it and how `tuneloom train` takes it. One table (issue 24): TrainConfig's fields carry its
records as metadata, the CLI's flags and the Train page's Advanced form are generated from it, and
TrainConfig.validate checks the ranges it holds.
"""
from __future__ import annotations

import math
import types
from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    label: str  # the window's label
    help: str  # the tooltip and `tuneloom train --help`
    kind: str = "str"  # int, float, bool, str; list and dict: not a form field
    # the valid range: (lowest, highest, lowest allowed itself, highest allowed itself, special values also
    # allowed, the range in words); TrainConfig.validate refuses anything outside it
    rule: tuple | None = None
    form: tuple | None = None  # the form's own bounds (it may be stricter than the rule, never looser)
    step: float | None = None  # the form's step (default 1, or 0.1 for a number)
    choices: tuple = ()  # a closed set of values: a drop-down and the flag's choices
    # the CLI flag generated from this record: "value" (--x V), "switch" (--x), "toggle" (--x / --no-x);
    # "": the CLI writes its own flag (the model, the data, the column mapping and the text options)
    flag: str = ""
    advanced: bool = False  # one of the Train page's Advanced options (the table's order is the form's)
    method: str | None = None  # read by this training method only: the form enables it while that one is chosen
    metavar: str | None = None

    @property
    def whole(self) -> bool:
        return self.kind == "int"


OPTIONS: dict[str, Option] = {
    "model": Option(
        "Model folder",
        "The model folder to fine-tune (Hugging Face layout: config.json, tokenizer, *.safetensors).",
        kind="str"),
    "data": Option(
        "Dataset",
        "The dataset files or folders with your example conversations.",
        kind="list"),
    "out": Option(
        "Run folder",
        "Where this run is kept (default: a new folder under runs/).",
        kind="str"),
    "iters": Option(
        "Steps",
        "How many training steps to take. Empty: as many as the passes over the data need.",
        kind="int", rule=(1, None, True, True, (None,), "a whole number of at least 1 (or empty)"),
        form=(0, 10000000), flag="value", advanced=True),
    "epochs": Option(
        "Passes over the data",
        "How many times the model sees every training example. More passes learn more, and can start to "
        "memorise.",
        kind="float", rule=(0, None, False, True, (), "a number above 0"), form=(0.01, 1000.0), step=0.5,
        flag="value", advanced=True),
    "lr": Option(
        "Learning rate",
        "How big each step is. Too high and the loss jumps or explodes; too low and it barely moves. "
        "Small models take larger steps.",
        kind="float", rule=(0, None, False, True, (), "a number above 0 (usually 1e-5 to 1e-3)"), form=(1e-08, 10.0),
        flag="value", advanced=True),
    "rank": Option(
        "Rank",
        "How much the model may change (the size of the learned LoRA update). 8 is plenty for a format or "
        "a style; 16 to 32 for new knowledge. Higher needs more memory.",
        kind="int", rule=(1, None, True, True, (), "a whole number of at least 1"), form=(1, 1024), flag="value",
        advanced=True),
    "alpha": Option(
        "Strength (alpha)",
        "How strongly the learned update is applied: it is scaled by alpha / rank. Twice the rank is the "
        "usual choice.",
        kind="float", rule=(0, None, False, True, (), "a number above 0"), form=(0.01, 65536.0), step=1.0,
        flag="value", advanced=True),
    "targets": Option(
        "Layers to adapt",
        "Which parts of each block learn: 'all' linear layers (learns more) or 'attention' only (faster, "
        "less memory).",
        kind="str", choices=("all", "attention"), flag="value", advanced=True),
    "batch": Option(
        "Batch size",
        "Examples the model learns from in one go. Larger is smoother and faster per example but needs "
        "more memory.",
        kind="int", rule=(1, None, True, True, (), "a whole number of at least 1"), form=(1, 4096), flag="value",
        advanced=True),
    "max_seq_len": Option(
        "Max length",
        "Examples longer than this many tokens are cut off. Longer needs more memory.",
        kind="int", rule=(2, None, True, True, (), "a whole number of at least 2"), form=(16, 131072), step=64,
        flag="value", advanced=True),
    "grad_accum": Option(
        "Accumulate batches",
        "Batches added together before each step: a larger effective batch without more memory.",
        kind="int", rule=(1, None, True, True, (), "a whole number of at least 1"), form=(1, 1024), flag="value",
        advanced=True),
    "grad_checkpoint": Option(
        "Save memory (recompute)",
        "Recompute intermediate results instead of keeping them: much less memory, about a third slower.",
        kind="bool", flag="toggle", advanced=True),
    "dropout": Option(
        "Dropout",
        "Randomly ignores part of the update's input while training, which helps against memorising a "
        "small dataset. 0 to 0.1.",
        kind="float", rule=(0, 1, True, False, (), "from 0 up to (not including) 1"), form=(0.0, 0.9), step=0.05,
        flag="value", advanced=True),
    "num_layers": Option(
        "Blocks to adapt",
        "Adapt only the last N transformer blocks (-1: all of them). Fewer is faster and uses less "
        "memory.",
        kind="int", rule=(1, None, True, True, (-1,), "a whole number of at least 1, or -1 for all blocks"),
        form=(-1, 1000), flag="value", advanced=True),
    "warmup": Option(
        "Warm-up steps",
        "Steps at the start during which the learning rate rises gently to its full value.",
        kind="int", rule=(0, None, True, True, (), "a whole number of at least 0"), form=(0, 100000), flag="value",
        advanced=True),
    "min_lr_ratio": Option(
        "Final learning rate",
        "The learning rate falls along a cosine curve to this share of its peak by the last step.",
        kind="float", rule=(0, 1, True, True, (), "from 0 to 1"), form=(0.0, 1.0), step=0.05, flag="value",
        advanced=True),
    "weight_decay": Option(
        "Weight decay",
        "Pulls the learned update gently towards zero (AdamW). 0 is fine for short runs.",
        kind="float", rule=(0, None, True, True, (), "a number of at least 0"), form=(0.0, 1.0), flag="value",
        advanced=True),
    "dora": Option(
        "DoRA",
        "DoRA instead of LoRA: learns the size and the direction of each weight separately; a little "
        "slower, sometimes better.",
        kind="bool", flag="switch", advanced=True),
    "mask_prompt": Option(
        "Learn only the answers",
        "Compute the loss only on the assistant's answers, not on the questions and the system prompt.",
        kind="bool", flag="toggle", advanced=True),
    "last_turn_only": Option(
        "Only the last answer",
        "In conversations with several turns, learn only the last assistant answer.",
        kind="bool", flag="switch", advanced=True),
    "pack": Option(
        "Pack short examples",
        "Put several short examples into one row (they never see each other): faster when examples are "
        "short.",
        kind="bool", flag="switch", advanced=True),
    "valid_every": Option(
        "Check every",
        "Steps between validation losses on the held-out examples (0: only at the end).",
        kind="int", rule=(0, None, True, True, (), "a whole number of at least 0"), form=(0, 10000000), flag="value",
        advanced=True),
    "valid_batches": Option(
        "Check batches",
        "Batches of held-out examples per validation (-1: all of them).",
        kind="int", rule=(1, None, True, True, (-1,), "a whole number of at least 1, or -1 for all"),
        form=(-1, 100000), flag="value", advanced=True),
    "early_stop": Option(
        "Stop when no better",
        "Stop after this many validations in a row that did not lower the validation loss (0: never stop "
        "early). The best adapter is kept either way.",
        kind="int", form=(0, 100000), flag="value", advanced=True, metavar="N"),
    "test_fraction": Option(
        "Test share",
        "The share of examples kept aside for the final test, never seen while training (Evaluate uses "
        "them), when the data has no test file.",
        kind="float", form=(0.0, 0.9), step=0.05, flag="value", advanced=True),
    "checkpoint_every": Option(
        "Checkpoint every",
        "Steps between checkpoints: after a crash or a Stop, training resumes from the latest one.",
        kind="int", rule=(0, None, True, True, (), "a whole number of at least 0"), form=(1, 10000000), flag="value",
        advanced=True),
    "seed": Option(
        "Seed",
        "The number that fixes the example order, the split and the starting update: the same seed gives "
        "the same run.",
        kind="int", form=(0, 2147483647), flag="value", advanced=True),
    "compile": Option(
        "Compile",
        "Compile the training step once for speed (mx.compile).",
        kind="bool", flag="toggle", advanced=True),
    "name": Option(
        "Run name",
        "A short name for the run; it becomes part of the run folder's name.",
        kind="str", flag="value", advanced=True),
    "beta": Option(
        "DPO beta",
        "How far DPO may move away from the original model: higher keeps it closer (0.1 is usual).",
        kind="float", rule=(0, None, False, True, (), "a number above 0 (0.1 is usual)"), form=(0.0, 100.0),
        flag="value", advanced=True, method="dpo"),
    "orpo_lambda": Option(
        "ORPO lambda",
        "The weight of ORPO's preference term next to learning the chosen answers.",
        kind="float", rule=(0, None, True, True, (), "a number of at least 0"), form=(0.0, 100.0), flag="value",
        advanced=True, method="orpo"),
    "valid_fraction": Option(
        "Held out",
        "The share of examples kept aside to check progress, when the data has no separate validation "
        "file.",
        kind="float", rule=(0, 1, True, False, (), "from 0 up to (not including) 1"), flag="value"),
    "skip_invalid": Option(
        "Skip examples with problems",
        "Train on the usable examples and skip those with problems, instead of refusing to start.",
        kind="bool", flag="switch"),
    "mapping": Option(
        "Column names",
        "Which column of your file holds which field (field -> column name).",
        kind="dict"),
    "user_template": Option(
        "User message template",
        "Write each user message from your columns, e.g. 'Pokemon name: {name}' ({{ and }} for braces).",
        kind="str"),
    "assistant_template": Option(
        "Answer template",
        "Write each answer from your columns, e.g. '{types}'.",
        kind="str"),
    "system_prompt": Option(
        "System prompt",
        "A system prompt for every example that has none.",
        kind="str"),
    "use": Option(
        "Preference pairs",
        "Preference data (chosen / rejected answers): 'chosen' trains on the chosen answers.",
        kind="str"),
    "fill": Option(
        "Fill placeholders",
        "Fill placeholders in the answers: {NAME: VALUE} for {{NAME}} / {NAME}.",
        kind="dict"),
    "chunk": Option(
        "Chunk long texts",
        "Split text documents longer than the maximum length into windows of that length, so that nothing "
        "is cut away.",
        kind="bool"),
    "thinking": Option(
        "Thinking",
        "Set from the data: on when its answers carry reasoning (<think> blocks or reasoning_content) and "
        "the model's template can think (Qwen3); otherwise thinking is off.",
        kind="bool"),
    "method": Option(
        "Method",
        "sft: learn the answers (supervised). dpo / orpo: on preference pairs, learn to prefer the chosen "
        "answer over the rejected one (DPO stays close to the original model; ORPO also learns the chosen "
        "answers and needs no reference).",
        kind="str", choices=("sft", "dpo", "orpo"), flag="value"),
    "label_smoothing": Option(
        "DPO label smoothing",
        "The share of pairs assumed to be labelled the wrong way round (0 to 0.5; 0 trusts every pair).",
        kind="float", rule=(0, 0.5, True, False, (), "from 0 up to (not including) 0.5"), flag="value", method="dpo"),
}
ADVANCED = [name for name, o in OPTIONS.items() if o.advanced]
# the valid ranges alone (TrainConfig.validate, the form's RuleSpin)
OPTION_RANGES: dict[str, tuple] = {name: o.rule for name, o in OPTIONS.items() if o.rule}
# what every option means (label, help): kept for callers of the earlier table
OPTION_TEXT: dict[str, tuple[str, str]] = {name: (o.label, o.help) for name, o in OPTIONS.items()}


def metadata(name: str) -> dict:
    """A TrainConfig field's metadata: its label and help, and the whole record under "option"."""
    o = OPTIONS[name]
    return {"label": o.label, "help": o.help, "option": o}


def _check_option(cfg, name: str, rule: tuple) -> str | None:
    lo, hi, lo_ok, hi_ok, special, words = rule
    v = getattr(cfg, name)
    if v in special:
        return None
    flag = "--" + name.replace("_", "-")
    whole = OPTIONS[name].whole if name in OPTIONS else False
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (whole and not float(v).is_integer()):
        return f"{flag} is {v!r}, must be {words}"
    if not math.isfinite(v) or (lo is not None and (v < lo or (v == lo and not lo_ok))) or (
            hi is not None and (v > hi or (v == hi and not hi_ok))):
        return f"{flag} is {v:g}, must be {words}"
    return None


def option_allows(name: str, value) -> bool:
    """Whether TrainConfig.validate accepts ``value`` for option ``name`` (its OPTION_RANGES rule; an option
    without one: any value). The window's form keeps its fields to what this accepts."""
    rule = OPTION_RANGES.get(name)
    return rule is None or _check_option(types.SimpleNamespace(**{name: value}), name, rule) is None


