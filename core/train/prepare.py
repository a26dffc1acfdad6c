"""A run made ready to train: its folder claimed, its data split and encoded, the model loaded with its
adapters (after the memory check), the batches planned and the optimizer state restored from the newest
checkpoint that verifies (a true resume). In a group (core.distributed) every rank starts from rank 0's
adapters, optimizer state and step."""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core import runs
from core.atomic import write_json
from core.data import require_clean, test_files, train_valid_test
from core.events import NULL_EVENTS, CancelToken, Events, Progress, TuneloomError
from core.tokens import ChatEncoder
from core.train import memory
from core.train.adapters import add_adapters, adapter_weights, load_base
from core.train.batches import BatchPlan, encode_records, pack_sequences, packing_unavailable, selective_head
from core.train.config import TrainConfig, _load_data, run_config
from core.train.resume import _restore_verified, refuse_finished


@dataclass
class RunData:
    """The run's examples, split and encoded (pairs for preference tuning; rows when packed)."""
    ds: Any  # the dataset as read (its notes and records)
    preference: bool  # DPO / ORPO: pairs of answers (core.train.preference)
    train_seqs: list
    valid_seqs: list
    n_test: int | None  # the test examples set aside (None: a test file, unread)
    pad_id: int
    segments: list[list[int]] | None = None  # packed rows: the examples' lengths in each row


@dataclass
class Prepared:
    """Everything the loop needs, ready: what prepare() returns."""
    cfg: TrainConfig
    run_dir: Path
    group: Any  # core.distributed's group (one process: a group of one)
    events: Events
    cancel: CancelToken
    data: RunData
    model: Any
    model_config: dict
    adapter_config: dict
    select: bool  # logits only at the trained positions (core.train.batches.selective_head)
    plan: BatchPlan
    total_steps: int
    opt: Any
    start: int  # the step the run goes on from (0: a new run)
    train_refs: list | None = None  # DPO: the base model's log-probabilities of each pair
    valid_refs: list | None = None

    @property
    def main(self) -> bool:
        return self.group.is_main


def prepare(cfg: TrainConfig, *, resume, events, cancel, held: contextlib.ExitStack) -> Prepared:
    """Claim the run folder (released by ``held``), read the data, load the model, plan the batches and
    restore the newest good checkpoint; raises TuneloomError before anything is trained."""
    from core.distributed import current_group

    # A group run (core.distributed, started by mlx.launch): every rank trains on its share of each
    # batch; rank 0 alone reports and writes the run folder, and hands its state to the others.
    group = current_group()
    events = (events or NULL_EVENTS) if group.is_main else NULL_EVENTS
    cancel = cancel or CancelToken()
    cfg, run_dir = open_run(cfg, resume, group, held)
    data = prepare_data(cfg, resume, run_dir, group.is_main, events, cancel)
    model, model_config, adapter_config = prepare_model(cfg, data.preference, events)
    select, plan, total_steps = plan_batches(cfg, data, model, model_config, group, events)
    opt, start = restore(cfg, run_dir, resume, model, total_steps, group, events)
    p = Prepared(cfg, run_dir, group, events, cancel, data, model, model_config, adapter_config, select, plan,
                 total_steps, opt, start)
    if cfg.method == "dpo":
        p.train_refs, p.valid_refs = reference_logps(p)
    model.train()
    return p


def open_run(cfg: TrainConfig, resume, group, held: contextlib.ExitStack) -> tuple[TrainConfig, Path]:
    """The run folder, claimed by rank 0 (core.runs.claim_run), and the config: a resume's is the folder's."""
    from core.distributed import GroupError

    main = group.is_main
    if resume:
        run_dir = Path(resume)
        saved = group.broadcast_json(runs.RunFolder(run_dir).config if main else None)
        if not saved:
            raise TuneloomError(f"{run_dir} is not a run folder (no config.json).", "Pick a folder under runs/.")
        finished = None
        if main:
            held.enter_context(runs.claim_run(run_dir, resume=True))
            try:
                refuse_finished(run_dir)
            except runs.RunFinished as exc:
                finished = [str(exc), exc.hint]
        # every rank learns that the run is finished, not rank 0 alone: a group whose last rank died after
        # the last step is resumed as finished, instead of the other ranks waiting for rank 0 and failing
        finished = group.broadcast_json(finished)  # (itself on one process)
        if finished:
            raise runs.RunFinished(*finished)
        return run_config(saved), run_dir
    if group.distributed and not cfg.out:
        raise GroupError("A group run needs its run folder given (--out), the same for every rank.",
                         "Start group runs with `tuneloom train --hosts HOSTFILE`.")
    run_dir = Path(cfg.out) if cfg.out else runs.new_run_dir(cfg.name)
    if main:
        held.enter_context(runs.claim_run(run_dir))  # refuses a folder that holds another run
        write_json(run_dir / "config.json", asdict(cfg))
        runs.remember(run_dir)  # a folder outside runs/ (--out) still shows in the history
    return cfg, run_dir


