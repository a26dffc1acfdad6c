"""The trainer on the bundled demo model (real tokenizer, real Qwen2 code, CPU)."""
import json
import math
import shutil
import threading
import time
from pathlib import Path

import pytest

from core import runs
from core.events import Cancelled, CancelToken, RecordingEvents, TuneloomError
from core.paths import demo_data_dir, demo_model_dir
from core.train import TrainConfig, TrainingDiverged, train

FAST = dict(rank=4, alpha=8.0, lr=1e-3, batch=8, max_seq_len=128, warmup=2, valid_every=0, valid_batches=2,
            checkpoint_every=5, seed=3)


def cfg(tmp_path, name="run", **kw):
    return TrainConfig(model=str(demo_model_dir()), data=[str(demo_data_dir())], out=str(tmp_path / name),
                       **{**FAST, **kw})


def test_loss_decreases_and_run_folder_is_complete(tmp_path):
    ev = RecordingEvents()
    res = train(cfg(tmp_path, iters=30), events=ev)
    losses = [v for _, v in ev.series("train_loss")]
    assert len(losses) == 30
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])  # batches mix easy prose and new JSON
    valid = ev.series("valid_loss")
    assert valid[0][0] == 0 and valid[-1][1] < 0.5 * valid[0][1]
    run = Path(res["run_dir"])
    for f in ("config.json", "metrics.jsonl", "adapters.safetensors", "adapter_config.json", "status.json"):
        assert (run / f).exists(), f
    assert runs.read_json(run / "status.json")["state"] == "done"
    metrics = runs.read_metrics(run)
    assert [m["step"] for m in metrics if "train_loss" in m] == list(range(1, 31))
    for key in ("learning_rate", "tokens_per_sec", "trained_tokens", "peak_memory"):
        assert key in metrics[1]
    # one metric event per optimizer step, progress with ETA
    assert ev.progresses[-1][0] == 30 and "ETA" in ev.progresses[-1][2]
    # mlx-lm reads the adapters as they are
    from mlx_lm import load

    model, _ = load(str(demo_model_dir()), adapter_path=str(run))
    assert model is not None


def test_prompt_tokens_get_zero_loss_weight():
    from core.tokens import ChatEncoder

    enc = ChatEncoder(demo_model_dir())
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there."},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Tell me about the red fox."},
            {"role": "assistant", "content": "It is an animal."}]
    e = enc.encode(msgs, mask_prompt=True)
    trained = [t for t, m in zip(e.ids, e.mask) if m]
    text = enc.tok.decode(trained)
    assert text == "Hello!<|im_end|>It is an animal.<|im_end|>"  # every assistant turn, never headers
    last = enc.encode(msgs, last_turn_only=True)
    assert enc.tok.decode([t for t, m in zip(last.ids, last.mask) if m]) == "It is an animal.<|im_end|>"
    # training ids equal the inference prompt + the answer
    prompt = enc.prompt_ids(msgs[:4])
    assert e.ids[: len(prompt)] == prompt


def test_selective_head_loss_equals_full_loss():
    from core.tokens import ChatEncoder
    from core.train import _loss, load_base, pad_batch, selective_head

    enc = ChatEncoder(demo_model_dir())
    model, _ = load_base(demo_model_dir())
    assert selective_head(model)
    msgs = [[{"role": "user", "content": f"Tell me about the red fox {i}."},
             {"role": "assistant", "content": "It is an animal. " * (i + 1)}] for i in range(5)]
    seqs = [enc.encode(m) for m in msgs]
    full, n_full = _loss(model, *pad_batch(seqs, 0, 256, select=False))
    sel, n_sel = _loss(model, *pad_batch(seqs, 0, 256, select=True))
    assert n_full.item() == n_sel.item() == sum(sum(s.mask[1:]) for s in seqs)
    assert abs(full.item() - sel.item()) < 1e-5 * abs(full.item())


def test_cancel_stops_within_a_step_and_saves(tmp_path):
    tok = CancelToken()
    ev = RecordingEvents()

    class StopAt(RecordingEvents):
        def metric(self, name, step, value):
            if name == "train_loss" and step == 4:
                tok.cancel()

    with pytest.raises(Cancelled) as info:
        train(cfg(tmp_path, iters=50), events=StopAt(), cancel=tok)
    assert info.value.result["steps"] == 4
    run = tmp_path / "run"
    assert (run / "adapters.safetensors").exists()
    assert runs.read_json(run / "status.json")["state"] == "cancelled"
    assert max(m["step"] for m in runs.read_metrics(run)) == 4


