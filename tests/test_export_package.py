"""core/export/ is one package; the old flat module names are aliases of its modules."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# old name -> the module it moved to
MOVED = {
    "core.export_run": "core.export.run", "core.export_adapter": "core.export.adapter",
    "core.export_target": "core.export.target", "core.fuse": "core.export.fuse",
    "core.gguf_export": "core.export.gguf", "core.kquants": "core.export.kquants",
    "core.kquants_jit": "core.export.kquants_jit", "core.quants": "core.export.quants",
    "core.quant_price": "core.export.quant_price", "core.llamacpp": "core.export.llamacpp",
    "core.lmstudio": "core.export.lmstudio", "core.ollama": "core.export.ollama",
    "core.mlx_export": "core.export.mlx", "core.peft_export": "core.export.peft",
    "core.model_card": "core.export.model_card", "core.hub_push": "core.export.hub_push",
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_name_is_the_moved_module(old):
    assert importlib.import_module(old) is importlib.import_module(MOVED[old])
    assert sys.modules[old] is sys.modules[MOVED[old]]


def test_a_patch_on_the_old_name_reaches_the_code(monkeypatch):
    import core.export.quants as quants
    import core.quants

    monkeypatch.setattr(core.quants, "DEFAULT", "sentinel")
    assert quants.DEFAULT == "sentinel"


def test_the_package_offers_the_pipeline_names(monkeypatch):
    from core import export
    from core.export import pipeline
    from core.export import export as export_fn, plan_export

    assert export_fn is pipeline.export and plan_export is pipeline.plan_export
    assert set(export.__all__) <= set(dir(export))
    # read each time from the pipeline: a patch there is what the package gives
    monkeypatch.setattr(pipeline, "resolve_source", "patched")
    assert export.resolve_source == "patched"
    with pytest.raises(AttributeError):
        export.no_such_name  # noqa: B018


@pytest.mark.parametrize("first", ["core.export.quants", "core.fuse", "core.export.gguf", "core.ollama",
                                   "core.export", "core.export_run", "core.gguf_export"])
def test_any_module_imports_first_without_a_cycle(first):
    """A fresh interpreter: each name imported first (the package __init__ runs before the submodule)."""
    code = (f"import importlib; importlib.import_module({first!r}); "
            "from core.export import export, plan_export; import core.gguf_export as g, core.export.gguf as h; "
            "assert g is h")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr


def test_a_submodule_does_not_load_the_pipeline():
    code = "import sys, core.export.quants; print('core.export.pipeline' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
