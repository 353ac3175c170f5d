"""`python -m train.plan [pretraining overrides]`: will a run fit its GPUs, and what will it cost, before an
allocation is spent.

    python -m train.plan model=gpt3-175b train.seq_len=2048 train.micro_batch_size=1 \
        train.global_batch_size=1536 cluster.nodes=64 cluster.gpus_per_node=8 cluster.gpu_memory_gb=80

The same settings `python -m train` takes, plus `cluster.*` (conf/pretrain.yaml). Per GPU, under ZeRO-3:
- model states: 16 bytes per parameter over all GPUs (mixed-precision Adam: 2-byte weights and gradients,
  4-byte master weights, momentum and variance; Rajbhandari et al. 2020, ZeRO, section 3.1); offloaded
  to the host by `deepspeed=zero3-offload`;
- gathered weights: the block ZeRO-3 works on (one fetch unit: `deepspeed.stage3_leaf_modules`) and the
  prefetch bucket, 2 bytes each, and the gradient reduce bucket;
- activations: 34 x seq x micro-batch x hidden bytes per layer (Korthikanti et al. 2023, "Reducing
  Activation Recomputation in Large Transformer Models", eq. 1, without the attention-score term, which
  flash attention never stores); with activation checkpointing each layer keeps its 2-byte input and one
  layer is recomputed at a time; plus the fp32 logits and their gradient;
- a stated reserve (CUDA context, NCCL buffers, fragmentation).
A checkpoint holds 14 bytes per parameter in bf16 (2-byte weights, 12 bytes of optimizer state) and
the consolidated fp32 export 4 more (unless `checkpoint.export_model=false`); its write time follows `cluster.checkpoint_write_gb_per_s`. The step
time is the model's FLOPs (model/flops.py) at `cluster.mfu` of `cluster.peak_tflops_per_gpu`. DeepSpeed's
own estimator of model states is printed beside ours. The last line is the plan as one JSON object; the
exit code is 0 whether it fits or not. GB here is 10^9 bytes.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from typing import Any

from model.config import GPTConfig
from model.flops import block_params, flops_per_token, parameter_count
from train.settings import (
    CheckpointSettings,
    ClusterSettings,
    DeepSpeedSettings,
    PretrainLoopSettings,
    model_config_for,
)
from train.typed_settings import pretrain_settings

GB = 1e9
MODEL_STATE_BYTES = 16  # per parameter, ZeRO's mixed-precision Adam
CHECKPOINT_BYTES = {"bf16": 14, "fp32": 12}  # per parameter: weights in the working precision + fp32 Adam state
EXPORT_BYTES = 4  # the consolidated fp32 model
ACTIVATION_FACTOR = 34  # bytes per (token x hidden) per layer, Korthikanti et al.


@dataclass(frozen=True)
class PlannedRun:
    """What a plan reads of a pretraining run's settings: the model's shape, the loop, ZeRO, the cluster."""

    model: GPTConfig
    loop: PretrainLoopSettings
    zero: DeepSpeedSettings
    cluster: ClusterSettings
    precision: str  # auto (bf16 on the GPUs planned for), bf16 or fp32
    checkpoint: CheckpointSettings
    preset: str = "custom"

    def changed(self, **parts: Any) -> PlannedRun:
        """This run with some of its parts' settings changed: `changed(loop={"micro_batch_size": 1})`."""
        return dataclasses.replace(self, **{part: dataclasses.replace(getattr(self, part), **values)
                                            for part, values in parts.items()})


@dataclass(frozen=True)
class Plan:
    params: int
    gpus: int
    model_states_gb_per_gpu: float
    buffers_gb_per_gpu: float
    activations_gb_per_gpu: float
    reserve_gb_per_gpu: float
    peak_gb_per_gpu: float
    gpu_memory_gb: float | None
    fits: bool | None
    deepspeed_model_states_gb_per_gpu: float
    checkpoint_gb: float
    checkpoint_write_s: float
    tokens: int | None
    steps: int | None
    step_time_s: float
    fix: str | None = None


def activation_bytes(config: GPTConfig, seq_len: int, micro_batch: int, precision: str) -> float:
    """Activations one GPU holds at the peak of a step's backward."""
    scale = 2 if precision == "fp32" else 1  # Korthikanti's bytes are for 2-byte activations
    per_layer = ACTIVATION_FACTOR * seq_len * micro_batch * config.n_embd * scale
    if config.activation_checkpointing:
        kept = config.n_layer * 2 * seq_len * micro_batch * config.n_embd * scale + per_layer
    else:
        kept = config.n_layer * per_layer
    logits = 2 * 4 * seq_len * micro_batch * config.padded_vocab_size  # fp32 logits and their gradient
    return kept + logits


