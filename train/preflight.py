"""Everything a training command checks before torch, DeepSpeed or the data are touched.

In order: the settings against their typed schema (train/settings.py); the resume request, a Hydra
sweep job's own run_dir, the run_dir lock and a fresh start's refusal (train/run_dir.py); the data
against tokenizer and settings; and the run's identity against its newest checkpoint's
(train/run_identity.py). Each refusal names the key or file and the fix, in one line, within about a
second of the command; only then is the trainer imported and started.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from data_contract import MIXTURE_SPEC, Refusal, read_mixture_spec, sha256_file, tokenizer_identity
from model import GPTConfig
from model.locate import locate_model
from train import run_dir as run_dirs
from train.launch_env import resolve_env
from train.run_identity import check_same_run, finetune_identity, pretrain_identity
from train.settings import SCHEMAS, typed

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def training_command(name: str, config_name: str, task: str) -> Callable[[], None]:
    """The Hydra entry point of a training stage: `conf/<config_name>.yaml`, checked (`prepare`), then
    the trainer runs `task` ("module:Class"); a refusal is one `<name>: ...` line on stderr, exit code 2."""
    @hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base=None)
    def main(cfg: DictConfig) -> None:
        def start() -> int:
            checked, identity = prepare(cfg, config_name, _sweep_override_dirname())
            from train import trainer

            module, class_name = task.split(":")
            return trainer.run(checked, getattr(importlib.import_module(module), class_name), identity)

        exit_after(name, start)

    return main


def _sweep_override_dirname() -> str | None:
    """In a Hydra multirun, this job's values of the swept keys (e.g. `optim.lr=0.001`); else None."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    parser = OverridesParser.create()
    given = parser.parse_overrides([arg for arg in sys.argv[1:] if not arg.startswith("-")])
    swept = {override.key_or_group for override in given if override.is_sweep_override()}
    job = parser.parse_overrides(list(hydra_cfg.overrides.task))
    return ",".join(f"{o.key_or_group}={o.value()}".replace("/", "_") for o in job if o.key_or_group in swept)


def exit_after(command: str, run: Callable[[], int]) -> None:
    """The end of an entry point: a refusal is one `<command>: ...` line on stderr (from rank 0) and exit 2
    (no traceback: the message already names the key or file and the fix); a nonzero result is the exit code."""
    try:
        code = run()
    except Refusal as refusal:
        if resolve_env(dict(os.environ)).rank == 0:
            print(f"{command}: {refusal}", file=sys.stderr)
        sys.exit(2)
    if code:
        sys.exit(code)


def prepare(cfg: DictConfig, config_name: str, sweep_override_dirname: str | None) -> tuple[DictConfig, dict[str, Any]]:
    """The typed settings and this run's identity, once every check before training has passed."""
    cfg = typed(cfg, SCHEMAS[config_name])
    run_dirs.sweep_job_run_dir(cfg, sweep_override_dirname)
    request = run_dirs.resume_request(cfg)
    if cfg.train.time_budget_s is not None and cfg.train.time_budget_s <= 0:
        raise Refusal(f"train.time_budget_s={cfg.train.time_budget_s} must be a positive number of seconds (or null)")
    identity = pretrain_checks(cfg) if config_name == "pretrain" else finetune_checks(cfg)
    launch = resolve_env(dict(os.environ))
    grad_accum_steps(cfg.train.global_batch_size, cfg.train.micro_batch_size, launch.world_size)
    rank = launch.rank
    run_dirs.claim(cfg, rank)
    if request == "never":
        run_dirs.fresh_start(cfg, rank)
    else:
        own = run_dirs.newest_state(Path(cfg.run_dir))
        given = run_dirs.readable_state(request) if own is None and isinstance(request, Path) else None
        found = own or ((request, given) if given is not None else None)
        if found is not None:
            check_same_run(found[1].get("identity"), identity, list(cfg.train.accept_changes), found[0])
    return cfg, identity


def grad_accum_steps(global_batch: int, micro_batch: int, world_size: int) -> int:
    """global_batch = micro_batch x grad_accum x world_size, or a one-line refusal."""
    per_step = micro_batch * world_size
    if global_batch < 1 or micro_batch < 1:
        raise Refusal(f"train.global_batch_size={global_batch} and train.micro_batch_size={micro_batch} must be >= 1")
    if global_batch % per_step:
        raise Refusal(
            f"train.global_batch_size={global_batch} is not a multiple of train.micro_batch_size={micro_batch} x "
            f"{world_size} ranks = {per_step}; pick a global batch that is, or another micro batch"
        )
    return global_batch // per_step


