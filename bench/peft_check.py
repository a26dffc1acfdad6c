"""Reference check of Tuneloom's PEFT export with the real libraries: torch + transformers + peft.

Builds the tiny Qwen2.5 of the tests (float32), a run with a random non-zero LoRA (tests/fixtures/ship_runs.py),
exports it with ``tuneloom export RUN --peft DIR``, then loads the base in transformers, applies the folder
with ``PeftModel.from_pretrained`` and compares the logits with Tuneloom's model (mlx-lm base + adapter).

torch is not a Tuneloom dependency and is large, so this runs in a virtualenv of its own:

    python -m venv /tmp/peft-venv
    /tmp/peft-venv/bin/pip install torch transformers peft safetensors numpy
    .venv/bin/python bench/peft_check.py export /tmp/peft-check [dora]  # Tuneloom's side (MLX)
    /tmp/peft-venv/bin/python bench/peft_check.py compare /tmp/peft-check   # the torch side

Prints the largest logit difference; float32 both sides, so it should be below 1e-3.

Run here (Linux, torch 2.14.1 CPU, transformers 5.25.0, peft 0.21.2): LoRA 1.34e-05, DoRA 1.48e-05.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["Hello world, how are you today? I am fine, thank you.",
           "<|im_start|>user\nWrite code:\n    x = 1<|im_end|>\n<|im_start|>assistant\n"]


def export(out: Path, kind: str = "lora") -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from core.export.peft import export_peft
    from tests.fixtures.ship_runs import make_run, tuned_logits
    from tests.fixtures.tiny_models import make_tiny_model

    base = make_tiny_model("qwen2.5", out / "base", dtype="float32")
    run = make_run(base, out / "run", kind=kind)
    export_peft(run, out / "peft")
    import mlx_lm

    _, tok = mlx_lm.load(str(base))
    ids = [tok.encode(p) for p in PROMPTS]
    np.save(out / "tuned.npy", tuned_logits(base, run, ids))
    (out / "ids.json").write_text(json.dumps(ids))
    print(f"exported to {out / 'peft'}; Tuneloom's logits in {out / 'tuned.npy'}")


def compare(out: Path) -> None:
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out / "base"), torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(out / "peft"))
    model.eval()
    ids = json.loads((out / "ids.json").read_text())
    with torch.no_grad():
        got = np.concatenate([model(torch.tensor([x])).logits[0].float().numpy() for x in ids])
    want = np.load(out / "tuned.npy")
    err = float(np.abs(got - want).max())
    print(f"max |PEFT - Tuneloom| logit difference: {err:.2e} over {got.shape[0]} positions")
    sys.exit(0 if err < 1e-3 else 1)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in ("export", "compare"):
        sys.exit(__doc__)
    if sys.argv[1] == "export":
        export(Path(sys.argv[2]), *(sys.argv[3:]))  # optional: dora
    else:
        compare(Path(sys.argv[2]))
