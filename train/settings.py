"""The training commands' settings as typed dataclasses: declared once, checked the moment a command starts,
and passed down in parts.

Hydra composes the YAML of conf/ into an untyped tree: `train.max_steps=abc` or `optim.betas=0.9`
would pass until the code reached them, after DeepSpeed and the data were set up, and `+train.foo=1`
would be carried along unused. So the tree is merged into these dataclasses (train/typed_settings.py):
every value converted to its declared type, undeclared keys refused, each `Literal` choice checked, and
the command gets the dataclass objects themselves. Each building block then takes its own part (the
optimizer's settings to the schedule, DeepSpeed's to the config builder) rather than the whole tree.

The dataclasses are the one source of defaults. Hydra needs every key a user may override declared in
the YAML, so conf/ repeats the keys and documents them; tests/test_settings.py holds both to the same
defaults, and a setting each stage chooses itself has no default here. The model group's schema is
GPTConfig itself (model/config.py).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from omegaconf import MISSING

from data_contract.refusal import Refusal
from model.config import GPTConfig

# OmegaConf reads these annotations at run time: no `X | None` here (Python 3.10 cannot evaluate it on
# the dataclasses OmegaConf builds), so Optional[...] stays.
# ruff: noqa: UP045


Precision = Literal["auto", "bf16", "fp32"]
Offload = Literal["none", "cpu"]


def _model_settings() -> type:
    """GPTConfig's fields, plus the preset's `name` label."""
    hints = typing.get_type_hints(GPTConfig)
    fields = [("name", str, field(default="custom"))]
    for spec in dataclasses.fields(GPTConfig):
        default = MISSING if spec.default is dataclasses.MISSING else spec.default
        fields.append((spec.name, hints[spec.name], field(default=default)))
    return dataclasses.make_dataclass("ModelSettings", fields)


ModelSettings = _model_settings()


@dataclass
class PathSettings:
    data_root: str = MISSING
    raw_root: str = MISSING
    run_root: str = MISSING


@dataclass
class MixtureSource:
    weight: float = MISSING
    max_epochs: Optional[float] = None


@dataclass
class MixtureSettings:
    name: str = MISSING
    sources: dict[str, MixtureSource] = field(default_factory=dict)


@dataclass
class DeepSpeedSettings:
    """ZeRO's part of the DeepSpeed JSON (train/ds_config.py builds the rest from the loop's settings)."""

    stage: Literal[0, 1, 2, 3] = 3
    offload_optimizer: Offload = "none"
    offload_param: Offload = "none"
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_bucket_size: float = 5.0e7
    stage3_prefetch_bucket_size: float = 5.0e7
    stage3_param_persistence_threshold: float = 1.0e5
    stage3_max_live_parameters: float = 1.0e9
    stage3_max_reuse_distance: float = 1.0e9
    zero_hpz_partition_size: int = 1
    zero_quantized_weights: bool = False
    zero_quantized_gradients: bool = False
    memory_efficient_linear: bool = False
    stage3_leaf_modules: list[str] = field(default_factory=lambda: ["Block"])


@dataclass
class LoopSettings:
    """What every training stage's `train.` group holds."""

    micro_batch_size: int = MISSING
    global_batch_size: int = MISSING
    max_steps: Optional[int] = None
    stop_at_step: Optional[int] = None
    resume: str = "auto"
    overwrite: bool = False
    accept_changes: list[str] = field(default_factory=list)
    log_every: int = 1
    threads_per_rank: Optional[int] = None
    collective_timeout_s: float = 1800.0
    time_budget_s: Optional[float] = None
    compile: bool = False

    def grad_accum_steps(self, world_size: int) -> int:
        """global_batch = micro_batch x grad_accum x world_size, or a one-line refusal."""
        global_batch, micro_batch = self.global_batch_size, self.micro_batch_size
        per_step = micro_batch * world_size
        if global_batch < 1 or micro_batch < 1:
            raise Refusal(f"train.global_batch_size={global_batch} and train.micro_batch_size={micro_batch} "
                          "must be >= 1")
        if global_batch % per_step:
            raise Refusal(
                f"train.global_batch_size={global_batch} is not a multiple of train.micro_batch_size={micro_batch} x "
                f"{world_size} ranks = {per_step}; pick a global batch that is, or another micro batch"
            )
        return global_batch // per_step


@dataclass
class PretrainLoopSettings(LoopSettings):
    seq_len: int = MISSING
    tokens: Optional[float] = None


@dataclass
class FinetuneLoopSettings(LoopSettings):
    epochs: int = MISSING
    max_len: Optional[int] = None


@dataclass
class OptimSettings:
    lr: float = MISSING
    betas: list[float] = MISSING
    eps: float = 1.0e-8
    weight_decay: float = MISSING  # each stage its own: GPT-3's 0.1, GPT-1's 0.01
    grad_clip: float = 1.0