def test_pause_and_resume(tmp_path):
    tok = CancelToken()
    steps = []

    class Ev(RecordingEvents):
        def metric(self, name, step, value):
            if name == "train_loss":
                steps.append((step, time.monotonic()))
                if step == 3:
                    tok.pause()

    th = threading.Thread(target=lambda: train(cfg(tmp_path, iters=6), events=Ev(), cancel=tok))
    th.start()
    deadline = time.monotonic() + 120
    while not tok.paused or len(steps) < 3:
        time.sleep(0.05)
        assert time.monotonic() < deadline
    time.sleep(1.0)
    assert len(steps) == 3  # parked between steps
    tok.resume()
    th.join(120)
    assert [s for s, _ in steps] == [1, 2, 3, 4, 5, 6]


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    full = RecordingEvents()
    train(cfg(tmp_path, "full", iters=12, dropout=0.1), events=full)
    ref = [v for _, v in full.series("train_loss")]

    # interrupt after step 7 the hard way: a cancel, then delete everything newer than the
    # step-5 checkpoint as a crash would have left it
    tok = CancelToken()

    class StopAt(RecordingEvents):
        def metric(self, name, step, value):
            if name == "train_loss" and step == 7:
                tok.cancel()

    with pytest.raises(Cancelled):
        train(cfg(tmp_path, "part", iters=12, dropout=0.1), events=StopAt(), cancel=tok)
    run = tmp_path / "part"
    for ck in (run / "checkpoints").iterdir():
        if ck.name != "step-000005":
            shutil.rmtree(ck)
    resumed = RecordingEvents()
    res = train(TrainConfig(model=""), resume=run, events=resumed)
    assert res["state"] == "done"
    got = [v for _, v in resumed.series("train_loss")]
    assert len(got) == 7  # steps 6..12
    for a, b in zip(ref[5:], got):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5), (ref[5:], got)
    steps = [m["step"] for m in runs.read_metrics(run) if "train_loss" in m]
    assert steps == list(range(1, 13))  # the curve on disk has no gap and no duplicate


def test_nan_guard_stops_with_explanation(tmp_path, monkeypatch):
    import mlx.core as mx

    import core.train.losses as ct  # the module whose _loss the trainer calls

    real_loss = ct._loss
    calls = {"n": 0}

    def poisoned(model, *batch):  # a loss that turns NaN at the 8th step
        calls["n"] += 1
        loss, n = real_loss(model, *batch)
        return (loss * mx.array(float("nan")) if calls["n"] >= 8 else loss), n

    monkeypatch.setattr(ct, "_loss", poisoned)
    with pytest.raises(TrainingDiverged) as info:
        train(cfg(tmp_path, iters=20, compile=False, valid_every=0), events=RecordingEvents())
    assert "diverged" in str(info.value) and "step 6" in str(info.value)  # 2 validation calls come first
    assert "learning rate" in info.value.hint and "step 5" in info.value.hint
    run = tmp_path / "run"
    assert runs.read_json(run / "status.json")["state"] == "diverged"  # issue 25: a diverged run says so
    # the last good checkpoint (step 5) and its adapters are kept, free of NaN
    assert runs.latest_checkpoint(run).name == "step-000005"
    weights = mx.load(str(run / "adapters.safetensors"))
    assert all(not mx.isnan(v).any().item() for v in weights.values())


def test_dora_trains(tmp_path):
    ev = RecordingEvents()
    res = train(cfg(tmp_path, iters=12, dora=True), events=ev)
    assert json.loads((Path(res["run_dir"]) / "adapter_config.json").read_text())["fine_tune_type"] == "dora"
    # single batches differ (prose and JSON examples): learning shows in the held-out loss, step 0 vs the end
    valid = [v for _, v in ev.series("valid_loss")]
    assert len(valid) == 2 and valid[-1] < valid[0]


def test_qlora_on_a_quantized_base(tmp_path):
    from mlx_lm.utils import load_model, quantize_model, save_model

    from core.train import load_base

    model, config = load_model(demo_model_dir())
    model, qconfig = quantize_model(model, config, group_size=32, bits=4)
    qdir = tmp_path / "q4"
    save_model(qdir, model)
    (qdir / "config.json").write_text(json.dumps(qconfig))
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(demo_model_dir() / f, qdir / f)
    ev = RecordingEvents()
    res = train(TrainConfig(model=str(qdir), data=[str(demo_data_dir())], out=str(tmp_path / "run"),
                            **{**FAST, "iters": 12}), events=ev)
    valid = [v for _, v in ev.series("valid_loss")]
    assert res["state"] == "done" and len(valid) == 2 and valid[-1] < valid[0]
    import mlx.nn as nn

    base, _ = load_base(qdir)
    assert any(isinstance(m, nn.QuantizedLinear) for _, m in base.named_modules())


