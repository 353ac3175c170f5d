"""The GPU path, proven where there is one (`make gpu-check`); every test skips without CUDA.

One GPU: attention on SDPA's flash kernel in bf16, HF GPT-2 parity on the device, and 20 bf16 steps
of `model=gpt2-124m` through the trainer. Two GPUs: ZeRO-3 over NCCL, resumed exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from model import GPT, GPTConfig
from model.loss import next_token_loss
from tests.train_fixtures import launch, losses, make_data_root, read_metrics

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Path:
    return make_data_root(tmp_path_factory.mktemp("data"), sample_corpus, seq_len=256)


def test_attention_runs_on_the_flash_kernel_in_bf16() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1000, block_size=256, n_layer=2, n_head=12, n_embd=768)).cuda()
    ids = torch.randint(0, 1000, (4, 257), device="cuda")
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", dtype=torch.bfloat16):
        loss = next_token_loss(model(ids[:, :-1]), ids[:, 1:])  # fails if SDPA cannot use the flash kernel
    loss.backward()
    assert math.isfinite(loss.item()) and model.tok_emb.weight.grad is not None


def test_imported_gpt2_gives_transformers_logits_on_the_gpu(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from model.hf import load_hf_gpt2

    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=1000, n_positions=64, n_layer=2, n_head=4, n_embd=64, initializer_range=0.1))
    reference.save_pretrained(tmp_path)
    ids = torch.randint(0, 1000, (3, 40), device="cuda")
    with torch.no_grad():
        theirs = reference.cuda().eval()(ids).logits
        ours = load_hf_gpt2(tmp_path, device="cuda")(ids)
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_gpt2_124m_trains_20_bf16_steps(tmp_path: Path, data_root: Path) -> None:
    run_dir = tmp_path / "run"
    launch(1, run_dir, data_root, "model=gpt2-124m", "model.n_layer=12", "model.n_embd=768", "model.n_head=12",
           "model.block_size=1024", "train.seq_len=256", "train.micro_batch_size=8", "train.global_batch_size=8",
           "train.max_steps=20", "precision=bf16", "eval.every=20", "eval.sample_every=0", launcher="python")
    record = losses(run_dir)
    assert sorted(record) == list(range(1, 21)) and all(math.isfinite(v) for v in record.values())
    assert record[20] < record[1]
    mfu = [r["train/mfu"] for r in read_metrics(run_dir) if "train/mfu" in r]
    assert all(0 < value < 1 for value in mfu), "MFU against the device's datasheet peak"


@pytest.mark.slow
@pytest.mark.gpu(devices=2)
def test_two_gpu_zero3_over_nccl_resumes_exactly(tmp_path: Path, data_root: Path) -> None:
    steps = ["train.max_steps=6", "eval.every=0", "eval.sample_every=0", "precision=fp32", "train.seq_len=256",
             "model.block_size=256"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    launch(2, whole, data_root, *steps, launcher="torchrun")
    launch(2, split, data_root, *steps, "train.stop_at_step=3", launcher="torchrun", check=False)
    launch(2, split, data_root, *steps, launcher="torchrun")
    expected, resumed = losses(whole), losses(split)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in range(4, 7):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=0)
