"""Reference check of Tuneloom's DPO loss against TRL's `DPOTrainer` on the same tiny model and batch.

Builds the tiny Qwen2.5 of the tests (float32) and a run with a random non-zero LoRA
(tests/fixtures/ship_runs.py), exported as a PEFT folder. Tuneloom's side (MLX) encodes a fixed batch
of preference pairs with its chat encoder, computes the reference log-probabilities with the adapter
switched off and the DPO loss and metrics with `core.train.preference`; it writes the token ids and the
answer masks. TRL's side (torch) loads the base in transformers with the PEFT folder, builds a
`DPOTrainer` whose reference model is the base model (Tuneloom's reference: the same weights with the
adapter off; TRL given a PEFT model that already holds an adapter and no reference keeps a copy of that
adapter as the reference instead) and calls its `compute_loss` on the same tokens, the same answer masks as
its `completion_mask`.

torch, transformers, trl and peft are not Tuneloom dependencies, so TRL's side runs in a virtualenv of
its own:

    python3 -m venv /tmp/trlvenv
    /tmp/trlvenv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    /tmp/trlvenv/bin/pip install transformers trl peft
    .venv/bin/python bench/dpo_trl_check.py export /tmp/dpo-check      # Tuneloom's side (MLX)
    /tmp/trlvenv/bin/python bench/dpo_trl_check.py compare /tmp/dpo-check  # TRL's side

Prints both losses and rewards; exits non-zero when the loss differs by more than 1e-4 (float32 both sides).

Run here (Linux, torch 2.13.0 CPU, transformers 5.25.0, trl 1.16.0, peft 0.21.2): TRL loss 0.605629, Tuneloom
0.605622 (difference 6.7e-06); reward margin 0.201269 / 0.201283, reward accuracy 2/3 both, chosen log-prob
-179.0052 / -179.0034. TRL's own tokenization of the same pairs differs in one token: its completion also
holds the newline the Qwen template writes after <|im_end|>, which Tuneloom's answer mask leaves out.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BETA = 0.1
PAIRS = [("A red fox is a small wild dog.", "No idea."),
         ('{"name": "fox", "color": "red"}', "It is a fish that lives in trees."),
         ("Seven.", "Seven, because three plus four is seven and that is that.")]


def export(out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import mlx.core as mx
    import mlx_lm

    from core.train import preference as pref
    from core.export.peft import export_peft
    from core.tokens import ChatEncoder
    from tests.fixtures.ship_runs import make_run
    from tests.fixtures.tiny_models import make_tiny_model

    base = make_tiny_model("qwen2.5", out / "base", dtype="float32")
    run = make_run(base, out / "run")
    export_peft(run, out / "peft")
    model, _ = mlx_lm.load(str(base), adapter_path=str(run))
    model.set_dtype(mx.float32)
    model.eval()
    enc = ChatEncoder(base)
    pad = enc.tok.pad_token_id if enc.tok.pad_token_id is not None else 0
    pairs = [pref.encode_pair(enc, [{"role": "user", "content": f"Question {i}: tell me something."}], good, bad, 256)
             for i, (good, bad) in enumerate(PAIRS)]
    refs = pref.reference_logps(model, pairs, len(pairs), pad, 256, False)
    loss, _, metrics = pref.preference_loss(model, "dpo", BETA, 0.0, 0.0,
                                            *pref.batch_arrays(pairs, refs, pad, 256, False))
    mx.eval(loss, metrics)
    rows = pref.pair_rows(pairs)  # every chosen side, then every rejected side (TRL's order too)
    (out / "batch.json").write_text(json.dumps({
        "ids": [list(r.ids) for r in rows], "mask": [list(map(int, r.mask)) for r in rows], "pad": pad,
        "loss": loss.item(), "metrics": dict(zip(pref.METRIC_KEYS, metrics.tolist())), "refs": refs}))
    print(f"Tuneloom: DPO loss {loss.item():.6f}, {dict(zip(pref.METRIC_KEYS, metrics.tolist()))}")


def compare(out: Path) -> None:
    import tempfile

    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    got = json.loads((out / "batch.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(out / "base"))
    model = AutoModelForCausalLM.from_pretrained(str(out / "base"), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(out / "peft"), is_trainable=True)
    rows = [{"prompt": [{"role": "user", "content": f"Question {i}: tell me something."}],
             "chosen": [{"role": "assistant", "content": good}], "rejected": [{"role": "assistant", "content": bad}]}
            for i, (good, bad) in enumerate(PAIRS)]
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(output_dir=tmp, beta=BETA, loss_type=["sigmoid"], report_to=[], use_cpu=True,
                         per_device_train_batch_size=len(PAIRS), max_length=None, bf16=False, fp16=False)
        ref = AutoModelForCausalLM.from_pretrained(str(out / "base"), dtype=torch.float32).eval()
        trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tok)
        n = max(map(len, got["ids"]))
        ids = torch.tensor([r + [got["pad"]] * (n - len(r)) for r in got["ids"]])
        attn = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in got["ids"]])
        comp = torch.tensor([m + [0] * (n - len(m)) for m in got["mask"]])
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, {"input_ids": ids, "attention_mask": attn, "completion_mask": comp})
        m = {k: float(sum(v) / len(v)) for k, v in trainer._metrics["train"].items() if v}
        # TRL's own tokenization of the same pairs, for the record: its answer masks (the completion, with the
        # template's end of turn) may differ from Tuneloom's
        own = trainer.train_dataset
        same = [list(own[i]["prompt_ids"]) + list(own[i]["chosen_ids"]) == got["ids"][i] for i in range(len(rows))]
    print(f"TRL {__import__('trl').__version__}: DPO loss {loss.item():.6f}; "
          f"rewards/margins {m.get('rewards/margins')}, rewards/accuracies {m.get('rewards/accuracies')}, "
          f"logps/chosen {m.get('logps/chosen')}, logps/rejected {m.get('logps/rejected')}")
    print(f"Tuneloom: DPO loss {got['loss']:.6f}; {got['metrics']}")
    print(f"|TRL - Tuneloom| loss difference: {abs(loss.item() - got['loss']):.2e}; "
          f"TRL's own tokenization gives the same chosen sequences: {same}")
    sys.exit(0 if abs(loss.item() - got["loss"]) < 1e-4 else 1)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("export", "compare"):
        sys.exit(__doc__)
    (export if sys.argv[1] == "export" else compare)(Path(sys.argv[2]))
