"""The typed settings (train/settings.py) against the YAML of conf/: one default per setting, and choices
refused in one line."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from train.settings import SCHEMAS, DeepSpeedSettings, PretrainSettings
from train.typed_settings import described_fields, typed

CONF = Path(__file__).resolve().parents[1] / "conf"


def composed(config_name: str, *overrides: str) -> Any:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name=config_name, overrides=["run_name=test", *overrides])


def disagreements(schema: type, yaml: Any, prefix: str = "") -> list[str]:
    """Keys whose YAML value differs from the dataclass default. Settings without a default are the YAML's; a
    default of None or an empty list or mapping means "none given"."""
    hints = typing.get_type_hints(schema)
    found = []
    for spec in dataclasses.fields(schema):
        if spec.name not in yaml:
            continue
        value, hint = yaml[spec.name], hints[spec.name]
        nested = next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), hint)
        if dataclasses.is_dataclass(nested) and nested.__name__ != "ModelSettings":
            found += disagreements(nested, value, f"{prefix}{spec.name}.")  # type: ignore[arg-type]
            continue
        if spec.default is not dataclasses.MISSING:
            default = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        else:
            continue
        if default is None or default in ([], {}):
            continue
        if isinstance(default, (list, dict)) or not isinstance(value, (dict, list)):
            if (isinstance(value, str) and value.startswith("${")) or value == default or default == "???":
                continue
            found.append(f"{prefix}{spec.name}: YAML {value!r}, dataclass {default!r}")
    return found


@pytest.mark.parametrize("config_name", ["pretrain", "finetune"])
def test_the_yaml_and_the_dataclasses_never_disagree_on_a_default(config_name: str) -> None:
    yaml = OmegaConf.to_container(composed(config_name), resolve=False)
    assert disagreements(SCHEMAS[config_name], yaml) == []


def test_deepspeed_group_is_the_dataclass_default() -> None:
    assert typed(composed("pretrain"), PretrainSettings).deepspeed == DeepSpeedSettings()


def test_settings_are_typed_objects_passed_down_in_parts() -> None:
    settings = typed(composed("pretrain", "train.micro_batch_size=2", "train.global_batch_size=8"), PretrainSettings)
    assert isinstance(settings, PretrainSettings) and settings.train.grad_accum_steps(2) == 2
    with pytest.raises(SystemExit, match=r"train\.global_batch_size=8 is not a multiple of"):
        settings.train.grad_accum_steps(3)
    with pytest.raises(SystemExit, match=r"deepspeed\.offload_param='gpu' is not one of none, cpu"):
        typed(composed("pretrain", "deepspeed.offload_param=gpu"), PretrainSettings)


def test_help_describes_each_choice_from_its_literal() -> None:
    described = described_fields(PretrainSettings)
    assert described["schedule.kind"].endswith("one of cosine, wsd")
    assert described["deepspeed.stage"].endswith("one of 0, 1, 2, 3")


def test_zero3_keys_reach_the_deepspeed_config_and_a_cpu_run_refuses_quantization() -> None:
    from train.ds_config import build_ds_config

    settings = typed(composed("pretrain", "deepspeed.stage3_max_live_parameters=2e9", "deepspeed.zero_hpz_partition_size=8",
                              "train.micro_batch_size=2", "train.global_batch_size=16"), PretrainSettings)
    zero = build_ds_config(settings.deepspeed, settings.train, 1.0, 8, "bf16")["zero_optimization"]
    assert zero["stage3_max_live_parameters"] == 2_000_000_000 and zero["zero_hpz_partition_size"] == 8
    assert zero["stage3_max_reuse_distance"] == 1_000_000_000 and zero["zero_quantized_weights"] is False
    quantized = typed(composed("pretrain", "deepspeed.zero_quantized_weights=true"), PretrainSettings)
    with pytest.raises(SystemExit, match=r"deepspeed\.zero_quantized_weights=true needs CUDA"):
        build_ds_config(quantized.deepspeed, quantized.train, 1.0, 2, "bf16")
