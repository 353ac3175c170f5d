"""The DeepSpeed JSON, built from the Hydra tree so that settings live in one place (conf/), and the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_contract import Refusal
from train.distributed import accelerator
from train.optim import param_groups
from train.preflight import grad_accum_steps
from train.skip_step import LossSpikeGuard, SkipStepAdamW


def cpu_has_bf16() -> bool:
    """AMX or AVX512-BF16 make bf16 matmuls fast on CPU; without them bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(setting: str) -> str:
    """`precision` (auto, bf16 or fp32: train/settings.py checks the choice) for this hardware."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def build_ds_config(cfg: Any, world_size: int, precision: str) -> dict[str, Any]:
    zero = cfg.deepspeed
    accum = grad_accum_steps(cfg.train.global_batch_size, cfg.train.micro_batch_size, world_size)
    zero_config: dict[str, Any] = {
        "stage": zero.stage,
        "overlap_comm": zero.overlap_comm,
        "contiguous_gradients": zero.contiguous_gradients,
        "reduce_bucket_size": int(zero.reduce_bucket_size),
    }
    if zero.stage == 3:
        zero_config["stage3_prefetch_bucket_size"] = int(zero.stage3_prefetch_bucket_size)
        zero_config["stage3_param_persistence_threshold"] = int(zero.stage3_param_persistence_threshold)
        zero_config["memory_efficient_linear"] = bool(zero.memory_efficient_linear)
    for part in ("optimizer", "param"):
        device = zero[f"offload_{part}"]
        if device not in ("none", "cpu"):
            raise Refusal(f"deepspeed.offload_{part}={device!r} must be none or cpu")
        if device == "cpu":
            zero_config[f"offload_{part}"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_batch_size": cfg.train.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero_config,
        "bf16": {"enabled": precision == "bf16"},
        # The client optimizer (train/skip_step.py) is torch's fused AdamW that can skip a step.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }


def start_engine(model: nn.Module, cfg: Any, ds_config: dict[str, Any]) -> tuple[Any, SkipStepAdamW]:
    """The DeepSpeed engine over `model` with GPT-3's AdamW groups, skipping loss spikes when the config
    has a `spike_guard` section.

    Under ZeRO-3 the classes named in `deepspeed.stage3_leaf_modules` are fetched whole: one
    all-gather and one set of hooks per transformer block instead of one per LayerNorm and linear,
    DeepSpeed's own remedy for finely nested modules.
    """
    import deepspeed
    from deepspeed.utils import set_z3_leaf_modules

    if cfg.deepspeed.stage == 3 and cfg.deepspeed.stage3_leaf_modules:
        set_z3_leaf_modules(model, list(cfg.deepspeed.stage3_leaf_modules))
    spike = cfg.get("spike_guard")
    guard = LossSpikeGuard(**spike, device=accelerator()) if spike is not None else None
    optimizer = SkipStepAdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                              betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, guard=guard)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine, optimizer
