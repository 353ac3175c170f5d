"""Everything a training command checks before torch, DeepSpeed or the data are touched.

In order: the settings against their typed schema (train/settings.py); a Hydra sweep job's own run_dir,
the run_dir lock and a fresh start's refusal (train/run_folder.py); the resume request; the batch
arithmetic; the data against tokenizer and settings; and the run's identity against its newest
checkpoint's (train/checkpointing/identity.py). Each refusal names the key or file and the fix, in one
line, within about a second of the command; only then is the trainer imported and started
(train/command.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from data_contract.atomic_files import sha256_file
from data_contract.mixture_spec import MIXTURE_SPEC, read_mixture_spec
from data_contract.refusal import Refusal
from data_contract.tokenizer_files import tokenizer_identity
from model import GPTConfig
from model.model_dir import locate_model
from train import run_folder
from train.checkpointing.identity import check_same_run, finetune_identity, pretrain_identity
from train.checkpointing.layout import newest_state, readable_state, resume_request
from train.launch_env import resolve_env
from train.plan import PlannedRun, plan_with_fix
from train.settings import (
    SCHEMAS,
    DataSettings,
    PretrainLoopSettings,
    PretrainSettings,
    TaskSettings,
    model_config_for,
)
from train.typed_settings import CONF_DIR, typed


def prepare(cfg: DictConfig, config_name: str, sweep_override_dirname: str | None) -> tuple[Any, dict[str, Any]]:
    """The typed settings and this run's identity, once every check before training has passed."""
    settings = typed(cfg, SCHEMAS[config_name])
    settings.run_dir = run_folder.sweep_job_run_dir(settings.run_dir, sweep_override_dirname)
    loop, run_dir = settings.train, Path(settings.run_dir)
    request = resume_request(loop.resume)
    if loop.time_budget_s is not None and loop.time_budget_s <= 0:
        raise Refusal(f"train.time_budget_s={loop.time_budget_s} must be a positive number of seconds (or null)")
    if isinstance(settings, PretrainSettings):
        identity = pretrain_checks(settings.data, loop, settings.model, settings.vocab_size, settings.init)
        shape = model_config_for(settings.model, settings.vocab_size, settings.model.vocab_size)
        fits_its_gpus(PlannedRun(shape, loop, settings.deepspeed, settings.cluster, settings.precision,
                                 settings.checkpoint))
    else:
        finetune_checks(settings.init, settings.task)
        identity = finetune_identity(settings.init, settings.task, settings.train, settings.seed)
    launch = resolve_env(dict(os.environ))
    loop.grad_accum_steps(launch.world_size)
    run_folder.claim(run_dir, launch.rank)
    if request == "never":
        run_folder.fresh_start(run_dir, loop.overwrite, launch.rank)
    else:
        own = newest_state(run_dir)
        given = readable_state(request) if own is None and isinstance(request, Path) else None
        found = own or ((request, given) if given is not None else None)
        if found is not None:
            check_same_run(found[1].get("identity"), identity, list(loop.accept_changes), found[0])
    return settings, identity


def fits_its_gpus(run: PlannedRun) -> None:
    """With `cluster.gpu_memory_gb` given, the run's memory plan (train/plan.py) must fit it."""
    plan = plan_with_fix(run)
    if plan.fits is False:
        raise Refusal(f"the run needs {plan.peak_gb_per_gpu:.1f} GB per GPU on {plan.gpus} GPUs, more than "
                      f"cluster.gpu_memory_gb={plan.gpu_memory_gb:g}; "
                      + (f"set {plan.fix}" if plan.fix else "shrink the model, the sequence or the micro batch")
                      + " (`python -m train.plan <these overrides>` shows the plan)")


