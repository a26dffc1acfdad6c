"""The training loop: a prepared run (core.train.prepare) trained step by step (core.train.step), with
pause / resume / cancel, checkpoints that hold everything a resume needs, the best adapter, early stop,
the divergence guard and one metric event per optimizer step."""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core import runs
from core.atomic import write_error
from core.train.divergence import DivergenceGuard
from core.events import CancelToken, Cancelled, Events, Progress, StepReport
from core.train import losses
from core.train.adapters import save_adapters, save_best_adapters
from core.train.best import BestKeeper, _record_best, _write_report
from core.train.config import TrainConfig
from core.train.memory import _peak_memory
from core.train.prepare import Prepared, prepare
from core.train.resume import TrainingDiverged, _diverged_hint, _judge, _save_checkpoint, _set_aside_diverged
from core.train.step import StepOut, Stepper


def train(cfg: TrainConfig, *, resume: str | Path | None = None, events: Events | None = None,
          cancel: CancelToken | None = None) -> dict:
    """Run (or resume) a LoRA fine-tune. Returns the run summary; raises Cancelled / TrainingDiverged.

    The run folder belongs to this call while it runs (core.runs.claim_run: an OS lock; a new run
    is refused on a folder that holds another run, a resume of a finished run trains nothing)."""
    with contextlib.ExitStack() as held:
        return _train(cfg, resume=resume, events=events, cancel=cancel, held=held)


def _train(cfg: TrainConfig, *, resume, events, cancel, held: contextlib.ExitStack) -> dict:
    return Loop(prepare(cfg, resume=resume, events=events, cancel=cancel, held=held)).run()


def _vocab_size(model_config: dict) -> int | None:
    v = (model_config.get("text_config") or {}).get("vocab_size") or model_config.get("vocab_size")
    return int(v) if isinstance(v, (int, float)) and v > 1 else None


