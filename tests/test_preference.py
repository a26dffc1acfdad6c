"""DPO and ORPO losses against NumPy references written from the papers' formulas, on the demo model."""
import os

import numpy as np
import pytest

from core.paths import demo_model_dir

BETA, LAM, EPS = 0.1, 0.25, 0.1


def _setup(dtype=None):
    import mlx.core as mx

    from core.train.preference import encode_pair
    from core.tokens import ChatEncoder
    from core.train import TrainConfig, add_adapters, load_base

    enc = ChatEncoder(demo_model_dir())
    model, _ = load_base(demo_model_dir())
    mx.random.seed(int(os.environ.get("TEST_PREF_SEED", "0")))  # LoRA's A is drawn from MLX's generator
    add_adapters(model, TrainConfig(model="", rank=4, alpha=8.0))
    # LoRA's B starts at zero: give the adapter weight so that it changes the model
    from mlx.utils import tree_flatten, tree_unflatten

    rng = np.random.default_rng(0)
    upd = [(k, mx.array(rng.normal(0, 0.05, v.shape).astype(np.float32)))
           for k, v in tree_flatten(model.trainable_parameters()) if k.endswith("lora_b")]
    model.update(tree_unflatten(upd))
    if dtype is not None:
        model.set_dtype(dtype)
    model.eval()
    pairs = []
    for i, (good, bad) in enumerate([("A red fox is a small wild dog.", "No idea."),
                                     ('{"name": "fox", "color": "red"}', "It is a fish that lives in trees."),
                                     ("Seven.", "Seven, because three plus four is seven and that is that.")]):
        prompt = [{"role": "user", "content": f"Question {i}: tell me something."}]
        pairs.append(encode_pair(enc, prompt, good, bad, 256))
    pad = enc.tok.pad_token_id or 0
    return model, pairs, pad


@pytest.fixture(scope="module")
def setup():
    return _setup()