def pretrain_checks(data: DataSettings, loop: PretrainLoopSettings, model: Any, vocab_size: int | None,
                    init: str | None) -> dict[str, Any]:
    """Validate the data against tokenizer and settings (`model`: the ModelSettings, `vocab_size` the
    setting of that name); returns the run's identity."""
    tokenizer_dir = Path(data.tokenizer_dir)
    try:
        tokenizer_hash = tokenizer_identity(tokenizer_dir)
    except Refusal:
        raise Refusal(f"no tokenizer in {tokenizer_dir}; make it with `python -m curation.train_tokenizer` "
                      "(tokenizer=gpt2 installs GPT-2's)") from None
    spec = read_mixture_spec(Path(data.mix_dir))
    mix_tokenizer_hash = spec.get("tokenizer_sha256")
    if mix_tokenizer_hash != tokenizer_hash:
        raise Refusal(
            f"{data.mix_dir}/mixture.json was built with tokenizer {str(mix_tokenizer_hash)[:12]}, but "
            f"{tokenizer_dir} is {tokenizer_hash[:12]}; re-run `python -m curation.tokenize` and "
            "`python -m curation.mix` with this tokenizer")
    plan_seq_len, data_vocab = int(spec["seq_len"]), int(spec["vocab_size"])
    if loop.seq_len != plan_seq_len:
        raise Refusal(f"train.seq_len={loop.seq_len} but the plan in {data.mix_dir} has windows of "
                      f"seq_len={plan_seq_len}; set train.seq_len={plan_seq_len} or rebuild the mix with "
                      f"mix_plan.seq_len={loop.seq_len}")
    if loop.seq_len > model.block_size:
        raise Refusal(f"train.seq_len={loop.seq_len} is longer than the model's context "
                      f"model.block_size={model.block_size}; lower the one or raise the other")
    if vocab_size is not None and vocab_size < data_vocab:
        raise Refusal(f"vocab_size={vocab_size} is smaller than the tokenizer's vocabulary "
                      f"({data_vocab}, {tokenizer_dir}); raise it or set vocab_size=null to follow "
                      "the tokenizer")
    model_config = model_config_for(model, vocab_size, data_vocab)  # the shape itself (e.g. n_embd divisible by n_head)
    hashes = {"tokenizer_sha256": tokenizer_hash, "mixture_sha256": sha256_file(Path(data.mix_dir) / MIXTURE_SPEC)}
    init_dir = init_checks(init, model_config, tokenizer_hash, tokenizer_dir) if init else None
    return pretrain_identity(model, loop, model_config.vocab_size, hashes, init_dir)


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
        presets = [path.stem for path in sorted((CONF_DIR / "model").glob("*.yaml"))
                   if all(OmegaConf.load(path).get(key, getattr(config, key)) == getattr(config, key)
                          for key in INIT_KEYS if key != "vocab_size")]
        keys = {key: key if key == "vocab_size" else f"model.{key}" for key in differ}  # vocab_size is top-level
        fix = f"use model={presets[0]}" if presets else "set " + " ".join(f"{keys[k]}={getattr(config, k)}" for k in differ)
        raise Refusal(f"init={init} has " + ", ".join(f"{k}={getattr(config, k)}" for k in differ)
                      + " but the run's model has " + ", ".join(f"{keys[k]}={getattr(model_config, k)}" for k in differ)
                      + f"; {fix} to continue from these weights")
    return str(directory.resolve())


def finetune_checks(init: str | None, task: TaskSettings) -> None:
    """The model to start from and the task's files exist. (What is inside them is checked as they are
    read: train/finetune/task.py.)"""
    if init is None:
        raise Refusal("init=PATH is required: the pretraining run dir, checkpoint dir or saved-model dir")
    if not Path(init).exists():
        raise Refusal(f"init={init} does not exist; give a pretraining run dir, checkpoint dir or saved-model dir")
    for split, path in (("train", task.train), ("validation", task.validation)):
        if not Path(path).is_file():
            raise Refusal(f"task.{split}={path} does not exist; build the sets with "
                          "`python -m train.build_task_sets` or point the task at your files")
