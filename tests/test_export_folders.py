"""Issue 25: the LM Studio, MLX and PEFT writers follow the GGUF export's target rules (core.export.target):
never their own source, never over a folder (or file) Tuneloom did not write unless forced; a folder Tuneloom
wrote (its ``.tuneloom`` marker) may be replaced. Each refusal comes before any work and leaves the user's
files as they were."""
from __future__ import annotations

from pathlib import Path

import pytest

from core.events import TuneloomError
from core.export.target import MARKER, check_folder_target, written_by_tuneloom


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _user_folder(p: Path) -> Path:
    p.mkdir(parents=True)
    (p / "notes.txt").write_text("keep me")
    return p


def test_folder_rules(tmp_path):
    base = tmp_path / "model"
    run = tmp_path / "run"
    for d in (base, run / "exports"):
        d.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    mine = _user_folder(tmp_path / "mine")
    with pytest.raises(TuneloomError, match="not written by Tuneloom") as exc:
        check_folder_target(mine, "the PEFT folder", base=base, run=run)
    assert "--force" in exc.value.user_message()
    check_folder_target(mine, "the PEFT folder", base=base, run=run, force=True)  # forced: allowed
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "adapter_config.json").write_text("{}")
    (ours / MARKER).write_text("peft\n")
    assert written_by_tuneloom(ours)
    check_folder_target(ours, "the PEFT folder", base=base, run=run)  # Tuneloom wrote it: replaced freely
    check_folder_target(tmp_path / "new" / "deeper", "the PEFT folder", base=base, run=run)
    check_folder_target(run / "exports" / "peft", "the PEFT folder", base=base, run=run)
    (tmp_path / "a-file").write_text("x")
    refusals = {tmp_path / "a-file": "is a file",
                base / "peft": "model folder", base: "model folder", tmp_path: "model folder",  # holds the model
                run / "peft": "run folder", run: "run folder", run / "checkpoints": "run folder"}
    for target, words in refusals.items():
        with pytest.raises(TuneloomError, match=words):
            check_folder_target(target, "the PEFT folder", base=base, run=run, force=True)  # force never allows these


def _gguf(p: Path, fill: bytes) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"GGUF" + fill * 64)
    return p


def test_lmstudio_replaces_only_when_forced_and_only_its_own(tmp_path, monkeypatch):
    from core.export.lmstudio import place_gguf, target_path

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    first = _gguf(tmp_path / "a" / "tuned-q8_0.gguf", b"\1")
    dest = Path(place_gguf(first, "run")["path"])
    assert dest.read_bytes() == first.read_bytes() and written_by_tuneloom(dest.parent)
    second = _gguf(tmp_path / "b" / "tuned-q8_0.gguf", b"\2")
    with pytest.raises(TuneloomError, match="already has") as exc:
        place_gguf(second, "run")
    assert "--force" in exc.value.user_message()
    assert dest.read_bytes() == first.read_bytes()
    place_gguf(second, "run", force=True)
    assert dest.read_bytes() == second.read_bytes()
    assert not [p for p in dest.parent.iterdir() if p.name.endswith(".part")]

    # something there that is not a GGUF is never written over, forced or not
    odd = target_path(second, "odd")
    odd.parent.mkdir(parents=True)
    (odd.parent / MARKER).write_text("lmstudio\n")
    odd.write_text("my notes")
    with pytest.raises(TuneloomError, match="not a GGUF"):
        place_gguf(second, "odd", force=True)
    assert odd.read_text() == "my notes"

    # a model folder in LM Studio that Tuneloom did not write (the user's own files): left alone unless forced
    theirs = target_path(second, "theirs").parent
    _user_folder(theirs)
    with pytest.raises(TuneloomError, match="not written by Tuneloom"):
        place_gguf(second, "theirs")
    assert _tree(theirs) == {"notes.txt": b"keep me"}
    place_gguf(second, "theirs", force=True)
    assert (theirs / "notes.txt").read_text() == "keep me" and (theirs / second.name).is_file()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tests.fixtures.ship_runs import make_run
    from tests.fixtures.tiny_models import cached_tiny_model

    base = cached_tiny_model("qwen2.5", tmp_path_factory.getbasetemp() / "tiny-models", dtype="float32")
    return base, make_run(base, tmp_path_factory.mktemp("run") / "run")


def test_peft_and_mlx_refuse_a_users_folder_and_their_source_before_any_work(tiny_run, tmp_path, monkeypatch):
    import core.export.fuse
    import core.export.peft
    from core.export.mlx import export_mlx
    from core.export.peft import export_peft

    base, run = tiny_run
    mine = _user_folder(tmp_path / "mine")
    before_base, before_run = _tree(base), _tree(run)
    worked = []
    monkeypatch.setattr(core.export.peft, "peft_tensors", lambda *a, **k: worked.append("peft") or ({}, {}))
    monkeypatch.setattr(core.export.fuse, "fuse_model", lambda *a, **k: worked.append("fuse"))
    for fn in (export_peft, export_mlx):
        for target, words in ((mine, "not written by Tuneloom"), (base, "model folder"), (run, "run folder"),
                              (run / "sub", "run folder")):
            with pytest.raises(TuneloomError, match=words):
                fn(run, target)
    assert worked == []
    assert _tree(mine) == {"notes.txt": b"keep me"} and _tree(base) == before_base and _tree(run) == before_run
    monkeypatch.undo()

    # forced, the PEFT folder replaces the user's folder; the next export replaces its own without --force
    res = export_peft(run, mine, force=True)
    assert Path(res["path"]) == mine and (mine / "adapter_model.safetensors").is_file() and written_by_tuneloom(mine)
    assert not (mine / "notes.txt").exists()
    export_peft(run, mine)
    # into the run's own exports folder: allowed
    assert (Path(export_peft(run, run / "exports" / "peft")["path"]) / "adapter_config.json").is_file()


def test_cli_peft_into_a_users_folder_needs_force(tiny_run, tmp_path, capsys):
    from app.cli import main

    _base, run = tiny_run
    mine = _user_folder(tmp_path / "mine")
    assert main(["export", str(run), "--peft", str(mine)]) == 1
    err = capsys.readouterr().err
    assert "not written by Tuneloom" in err and "--force" in err and "Traceback" not in err
    assert _tree(mine) == {"notes.txt": b"keep me"}
    assert main(["export", str(run), "--peft", str(mine), "--force"]) == 0
    assert (mine / "adapter_model.safetensors").is_file() and written_by_tuneloom(mine)
