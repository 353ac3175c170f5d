"""Pretraining, as a stage of the trainer: next-token prediction over a mixture plan.

What pretraining adds to the trainer (train/trainer.py): batches of the plan read ahead in a
background thread (train/data.py), the next-token loss, throughput and MFU, validation loss and
bits per byte per source (train/val_loss.py) with zero- and few-shot benchmarks (train/benchmarks.py),
generated samples, and in each checkpoint the data consumed and the hashes of the data and tokenizer
it was trained on. The command is `python -m train` (train/__main__.py).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from data_contract.refusal import Refusal
from model import GPT
from model.flops import flops_per_token, parameter_count
from model.generate import generate
from model.load import load_model
from model.loss import next_token_loss
from model.saved_model import save_pretrained
from model.tokenizer import load_tokenizer
from train.benchmarks import benchmark_metrics, check_benchmarks
from train.data import MixtureData, Prefetcher
from train.distributed import engine_device, mean_across_ranks
from train.ds_config import load_weights
from train.metrics import MetricsLogger, default_peak_flops
from train.settings import PretrainSettings, model_config_for
from train.stage import Evaluation, RunSetup
from train.val_loss import unigram_bpb, val_loss_metrics

log = logging.getLogger("train")


class Pretraining:
    """Next-token prediction over the mixture plan; the data order is a function of the step alone."""

    def __init__(self, settings: PretrainSettings, setup: RunSetup) -> None:
        self.settings, self.setup = settings, setup
        self.data = MixtureData(Path(settings.data.mix_dir), Path(settings.paths.data_root))
        model_config = model_config_for(settings.model, settings.vocab_size, self.data.vocab_size)
        self.global_batch, self.seq_len = settings.train.global_batch_size, settings.train.seq_len
        self.resumed_at = (0, 0, 0)  # (step, tokens seen, samples consumed) of the checkpoint resumed from
        self.total_steps = self.last_step()
        if self.total_steps < 1:
            raise Refusal(f"the plan in {settings.data.mix_dir} holds {len(self.data)} samples, fewer than one global "
                          f"batch (train.global_batch_size={self.global_batch}); build a larger mix or lower the batch")
        with setup.partitioned_build() if setup.partitioned_build else contextlib.nullcontext():
            self.model = GPT(model_config)
        self.initial_weights = None
        if settings.init and not setup.resuming:  # continued pretraining: these weights, a fresh optimizer and schedule
            self.initial_weights = self.init_weights(settings.init, setup)
        self.n_params = parameter_count(model_config)
        self.flops_per_token = flops_per_token(model_config, self.seq_len)
        self.tokenizer_dir = Path(settings.data.tokenizer_dir)
        self.last_wait_s = 0.0

    def init_weights(self, init: str, setup: RunSetup) -> dict[str, torch.Tensor] | None:
        """The weights of `init` copied into the model; read on rank 0 alone when the model is partitioned
        (returned there, None elsewhere), by every rank when each holds the whole model."""
        weights = None
        if setup.partitioned_build is None or setup.rank == 0:
            initial, init_dir = load_model(init)
            weights = {name: param.detach() for name, param in initial.named_parameters()}
            log.info("initialized from %s", init_dir)
        load_weights(self.model, weights)
        return weights

    def last_step(self) -> int:
        """Steps until the plan, the token budget or `train.max_steps` runs out, counted from the samples
        and tokens consumed (the same as counting from zero unless an accepted change of batch or
        sequence length re-divides the rest of the plan)."""
        step, tokens, samples = self.resumed_at
        last = step + (len(self.data) - samples) // self.global_batch
        if self.settings.train.tokens:
            last = min(last, step + (int(self.settings.train.tokens) - tokens) // (self.global_batch * self.seq_len))
        if self.settings.train.max_steps:
            last = min(last, int(self.settings.train.max_steps))
        return last

    def describe(self) -> str:
        return (f"model {self.settings.run_name}: {self.n_params / 1e6:.2f}M parameters; "
                f"samples of {self.seq_len} tokens")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resumed_at = (state["step"], state["tokens_seen"], state["samples_consumed"])
        self.total_steps = self.last_step()
        log.info("%d samples consumed before the resume", state["samples_consumed"])

    def start(self, step: int, metrics: MetricsLogger, resumed: bool) -> None:
        self.tokenizer = load_tokenizer(self.tokenizer_dir)
        self.token_bytes = self.tokenizer.token_byte_lengths()
        # Each rank measures the matmul rate it gets (CPU) before the data thread starts; MFU uses their mean.
        self.peak_flops = self.settings.metrics.peak_flops or float(
            mean_across_ranks(torch.tensor(default_peak_flops(self.setup.precision), dtype=torch.float64)))
        metrics.log(step, {"sys/peak_flops": self.peak_flops})
        if self.setup.rank == 0 and not resumed:
            metrics.log(0, {"val/unigram_bpb": unigram_bpb(self.data, self.token_bytes)})
        self.prefetcher = Prefetcher(self.data, step, self.samples_consumed(step), self.global_batch,
                                     self.settings.train.micro_batch_size, self.setup.accum, self.setup.rank,
                                     self.settings.data.prefetch_batches)

    def batches(self, step: int) -> list[torch.Tensor]:
        wait_before = self.prefetcher.wait_s
        batches = self.prefetcher.get(step)
        self.last_wait_s = self.prefetcher.wait_s - wait_before
        return batches

    def loss(self, engine: Any, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = batch.to(engine_device(engine), non_blocking=True)
        return {"loss": next_token_loss(engine(batch[:, :-1]), batch[:, 1:])}

    def tokens_seen(self, step: int) -> int:
        resumed_step, resumed_tokens, _ = self.resumed_at
        return resumed_tokens + (step - resumed_step) * self.global_batch * self.seq_len

    def samples_consumed(self, step: int) -> int:
        """Plan samples used before step `step`: the data position (the plan is read in order)."""
        resumed_step, _, resumed_samples = self.resumed_at
        return resumed_samples + (step - resumed_step) * self.global_batch

    def step_metrics(self, step: int, step_time_s: float) -> dict[str, float]:
        tokens_per_sec = self.global_batch * self.seq_len / step_time_s
        return {"train/tokens_per_sec": tokens_per_sec,
                "train/mfu": self.flops_per_token * tokens_per_sec / (self.peak_flops * self.setup.world_size),
                "train/tokens_seen": self.tokens_seen(step), "train/samples_seen": self.samples_consumed(step),
                "train/data_wait_s": self.last_wait_s}

    def evaluations(self) -> list[Evaluation]:
        every, sample_every = self.settings.eval.every, self.settings.eval.sample_every
        if every and self.settings.eval.tasks:
            check_benchmarks(self.settings.eval)  # refused now, not at the first evaluation
        validation = "validation" + (f" and {self.settings.eval.shots}-shot scoring" if self.settings.eval.tasks else "")
        return [Evaluation(every, bool(every or self.settings.eval.every_s), self.evaluate, validation,
                           self.settings.eval.every_s),
                Evaluation(sample_every, bool(sample_every), self.sample, "sample generation")]

    def evaluate(self, engine: Any, step: int, metrics: MetricsLogger) -> None:
        settings, rank, world_size = self.settings, self.setup.rank, self.setup.world_size
        results = val_loss_metrics(engine, self.data, self.token_bytes, settings.train.micro_batch_size,
                                   settings.eval.max_batches, rank, world_size)
        if settings.eval.tasks:  # zero/few-shot: JSONL sets (e.g. HellaSwag's, build_task_sets'), or lm-eval's tasks
            results.update(benchmark_metrics(engine, settings.eval, self.tokenizer, settings.train.micro_batch_size, rank, world_size))
        metrics.log(step, results)
        if "val/bpb" in results:
            log.info("step %d: val/loss %.4f val/bpb %.4f", step, results["val/loss"], results["val/bpb"])

    def sample(self, engine: Any, step: int, metrics: MetricsLogger) -> None:
        # Every rank generates the same tokens in lockstep: ZeRO-3 forwards are collective.
        prompt = torch.tensor([self.tokenizer.encode(self.settings.eval.sample_prompt)], dtype=torch.long,
                              device=engine_device(engine))
        ids = generate(engine.module, prompt, self.settings.eval.sample_tokens, temperature=0.0)
        metrics.log_text(step, "samples/text", self.tokenizer.decode(ids[0].tolist()))

    def state_dict(self, step: int) -> dict[str, Any]:
        return {"samples_consumed": self.samples_consumed(step), "tokens_seen": self.tokens_seen(step),
                "seq_len": self.seq_len, "init": self.settings.init}

    def export(self, engine: Any, weights: dict[str, torch.Tensor], folder: Path) -> None:
        save_pretrained(engine.module, folder, state_dict=weights, tokenizer=self.tokenizer_dir)

    def close(self) -> None:
        self.prefetcher.close()
        log.info("data wait %.3fs in total", self.prefetcher.wait_s)