def prepare_data(cfg: TrainConfig, resume, run_dir: Path, main: bool, events: Events,
                 cancel: CancelToken) -> RunData:
    """The data read, split (the test examples set aside, never encoded) and encoded with the model's
    chat template; long documents chunked when asked."""
    events.report_progress(Progress(0, None, what="loading data"))  # nothing counted: a busy bar
    ds = _load_data(cfg, cancel)
    from core.train import preference as pref

    preference = pref.valid_method(cfg.method) != "sft"
    if preference:  # pairs of answers: DPO / ORPO (core.train.preference); the test pairs are set aside, never encoded
        train_recs, valid_recs, test_recs = pref.split_pairs(ds, cfg.valid_fraction, cfg.seed, cfg.skip_invalid,
                                                             cfg.test_fraction, bool(test_files(cfg.data)))
    else:
        require_clean(ds, cfg.skip_invalid)
        # the test examples drawn from the data are set aside here and never encoded
        train_recs, valid_recs, test_recs = train_valid_test(ds, cfg.valid_fraction, cfg.test_fraction, cfg.seed,
                                                             has_test_file=bool(test_files(cfg.data)))
    n_test = len(test_recs) if test_recs or not test_files(cfg.data) else None  # None: a test file, unread
    del test_recs
    # thinking follows the data (a resumed run keeps its own); config.json records it for the export
    encoder = ChatEncoder(cfg.model, thinking=cfg.thinking if resume else bool(ds.reasoning))
    if not resume and cfg.thinking != encoder.thinking:
        cfg.thinking = encoder.thinking
        if main:
            write_json(run_dir / "config.json", asdict(cfg))
    if main and not resume and any(getattr(r, "tools", None) for r in [*ds.records, *train_recs, *valid_recs]):
        # issue 31: the export renders tools (core.export.pipeline.run_tools)
        runs.update_json(run_dir / "config.json", tools=True)
    if cfg.chunk and not preference:  # issue 26: long text documents become windows of max_seq_len instead of being cut
        from core.tokens import chunk_records

        train_recs, docs, windows = chunk_records(encoder, train_recs, cfg.max_seq_len, cancel)
        valid_recs = chunk_records(encoder, valid_recs, cfg.max_seq_len, cancel)[0]
        events.log("info", f"chunked: {docs} documents longer than {cfg.max_seq_len} tokens split into {windows} "
                           "windows")
    if preference:
        train_seqs = pref.encode_pairs(encoder, train_recs, cfg.max_seq_len)
        valid_seqs = pref.encode_pairs(encoder, valid_recs, cfg.max_seq_len)
    else:
        train_seqs = encode_records(encoder, train_recs, cfg)
        valid_seqs = encode_records(encoder, valid_recs, cfg)
    if not train_seqs:
        raise TuneloomError("No training example has any token to learn from.",
                            "Check that examples have assistant answers and fit the max sequence length.")
    pad_id = encoder.tok.pad_token_id if encoder.tok.pad_token_id is not None else (encoder.eos_ids or [0])[0]
    return RunData(ds, preference, train_seqs, valid_seqs, n_test, pad_id)


