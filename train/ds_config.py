"""The DeepSpeed JSON, built from the typed settings (train/settings.py) so that they live in one place, and the engine."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from data_contract.refusal import Refusal
from train.distributed import accelerator
from train.optim import param_groups
from train.settings import DeepSpeedSettings, LoopSettings, OptimSettings, SpikeGuardSettings
from train.spike_guard import LossSpikeGuard, SkipStepAdamW


def cpu_has_bf16() -> bool:
    """AMX or AVX512-BF16 make bf16 matmuls fast on CPU; without them bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(setting: str) -> str:
    """`precision` (auto, bf16 or fp32) for this hardware."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def build_ds_config(zero: DeepSpeedSettings, loop: LoopSettings, grad_clip: float, world_size: int,
                    precision: str) -> dict[str, Any]:
    """The DeepSpeed JSON: ZeRO's settings, the batch arithmetic of the loop's, clipping and precision."""
    zero_config: dict[str, Any] = {
        "stage": zero.stage,
        "overlap_comm": zero.overlap_comm,
        "contiguous_gradients": zero.contiguous_gradients,
        "reduce_bucket_size": int(zero.reduce_bucket_size),
    }
    if zero.stage == 3:
        zero_config.update(
            stage3_prefetch_bucket_size=int(zero.stage3_prefetch_bucket_size),
            stage3_param_persistence_threshold=int(zero.stage3_param_persistence_threshold),
            stage3_max_live_parameters=int(zero.stage3_max_live_parameters),
            stage3_max_reuse_distance=int(zero.stage3_max_reuse_distance),
            zero_hpz_partition_size=zero.zero_hpz_partition_size,
            zero_quantized_weights=zero.zero_quantized_weights,
            zero_quantized_gradients=zero.zero_quantized_gradients,
            memory_efficient_linear=zero.memory_efficient_linear)
        quantized = [key for key in ("zero_quantized_weights", "zero_quantized_gradients") if getattr(zero, key)]
        if quantized and not torch.cuda.is_available():
            raise Refusal(f"deepspeed.{quantized[0]}=true needs CUDA (DeepSpeed's quantizer has no CPU kernel); "
                          "set it false on CPU")
    for part, device in (("optimizer", zero.offload_optimizer), ("param", zero.offload_param)):
        if device == "cpu":
            zero_config[f"offload_{part}"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_batch_size": loop.global_batch_size,
        "train_micro_batch_size_per_gpu": loop.micro_batch_size,
        "gradient_accumulation_steps": loop.grad_accum_steps(world_size),
        "gradient_clipping": grad_clip,
        "zero_optimization": zero_config,
        "bf16": {"enabled": precision == "bf16"},
        # The client optimizer (train/spike_guard.py) is torch's fused AdamW that can skip a step.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }


def start_engine(model: nn.Module, zero: DeepSpeedSettings, optim: OptimSettings,
                 spike_guard: SpikeGuardSettings | None, ds_config: dict[str, Any]) -> tuple[Any, SkipStepAdamW]:
    """The DeepSpeed engine over `model` with GPT-3's AdamW groups, skipping loss spikes when the stage
    has a spike guard.

    Under ZeRO-3 the classes named in `deepspeed.stage3_leaf_modules` are fetched whole: one
    all-gather and one set of hooks per transformer block instead of one per LayerNorm and linear,
    DeepSpeed's own remedy for finely nested modules.
    """
    import deepspeed
    from deepspeed.utils import set_z3_leaf_modules

    if zero.stage == 3 and zero.stage3_leaf_modules:
        set_z3_leaf_modules(model, list(zero.stage3_leaf_modules))
    guard = None
    if spike_guard is not None:
        guard = LossSpikeGuard(**dataclasses.asdict(spike_guard), device=accelerator())
    optimizer = SkipStepAdamW(param_groups(model, optim.weight_decay), lr=optim.lr, betas=tuple(optim.betas),
                              eps=optim.eps, guard=guard)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine, optimizer


def partitioned_build(zero: DeepSpeedSettings, ds_config: dict[str, Any]) -> Callable[[], Any] | None:
    """Under ZeRO-3, the context a stage builds its model in: DeepSpeed's zero.Init, which partitions each
    module's parameters as it is created, so no rank ever holds the whole model (given the DeepSpeed config
    and no dtype, its parameters take the run's precision)."""
    if zero.stage != 3:
        return None
    import deepspeed

    return lambda: deepspeed.zero.Init(config_dict_or_path=ds_config)


@torch.no_grad()
def load_weights(model: nn.Module, weights: dict[str, torch.Tensor] | None) -> None:
    """Copy full `weights` into `model`, one parameter at a time: into a partitioned model from rank 0
    (the other ranks pass None and receive their partitions), into a whole one on every rank."""
    import deepspeed

    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0, enabled=hasattr(param, "ds_id")):
            if weights is not None:
                param.copy_(weights[name])


def restore_fp32_master(engine: Any, weights: dict[str, torch.Tensor] | None) -> None:
    """Set ZeRO-3's fp32 master weights to `weights` (full fp32 tensors by parameter name, on rank 0 at least;
    collective).

    DeepSpeed builds the master copy from the module after casting it to bf16, so weights loaded in fp32
    (continued pretraining from `init`, fine-tuning) would lose their low bits before the first step; this
    puts them back. Rank 0 sends one parameter at a time and each rank keeps its partition. (DeepSpeed's
    `safe_set_full_fp32_param` narrows past the end of a parameter whose size the ranks do not divide, so
    the partition is filled here.)
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    for name, param in engine.module.named_parameters():
        if not (hasattr(param, "ds_id") and param.requires_grad):
            continue
        full = weights[name] if rank == 0 and weights is not None else torch.empty(param.ds_shape)
        full = full.to(accelerator(), torch.float32)
        if dist.is_initialized():
            dist.broadcast(full, 0)
        partition, _ = param._z3_optimizer._get_fp32_opt_state_partition(param, release_swap_buffers=False)
        start = partition.numel() * rank
        mine = full.flatten()[start:start + partition.numel()].to(partition.device, partition.dtype)
        partition.data[:mine.numel()].copy_(mine)