def pretrain_checks(cfg: DictConfig) -> dict[str, Any]:
    """Validate the data against tokenizer and settings; returns the run's identity."""
    tokenizer_dir = Path(cfg.data.tokenizer_dir)
    try:
        tokenizer_hash = tokenizer_identity(tokenizer_dir)
    except Refusal:
        raise Refusal(f"no tokenizer in {tokenizer_dir}; make it with `python -m curation.train_tokenizer` "
                      "(tokenizer=gpt2 installs GPT-2's)") from None
    spec = read_mixture_spec(Path(cfg.data.mix_dir))
    mix_tokenizer_hash = spec.get("tokenizer_sha256")
    if mix_tokenizer_hash != tokenizer_hash:
        raise Refusal(
            f"{cfg.data.mix_dir}/mixture.json was built with tokenizer {str(mix_tokenizer_hash)[:12]}, but "
            f"{tokenizer_dir} is {tokenizer_hash[:12]}; re-run `python -m curation.tokenize` and "
            "`python -m curation.mix` with this tokenizer")
    plan_seq_len, data_vocab = int(spec["seq_len"]), int(spec["vocab_size"])
    if cfg.train.seq_len != plan_seq_len:
        raise Refusal(f"train.seq_len={cfg.train.seq_len} but the plan in {cfg.data.mix_dir} has windows of "
                      f"seq_len={plan_seq_len}; set train.seq_len={plan_seq_len} or rebuild the mix with "
                      f"mix_plan.seq_len={cfg.train.seq_len}")
    if cfg.train.seq_len > cfg.model.block_size:
        raise Refusal(f"train.seq_len={cfg.train.seq_len} is longer than the model's context "
                      f"model.block_size={cfg.model.block_size}; lower the one or raise the other")
    if cfg.vocab_size is not None and cfg.vocab_size < data_vocab:
        raise Refusal(f"vocab_size={cfg.vocab_size} is smaller than the tokenizer's vocabulary "
                      f"({data_vocab}, {tokenizer_dir}); raise it or set vocab_size=null to follow "
                      "the tokenizer")
    model_config = model_config_for(cfg, data_vocab)  # the shape itself (e.g. n_embd divisible by n_head)
    hashes = {"tokenizer_sha256": tokenizer_hash, "mixture_sha256": sha256_file(Path(cfg.data.mix_dir) / MIXTURE_SPEC)}
    init = init_checks(cfg.init, model_config, tokenizer_hash, tokenizer_dir) if cfg.init else None
    return pretrain_identity(cfg, model_config.vocab_size, hashes, init)


# What the weights of `init` must share with the run's model: their shapes, and the LayerNorm epsilon
# (another one computes another function of the same weights).
INIT_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias", "layer_norm_eps")


def init_checks(init: str, model_config: GPTConfig, tokenizer_hash: str, tokenizer_dir: Path) -> str:
    """Continued pretraining from `init`: its shape is the run's and its tokenizer the data's; returns the
    resolved folder of its weights (recorded in the run's identity)."""
    try:
        directory, config, _ = locate_model(init)
    except ValueError as bad:
        raise Refusal(f"init={init}: {bad}") from None
    try:
        init_tokenizer = tokenizer_identity(directory)
    except Refusal:
        raise Refusal(f"init={init}: {directory} carries no tokenizer, so its ids cannot be matched to the data's; "
                      "save the model with its tokenizer (the trainer and model.convert do)") from None
    if init_tokenizer != tokenizer_hash:
        raise Refusal(f"init={init}: its tokenizer ({init_tokenizer[:12]}) is not the data's ({tokenizer_dir}, "
                      f"{tokenizer_hash[:12]}); curate with the model's tokenizer (tokenizer=gpt2 for GPT-2 weights) "
                      "or start from a model trained on this tokenizer")
    differ = [key for key in INIT_KEYS if getattr(config, key) != getattr(model_config, key)]
    if differ:
        presets = [path.stem for path in sorted((Path(__file__).parents[1] / "conf" / "model").glob("*.yaml"))
                   if all(OmegaConf.load(path).get(key, getattr(config, key)) == getattr(config, key)
                          for key in INIT_KEYS if key != "vocab_size")]
        keys = {key: key if key == "vocab_size" else f"model.{key}" for key in differ}  # vocab_size is top-level
        fix = f"use model={presets[0]}" if presets else "set " + " ".join(f"{keys[k]}={getattr(config, k)}" for k in differ)
        raise Refusal(f"init={init} has " + ", ".join(f"{k}={getattr(config, k)}" for k in differ)
                      + " but the run's model has " + ", ".join(f"{keys[k]}={getattr(model_config, k)}" for k in differ)
                      + f"; {fix} to continue from these weights")
    return str(directory.resolve())


def finetune_checks(cfg: DictConfig) -> dict[str, Any]:
    """The model to start from and the task's files exist; returns the run's identity. (What is inside
    them is checked as they are read: train/finetune/task.py.)"""
    if cfg.init is None:
        raise Refusal("init=PATH is required: the pretraining run dir, checkpoint dir or saved-model dir")
    if not Path(cfg.init).exists():
        raise Refusal(f"init={cfg.init} does not exist; give a pretraining run dir, checkpoint dir or saved-model dir")
    for split in ("train", "validation"):
        if not Path(cfg.task[split]).is_file():
            raise Refusal(f"task.{split}={cfg.task[split]} does not exist; build the sets with "
                          "`python -m train.build_task_sets` or point the task at your files")
    return finetune_identity(cfg)


def model_config_for(cfg: DictConfig, data_vocab_size: int) -> GPTConfig:
    """The preset with the vocabulary of the tokenizer, or `vocab_size` when the user fixed one."""
    values = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(values, dict)
    values["vocab_size"] = cfg.vocab_size if cfg.vocab_size is not None else data_vocab_size
    try:
        return GPTConfig.from_dict(values)
    except ValueError as invalid:
        raise Refusal(str(invalid)) from None