@dataclass
class ScheduleSettings:
    kind: Literal["cosine", "wsd"] = MISSING  # each stage its own (GPT-3: cosine; GPT-1: linear decay, wsd)
    warmup_steps: Optional[int] = None  # or warmup_fraction
    warmup_fraction: Optional[float] = None
    min_lr_ratio: float = MISSING
    decay_fraction: float = MISSING

    def warmup(self, planned_steps: int) -> int:
        """`warmup_steps`, or `warmup_fraction` of the steps the stage plans (GPT-1 gives a fraction)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return round((self.warmup_fraction or 0.0) * planned_steps)


@dataclass
class CheckpointSettings:
    every: int = MISSING
    every_s: Optional[float] = None
    keep_last: int = MISSING
    export_model: bool = True
    export_final_only: bool = False
    timeout_s: float = 3600.0


@dataclass
class WandbSettings:
    enabled: bool = True
    project: str = "gptpipe"
    entity: Optional[str] = None
    mode: str = "offline"


@dataclass
class DataSettings:
    mix_dir: str = MISSING
    tokenizer_dir: str = MISSING
    prefetch_batches: int = 4


@dataclass
class BenchmarkSettings:
    """How multiple-choice benchmarks are scored, in the loop (`eval.`) and by train.evaluate."""

    tasks: list[str] = field(default_factory=list)
    harness: Literal["builtin", "lm_eval"] = "builtin"
    eos_before_context: bool = False
    shots: int = 0
    fewshot_seed: int = 1234
    fewshot_separator: str = "\n\n"
    fewshot_from: Optional[str] = None
    lm_eval_include: list[str] = field(default_factory=list)


@dataclass
class PretrainEvalSettings(BenchmarkSettings):
    every: int = MISSING
    every_s: Optional[float] = None
    max_batches: int = MISSING
    sample_every: int = 100
    sample_prompt: str = "It is a truth universally acknowledged"
    sample_tokens: int = 32


@dataclass
class SpikeGuardSettings:
    """Skipped updates on loss spikes (train/spike_guard.py)."""

    enabled: bool = True
    zscore: float = 6.0
    window: int = 50
    min_history: int = 20
    max_consecutive: int = 3


@dataclass
class MetricsSettings:
    peak_flops: Optional[float] = None


@dataclass
class ClusterSettings:
    """The GPUs a run is planned for (train/plan.py), and what the plan assumes of them."""

    nodes: int = 1
    gpus_per_node: int = 1
    gpu_memory_gb: Optional[float] = None
    peak_tflops_per_gpu: float = 989.0
    mfu: float = 0.4
    checkpoint_write_gb_per_s: float = 5.0
    reserve_gb: float = 3.0


@dataclass
class TrainingSettings:
    """What the trainer (train/trainer.py) reads, whichever stage it runs."""

    paths: PathSettings = field(default_factory=PathSettings)
    deepspeed: DeepSpeedSettings = field(default_factory=DeepSpeedSettings)
    run_name: str = MISSING
    run_dir: str = MISSING
    init: Optional[str] = None
    seed: int = 1234
    train: LoopSettings = field(default_factory=LoopSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    precision: Precision = "auto"
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    spike_guard: Optional[SpikeGuardSettings] = None  # pretraining only
    wandb: WandbSettings = field(default_factory=WandbSettings)


@dataclass
class PretrainSettings(TrainingSettings):
    model: ModelSettings = field(default_factory=ModelSettings)  # type: ignore[valid-type]
    mixture: MixtureSettings = field(default_factory=MixtureSettings)
    vocab_size: Optional[int] = None
    data: DataSettings = field(default_factory=DataSettings)
    train: PretrainLoopSettings = field(default_factory=PretrainLoopSettings)
    eval: PretrainEvalSettings = field(default_factory=PretrainEvalSettings)
    spike_guard: Optional[SpikeGuardSettings] = field(default_factory=SpikeGuardSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)


@dataclass
class TaskSettings:
    name: str = MISSING
    type: str = MISSING
    train: str = MISSING
    validation: str = MISSING
    fields: dict[str, Any] = field(default_factory=dict)
    labels: Optional[list[Any]] = None
    prompt_template: Optional[str] = None
    prompt_template_no_input: Optional[str] = None


@dataclass
class FinetuneEvalSettings:
    every: int = 0
    micro_batch_size: int = MISSING


@dataclass
class FinetuneSettings(TrainingSettings):
    task: TaskSettings = field(default_factory=TaskSettings)
    lm_weight: float = 0.5
    head_dropout: float = 0.1
    train: FinetuneLoopSettings = field(default_factory=FinetuneLoopSettings)
    eval: FinetuneEvalSettings = field(default_factory=FinetuneEvalSettings)


def model_config_for(model: Any, vocab_size: int | None, data_vocab_size: int) -> GPTConfig:
    """The preset (`model`: the ModelSettings) with the vocabulary of the tokenizer, or `vocab_size` when
    the user fixed one."""
    values = dataclasses.asdict(model)
    values["vocab_size"] = vocab_size if vocab_size is not None else data_vocab_size
    try:
        return GPTConfig.from_dict(values)
    except ValueError as invalid:
        raise Refusal(str(invalid)) from None


SCHEMAS: dict[str, type] = {"pretrain": PretrainSettings, "finetune": FinetuneSettings}