def prepare_model(cfg: TrainConfig, preference: bool, events: Events) -> tuple[Any, dict, dict]:
    """The base model with its adapters, once the run's memory estimate fits (core.train.memory)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    events.report_progress(Progress(0, None, what="loading model"))
    mx.random.seed(cfg.seed)
    model, model_config = load_base(cfg.model)
    weight_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    adapter_config = add_adapters(model, cfg)
    adapter_config["base_model"] = str(cfg.model)
    lora_params = sum(v.size for v in adapter_weights(model).values())
    rows = cfg.batch * (2 if preference else 1)  # a pair is two sequences
    memory.check_fits(model_config, weight_bytes, lora_params, rows, cfg.max_seq_len, cfg.grad_checkpoint, events)
    if cfg.grad_checkpoint:
        from mlx_lm.tuner.trainer import grad_checkpoint

        grad_checkpoint(model.layers[0])
    return model, model_config, adapter_config


def plan_batches(cfg: TrainConfig, data: RunData, model, model_config: dict, group,
                 events: Events) -> tuple[bool, BatchPlan, int]:
    """(selective head, the data order, the run's steps); packs the training examples when asked and
    possible (data.train_seqs become the packed rows, data.segments their examples' lengths)."""
    from core.distributed import GroupError

    select = selective_head(model)
    no_packing = packing_unavailable(model_config.get("model_type"))
    if cfg.pack and data.preference:
        events.log("warning", "Packing is off for preference tuning: each pair's two answers are compared whole.")
    elif cfg.pack and no_packing:
        events.log("warning", no_packing)
    elif cfg.pack and not select:
        events.log("warning", f"packing is not available for {model_config.get('model_type')}; training unpacked")
    elif cfg.pack:
        packed = pack_sequences(data.train_seqs, cfg.max_seq_len)
        events.log("info", f"packed {len(data.train_seqs)} examples into {len(packed)} rows of up to "
                           f"{cfg.max_seq_len} tokens")
        data.train_seqs = [p for p, _ in packed]
        data.segments = [segs for _, segs in packed]
    plan = BatchPlan([s.length if data.preference else len(s.ids) for s in data.train_seqs], cfg.batch, cfg.seed)
    if group.distributed and plan.batch < group.size:
        raise GroupError(f"A batch of {plan.batch} examples cannot be shared by {group.size} Macs.",
                         f"Use a batch size of at least {group.size} (one example per Mac and step).")
    per_epoch_steps = max(1, plan.per_epoch // cfg.grad_accum)
    total_steps = cfg.iters if cfg.iters else max(1, int(round(cfg.epochs * per_epoch_steps)))
    return select, plan, total_steps


def _schedule(cfg: TrainConfig, total_steps: int):
    import mlx.optimizers as optim

    warm = max(0, min(cfg.warmup, total_steps - 1))
    decay = optim.cosine_decay(cfg.lr, max(1, total_steps - warm), cfg.lr * cfg.min_lr_ratio)
    if warm == 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(cfg.lr * 0.01, cfg.lr, warm), decay], [warm])


def restore(cfg: TrainConfig, run_dir: Path, resume, model, total_steps: int, group, events: Events):
    """(optimizer, start step): a resume restores the newest checkpoint that verifies and keeps the
    metrics up to it; every rank of a group gets rank 0's adapters, optimizer state and step."""
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten

    opt = optim.AdamW(learning_rate=_schedule(cfg, total_steps), weight_decay=cfg.weight_decay)
    opt.init(model.trainable_parameters())
    start = 0
    if resume and group.is_main:
        ck, start = _restore_verified(run_dir, model, opt, runs.RunFolder(run_dir).config or None, events)
        if ck is not None:
            events.log("info", f"resumed from {ck.name}")
        kept = [m for m in runs.RunFolder(run_dir).metrics if m.get("step", 0) <= start]
        from core.atomic import write_text

        write_text(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in kept))
    if group.distributed:  # every rank starts from rank 0's adapters, optimizer state and step
        from mlx.utils import tree_unflatten

        start = int(group.sum_floats(start if group.is_main else 0)[0])
        model.load_weights(list(group.broadcast_arrays(adapter_weights(model)).items()), strict=False)
        opt.state = tree_unflatten(list(group.broadcast_arrays(dict(tree_flatten(opt.state))).items()))
        events.log("info", f"training on {group.size} Macs: {cfg.batch} examples per step shared between them")
    return opt, start


def reference_logps(p: Prepared) -> tuple[list, list]:
    """DPO: the base model's log-probabilities, once per pair (the adapter switched off); in a group each
    rank computes its share of the pairs, and every rank gets all of them."""
    from core.train import preference as pref

    cfg, d = p.cfg, p.data
    p.events.report_progress(Progress(0, None, what="reference log-probabilities"))
    p.model.eval()
    train_refs = pref.reference_logps(p.model, d.train_seqs, cfg.batch, d.pad_id, cfg.max_seq_len, p.select,
                                      p.cancel, p.group)
    valid_refs = pref.reference_logps(p.model, d.valid_seqs, cfg.batch, d.pad_id, cfg.max_seq_len, p.select,
                                      p.cancel, p.group)
    return train_refs, valid_refs

