"""What a true resume needs: checkpoints written whole (adapters, optimizer state, step), verified
and restored; a finished run refused; after a divergence, the spoilt checkpoints set aside."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from core import checkpoints, runs
from core.atomic import atomic_path, write_error
from core.events import TuneloomError
from core.train.adapters import adapter_weights
from core.train.config import TrainConfig


class TrainingDiverged(TuneloomError):
    """The loss became NaN, or stayed at a uniform guess (core.train.divergence): status.json says "diverged"."""

    state = "diverged"

    def __init__(self, message: str, hint: str = "", onset: int | None = None):
        super().__init__(message, hint)
        self.onset = onset  # the first step that may be spoilt: checkpoints from it on are set aside


def _judge(why: str | None, cfg: TrainConfig, onset: int | None = None) -> None:
    """Stop the run as diverged when core.train.divergence found something wrong."""
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
    good = runs.RunFolder(run_dir).latest_checkpoint
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
    st = runs.RunFolder(run_dir).status
    if st.get("state") == "done":
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
        # None without a config, as before (its fingerprint is None, not that of {})
        state = checkpoints.checkpoint_state(tmp, step, runs.RunFolder(run_dir).config or None)
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
