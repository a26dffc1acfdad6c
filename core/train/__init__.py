"""LoRA / DoRA / QLoRA fine-tuning on mlx-lm's model code, with a loop we own.

Why our own loop: mlx-lm's ``train()`` cannot be paused or cancelled cleanly and its
resume drops optimizer state. This loop keeps mlx-lm's pieces (loader, LoRA/DoRA
layers, schedules) and adds pause/resume/cancel, checkpoints that hold everything a
resume needs (adapters, optimizer state, step; the data order and the dropout RNG are
pure functions of seed and step), a NaN guard, and one metric event per optimizer step.

The package, in the order a run uses it:

- ``config``: TrainConfig (its options' metadata is core.options), presets glue, the fit to the data
- ``adapters``: the base model loaded, LoRA / DoRA adapters added and saved
- ``memory``: the memory estimate (the trainer, the catalog and the window's estimate share it)
- ``batches``: the data order (BatchPlan), packing, padding, encoding
- ``losses``: the loss and the validation loss
- ``best``: the best adapter, early stop, memorising (BestKeeper)
- ``resume``: checkpoints written, verified and restored; divergence set-aside
- ``prepare``: a run made ready (data, model, memory check, restore)
- ``step``: one optimizer step for every kind of run (group x accumulation x method)
- ``loop``: train(), the loop with pause / resume / cancel
- ``preference``: the preference methods (DPO, ORPO); ``divergence``: the guard the loop consults;
  ``group``: a run on several Macs as a job (core.distributed starts the ranks)
  (core.preference, core.divergence and core.group_train are aliases of these three)

Every name below is importable as ``from core.train import X``. A test that replaces a function the
trainer calls patches the module that calls it (e.g. ``core.train.losses._loss``,
``core.train.memory.total_memory_bytes``), not this package.
"""
from __future__ import annotations

from core.data import load_dataset  # noqa: F401 - read by core.train.config
from core.options import OPTION_RANGES, OPTION_TEXT, OPTIONS, _check_option, metadata, option_allows  # noqa: F401
from core.train.adapters import (ATTENTION_KEYS, DELTANET_KEYS, MLP_KEYS, add_adapters, adapter_weights,  # noqa: F401
                                 load_base, save_adapters, save_best_adapters)
from core.train.batches import (RECURRENT_TYPES, SELECTIVE_HEAD_TYPES, BatchPlan, encode_records,  # noqa: F401
                                pack_sequences, packing_unavailable, pad_batch, selective_head)
from core.train.best import MEMORISING_RISE, BestKeeper, _record_best, _write_report, memorising_text  # noqa: F401
from core.train.config import (DEFAULT_PRESET, MAX_NAME, MAX_WARMUP_SHARE, METHOD_PRESETS, MIN_STEPS,  # noqa: F401
                               PRESET_TEXT, PRESETS, REFUSE_SHARE, WARN_SHARE, ConfigError, TrainConfig, _load_data,
                               apply_preset, fit_config, fit_to_data, option_help, option_label, planned_steps,
                               preset_config, preset_values, run_config, training_examples)
from core.train.losses import _body, _head, _loss, evaluate_loss  # noqa: F401
from core.train.memory import _peak_memory, estimate_memory, total_memory_bytes  # noqa: F401
from core.train.prepare import _schedule  # noqa: F401
from core.train.resume import (TrainingDiverged, _diverged_hint, _judge, _restore_checkpoint,  # noqa: F401
                               _restore_verified, _save_checkpoint, _set_aside_diverged, refuse_finished)
from core.train.loop import _train, _vocab_size, train  # noqa: F401
