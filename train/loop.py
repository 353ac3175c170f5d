"""The pretraining loop: DeepSpeed ZeRO-3 over a mixture plan, read top to bottom.

Concerns live in their own modules (data, optim, checkpoint, metrics, validation, spike_guard,
signals); this file only puts them in order.
"""

from __future__ import annotations

import base64
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from model import GPT, GPTConfig
from model.flops import flops_per_token
from model.generate import generate
from model.loss import next_token_loss
from train import checkpoint
from train.data import MixtureData, Prefetcher
from train.distributed import gather_objects, init_distributed, mean_across_ranks, threads_per_rank
from train.ds_config import ConfigError, build_ds_config, grad_accum_steps, resolve_precision, start_engine
from train.evaluate import zero_shot_metrics
from train.metrics import MetricsLogger, default_peak_flops, max_rss_gb
from train.optim import lr_at
from train.preflight import check_run, model_config_for
from train.signals import EXIT_REQUEUE, REQUEUE_MARKER, StopRequest
from train.spike_guard import SpikeGuard
from train.validation import evaluate, token_byte_lengths, unigram_bpb

log = logging.getLogger("train")


def _rng_state() -> dict[str, Any]:
    """This process's Python, NumPy and torch generator states, as JSON."""
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(mt_state), gauss],
            "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}


def _restore_rng(state: dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))


