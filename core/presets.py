"""The training presets, the one a run uses when none is chosen, and the memory shares a run may take.

``tuneloom train`` without ``--preset``, a fresh Train page and the catalog's memory figures all use
DEFAULT_PRESET. It is "quick": the first run on a new dataset should show soonest whether the data
teaches anything, it needs the least memory (so "fits" in the catalog holds for the run a new user
starts), and the figures in resources/catalog.json were computed for it.
"""
from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"epochs": 1.0, "rank": 8, "alpha": 16.0, "lr": 2e-4, "batch": 4, "targets": "attention",
              "max_seq_len": 512},
    "balanced": {"epochs": 2.0, "rank": 16, "alpha": 32.0, "lr": 1e-4, "batch": 4, "targets": "all",
                 "max_seq_len": 1024, "early_stop": 3},
    "thorough": {"epochs": 3.0, "rank": 32, "alpha": 64.0, "lr": 5e-5, "batch": 8, "targets": "all",
                 "max_seq_len": 2048, "grad_checkpoint": True, "early_stop": 3},
}
# Each preset's name on screen and the one line saying what it trades (GUI and `train --help`).
PRESET_TEXT: dict[str, tuple[str, str]] = {
    "quick": ("Quick test", "One pass, a small update on the attention layers only: done soonest and shows "
                            "whether your data teaches anything, but learns the least."),
    "balanced": ("Balanced", "Two passes, a medium update on every layer: the usual choice, learns a format or "
                             "style well in about twice the time of a quick test per pass."),
    "thorough": ("Thorough", "Three passes, a large update, long examples kept whole, memory saved by "
                             "recomputing: learns the most and takes by far the longest."),
}
DEFAULT_PRESET = "quick"

# What each preset changes for preference tuning (issue 30), on top of its supervised values: the one place
# `tuneloom train --method`, the Train page and the tests read. A pair is two sequences, so a step holds half
# the pairs the supervised preset holds examples (the same memory: the catalog's "fits" still holds). DPO's
# learning rate is a quarter of the supervised one: its loss pushes the chosen answer up and the rejected one
# down without bound (beta 0.1, the papers' and TRL's default, keeps it near the base model). ORPO also learns
# the chosen answers, as supervised tuning does, so it takes half the supervised rate, lambda 0.1 as in the
# ORPO paper and TRL.
METHOD_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "dpo": {"quick": {"lr": 5e-5, "batch": 2, "beta": 0.1},
            "balanced": {"lr": 2.5e-5, "batch": 2, "beta": 0.1},
            "thorough": {"lr": 1.25e-5, "batch": 4, "beta": 0.1}},
    "orpo": {"quick": {"lr": 1e-4, "batch": 2, "orpo_lambda": 0.1},
             "balanced": {"lr": 5e-5, "batch": 2, "orpo_lambda": 0.1},
             "thorough": {"lr": 2.5e-5, "batch": 4, "orpo_lambda": 0.1}},
}


def preset_values(preset: str, method: str | None = "sft") -> dict[str, Any]:
    """The values ``preset`` sets for a run of ``method`` ("sft", "dpo", "orpo"; None: "sft"). Raises
    KeyError for an unknown preset."""
    return {**PRESETS[preset], **METHOD_PRESETS.get(method or "sft", {}).get(preset, {})}

# A run whose memory estimate passes REFUSE_SHARE of the machine's memory is refused before it starts;
# past WARN_SHARE it starts with a warning (core.train.train; core.catalog.fits and the Train page say the same).
REFUSE_SHARE = 0.9
WARN_SHARE = 0.6
