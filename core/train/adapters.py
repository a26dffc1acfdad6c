"""The model a run trains: the base loaded with mlx-lm, LoRA / DoRA adapters added, the adapters saved
(the run's final ones and its best one)."""
from __future__ import annotations

from pathlib import Path

from core import arch, runs
from core.atomic import atomic_path, write_json
from core.events import TuneloomError
from core.train.config import TrainConfig

# the modules train adapts, of every family together (core.arch; a model has the ones its layers have)
ATTENTION_KEYS = list(arch.ATTENTION_KEYS)
MLP_KEYS = list(arch.MLP_KEYS)
DELTANET_KEYS = list(arch.RECURRENT_KEYS)  # Qwen3.5's Gated DeltaNet projections (core.arch.DELTANET)


def load_base(model_dir: str | Path):
    """Load a model folder with mlx-lm; float weights in float32 on the CPU, as stored on a GPU."""
    import mlx.core as mx
    from mlx_lm.utils import load_model

    from core.hub import validate_model_dir

    # the one model-folder check fetch and export use too: a config.json that disagrees with the weights
    wrong = [p for p in validate_model_dir(model_dir, load_tokenizer=False).problems if p.code == "config_mismatch"]
    if wrong:
        raise TuneloomError(f"Cannot train on {model_dir}: {wrong[0].message}", wrong[0].hint)
    try:
        model, config = load_model(Path(model_dir))
    except FileNotFoundError as exc:
        raise TuneloomError(f"{model_dir} is not a complete model folder: {exc}",
                            "It needs config.json and *.safetensors weights.") from exc
    except ValueError as exc:
        raise TuneloomError(f"Cannot load the model in {model_dir}: {exc}") from exc
    if mx.default_device() == mx.cpu:
        model.set_dtype(mx.float32)
    # read the weights now: MLX 0.32 keeps a stream per thread, so weights left lazy on this thread's stream
    # could not be evaluated by another ("no Stream(cpu, 0) in current thread"): the window loads in one job
    # and answers in another
    mx.eval(model.parameters())
    return model, config


def add_adapters(model, cfg: TrainConfig) -> dict:
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mixers = ATTENTION_KEYS + DELTANET_KEYS  # each model has the ones its layers have
    keys = mixers if cfg.targets == "attention" else mixers + MLP_KEYS
    present = set()
    for layer in model.layers:
        for name, _ in layer.named_modules():
            present.add(name)
    keys = [k for k in keys if k in present]
    n_layers = len(model.layers) if cfg.num_layers < 0 else min(cfg.num_layers, len(model.layers))
    params = {"rank": cfg.rank, "scale": cfg.scale, "dropout": cfg.dropout, "keys": keys}
    model.freeze()
    linear_to_lora_layers(model, n_layers, params, use_dora=cfg.dora)
    return {"fine_tune_type": "dora" if cfg.dora else "lora", "num_layers": n_layers, "lora_parameters": params}


def adapter_weights(model) -> dict:
    from mlx.utils import tree_flatten

    return dict(tree_flatten(model.trainable_parameters()))


def save_adapters(model, dest_dir: Path, adapter_config: dict) -> None:
    import mlx.core as mx

    dest_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest_dir / "adapters.safetensors", suffix=".safetensors") as tmp:
        mx.save_safetensors(str(tmp), adapter_weights(model))
    write_json(dest_dir / "adapter_config.json", adapter_config)


def save_best_adapters(model, run_dir: Path, adapter_config: dict) -> None:
    """Write the current adapter as the run's best (``adapters_best.safetensors``)."""
    import mlx.core as mx

    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / runs.BEST_ADAPTERS, suffix=".safetensors") as tmp:
        mx.save_safetensors(str(tmp), adapter_weights(model))
    if not (run_dir / "adapter_config.json").exists():
        write_json(run_dir / "adapter_config.json", adapter_config)