def run(cfg: DictConfig) -> int:
    """Train until the schedule ends or a stop signal arrives; returns the process exit code."""
    dist_env = init_distributed()
    rank, world_size = dist_env.rank, dist_env.world_size
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s [rank%(rank)s] %(message)s".replace("%(rank)s", str(rank)))
    torch.set_num_threads(threads_per_rank(cfg, world_size))

    run_dir = Path(cfg.run_dir)
    data_root = Path(cfg.paths.data_root)
    data = MixtureData(Path(cfg.data.mix_dir), data_root)
    data_hashes = check_run(cfg, data)
    model_config: GPTConfig = model_config_for(cfg, data)
    precision = resolve_precision(cfg.precision)
    accum = grad_accum_steps(cfg.train.global_batch_size, cfg.train.micro_batch_size, world_size)
    global_batch, seq_len = cfg.train.global_batch_size, cfg.train.seq_len
    total_steps = len(data) // global_batch
    if cfg.train.tokens:
        total_steps = min(total_steps, int(cfg.train.tokens) // (global_batch * seq_len))
    if cfg.train.max_steps:
        total_steps = min(total_steps, int(cfg.train.max_steps))
    if total_steps < 1:
        raise ConfigError(f"the plan in {cfg.data.mix_dir} holds {len(data)} samples, fewer than one global batch "
                         f"(train.global_batch_size={global_batch}); build a larger mix or lower the batch")
    stop_at = int(cfg.train.stop_at_step) if cfg.train.get("stop_at_step") else None

    checkpoints_dir = run_dir / "checkpoints"
    resume = checkpoint.plan_resume(checkpoints_dir, cfg.train.resume, world_size)
    ds_config = build_ds_config(cfg, world_size, precision)
    if resume is not None and resume.universal:
        ds_config["checkpoint"] = {"load_universal": True}

    torch.manual_seed(cfg.seed)
    model = GPT(model_config)
    n_params = model.num_params()  # before ZeRO-3 partitions the parameters away
    engine, optimizer = start_engine(model, cfg, ds_config)
    if cfg.train.compile:
        engine.compile()  # torch.compile (inductor) of the module; ZeRO-3's gather/release hooks stay eager

    step, tokens_seen, wandb_run_id = 0, 0, None
    guard = SpikeGuard(**{k: v for k, v in cfg.spike_guard.items()})
    if resume is not None:
        checkpoint.load(engine, resume)
        state = resume.state
        if state["data"] != data_hashes:
            log.warning("resuming %s with other data or tokenizer than it was trained on: %s -> %s",
                        resume.checkpoint, state["data"], data_hashes)
        step, tokens_seen, wandb_run_id = state["step"], state["tokens_seen"], state["wandb_run_id"]
        guard.load_state_dict(state["spike_guard"])
        if not resume.universal:
            _restore_rng(state["rng"][rank])
        log.info("resumed from %s at step %d (%d samples consumed)", resume.checkpoint, step,
                 state["samples_consumed"])

    if not checkpoint.start_run(run_dir, cfg, rank, step, total_steps):
        return 0
    resolved = OmegaConf.to_container(cfg, resolve=True)
    metrics = MetricsLogger(run_dir, rank == 0, cfg.wandb, resolved, wandb_run_id)  # type: ignore[arg-type]
    wandb_run_id = gather_objects(metrics.run_id, world_size)[0]

    tokenizer_model = Path(cfg.data.tokenizer_dir) / "spm.model"
    token_bytes = token_byte_lengths(tokenizer_model, data.vocab_size)
    import sentencepiece as spm

    tokenizer = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    flops_token = flops_per_token(model_config, seq_len)
    # Each rank measures the matmul rate it gets (CPU) before the data thread starts; MFU uses their mean.
    peak_flops = cfg.metrics.peak_flops or mean_across_ranks(default_peak_flops(precision))
    metrics.log(step, {"sys/peak_flops": peak_flops})
    if rank == 0 and resume is None:
        log.info("model %s: %.2fM parameters; %d steps of %d x %d tokens; grad accum %d; %s; %d ranks",
                 cfg.run_name, n_params / 1e6, total_steps, global_batch, seq_len, accum,
                 precision, world_size)
        metrics.log(0, {"val/unigram_bpb": unigram_bpb(data, token_bytes)})

    def save_checkpoint() -> None:
        trainer_state = {
            "step": step, "samples_consumed": step * global_batch, "tokens_seen": tokens_seen,
            "world_size": world_size, "global_batch_size": global_batch, "seq_len": seq_len,
            "total_steps": total_steps, "wandb_run_id": wandb_run_id, "data": data_hashes,
            "spike_guard": guard.state_dict(), "rng": gather_objects(_rng_state(), world_size),
        }
        path = checkpoint.save(engine, checkpoints_dir, step, trainer_state, cfg.checkpoint.keep_last,
                               cfg.checkpoint.export_model, tokenizer_model)
        log.info("checkpoint %s", path)

    def run_eval() -> None:
        results = evaluate(engine, data, token_bytes, cfg.train.micro_batch_size, cfg.eval.max_batches, rank,
                           world_size)
        if cfg.eval.tasks:  # zero-shot multiple choice, e.g. HellaSwag or `python -m train.tasks build`'s set
            results.update(zero_shot_metrics(engine, cfg.eval.tasks, tokenizer.encode, tokenizer.eos_id(), rank,
                                             world_size))
        metrics.log(step, results)
        if "val/bpb" in results:
            log.info("step %d: val/loss %.4f val/bpb %.4f", step, results["val/loss"], results["val/bpb"])

    def run_sample() -> None:
        # Every rank generates the same tokens in lockstep: ZeRO-3 forwards are collective.
        prompt = torch.tensor([tokenizer.encode(cfg.eval.sample_prompt)], dtype=torch.long)
        ids = generate(engine.module, prompt, cfg.eval.sample_tokens, temperature=0.0)
        metrics.log_text(step, "samples/text", tokenizer.decode(ids[0].tolist()))

    stop = StopRequest()
    prefetcher = Prefetcher(data, step, global_batch, cfg.train.micro_batch_size, accum, rank,
                            cfg.data.prefetch_batches)
    engine.train()
    exit_code = 0
    while step < total_steps:
        started = time.perf_counter()
        wait_before = prefetcher.wait_s
        batches = prefetcher.get(step)
        lr = lr_at(step, total_steps, cfg)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        micro_losses = []
        for k, batch in enumerate(batches):
            loss = next_token_loss(engine(batch[:, :-1]), batch[:, 1:])
            engine.backward(loss)
            micro_losses.append(loss.item())
            if k == accum - 1:
                step_loss = mean_across_ranks(sum(micro_losses) / accum)
                optimizer.skip_next_step = guard.is_spike(step_loss)
            engine.step()
        skipped = optimizer.skip_next_step
        optimizer.skip_next_step = False
        step += 1
        tokens_seen += global_batch * seq_len
        step_time = time.perf_counter() - started
        roll_back = guard.record(step_loss, skipped)
        if step % cfg.train.log_every == 0 or skipped:
            tokens_per_sec = global_batch * seq_len / step_time
            grad_norm = engine.get_global_grad_norm()
            metrics.log(step, {
                "train/loss": step_loss, "train/lr": lr,
                "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "train/tokens_per_sec": tokens_per_sec,
                "train/mfu": flops_token * tokens_per_sec / (peak_flops * world_size),
                "train/step_time_s": step_time, "train/tokens_seen": tokens_seen,
                "train/samples_seen": step * global_batch,
                "train/data_wait_s": prefetcher.wait_s - wait_before,
                "train/skipped_steps": guard.skipped_total, "sys/max_rss_gb": max_rss_gb(),
            })
        if skipped:
            log.warning("step %d: loss %.4f looks like a spike; update skipped (%d in a row)", step, step_loss,
                        guard.consecutive)
        if roll_back:
            last = checkpoint.find_resume_checkpoint(checkpoints_dir)
            if last is not None:
                engine.load_checkpoint(str(checkpoints_dir), tag=last.name, load_lr_scheduler_states=False)
                guard.rollbacks += 1
                guard.consecutive = 0
                metrics.log(step, {"train/rollbacks": guard.rollbacks})
                log.warning("rolled back to %s; continuing with the data after step %d", last.name, step)
        done = step == total_steps
        if cfg.eval.every and (step % cfg.eval.every == 0 or done):
            run_eval()
        if cfg.eval.sample_every and (step % cfg.eval.sample_every == 0 or done):
            run_sample()
        stopping = stop.agreed() or step == stop_at
        if done or stopping or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
            save_checkpoint()
        if stopping and not done:
            log.info("stopping at step %d of %d for a restart (signal %s)", step, total_steps, stop.received)
            if rank == 0:
                (run_dir / REQUEUE_MARKER).write_text(f"{step}\n")
            exit_code = EXIT_REQUEUE
            break
    prefetcher.close()
    if rank == 0 and step:
        total_wait = prefetcher.wait_s
        log.info("data wait %.3fs in total; metrics in %s", total_wait, metrics.path)
        if metrics.run_path:
            log.info("wandb run: %s", metrics.run_path)
    metrics.finish()
    if dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    return exit_code