def memory_plan(run: PlannedRun) -> Plan:
    """The plan of `run` on its cluster."""
    config, cluster, loop, zero = run.model, run.cluster, run.loop, run.zero
    precision = "fp32" if run.precision == "fp32" else "bf16"
    gpus = cluster.nodes * cluster.gpus_per_node
    params, block = parameter_count(config), block_params(config)
    offloaded = zero.offload_param == "cpu" and zero.offload_optimizer == "cpu"
    model_states = 0.0 if offloaded else MODEL_STATE_BYTES * params / gpus
    weight_bytes = 4 if precision == "fp32" else 2
    buffers = weight_bytes * (block + min(zero.stage3_prefetch_bucket_size, block)) + 4 * zero.reduce_bucket_size
    activations = activation_bytes(config, loop.seq_len, loop.micro_batch_size, precision)
    peak = (model_states + buffers + activations) / GB + cluster.reserve_gb
    fits = None if cluster.gpu_memory_gb is None else peak <= cluster.gpu_memory_gb
    deepspeed_gb = (18 * params / gpus + 4 * block) / GB  # estimate_zero3_model_states_mem_needs, no offload
    checkpoint_gb = params * (CHECKPOINT_BYTES[precision] + (EXPORT_BYTES if run.checkpoint.export_model else 0)) / GB
    tokens_per_step = loop.global_batch_size * loop.seq_len
    steps = int(loop.tokens // tokens_per_step) if loop.tokens else loop.max_steps
    step_time = flops_per_token(config, loop.seq_len) * tokens_per_step / (gpus * cluster.peak_tflops_per_gpu * 1e12
                                                                            * cluster.mfu)
    return Plan(params, gpus, model_states / GB, buffers / GB, activations / GB, cluster.reserve_gb, peak,
                cluster.gpu_memory_gb, fits, deepspeed_gb, checkpoint_gb,
                checkpoint_gb / cluster.checkpoint_write_gb_per_s, steps * tokens_per_step if steps else None,
                steps, step_time)


def first_fix(run: PlannedRun) -> str | None:
    """The first change, in order of cost to the run, that makes a plan that does not fit fit."""
    def fits(**parts: Any) -> bool:
        return bool(memory_plan(run.changed(**parts)).fits)

    if not run.model.activation_checkpointing and fits(model={"activation_checkpointing": True}):
        return "model.activation_checkpointing=true"
    for micro in range(run.loop.micro_batch_size - 1, 0, -1):
        if fits(loop={"micro_batch_size": micro}):
            return f"train.micro_batch_size={micro} (the global batch stays; more accumulation steps)"
    for nodes in range(run.cluster.nodes + 1, 16 * run.cluster.nodes + 1):
        if fits(cluster={"nodes": nodes}):
            return f"cluster.nodes={nodes}"
    if fits(zero={"offload_param": "cpu", "offload_optimizer": "cpu"}):
        return "deepspeed=zero3-offload (parameters and optimizer state in host memory; slower steps)"
    return None


def plan_with_fix(run: PlannedRun) -> Plan:
    plan = memory_plan(run)
    return dataclasses.replace(plan, fix=first_fix(run)) if plan.fits is False else plan


def table(run: PlannedRun, plan: Plan) -> list[str]:
    """The plan as a person reads it."""
    cluster, loop = run.cluster, run.loop
    checkpointing = "on" if run.model.activation_checkpointing else "off"
    verdict = {True: "fits", False: "does NOT fit", None: "(no cluster.gpu_memory_gb: not judged)"}[plan.fits]
    rows = [
        f"model {run.preset}: {plan.params / 1e9:.2f}B parameters; seq {loop.seq_len}, micro batch "
        f"{loop.micro_batch_size}, global batch {loop.global_batch_size}; activation checkpointing {checkpointing}",
        f"cluster: {cluster.nodes} node(s) x {cluster.gpus_per_node} GPU(s) = {plan.gpus} GPUs",
        "per GPU                          GB",
        f"  model states (16 B/param)  {plan.model_states_gb_per_gpu:9.2f}",
        f"  gathered weights, buckets  {plan.buffers_gb_per_gpu:9.2f}",
        f"  activations                {plan.activations_gb_per_gpu:9.2f}",
        f"  reserve                    {plan.reserve_gb_per_gpu:9.2f}",
        f"  peak                       {plan.peak_gb_per_gpu:9.2f}  of {plan.gpu_memory_gb or '?'}: {verdict}",
        f"  DeepSpeed's estimator (model states and largest layer): {plan.deepspeed_model_states_gb_per_gpu:.2f}",
        f"checkpoint: {plan.checkpoint_gb:,.0f} GB, {plan.checkpoint_write_s:,.0f} s at "
        f"{cluster.checkpoint_write_gb_per_s:g} GB/s",
        f"step: {plan.step_time_s:.2f} s at {100 * cluster.mfu:.0f}% MFU of {cluster.peak_tflops_per_gpu:g} TFLOP/s"
        + (f"; {plan.steps:,} steps, {plan.tokens / 1e9:,.1f}B tokens, {plan.steps * plan.step_time_s / 86400:,.1f} days"
           if plan.steps and plan.tokens else ""),
    ]
    if plan.checkpoint_write_s > run.checkpoint.timeout_s:
        rows.append(f"warning: a save takes longer than checkpoint.timeout_s={run.checkpoint.timeout_s:g}; raise it")
    if plan.fix:
        rows.append(f"fix: {plan.fix}")
    elif plan.fits is False:
        rows.append("fix: none found within 16x the nodes; shrink the model or the sequence")
    return rows


def main(argv: list[str] | None = None) -> None:
    settings = pretrain_settings(sys.argv[1:] if argv is None else argv)
    run = PlannedRun(model_config_for(settings.model, settings.vocab_size, settings.model.vocab_size), settings.train, settings.deepspeed,
                     settings.cluster, settings.precision, settings.checkpoint, settings.model.name)
    plan = plan_with_fix(run)
    print("\n".join(table(run, plan)))
    print(json.dumps(dataclasses.asdict(plan)))


if __name__ == "__main__":
    main()
