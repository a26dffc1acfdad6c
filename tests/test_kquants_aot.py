"""The K-quant kernels shipped as bitcode (core.export.kquants_aot): built from this very source,
made into machine code once and kept, and never used when anything about them is off.

Their output is checked against ggml and numba's own compile in tests/test_kquants.py."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.export import kquants, kquants_aot

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_kernels_were_built_from_this_source():
    """After an edit of core/export/kquants_jit.py the kernels must be built again (the command is in
    the message); until then exports would compile with numba, slowly but right."""
    m = json.loads((kquants_aot.kernels_dir() / "kquants.json").read_text(encoding="utf-8"))
    assert m["source_sha256"] == kquants_aot.source_digest(), (
        "resources/kernels/ was built from another core/export/kquants_jit.py: "
        "run `.venv/bin/python -m core.export.kquants_aot` and commit resources/kernels/")
    import numba

    assert m["built_with"]["numba"].split(".")[:2] == numba.__version__.split(".")[:2], (
        "resources/kernels/ was built with another numba than pyproject.toml's: rebuild them as above")
    for name, info in m["kernels"].items():
        data = (kquants_aot.kernels_dir() / info["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"], name
        assert data[:4] == b"BC\xc0\xde"  # LLVM bitcode
    assert set(m["check"]) == {"Q4_K", "Q5_K", "Q6_K"}
    assert kquants_aot.manifest() is not None


def _run(code: str, env: dict, cwd: Path) -> dict:
    p = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


EXPORT = """if True:
    import json
    import numpy as np
    from core.export import kquants, kquants_aot, kquants_jit
    kquants.prepare(["Q6_K", "Q4_K"]).join(600)
    x = np.random.default_rng(1).standard_normal((64, 512)).astype(np.float32)
    q = kquants.quantize_q4_k(x)
    print(json.dumps({"from_cache": {k: kquants_aot.kernel_for(k).from_cache for k in ("Q6_K", "Q4_K")},
                      "numba_compiled": bool(kquants_jit._affine_blocks.signatures or kquants_jit._q6_blocks.signatures),
                      "digest": __import__("hashlib").sha256(q.tobytes()).hexdigest()}))