def _np_logps(model, rows, pad):
    """Summed answer-token log-probs per row, in float64 NumPy from the model's logits."""
    import mlx.core as mx

    from core.train import pad_batch

    x, y, w = pad_batch(rows, pad, 256, select=False)
    logits = np.array(model(x).astype(mx.float32), dtype=np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    tok = np.take_along_axis(logp, np.array(y)[..., None], -1)[..., 0]
    w = np.array(w, dtype=np.float64)
    return (tok * w).sum(1), w.sum(1)


def _log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def _np_dpo(pc, pr, rc, rr):
    h = BETA * ((pc - rc) - (pr - rr))
    loss = np.mean(-(1 - EPS) * _log_sigmoid(h) - EPS * _log_sigmoid(-h))
    return loss, [h.mean(), (h > 0).mean(), pc.mean(), pr.mean()]


def _np_orpo(pc, pr, nc, nr):
    mc, mr = pc / nc, pr / nr
    log_odds = lambda m: m - np.log(1 - np.exp(m))  # noqa: E731
    ratio = log_odds(mc) - log_odds(mr)
    nll = -pc.sum() / nc.sum()
    loss = nll - LAM * np.mean(_log_sigmoid(ratio))
    return loss, [(LAM * ratio).mean(), (ratio > 0).mean(), pc.mean(), pr.mean()]


@pytest.mark.parametrize("select", [False, True])
def test_losses_and_metrics_equal_the_numpy_reference(setup, select):
    import mlx.core as mx

    from core.train.preference import adapter_off, pair_rows, preference_loss, reference_logps
    from core.train import pad_batch

    model, pairs, pad = setup
    rows = pair_rows(pairs)
    lp, n = _np_logps(model, rows, pad)
    with adapter_off(model):
        ref, _ = _np_logps(model, rows, pad)
    assert not np.allclose(lp, ref)  # the adapter matters, so the reference is really the base
    refs = reference_logps(model, pairs, 2, pad, 256, select)
    np.testing.assert_allclose([c for c, _ in refs] + [r for _, r in refs], ref, rtol=1e-5, atol=1e-4)

    b = len(pairs)
    arrays = pad_batch(rows, pad, 256, select)
    ref_mx = mx.array(np.asarray(ref, dtype=np.float32))
    loss, ntoks, metrics = preference_loss(model, "dpo", BETA, LAM, EPS, arrays[0], arrays[1], arrays[2], ref_mx,
                                           *arrays[3:])
    want, want_m = _np_dpo(lp[:b], lp[b:], ref[:b], ref[b:])
    assert ntoks.item() == n.sum()
    assert abs(loss.item() - want) < 1e-5
    np.testing.assert_allclose(np.array(metrics), want_m, rtol=1e-5, atol=1e-4)

    loss, _, metrics = preference_loss(model, "orpo", BETA, LAM, EPS, arrays[0], arrays[1], arrays[2], ref_mx,
                                       *arrays[3:])
    want, want_m = _np_orpo(lp[:b], lp[b:], n[:b], n[b:])
    assert abs(loss.item() - want) < 1e-5
    np.testing.assert_allclose(np.array(metrics), want_m, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_gradient_matches_a_finite_difference(setup, method):
    """The gradient value_and_grad gives is the derivative of the loss (central difference along
    a random direction in the adapter's parameters)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_unflatten

    from core.train.preference import pair_rows, preference_loss, reference_logps
    from core.train import pad_batch

    model, pairs, pad = setup
    refs = reference_logps(model, pairs, 4, pad, 256, True)
    ref = mx.array([c for c, _ in refs] + [r for _, r in refs])
    arrays = pad_batch(pair_rows(pairs), pad, 256, True)

    def f(m):
        return preference_loss(m, method, BETA, LAM, EPS, *arrays[:3], ref, *arrays[3:])

    (loss, _, _), grads = nn.value_and_grad(model, f)(model)
    params = dict(tree_flatten(model.trainable_parameters()))
    g = dict(tree_flatten(grads))
    # along the gradient itself: the largest change, so rounding (about 1e-4 in float32) stays small beside it;
    # a wrong gradient (other direction or size) gives a derivative along it that differs from its norm
    norm = float(np.sqrt(sum((g[k] * g[k]).sum().item() for k in params)))
    direction = {k: g[k] / norm for k in params}
    analytic = norm
    h = 1e-2 / norm if norm > 1 else 1e-2
    vals = []
    for sign in (1, -1):
        model.update(tree_unflatten([(k, params[k] + sign * h * direction[k]) for k in params]))
        vals.append(f(model)[0].item())
    model.update(tree_unflatten(list(params.items())))
    numeric = (vals[0] - vals[1]) / (2 * h)
    assert analytic > 1e-3
    assert abs(numeric - analytic) < 2e-2 * analytic, (numeric, analytic)


def test_identical_sides_give_the_neutral_loss(setup):
    """With the policy equal to the reference, DPO's loss is log 2 and the margin 0."""
    import mlx.core as mx

    from core.train.preference import adapter_off, pair_rows, preference_loss, reference_logps
    from core.train import pad_batch

    model, pairs, pad = setup
    refs = reference_logps(model, pairs, 4, pad, 256, True)
    ref = mx.array([c for c, _ in refs] + [r for _, r in refs])
    arrays = pad_batch(pair_rows(pairs), pad, 256, True)
    with adapter_off(model):
        loss, _, metrics = preference_loss(model, "dpo", BETA, LAM, 0.0, *arrays[:3], ref, *arrays[3:])
    assert abs(loss.item() - np.log(2)) < 1e-5
    assert abs(metrics[0].item()) < 1e-5


@pytest.mark.parametrize("method", ["dpo", "orpo"])
@pytest.mark.parametrize("select", [False, True])
def test_a_groups_shares_add_up_to_the_whole_batch(setup, method, select):
    """Several Macs: a batch of 3 pairs split 2 + 1 between two ranks. Each rank's loss and metrics with the
    step's totals (core.train.preference.group_norm) are its share: their sums, and the sums of the ranks'
    gradients, are the loss, metrics and gradient of one process over the whole batch (not the mean of
    the ranks' means, which weights the lone pair twice)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from core.distributed import Group
    from core.train.preference import batch_arrays, group_norm, preference_loss, reference_logps

    model, pairs, pad = setup
    refs = reference_logps(model, pairs, 3, pad, 256, select)

    def run(chunk, chunk_refs, norm=None):
        arrays = batch_arrays(chunk, chunk_refs, pad, 256, select)

        def f(m):
            return preference_loss(m, method, BETA, LAM, EPS, *arrays, norm=norm)

        (loss, _, metrics), grads = nn.value_and_grad(model, f)(model)
        mx.eval(loss, metrics, grads)
        return loss.item(), np.array(metrics), {k: np.array(v) for k, v in tree_flatten(grads)}

    whole = run(pairs, refs)
    parts = [(pairs[:2], refs[:2]), (pairs[2:], refs[2:])]
    totals = np.zeros(2)
    for chunk, chunk_refs in parts:  # what sum_floats adds over the ranks
        norm, _, _ = group_norm(Group(), batch_arrays(chunk, chunk_refs, pad, 256, select), len(chunk), 0)
        totals += norm
    assert totals[0] == 3 and totals[1] == sum(sum(p.chosen.mask[1:]) for p in pairs)
    shares = [run(chunk, chunk_refs, mx.array(totals, dtype=mx.float32)) for chunk, chunk_refs in parts]
    assert sum(s[0] for s in shares) == pytest.approx(whole[0], abs=1e-5)
    np.testing.assert_allclose(sum(s[1] for s in shares), whole[1], rtol=1e-5, atol=1e-4)
    for k, g in whole[2].items():
        np.testing.assert_allclose(shares[0][2][k] + shares[1][2][k], g, rtol=1e-4, atol=1e-6)
    means = [run(chunk, chunk_refs) for chunk, chunk_refs in parts]  # the wrong way: the mean of means differs
    assert abs((means[0][0] + means[1][0]) / 2 - whole[0]) > 1e-4


# ---------------------------------------------------------------------------
# Presets for each method (issue 30): one table in core.presets, read by the CLI and the Train page
# ---------------------------------------------------------------------------

def test_every_preset_has_preference_values_that_make_sense():
    from dataclasses import fields

    from core.presets import METHOD_PRESETS, PRESETS, preset_values
    from core.train import TrainConfig, apply_preset, preset_config

    names = {f.name for f in fields(TrainConfig)}
    assert set(METHOD_PRESETS) == {"dpo", "orpo"}
    for key in PRESETS:
        sft = preset_values(key)
        assert sft == PRESETS[key] == preset_values(key, None)
        for method in ("dpo", "orpo"):
            vals = preset_values(key, method)
            assert set(vals) <= names
            TrainConfig(model="", method=method, **vals)  # valid values
            assert vals["lr"] < sft["lr"]  # preference tuning moves less than supervised tuning
            assert 2 * vals["batch"] == sft["batch"]  # a pair is two sequences: the same rows per step
            assert {k: v for k, v in vals.items() if k not in ("lr", "batch", "beta", "orpo_lambda")} == \
                {k: v for k, v in sft.items() if k not in ("lr", "batch")}
        assert preset_values(key, "dpo")["lr"] < preset_values(key, "orpo")["lr"]  # ORPO also learns the answers
        assert preset_values(key, "dpo")["beta"] == 0.1 and preset_values(key, "orpo")["orpo_lambda"] == 0.1
        # the presets go down from quick to thorough as the supervised ones do
    lrs = [preset_values(k, "dpo")["lr"] for k in ("quick", "balanced", "thorough")]
    assert lrs == sorted(lrs, reverse=True)
    # the CLI's apply_preset and the Train page's preset_config read the same table; given values win
    assert apply_preset({"method": "dpo", "lr": None}, "balanced")["lr"] == METHOD_PRESETS["dpo"]["balanced"]["lr"]
    assert apply_preset({"method": "dpo", "lr": 1e-3}, "balanced")["lr"] == 1e-3
    assert apply_preset({"method": None}, "balanced")["lr"] == PRESETS["balanced"]["lr"]
    assert preset_config("quick", "orpo")["lr"] == METHOD_PRESETS["orpo"]["quick"]["lr"]
    assert preset_config("quick")["lr"] == PRESETS["quick"]["lr"]


# slow (torch + transformers + trl load in another interpreter) and needs that interpreter, so it runs only where
# TUNELOOM_TRL_PYTHON names one (python -m venv V; V/bin/pip install torch transformers trl peft)
@pytest.mark.skipif(not os.environ.get("TUNELOOM_TRL_PYTHON"),
                    reason="set TUNELOOM_TRL_PYTHON to a python with torch, transformers, trl and peft")
def test_dpo_loss_equals_trls_dpotrainer_on_the_same_model_and_batch(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    subprocess.run([sys.executable, str(root / "bench" / "dpo_trl_check.py"), "export", str(tmp_path)],
                   check=True, env=env, capture_output=True)
    p = subprocess.run([os.environ["TUNELOOM_TRL_PYTHON"], str(root / "bench" / "dpo_trl_check.py"), "compare",
                        str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    assert "loss difference" in p.stdout
