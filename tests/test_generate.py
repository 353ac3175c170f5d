"""Sampling, KV-cached generation against transformers' generate, and the generate command."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece
import torch

from model import GPT, GPTConfig
from model.generate import generate, sample_next
from model.hf import load_hf_gpt2, save_hf_gpt2
from model.load import load_model_and_tokenizer
from model.saved_model import save_pretrained
from tests.commands import SAMPLE_CORPUS, run_module

CONFIG = GPTConfig(vocab_size=1000, block_size=64, n_layer=2, n_head=4, n_embd=64)


@pytest.fixture
def gpt() -> GPT:
    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    with torch.no_grad():  # sharper distributions than the 0.02 init, so greedy choices are clear-cut
        for p in model.parameters():
            p.mul_(10)
    return model


@pytest.fixture(scope="module")
def spm_model() -> Path:
    path = SAMPLE_CORPUS / "tokenizers" / "sentencepiece" / "botchan_en_unigram_1000.model"
    if not path.is_file():
        pytest.skip(f"{path} missing; run `make data`")
    return path


def full_forward_greedy(model: GPT, idx: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding the slow way: the whole sequence through the model for every token."""
    with torch.no_grad():
        for _ in range(steps):
            idx = torch.cat([idx, model(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def test_cached_greedy_decoding_equals_full_recomputation(gpt):
    prompt = torch.randint(0, CONFIG.vocab_size, (3, 7), generator=torch.Generator().manual_seed(0))
    assert torch.equal(generate(gpt, prompt, 40, temperature=0), full_forward_greedy(gpt, prompt, 40))


def test_greedy_decoding_matches_transformers_generate(gpt, tmp_path):
    transformers = pytest.importorskip("transformers")
    save_hf_gpt2(gpt, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    prompt = torch.randint(0, CONFIG.vocab_size, (1, 10), generator=torch.Generator().manual_seed(1))
    theirs = hf.generate(prompt, max_new_tokens=50, do_sample=False, pad_token_id=0, eos_token_id=None)
    ours = generate(load_hf_gpt2(tmp_path), prompt, 50, temperature=0)
    assert theirs.shape == (1, 60)
    assert torch.equal(ours, theirs)


def test_generation_slides_past_the_context_window(gpt):
    prompt = torch.randint(0, CONFIG.vocab_size, (2, 50), generator=torch.Generator().manual_seed(2))
    out = generate(gpt, prompt, 100, temperature=0)
    assert out.shape == (2, 150)
    # Until the window is full (64 positions in the cache), it is plain greedy decoding.
    assert torch.equal(out[:, :65], full_forward_greedy(gpt, prompt, 15))
    # Then the context restarts from the latest half block: token 65 is greedy given tokens 33..64.
    with torch.no_grad():
        assert torch.equal(gpt(out[:, 33:65])[:, -1].argmax(-1), out[:, 65])


def test_sampling_is_reproducible_with_a_seeded_generator(gpt):
    prompt = torch.zeros(4, 1, dtype=torch.long)
    runs = [
        generate(gpt, prompt, 20, temperature=1.0, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0][0], runs[0][1])  # rows sample independently
    assert torch.equal(generate(gpt, prompt, 20, top_k=1), generate(gpt, prompt, 20, temperature=0))


def test_top_k_and_top_p_only_sample_from_the_kept_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]])).repeat(2000, 1)
    generator = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, top_k=2, generator=generator).unique().tolist()) == {0, 1}
    # 0.5 + 0.3 < 0.85 <= 0.5 + 0.3 + 0.1: the nucleus is the top three.
    assert set(sample_next(logits, top_p=0.85, generator=generator).unique().tolist()) == {0, 1, 2}
    assert set(sample_next(logits, top_p=0.4, generator=generator).unique().tolist()) == {0}


def test_rows_stop_at_eos(gpt):
    prompt = torch.randint(0, CONFIG.vocab_size, (2, 5), generator=torch.Generator().manual_seed(3))
    free = generate(gpt, prompt, 30, temperature=0)
    eos_id = int(free[0, 8])  # the fourth token row 0 generates
    out = generate(gpt, prompt, 30, temperature=0, eos_id=eos_id)
    stops = []
    for unstopped, row in zip(free, out, strict=True):
        hits = (unstopped[5:] == eos_id).nonzero()
        stop = 5 + int(hits[0]) if len(hits) else len(unstopped)
        assert torch.equal(row[:stop], unstopped[:stop])
        assert (row[stop:] == eos_id).all()
        stops.append(stop)
    assert stops[0] == 8
    assert out.shape[1] == min(max(stops) + 1, free.shape[1])


def test_bad_sampling_arguments_are_refused(gpt):
    with pytest.raises(ValueError, match="top_p"):
        generate(gpt, torch.zeros(1, 1, dtype=torch.long), 5, top_p=0.0)


def test_generate_command_samples_from_a_run_dir(gpt, spm_model, tmp_path):
    config = GPTConfig(
        **{
            **CONFIG.to_dict(),
            "vocab_size": sentencepiece.SentencePieceProcessor(model_file=str(spm_model)).vocab_size(),
        }
    )
    torch.manual_seed(0)
    save_pretrained(GPT(config), tmp_path / "run" / "checkpoints" / "step_5" / "model", tokenizer=spm_model)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_5")
    result = run_module("model.generate", f"checkpoint={tmp_path / 'run'}", 'prompt="Botchan, said the master"',
                        "max_new_tokens=12", "temperature=0", "num_samples=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    samples = result.stdout.strip().split("\n" + "-" * 40 + "\n")
    assert len(samples) == 2 and samples[0] == samples[1]  # greedy: both rows agree
    assert samples[0].startswith("Botchan, said the master")
    assert not list(tmp_path.glob("outputs")) and not list(tmp_path.glob(".hydra"))

    model, tokenizer, _ = load_model_and_tokenizer(tmp_path / "run")
    ids = torch.tensor([tokenizer.encode("Botchan, said the master")])
    assert tokenizer.decode(generate(model, ids, 12, temperature=0)[0].tolist()) == samples[0]


def test_generate_command_names_a_missing_model_in_one_line(tmp_path):
    result = run_module("model.generate", f"checkpoint={tmp_path}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path}: no config.json; expected a saved model dir, a checkpoint dir holding model/, "
        "or a run dir holding checkpoints/latest"
    ]
