"""The training commands' settings as typed schemas, checked the moment a command starts.

Hydra composes the YAML of conf/ into an untyped tree: `train.max_steps=abc` or `optim.betas=0.9`
would pass until the code reached them, after DeepSpeed and the data were set up, and `+train.foo=1`
would be carried along unused. Merging the tree into these dataclasses (OmegaConf structured configs)
converts every value to its declared type and rejects keys the schema does not declare, before
anything heavy is imported; the first problem is refused in one line. The model group's schema is
GPTConfig itself (model/config.py), so the fields a preset may set are declared in one place.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from data_contract import Refusal
from model.config import GPTConfig

# OmegaConf reads these annotations at run time: no `X | None` here (Python 3.10 cannot evaluate it on
# the dataclasses OmegaConf builds), so Optional[...] stays.
# ruff: noqa: UP045


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
    stage: int = 3
    offload_optimizer: str = "none"
    offload_param: str = "none"
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_bucket_size: float = 5.0e7
    stage3_prefetch_bucket_size: float = 5.0e7
    stage3_param_persistence_threshold: float = 1.0e5
    memory_efficient_linear: bool = False
    stage3_leaf_modules: list[str] = field(default_factory=list)


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


@dataclass
class PretrainLoopSettings(LoopSettings):
    seq_len: int = MISSING
    tokens: Optional[float] = None
    compile: bool = False


@dataclass
class FinetuneLoopSettings(LoopSettings):
    epochs: int = MISSING
    max_len: Optional[int] = None


@dataclass
class OptimSettings:
    lr: float = MISSING
    betas: list[float] = MISSING
    eps: float = 1.0e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0


@dataclass
class ScheduleSettings:
    kind: str = "cosine"
    warmup_steps: Optional[int] = None
    warmup_fraction: Optional[float] = None
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2


@dataclass
class CheckpointSettings:
    every: int = MISSING
    keep_last: int = MISSING
    export_model: bool = True


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
class PretrainEvalSettings:
    every: int = MISSING
    max_batches: int = MISSING
    sample_every: int = 0
    sample_prompt: str = ""
    sample_tokens: int = 32
    tasks: list[str] = field(default_factory=list)
    harness: str = "builtin"
    eos_before_context: bool = False
    shots: int = 0
    fewshot_seed: int = 1234
    fewshot_separator: str = "\n\n"
    fewshot_from: Optional[str] = None
    lm_eval_include: list[str] = field(default_factory=list)


@dataclass
class SpikeGuardSettings:
    enabled: bool = True
    zscore: float = 6.0
    window: int = 50
    min_history: int = 20
    max_consecutive: int = 3


@dataclass
class MetricsSettings:
    peak_flops: Optional[float] = None


@dataclass
class PretrainSettings:
    paths: PathSettings = field(default_factory=PathSettings)
    model: Any = field(default_factory=ModelSettings)
    mixture: MixtureSettings = field(default_factory=MixtureSettings)
    deepspeed: DeepSpeedSettings = field(default_factory=DeepSpeedSettings)
    run_name: str = MISSING
    run_dir: str = MISSING
    init: Optional[str] = None
    seed: int = 1234
    vocab_size: Optional[int] = None
    data: DataSettings = field(default_factory=DataSettings)
    train: PretrainLoopSettings = field(default_factory=PretrainLoopSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    precision: str = "auto"
    eval: PretrainEvalSettings = field(default_factory=PretrainEvalSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    spike_guard: SpikeGuardSettings = field(default_factory=SpikeGuardSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    wandb: WandbSettings = field(default_factory=WandbSettings)


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
class FinetuneSettings:
    paths: PathSettings = field(default_factory=PathSettings)
    task: TaskSettings = field(default_factory=TaskSettings)
    deepspeed: DeepSpeedSettings = field(default_factory=DeepSpeedSettings)
    init: Optional[str] = None
    run_name: str = MISSING
    run_dir: str = MISSING
    seed: int = 1234
    lm_weight: float = 0.5
    head_dropout: float = 0.1
    train: FinetuneLoopSettings = field(default_factory=FinetuneLoopSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    precision: str = "auto"
    eval: FinetuneEvalSettings = field(default_factory=FinetuneEvalSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    wandb: WandbSettings = field(default_factory=WandbSettings)


SCHEMAS: dict[str, type] = {"pretrain": PretrainSettings, "finetune": FinetuneSettings}
# Settings that take one of a few values (of those a schema has).
CHOICES: dict[str, tuple[Any, ...]] = {
    "precision": ("auto", "bf16", "fp32"), "schedule.kind": ("cosine", "wsd"), "deepspeed.stage": (0, 1, 2, 3),
    "deepspeed.offload_optimizer": ("none", "cpu"), "deepspeed.offload_param": ("none", "cpu"),
    "eval.harness": ("builtin", "lm_eval"),
}


def typed(cfg: DictConfig, schema: type) -> DictConfig:
    """`cfg` merged into `schema`: every value converted to its declared type, no undeclared key; or a refusal."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        OmegaConf.to_container(merged, resolve=True, throw_on_missing=True)  # interpolated values typed too
    except ConfigKeyError as error:
        key = error.full_key or str(error.key)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.select(OmegaConf.structured(schema), parent) if parent else OmegaConf.structured(schema)
        known = ", ".join(node.keys()) if isinstance(node, DictConfig) else ""
        raise Refusal(f"{key} is not a setting{f' (known under {parent}: {known})' if parent else ''}; "
                      "check the spelling or remove it") from None
    except ValidationError as error:
        reason = error.msg.splitlines()[0]
        if "is not a ListConfig" in reason:
            reason = "must be a list, e.g. [a, b]"
        raise Refusal(f"{error.full_key}={error.value!r}: {reason}") from None
    except OmegaConfBaseException as error:
        raise Refusal(f"{error.full_key or 'settings'}: {str(error.msg).splitlines()[0]}") from None
    assert isinstance(merged, DictConfig)
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(merged, key, default=None)
        if value is not None and value not in allowed:
            raise Refusal(f"{key}={value!r} is not one of {', '.join(map(str, allowed))}")
    return merged
