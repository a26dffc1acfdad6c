"""A run as MLX folders: the merged model in mlx-lm's layout and the adapter in mlx-lm's adapter layout.

``DIR/merged``: the adapter merged into the base (core.export.fuse: a QLoRA base is dequantized first),
then converted by mlx-lm's own ``convert`` (float16, or 8-/4-bit with mlx's affine quantization,
group size 64), so ``mlx_lm.load(DIR/merged)`` and LM Studio's MLX engine open it as any
mlx-community model. ``DIR/adapter``: ``adapters.safetensors`` + ``adapter_config.json`` as
mlx-lm's trainer writes them, for ``mlx_lm.load(BASE, adapter_path=DIR/adapter)`` /
``mlx_lm.generate --model BASE --adapter-path DIR/adapter``. Each folder carries a model card.
"""
from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path

from core import runs
from core.events import NULL_EVENTS, CancelToken, Events, Progress, TuneloomError

MLX_BITS = (16, 8, 4)
GROUP_SIZE = 64


def estimate_mlx_bytes(base: Path, bits: int) -> int:
    from core.export.pipeline import _tensor_values

    values, _ = _tensor_values(Path(base))
    per = {16: 2.0, 8: 1.0 + 4 / GROUP_SIZE, 4: 0.5 + 4 / GROUP_SIZE}[bits]
    return int(values * per)


def export_mlx(source, out_dir, *, bits: int = 16, adapter: bool = True, merged: bool = True,
               events: Events | None = None, cancel: CancelToken | None = None, final: bool = False,
               force: bool = False) -> dict:
    """Write ``out_dir/merged`` (and ``out_dir/adapter``) from the run's best adapter (``final``: its last).
    Returns ``{"path", "merged", "adapter", "bits"}``.
    ``out_dir``: a new folder, or one Tuneloom wrote (``.tuneloom``); another is refused unless ``force``
    (core.export.target.check_folder_target), before any work."""
    from core.export.pipeline import resolve_source
    from core.export.fuse import _replace_dir, fuse_model
    from core.export.model_card import write_model_card

    events = events or NULL_EVENTS
    if bits not in MLX_BITS:
        raise TuneloomError(f"--mlx-bits must be one of 16, 8, 4, not {bits}.", "16 keeps full quality; 4 is smallest.")
    base, run = resolve_source(source)
    if run is None:
        raise TuneloomError(f"{source} is a model folder, not a run.", "Give a run folder.")
    from core.export.target import check_folder_target, mark_folder

    out_dir = Path(out_dir)
    check_folder_target(out_dir, "the MLX folders", base=base, run=run, force=force)
    out_dir.mkdir(parents=True, exist_ok=True)
    mark_folder(out_dir, "mlx")
    result: dict = {"path": str(out_dir), "bits": bits, "merged": None, "adapter": None}
    if merged:
        work = Path(tempfile.mkdtemp(prefix=".tuneloom-mlx-", dir=out_dir))
        try:
            events.log("info", f"Merging {run.name} into {base.name}")
            fused = fuse_model(base, run, work / "fused", events=events, cancel=cancel,
                               adapter_file=runs.adapter_file(run, "final" if final else "best"))
            if cancel is not None:
                cancel.checkpoint()
            from mlx_lm.convert import convert

            events.log("info", f"Converting to MLX ({'float16' if bits == 16 else f'{bits}-bit'})")
            events.report_progress(Progress(0, None, "", "converting to MLX"))  # one call to mlx-lm: nothing to count
            with contextlib.redirect_stdout(io.StringIO()):  # mlx-lm prints progress lines; keep --json clean
                convert(hf_path=str(fused), mlx_path=str(work / "mlx"), quantize=bits < 16,
                        q_group_size=GROUP_SIZE if bits < 16 else None, q_bits=bits if bits < 16 else None,
                        dtype="float16")
            write_model_card(work / "mlx", run, base, kind="mlx")
            if cancel is not None:
                cancel.checkpoint()
            _replace_dir(work / "mlx", out_dir / "merged")
            result["merged"] = str(out_dir / "merged")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if adapter:
        tmp = Path(tempfile.mkdtemp(prefix=".adapter.", suffix=".part", dir=out_dir))
        try:
            shutil.copyfile(runs.adapter_file(run, "final" if final else "best"), tmp / "adapters.safetensors")
            cfg = runs.RunFolder(run).adapter_config
            from core.atomic import write_json

            write_json(tmp / "adapter_config.json", cfg)
            write_model_card(tmp, run, base, kind="mlx-adapter")
            _replace_dir(tmp, out_dir / "adapter")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        result["adapter"] = str(out_dir / "adapter")
    events.log("info", f"Wrote the MLX folders in {out_dir}")
    return result
