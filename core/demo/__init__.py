"""The offline demo: its run (``run``), the bundled model's build (``build``) and the synthetic
world both draw on (``world``).

The names callers used from the old ``core.demo`` module are re-exported here, so
``from core.demo import run_demo`` keeps working. A test that patches one of them patches it on
``core.demo.run``, where the demo looks it up. ``build`` is not imported here: it is a command
(``python -m core.demo.build``), and importing it from the package would make runpy warn.
"""
from core.demo import world
from core.demo.run import (BASE_JSON_MAX, DEMO_TRAIN, F16_AGREE_MIN, PROSE_SURVIVAL_MIN, Q8_AGREE_MIN,
                           TUNED_EXACT_MIN, TUNED_JSON_MIN, TUNED_NAME_MIN, Stage, first_heldout_prompt,
                           heldout_prompts, run_demo, score)

__all__ = ["BASE_JSON_MAX", "DEMO_TRAIN", "F16_AGREE_MIN", "PROSE_SURVIVAL_MIN", "Q8_AGREE_MIN", "TUNED_EXACT_MIN",
           "TUNED_JSON_MIN", "TUNED_NAME_MIN", "Stage", "first_heldout_prompt", "heldout_prompts", "run_demo",
           "score", "world"]
