"""Modules that moved keep their old names as aliases (the same module object), and the documented
command ``python -m core.demo_build`` still runs the demo model's build (now core.demo.build)."""
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

MOVED = {
    "core.preference": "core.train.preference",
    "core.group_train": "core.train.group",
    "core.divergence": "core.train.divergence",
    "core.demo_build": "core.demo.build",
    "core.demo_world": "core.demo.world",
}


@pytest.mark.parametrize("old,new", sorted(MOVED.items()))
def test_old_name_is_the_moved_module(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_core_demo_keeps_its_names():
    from core import demo
    from core.demo import run

    for name in ("run_demo", "heldout_prompts", "first_heldout_prompt", "score", "Stage", "DEMO_TRAIN",
                 "BASE_JSON_MAX", "TUNED_JSON_MIN", "TUNED_NAME_MIN", "TUNED_EXACT_MIN", "PROSE_SURVIVAL_MIN",
                 "F16_AGREE_MIN", "Q8_AGREE_MIN"):
        assert getattr(demo, name) is getattr(run, name)
    assert demo.world is importlib.import_module("core.demo.world")


def test_core_runs_keeps_its_names():
    """core.runs is a package of parts now; every name of the old module is still read from it."""
    from core import runs
    from core.runs import files, folder, history, lock, metrics

    for part in (files, folder, history, lock, metrics):
        defined = [n for n, v in vars(part).items()
                   if (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == part.__name__]
        assert defined
        for name in defined:
            assert getattr(runs, name) is getattr(part, name), f"core.runs.{name}"
    for name in ("RunFolder", "RunInfo", "RunLock", "claim_run", "lock_holder", "read_json", "set_status",
                 "read_metrics", "loss_summary", "list_runs", "run_dirs", "remember", "adapter_choices"):
        assert hasattr(runs, name)


@pytest.mark.parametrize("module", ["core.demo_build", "core.demo.build"])
def test_the_demo_build_command_runs_under_both_names(module):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", module, "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--data-only" in proc.stdout and "--steps" in proc.stdout
