"""One optimizer step, for every kind of run: one process or a group (core.distributed), one batch or
gradients accumulated over several micro-batches, next-token loss (SFT) or a preference loss (DPO /
ORPO, core.train.preference).

In a group each rank trains on its share of every micro-batch. Each rank's loss is its own token
mean; weighting its gradient by its share of the step's tokens (factor = n_rank * size / n_all) makes
the average over the ranks the gradient of the single-process loss over the whole batch. A preference
rank's loss is already its share of the step's (``norm``: the step's pairs and chosen answer tokens
over every rank): factor = size makes the average the sum over the ranks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from core.train import losses
from core.train.batches import pad_batch


@dataclass
class StepOut:
    loss: float = 0.0  # the step's mean loss (over the group's tokens)
    tokens: int = 0  # every row's tokens, padding excluded (over the group)
    trained: int = 0  # the tokens the loss was taken on (over the group)
    extra: list[float] = field(default_factory=list)  # preference metrics (core.train.preference.METRIC_KEYS)


class Stepper:
    """``stepper(step)`` runs optimizer step ``step`` (1-based) of the prepared run (core.train.prepare)
    and returns its StepOut. Without accumulation the step is one function (compiled with
    mx.compile unless the run says not to)."""

    def __init__(self, p):
        import mlx.core as mx
        import mlx.nn as nn
        from mlx.utils import tree_map

        from core.train import preference as pref

        self.p, self.pref = p, pref
        cfg, group, model, opt = p.cfg, p.group, p.model, p.opt
        self.preference, self.distributed = p.data.preference, group.distributed

        def preference_step_loss(model, x, y, w, ref, *rest):
            return pref.preference_loss(model, cfg.method, cfg.beta, cfg.orpo_lambda, cfg.label_smoothing,
                                        x, y, w, ref, *rest)

        def preference_share_loss(model, norm, x, y, w, ref, *rest):
            # a group's rank: its share of the whole step's loss, so that the step's loss and gradient
            # are the sums over the ranks
            return pref.preference_loss(model, cfg.method, cfg.beta, cfg.orpo_lambda, cfg.label_smoothing,
                                        x, y, w, ref, *rest, norm=norm)

        step_loss_fn = losses._loss  # read now: a test may have replaced it
        if self.preference:
            step_loss_fn = preference_share_loss if self.distributed else preference_step_loss
        loss_and_grad = nn.value_and_grad(model, step_loss_fn)
        self.state = [model.state, opt.state, mx.random.state]

        def micro_step(*batch):  # (loss, trained tokens[, preference metrics]), gradients
            return loss_and_grad(model, *batch)

        def full_step(*args):  # one micro-batch's gradients applied: args are ([factor,] *batch)
            if self.distributed:
                factor, *batch = args
                out, grads = micro_step(*batch)
                grads = nn.average_gradients(tree_map(lambda g: g * factor, grads), group=group.handle)
            else:
                out, grads = micro_step(*args)
            opt.update(model, grads)
            return out

        self.micro_step = micro_step
        self.full_step = mx.compile(full_step, inputs=self.state, outputs=self.state) if cfg.compile else full_step

    def make_batch(self, members: list[int]):
        """The micro-batch's arrays and its token count (every row's tokens, padding excluded)."""
        p, cfg = self.p, self.p.cfg
        d = p.data
        if self.preference:
            chunk = [d.train_seqs[i] for i in members]
            refs = [p.train_refs[i] for i in members] if p.train_refs is not None else None
            return (self.pref.batch_arrays(chunk, refs, d.pad_id, cfg.max_seq_len, p.select),
                    sum(min(len(s.ids), cfg.max_seq_len) for s in self.pref.pair_rows(chunk)))
        batch = [d.train_seqs[i] for i in members]
        segs = [d.segments[i] for i in members] if d.segments else None
        return (pad_batch(batch, d.pad_id, cfg.max_seq_len, p.select, segs),
                sum(min(len(s.ids), cfg.max_seq_len) for s in batch))

    def _share(self, arrays, n_members: int, n_tokens):
        """A group rank's share of a micro-batch: (leading loss arguments, gradient factor, this rank's
        trained tokens, the group's trained tokens, the group's tokens). One process: no share."""
        import mlx.core as mx

        group = self.p.group
        if not self.distributed:
            return (), None, None, None, n_tokens
        if self.preference:  # the pairs' sums over the ranks, weighted by pairs
            norm, n_all, n_tokens = self.pref.group_norm(group, arrays, n_members, n_tokens)
            return (mx.array(norm, dtype=mx.float32),), float(group.size), None, n_all, n_tokens
        n_here = float(arrays[2].sum().item())
        n_all, n_tokens = group.sum_floats(n_here, n_tokens)
        return (), n_here * group.size / max(n_all, 1.0), n_here, n_all, n_tokens

    def _reduce(self, out, n_here, n_all) -> tuple[float, float, list[float]]:
        """A micro-batch's (loss, trained tokens, preference metrics), over the group."""
        group = self.p.group
        if self.distributed and self.preference:
            loss, *extra = group.sum_floats(out[0].item(), *out[2].tolist())
            return loss, n_all, extra
        if self.distributed:
            return group.sum_floats(out[0].item() * n_here)[0] / max(n_all, 1.0), n_all, []
        return out[0].item(), float(out[1].item()), (out[2].tolist() if self.preference else [])

    def __call__(self, step: int) -> StepOut:
        import mlx.core as mx
        import mlx.nn as nn
        from mlx.utils import tree_map

        from core.distributed import shard

        p, accum = self.p, self.p.cfg.grad_accum
        res, acc = StepOut(), None
        for a in range(accum):
            members = p.plan.micro((step - 1) * accum + a)
            if self.distributed:
                members = shard(members, p.group)
            arrays, n_tokens = self.make_batch(members)
            lead, factor, n_here, n_all, n_tokens = self._share(arrays, len(members), n_tokens)
            if accum == 1:
                out = self.full_step(*((mx.array(factor),) if self.distributed else ()), *lead, *arrays)
                mx.eval(self.state, out)
            else:
                out, grads = self.micro_step(*lead, *arrays)
                mx.eval(grads, out)
                if self.distributed:
                    grads = tree_map(lambda g: g * factor, grads)
                acc = grads if acc is None else tree_map(mx.add, acc, grads)
                mx.eval(acc)
            loss_value, n_trained, extra = self._reduce(out, n_here, n_all)
            if self.preference:
                res.extra = [x + y / accum for x, y in zip(res.extra or [0.0] * len(self.pref.METRIC_KEYS), extra)]
            res.loss += loss_value / accum
            res.trained += int(n_trained)
            res.tokens += int(n_tokens)
        if acc is not None:
            if self.distributed:
                acc = nn.average_gradients(acc, group=p.group.handle)
            p.opt.update(p.model, tree_map(lambda g: g / accum, acc))
            mx.eval(self.state)
        return res
