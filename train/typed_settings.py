"""The Hydra tree of a training command as its typed settings (the dataclasses of train/settings.py).

OmegaConf's structured configs convert every value to its declared type and reject undeclared keys, but
OmegaConf 2.3 cannot read a `Literal`; so the tree is merged into a twin of the dataclasses whose
`Literal` fields are plain values, and the dataclass objects are then built from the merged values, each
`Literal` checked on the way. The first problem is one line naming the key. Also here: what
`gptpipe <command> --help` reads of the dataclasses (every default, each field's comment, the choices).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from data_contract.refusal import Refusal
from train import settings as settings_module
from train.settings import PretrainSettings

# OmegaConf reads the twin's annotations at run time: Optional[...] rather than `X | None`.
# ruff: noqa: UP045

Settings = typing.TypeVar("Settings")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def pretrain_settings(overrides: list[str]) -> PretrainSettings:
    """The pretraining settings `python -m train <overrides>` would run with (conf/pretrain.yaml), for the
    commands that plan or prepare a run without being it (train.plan, train.prebuild)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        # run_name derives from Hydra's runtime choices, which a compose outside an app does not have
        named = overrides if any(o.startswith("run_name=") for o in overrides) else ["run_name=plan", *overrides]
        return typed(compose(config_name="pretrain", overrides=named), PretrainSettings)


def typed(cfg: DictConfig, schema: type[Settings]) -> Settings:
    """`cfg` as the dataclass `schema`: every value converted to its declared type, no undeclared key, every
    choice one of its `Literal`'s values; or a one-line refusal."""
    twin = _omegaconf_twin(schema)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(twin), cfg)
        values = OmegaConf.to_container(merged, resolve=True, throw_on_missing=True)
    except ConfigKeyError as error:
        key = error.full_key or str(error.key)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.select(OmegaConf.structured(twin), parent) if parent else OmegaConf.structured(twin)
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
    return _build(schema, values, "")


def _omegaconf_type(hint: Any) -> Any:
    """`hint` as OmegaConf 2.3 can check it: a Literal becomes the type of its values (checked by `_build`)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return type(args[0])
    if origin is Union:
        return Optional[_omegaconf_type(next(a for a in args if a is not type(None)))]
    if origin is list:
        return list[_omegaconf_type(args[0])]
    if origin is dict:
        return dict[args[0], _omegaconf_type(args[1])]  # type: ignore[valid-type]
    return _omegaconf_twin(hint) if dataclasses.is_dataclass(hint) else hint


@functools.cache
def _omegaconf_twin(schema: type) -> type:
    """A copy of the dataclass `schema` with OmegaConf-readable annotations and the same defaults."""
    hints = typing.get_type_hints(schema)
    fields = []
    for spec in dataclasses.fields(schema):
        hint = _omegaconf_type(hints[spec.name])
        if spec.default_factory is not dataclasses.MISSING:
            factory = spec.default_factory
            default = dataclasses.field(default_factory=_omegaconf_twin(factory) if dataclasses.is_dataclass(factory) else factory)
        else:
            default = dataclasses.field(default=spec.default)
        fields.append((spec.name, hint, default))
    return dataclasses.make_dataclass(f"{schema.__name__}Schema", fields)


def _build(hint: Any, value: Any, key: str) -> Any:
    """The typed object of `hint` from the merged plain `value`; a Literal's value outside its choices is
    refused naming `key`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None or hint is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise Refusal(f"{key}={value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is Union:
        return _build(next(a for a in args if a is not type(None)), value, key)
    if origin is list:
        return [_build(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        return {name: _build(args[1], item, f"{key}.{name}") for name, item in value.items()}
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{spec.name: _build(hints[spec.name], value[spec.name], f"{key}.{spec.name}".lstrip("."))
                       for spec in dataclasses.fields(hint) if spec.name in value})
    return value


def with_defaults(values: dict[str, Any], schema: type) -> dict[str, Any]:
    """`values` (a composed config, unresolved) over the defaults of `schema`: every setting a command has."""
    merged = OmegaConf.merge(OmegaConf.structured(_omegaconf_twin(schema)), values)
    return OmegaConf.to_container(merged, resolve=False)  # type: ignore[return-value]


def described_fields(schema: type, prefix: str = "") -> dict[str, str]:
    """`dotted.key: description` of every field of `schema` and the dataclasses under it: the comment
    beside the field (or the comment lines right above it) and, for a `Literal`, its choices. What
    `gptpipe <command> --help` shows for keys no YAML of conf/ describes."""
    hints = typing.get_type_hints(schema)
    comments = _field_comments(schema)
    described = {}
    for spec in dataclasses.fields(schema):
        hint = hints[spec.name]
        inner = next((a for a in typing.get_args(hint) if a is not type(None)), hint) \
            if typing.get_origin(hint) is Union else hint
        if dataclasses.is_dataclass(inner):
            described.update(described_fields(inner, f"{prefix}{spec.name}."))  # type: ignore[arg-type]
            continue
        text = comments.get(spec.name, "")
        if typing.get_origin(hint) is Literal:
            text = "; ".join(filter(None, [text, "one of " + ", ".join(map(str, typing.get_args(hint)))]))
        if text:
            described[prefix + spec.name] = text
    return described


def _field_comments(schema: type) -> dict[str, str]:
    """The comments of a dataclass's fields in its source (its bases' included)."""
    comments: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        if not dataclasses.is_dataclass(cls) or cls.__module__ != settings_module.__name__:
            continue
        above: list[str] = []
        for line in inspect.getsource(cls).splitlines()[1:]:
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# "))
                continue
            name, colon, rest = stripped.partition(":")
            if colon and name.isidentifier():
                beside = rest.split("  # ", 1)[1] if "  # " in rest else ""
                if beside or above:
                    comments[name] = beside or " ".join(above)
            above = []
    return comments