"""


def test_a_first_export_makes_the_machine_code_once_and_later_ones_load_it(tmp_path):
    """Two exports, each a process of its own, on an empty kernel cache: the first makes machine
    code from the bitcode and keeps it, the second loads it; numba compiles nothing in either, and
    both quantize alike. A damaged kept file is made again, not loaded."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("TUNELOOM_SHIPPED_KERNELS", None)
    first = _run(EXPORT, env, tmp_path)
    kept = sorted((tmp_path / "cache" / "tuneloom-kernels").glob("kquants-*.o"))
    second = _run(EXPORT, env, tmp_path)
    assert first["from_cache"] == {"Q6_K": False, "Q4_K": False}
    assert second["from_cache"] == {"Q6_K": True, "Q4_K": True}
    assert not first["numba_compiled"] and not second["numba_compiled"]
    assert first["digest"] == second["digest"]
    assert [p.name.split("-")[1] for p in kept] == ["affine", "q6"]
    # a damaged kept file (a cut write, a bad disk) costs a remake, not the export
    data = kept[0].read_bytes()
    kept[0].write_bytes(data[: len(data) // 2])
    third = _run(EXPORT, env, tmp_path)
    assert third["from_cache"] == {"Q6_K": True, "Q4_K": False} and third["digest"] == first["digest"]
    assert kept[0].read_bytes() == data


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """kquants_aot with nothing loaded yet, reading a copy of the shipped kernels in tmp_path."""
    copy = tmp_path / "kernels"
    shutil.copytree(kquants_aot.kernels_dir(), copy)
    monkeypatch.setattr(kquants_aot, "kernels_dir", lambda: copy)
    monkeypatch.setattr(kquants_aot, "_loaded", {})
    monkeypatch.setattr(kquants_aot, "_manifest_cache", None)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TUNELOOM_SHIPPED_KERNELS", raising=False)
    return copy


def _edit_manifest(folder: Path, edit) -> None:
    m = json.loads((folder / "kquants.json").read_text(encoding="utf-8"))
    edit(m)
    (folder / "kquants.json").write_text(json.dumps(m), encoding="utf-8")


@pytest.mark.parametrize("damage", ["other source", "other numba", "damaged bitcode", "wrong output", "no manifest"])
def test_shipped_kernels_that_do_not_fit_are_not_used_and_numba_quantizes_instead(fresh, damage, caplog, monkeypatch):
    """A manifest built from another source, bitcode that is not the manifest's, machine code whose
    output on the check blocks is not numba's, or no manifest at all: the kernel is not used (logged)
    and the quantization still equals the numba kernel's."""
    if damage == "other source":
        _edit_manifest(fresh, lambda m: m.update(source_sha256="0" * 64))
    elif damage == "other numba":
        _edit_manifest(fresh, lambda m: m["built_with"].update(numba="0.1.0"))
    elif damage == "damaged bitcode":
        path = fresh / "kquants-q6.bc"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "wrong output":
        _edit_manifest(fresh, lambda m: m["check"].update(Q6_K="0" * 64))
    else:
        (fresh / "kquants.json").unlink()
    caplog.set_level("INFO", logger="core.export.kquants_aot")
    assert kquants_aot.load(["Q6_K"]) == {"Q6_K": None}
    assert caplog.records, "nothing said why the shipped kernel is not used"
    x = np.random.default_rng(2).standard_normal((8, 256)).astype(np.float32)
    from core.export import kquants_jit

    want = np.empty((8, 210), np.uint8)
    kquants_jit.quantize_q6_k_into(x, want)
    asked = []  # tried once and unusable: each tensor after it does not ask (and lock) again
    real = kquants._load_shipped
    monkeypatch.setattr(kquants, "_load_shipped", lambda kinds, gates=None: (asked.append(kinds), real(kinds, gates))[1])
    assert kquants_aot.tried("Q6_K") and not kquants_aot.tried("Q4_K")
    assert np.array_equal(kquants.quantize_q6_k(x, backend="numba"), want)
    assert np.array_equal(kquants.quantize_q6_k(x, backend="numba"), want)
    assert asked == []


def test_kept_machine_code_that_is_whole_but_wrong_is_made_again_once(fresh, monkeypatch, caplog):
    """A kept object file whose sha256 is right but whose output on the check blocks is not numba's
    (another LLVM build under the same key, say) is deleted and made again from the bitcode, not
    refused for good."""
    assert kquants_aot.load(["Q6_K"])["Q6_K"].from_cache is False
    kept = list(kquants_aot.object_dir().glob("kquants-q6-*.o"))
    assert len(kept) == 1
    monkeypatch.setattr(kquants_aot, "_loaded", {})
    real = kquants_aot._check
    checked = []

    made = []

    def check(kernel, m):  # the kept code "gives other output" once
        checked.append(kernel.from_cache)
        made.append(kernel)
        if kernel.from_cache:
            raise ValueError("its Q6_K output on the check blocks differs from numba's kernel")
        real(kernel, m)

    monkeypatch.setattr(kquants_aot, "_check", check)
    caplog.set_level("INFO", logger="core.export.kquants_aot")
    got = kquants_aot.load(["Q6_K"])["Q6_K"]
    assert got is not None and got.from_cache is False and checked == [True, False]
    assert made[0]._engine.closed and not got._engine.closed  # the refused code is freed at once
    assert any("made again" in r.getMessage() for r in caplog.records)
    assert kept[0].exists()  # kept anew
    monkeypatch.setattr(kquants_aot, "_loaded", {})
    monkeypatch.setattr(kquants_aot, "_check", real)
    assert kquants_aot.load(["Q6_K"])["Q6_K"].from_cache is True


def test_off_when_asked(fresh, monkeypatch):
    monkeypatch.setenv("TUNELOOM_SHIPPED_KERNELS", "0")
    assert kquants_aot.load(["Q4_K", "Q6_K"]) == {"Q4_K": None, "Q6_K": None}
    assert kquants_aot._loaded == {}


def test_two_kernels_load_side_by_side_and_say_when_each_is_ready(fresh):
    seen = []
    got = kquants_aot.load(["Q6_K", "Q5_K", "Q4_K"], on_ready=lambda name, k: seen.append((name, k is not None)))
    assert sorted(seen) == [("affine", True), ("q6", True)]
    assert got["Q4_K"] is got["Q5_K"] is kquants_aot.kernel_for("Q4_K")
    with pytest.raises(ValueError):  # plain pointers underneath: wrong arrays are refused, not read
        got["Q6_K"].quantize("Q6_K", np.zeros((2, 256), np.float64), np.empty((2, 210), np.uint8))
    with pytest.raises(ValueError):
        got["Q6_K"].quantize("Q6_K", np.zeros((2, 256), np.float32), np.empty((3, 210), np.uint8))


def test_where_the_machine_code_is_kept(monkeypatch, tmp_path):
    """NUMBA_CACHE_DIR when set; beside the source in a checkout or wheel (numba's own choice); the
    user's cache folder in a frozen app (never inside the bundle) or where the source's folder is
    read-only."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "n"))
    assert kquants_aot.object_dir() == tmp_path / "n" / "tuneloom-kernels"
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    assert kquants_aot.object_dir() == Path(kquants_aot.__file__).with_name("__pycache__")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    if sys.platform.startswith("linux"):
        assert kquants_aot.object_dir() == tmp_path / "xdg" / "Tuneloom" / "kernels"
    else:
        assert "Tuneloom" in str(kquants_aot.object_dir())