def test_bad_inputs_have_clear_messages(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n'
                   '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    with pytest.raises(TuneloomError) as info:
        train(TrainConfig(model=str(demo_model_dir()), data=[str(bad)], out=str(tmp_path / "r")))
    assert "bad.jsonl, line 1" in str(info.value) and "--skip-invalid" in info.value.hint
    with pytest.raises(TuneloomError):
        train(TrainConfig(model=str(tmp_path), data=[str(demo_data_dir())], out=str(tmp_path / "r2")))


def test_packed_rows_train_exactly_like_separate_examples():
    from core.tokens import ChatEncoder
    from core.train import _loss, load_base, pack_sequences, pad_batch

    enc = ChatEncoder(demo_model_dir())
    model, _ = load_base(demo_model_dir())
    msgs = [[{"role": "user", "content": f"Tell me about the red fox {i}."},
             {"role": "assistant", "content": "It is an animal. " * (i % 3 + 1)}] for i in range(7)]
    seqs = [enc.encode(m) for m in msgs]
    packed = pack_sequences(seqs, 96)
    assert len(packed) < len(seqs)  # several examples share a row
    assert sorted(n for _, segs in packed for n in segs) == sorted(len(s.ids) for s in seqs)
    rows = [p for p, _ in packed]
    segs = [s for _, s in packed]
    loss, n = _loss(model, *pad_batch(rows, 0, 96, select=True, segments=segs))
    total, count = 0.0, 0.0
    for s in seqs:
        li, ni = _loss(model, *pad_batch([s], 0, 96, select=True))
        total += li.item() * ni.item()
        count += ni.item()
    assert n.item() == count
    assert abs(loss.item() - total / count) < 1e-4 * abs(loss.item())


def test_pack_option_trains(tmp_path):
    ev = RecordingEvents()
    res = train(cfg(tmp_path, iters=10, pack=True, max_seq_len=256), events=ev)
    assert res["state"] == "done"
    assert any("packed" in text for _, text in ev.logs)
    valid = ev.series("valid_loss")
    assert valid[-1][1] < valid[0][1]


def test_killed_process_resumes_to_the_same_curve(tmp_path):
    """SIGKILL a real `tuneloom train` mid-run, resume it, compare with an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    args = ["--model", str(demo_model_dir()), "--data", str(demo_data_dir()), "--iters", "40", "--rank", "4",
            "--batch", "8", "--max-seq-len", "128", "--lr", "1e-3", "--seed", "5", "--dropout", "0.1",
            "--checkpoint-every", "4", "--valid-every", "0"]
    cmd = [sys.executable, "-m", "app.cli", "train"]
    ref = subprocess.run(cmd + args + ["--out", str(tmp_path / "ref")], cwd=root, capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd + args + ["--out", str(run)], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while True:
            steps = [m.get("step", 0) for m in runs.read_metrics(run) if "train_loss" in m]
            if steps and max(steps) >= 14:
                break
            assert proc.poll() is None, "finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert runs.read_json(run / "status.json")["state"] == "running"  # as a crash leaves it
    res = subprocess.run(cmd + ["--resume", str(run)], cwd=root, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    want = {m["step"]: m["train_loss"] for m in runs.read_metrics(tmp_path / "ref") if "train_loss" in m}
    got = {m["step"]: m["train_loss"] for m in runs.read_metrics(run) if "train_loss" in m}
    assert sorted(got) == list(range(1, 41))
    for s in range(1, 41):
        assert math.isclose(want[s], got[s], rel_tol=1e-4, abs_tol=1e-5), (s, want[s], got[s])


def test_memory_estimate_refuses_with_suggestions(tmp_path, monkeypatch):
    import core.train.memory as ct  # the module whose total_memory_bytes the trainer calls

    monkeypatch.setattr(ct, "total_memory_bytes", lambda: 8 * 2**20)  # an 8 MB machine
    with pytest.raises(TuneloomError) as info:
        train(cfg(tmp_path, iters=5))
    assert "needs about" in str(info.value)
    for hint in ("smaller batch", "shorter", "gradient checkpointing", "quantized"):
        assert hint in info.value.hint
    # the estimate grows with batch and length, and checkpointing lowers it
    kw = dict(model_config={"hidden_size": 896, "num_hidden_layers": 24, "intermediate_size": 4864,
                            "vocab_size": 151936}, weight_bytes=2 * 10**9, lora_params=10**6)
    small = ct.estimate_memory(batch=1, seq_len=256, grad_checkpoint=False, **kw)
    big = ct.estimate_memory(batch=8, seq_len=1024, grad_checkpoint=False, **kw)
    ckpt = ct.estimate_memory(batch=8, seq_len=1024, grad_checkpoint=True, **kw)
    assert small < ckpt < big


def test_ctrl_c_cancels_the_cli_cleanly(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "train", "--model", str(demo_model_dir()), "--data",
                             str(demo_data_dir()), "--out", str(run), "--iters", "5000", "--rank", "4", "--batch",
                             "4", "--max-seq-len", "128"], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not [m for m in runs.read_metrics(run) if "train_loss" in m]:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["state"] == "cancelled"
    assert runs.read_json(run / "status.json")["state"] == "cancelled"
    assert (run / "adapters.safetensors").exists()
    assert "Stopping after the current step" in err
