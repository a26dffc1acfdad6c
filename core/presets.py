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

# A run whose memory estimate passes REFUSE_SHARE of the machine's memory is refused before it starts;
# past WARN_SHARE it starts with a warning (core.train.train; core.catalog.fits and the Train page say the same).
REFUSE_SHARE = 0.9
WARN_SHARE = 0.6
