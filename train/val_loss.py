"""Validation loss: loss, perplexity and bits per byte on the held-out tokens of each source, and a unigram baseline.

Bits per UTF-8 byte make runs with different tokenizers comparable: the summed negative
log-likelihood in bits divided by the bytes the target tokens decode to. Each token's byte length
comes from the tokenizer (model/tokenizer.py: a sentencepiece piece's bytes, byte-fallback pieces one,
control tokens none; a byte-level BPE token's characters), as nanoGPT-successors such as
modded-nanogpt/nanochat count it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from train.data import MixtureData
from train.distributed import accelerator, engine_device
from train.metrics import Progress

log = logging.getLogger("train")


def _all_reduce_sum(values: list[float]) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator())
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


@torch.no_grad()
def val_loss_metrics(engine: Any, data: MixtureData, token_bytes: np.ndarray, batch_size: int, max_batches: int,
             rank: int, world_size: int) -> dict[str, float]:
    """val/loss, val/ppl, val/bpb over all sources and val/<source>/{loss,bpb} (collective)."""
    was_training = engine.module.training
    engine.eval()
    device = engine_device(engine)
    byte_table = torch.from_numpy(token_bytes).to(device)
    results: dict[str, float] = {}
    total_nats = total_tokens = total_bytes = 0.0
    for source in data.sources:
        nats = tokens = n_bytes = 0.0
        batches = data.val_batches(source, batch_size, max_batches, rank, world_size)
        progress = Progress(f"validation {source.name}, batches of rank 0", len(batches), rank == 0)
        for done, (batch, real) in enumerate(batches, 1):
            batch, real = batch.to(device, non_blocking=True), real.to(device)
            logits = engine(batch[:, :-1])
            targets = batch[:, 1:][real]  # padding rows only keep the ranks' forwards in step
            loss = F.cross_entropy(logits[real].float().flatten(0, 1), targets.flatten(), reduction="sum")
            nats += loss.item()
            tokens += targets.numel()
            n_bytes += float(byte_table[targets].sum())
            progress.update(done)
        nats, tokens, n_bytes = _all_reduce_sum([nats, tokens, n_bytes])
        if tokens == 0:
            if source.val_stream is not None and rank == 0:
                log.warning("val/%s: its held-out tokens do not fill one window of %d; no validation for it "
                            "(hold out more of the source in curation)", source.name, data.seq_len + 1)
            continue
        results[f"val/{source.name}/loss"] = nats / tokens
        results[f"val/{source.name}/bpb"] = nats / math.log(2) / max(n_bytes, 1.0)
        total_nats, total_tokens, total_bytes = total_nats + nats, total_tokens + tokens, total_bytes + n_bytes
    if total_tokens:
        results["val/loss"] = total_nats / total_tokens
        results["val/ppl"] = math.exp(min(results["val/loss"], 50.0))
        results["val/bpb"] = total_nats / math.log(2) / max(total_bytes, 1.0)
    engine.train(was_training)
    return results


def unigram_bpb(data: MixtureData, token_bytes: np.ndarray, max_tokens_per_source: int = 50_000_000) -> float:
    """Bits per byte on the val tokens of a unigram model fit (add-one) on the training tokens.

    The floor any trained model must beat: it knows token frequencies and nothing else.
    """
    counts = np.ones(data.vocab_size, dtype=np.float64)
    for source in data.sources:
        remaining = max_tokens_per_source
        for array in source.stream.arrays:
            chunk = np.asarray(array[:remaining])
            counts += np.bincount(chunk, minlength=data.vocab_size)[: data.vocab_size]
            remaining -= len(chunk)
            if remaining <= 0:
                break
    log2_prob = np.log2(counts / counts.sum())
    bits = n_bytes = 0.0
    for source in data.sources:
        if source.val_stream is None:
            continue
        for array in source.val_stream.arrays:
            targets = np.asarray(array[1:])
            bits -= float(log2_prob[targets].sum())
            n_bytes += float(token_bytes[targets].sum())
    return bits / max(n_bytes, 1.0)