class Loop:
    """The steps of a prepared run, from its start step to its last, and what each one reports."""

    def __init__(self, p: Prepared):
        self.p, self.cfg, self.events, self.main = p, p.cfg, p.events, p.main
        self.step_fn = Stepper(p)
        self.set_status("running", step=p.start, total=p.total_steps)
        self.metrics_fh = (open(p.run_dir / "metrics.jsonl", "a", encoding="utf-8") if self.main
                           else open(os.devnull, "w"))
        kept_metrics = runs.RunFolder(p.run_dir).metrics if self.main else []
        self.keeper = BestKeeper(self.cfg.early_stop, self.events)
        self.keeper.replay(p.group.broadcast_json([[m.get("step", 0), m.get("train_loss"), m.get("valid_loss")]
                                                   for m in kept_metrics] if self.main else None) or [])
        if self.cfg.early_stop and not self.cfg.valid_every:
            self.events.log("warning", "Early stop needs validations during training (Check every > 0); it is off "
                                       "for this run.")
        self.stopped_early: int | None = None
        self.trained_tokens = sum(int(m.get("trained_tokens_step", 0)) for m in kept_metrics)
        # the time already spent on this run before a resume, so elapsed runs on across restarts
        self.prior_elapsed = max((float(m["elapsed"]) for m in kept_metrics if "elapsed" in m), default=0.0)
        self.paused_seconds = 0.0
        self.t_start = time.perf_counter()
        self.tokens_since = 0
        self.last_good_step = p.start
        self.guard = DivergenceGuard(_vocab_size(p.model_config), min(self.cfg.warmup, p.total_steps - 1))
        self.result: dict[str, Any] = {"run_dir": str(p.run_dir), "total_steps": p.total_steps}

    # -- the run folder --------------------------------------------------------------------------

    def set_status(self, state_: str, **extra):
        if self.main:
            saved = runs.RunFolder(self.p.run_dir).config  # read now: the best step is written into it
            for k in ("best_step", "best_valid_loss"):  # the best so far stays named in status.json
                if k in saved:
                    extra.setdefault(k, saved[k])
            runs.set_status(self.p.run_dir, state_, **extra)

    def record(self, step: int, **vals):
        self.metrics_fh.write(json.dumps({"step": step, **vals}) + "\n")
        self.metrics_fh.flush()

    def emit(self, step: int, **vals):
        self.record(step, **vals)
        if isinstance(vals.get("valid_loss"), (int, float)):
            # onset: set by valid_loss
            _judge(self.guard.valid_loss(step, vals["valid_loss"]), self.cfg, self.guard.onset)
        for k, v in vals.items():
            if isinstance(v, (int, float)):
                self.events.metric(k, step, float(v))

    def on_best(self, step: int, loss: float) -> None:
        if self.main:
            save_best_adapters(self.p.model, self.p.run_dir, self.p.adapter_config)
            _record_best(self.p.run_dir, step, loss)
        self.events.metric("best_valid_loss", step, loss)

    # -- validation ------------------------------------------------------------------------------

    def validate(self) -> dict:
        p, cfg = self.p, self.cfg
        p.model.eval()
        if p.data.preference:
            from core.train import preference as pref

            vals = pref.evaluate_pairs(p.model, p.data.valid_seqs, p.valid_refs, cfg, p.data.pad_id, p.select,
                                       cfg.valid_batches, p.group)
        else:
            vals = {"valid_loss": losses.evaluate_loss(p.model, p.data.valid_seqs, cfg.batch, p.data.pad_id,
                                                       cfg.max_seq_len, cfg.valid_batches, p.group)}
        p.model.train()
        return vals

    def validation(self, step: int) -> bool:
        """Validate, report and keep the best adapter; True when the run should stop early."""
        vals = self.validate()
        self.emit(step, **vals)
        return self.keeper.valid(step, vals["valid_loss"], self.on_best)

    # -- the steps -------------------------------------------------------------------------------

    def wait(self, step: int) -> None:
        """Where a pause parks and a cancel ends the run, before ``step``."""
        cancel, events, group = self.p.cancel, self.events, self.p.group

        def parked(s=step - 1):
            events.log("info", f"paused after step {s}")
            events.state("paused", s)

        def unparked(s=step - 1):
            events.log("info", f"resumed at step {s + 1}")
            events.state("running", s)

        if group.distributed:  # the ranks stop together: a cancel on any rank ends the step for all
            if group.sum_floats(1.0 if cancel.cancelled else 0.0)[0] > 0:
                raise Cancelled()
            try:
                self.paused_seconds += cancel.checkpoint(on_pause=parked, on_resume=unparked)
            except Cancelled:
                pass  # seen by every rank at the next step's check
        else:
            self.paused_seconds += cancel.checkpoint(on_pause=parked, on_resume=unparked)

    def report(self, step: int, out: StepOut, dt: float) -> None:
        """The step's metrics: metrics.jsonl, the divergence guard, the events."""
        from core.train import preference as pref

        p, cfg, events = self.p, self.cfg, self.events
        self.trained_tokens += out.trained
        self.tokens_since += out.tokens
        lr = float(p.opt.learning_rate.item()) if hasattr(p.opt.learning_rate, "item") else float(cfg.lr)
        here = time.perf_counter() - self.t_start - self.paused_seconds  # this session's training time
        eta = here / (step - p.start) * (p.total_steps - step)
        report = StepReport(step=step, total=p.total_steps, epoch=step * cfg.grad_accum / p.plan.per_epoch,
                            train_loss=out.loss, learning_rate=lr, tokens_per_sec=out.tokens / dt,
                            trained_tokens=self.trained_tokens, peak_memory=_peak_memory(),
                            elapsed=self.prior_elapsed + here, eta_seconds=eta,
                            trained_tokens_per_sec=out.trained / dt, trained_tokens_step=out.trained)
        extra = dict(zip(pref.METRIC_KEYS, out.extra))
        self.record(step, **{k: v for k, v in asdict(report).items() if k not in ("step", "total")}, **extra)
        self.keeper.train(out.loss)
        _judge(self.guard.train_loss(step, out.loss), cfg, self.guard.onset)
        events.step(report)
        for k, v in extra.items():
            events.metric(k, step, float(v))
        events.report_progress(Progress(step, p.total_steps, "step", f"step {step}/{p.total_steps}, loss "
                                        f"{out.loss:.3f}, ETA {eta:.0f}s", rate=(step - p.start) / here
                                        if here > 0 else None, eta=eta))

    def train_steps(self) -> None:
        import mlx.core as mx

        p, cfg = self.p, self.cfg
        if p.start == 0 and p.data.valid_seqs:
            self.validation(0)
        for step in range(p.start + 1, p.total_steps + 1):
            self.wait(step)
            # RNG (dropout) is a pure function of (seed, step): a resume replays it exactly
            mx.random.seed((cfg.seed * 1_000_003 + step) % 2**32)
            t0 = time.perf_counter()
            out = self.step_fn(step)
            dt = time.perf_counter() - t0
            if not math.isfinite(out.loss):
                raise TrainingDiverged(
                    f"The loss became {out.loss} at step {step}: training diverged.",
                    f"The last good adapters (step {self.last_good_step}) are kept. Lower the learning rate "
                    f"(now {cfg.lr:g}) and resume or start again.", onset=step)
            self.report(step, out, dt)
            if cfg.valid_every and step % cfg.valid_every == 0 and step != p.total_steps and p.data.valid_seqs:
                if self.validation(step):
                    self.stopped_early = step
                    k = self.keeper
                    self.events.log("info", f"stopped early at step {step}: {k.bad} validations in a row did not "
                                            f"improve on the best (step {k.best_step}, validation loss "
                                            f"{k.best_loss:.4f})")
                    self.last_good_step = step
                    break
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != p.total_steps and self.main:
                _save_checkpoint(p.run_dir, step, p.model, p.opt, p.adapter_config)
                save_adapters(p.model, p.run_dir, p.adapter_config)
            self.last_good_step = step

    # -- the end ---------------------------------------------------------------------------------

    def finish(self) -> dict:
        """The last validation, the final adapters, the summary in status.json and the report card."""
        p, keeper, result = self.p, self.keeper, self.result
        final_vals = self.validate() if p.data.valid_seqs and not self.stopped_early else {}
        p.model.eval()
        steps_done = self.stopped_early or p.total_steps
        if self.stopped_early:
            final_valid = keeper.last_loss
        else:
            final_valid = final_vals.get("valid_loss")
            if final_vals:
                self.emit(p.total_steps, **final_vals)
                keeper.valid(p.total_steps, final_valid, self.on_best)
        if self.main:
            save_adapters(p.model, p.run_dir, p.adapter_config)
        elapsed = time.perf_counter() - self.t_start - self.paused_seconds
        result.update(best_step=keeper.best_step,
                      best_valid_loss=None if keeper.best_step is None else keeper.best_loss,
                      stopped_early=self.stopped_early, memorising=keeper.memorising,
                      data_notes=[n.message for n in p.data.ds.notes])
        result.update(state="done", steps=steps_done, valid_loss=final_valid,
                      train_examples=len(p.data.train_seqs), valid_examples=len(p.data.valid_seqs),
                      test_examples=p.data.n_test, trained_tokens=self.trained_tokens,
                      tokens_per_sec=self.tokens_since / elapsed if elapsed else 0.0, seconds=elapsed)
        if p.group.distributed:
            result["hosts"] = p.group.size
        self.set_status("done", **{k: v for k, v in result.items() if k not in ("run_dir", "state")})
        if self.main:
            _write_report(p.run_dir, self.events)
        return result

    def run(self) -> dict:
        """Train, and leave the run folder in a state that says how it ended (done, cancelled with a
        checkpoint to resume from, diverged with the spoilt checkpoints set aside, failed)."""
        p = self.p
        try:
            self.train_steps()
            return self.finish()
        except Cancelled:
            last = self.last_good_step
            if self.main:
                save_adapters(p.model, p.run_dir, p.adapter_config)
                _save_checkpoint(p.run_dir, last, p.model, p.opt, p.adapter_config)
            self.result.update(state="cancelled", steps=last)
            self.set_status("cancelled", step=last, total=p.total_steps)
            raise Cancelled(f"cancelled at step {last} of {p.total_steps}; adapters saved",
                            "Resume it later from the run list.", result=self.result)
        except TrainingDiverged as exc:
            kept = _set_aside_diverged(p.run_dir, exc.onset) if self.main else None
            exc.hint = _diverged_hint(self.cfg, kept)
            self.set_status("diverged", error=str(exc), hint=exc.hint, step=kept or 0, total=p.total_steps)
            raise
        except BaseException as exc:
            if isinstance(exc, OSError):  # a full disk, a folder gone read-only: said in words, not a traceback
                err = write_error(exc, "the run", p.run_dir)
                self.set_status("failed", error=str(err), step=self.last_good_step)
                raise err from exc
            self.set_status("failed", error=str(exc), step=self.last_good_step)
            raise
        finally:
            with contextlib.suppress(OSError):  # a full disk can refuse the last flush too
                self.metrics_fh.close()
