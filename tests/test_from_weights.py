"""Starting from released weights: a GPT-2 with GPT-2's own tokenizer, continued pretraining, fine-tuning.

No real GPT-2 weights can be had offline, so the model is a small random `transformers.GPT2LMHeadModel`
saved by transformers with the real GPT-2 tokenizer (GPT-2's released vocabulary and merges), exactly
as an HF GPT-2 directory is laid out; the data is tokenized with the same released BPE.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from curation.assets import ensure_gpt2_bpe
from data_contract.tokenizer_files import tokenizer_identity
from tests.commands import run_module
from tests.train_fixtures import launch, losses, make_data_root, read_metrics

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")


def gpt2_tokenizer() -> transformers.GPT2TokenizerFast:
    released = ensure_gpt2_bpe()
    vocab = json.loads((released / "vocab.json").read_text())
    merges = [tuple(line.split()) for line in (released / "merges.txt").read_text().splitlines()[1:] if line]
    return transformers.GPT2TokenizerFast(vocab=vocab, merges=merges)


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shape of tests.train_fixtures.SMALL_MODEL, GPT-2's vocabulary, no dropout."""
    folder = tmp_path_factory.mktemp("hf-gpt2")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_layer=2, n_head=2, n_embd=64,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    gpt2_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_data(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data_root(tmp_path_factory.mktemp("gpt2-data"), sample_corpus, tokenizer="gpt2")


def test_continued_pretraining_starts_from_the_weights(hf_gpt2: Path, gpt2_data: Path, tmp_path: Path) -> None:
    """The first loss is the HF model's on the first batch of the plan; with lr 0, the model exported after
    3 steps computes the HF model's logits; the export carries GPT-2's tokenizer into an HF dir again."""
    from train.data import MixtureData

    run_dir = tmp_path / "run"
    launch(1, run_dir, gpt2_data, f"init={hf_gpt2}", "optim.lr=0", "precision=fp32", "train.max_steps=3",
           "checkpoint.every=3", "eval.every=3", "eval.sample_every=0", launcher="python")
    reference = transformers.GPT2LMHeadModel.from_pretrained(hf_gpt2).eval()
    first_batch = MixtureData(gpt2_data / "mix" / "demo", gpt2_data).batch(0, 8)
    with torch.no_grad():
        logits = reference(first_batch[:, :-1]).logits
        expected = F.cross_entropy(logits.flatten(0, 1), first_batch[:, 1:].flatten()).item()
    assert losses(run_dir)[1] == pytest.approx(expected, rel=1e-5)
    state = json.loads((run_dir / "checkpoints" / "step00000003" / "trainer_state.json").read_text())
    assert state["init"] == str(hf_gpt2) and state["identity"]["init"] == str(hf_gpt2.resolve())
    assert any("val/bpb" in row for row in read_metrics(run_dir))

    exported = tmp_path / "hf-out"
    run_module("model.convert", "direction=to_hf", f"src={run_dir}", f"dst={exported}", check=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    assert tokenizer("Hello world")["input_ids"] == [15496, 995] and tokenizer.eos_token_id == 50256
    ids = torch.tensor([tokenizer("It is a truth universally acknowledged")["input_ids"]])
    with torch.no_grad():
        after = transformers.GPT2LMHeadModel.from_pretrained(exported).eval()(ids).logits
        before = reference(ids).logits
    assert after.shape[-1] == 50257
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_a_bf16_run_exports_its_fp32_master_weights(hf_gpt2: Path, gpt2_data: Path, tmp_path: Path) -> None:
    """At lr 0 the fp32 master weights stay the init's: the export computes its logits, where the bf16
    working copy would be off by its rounding."""
    run_dir = tmp_path / "run"
    launch(1, run_dir, gpt2_data, f"init={hf_gpt2}", "optim.lr=0", "precision=bf16", "train.max_steps=3",
           "checkpoint.every=3", "eval.every=0", "eval.sample_every=0", launcher="python")
    exported = tmp_path / "hf-out"
    run_module("model.convert", "direction=to_hf", f"src={run_dir}", f"dst={exported}", check=True)
    ids = torch.tensor([gpt2_tokenizer()("It is a truth universally acknowledged")["input_ids"]])
    with torch.no_grad():
        after = transformers.GPT2LMHeadModel.from_pretrained(exported).eval()(ids).logits
        before = transformers.GPT2LMHeadModel.from_pretrained(hf_gpt2).eval()(ids).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("overrides, message", [
    (["model.n_layer=3"], "has n_layer=2 but the run's model has model.n_layer=3; set model.n_layer=2 to "
                          "continue from these weights"),
    (["data=spm"], "its tokenizer ({}) is not the data's ({}); curate with the model's tokenizer "
                   "(tokenizer=gpt2 for GPT-2 weights)"),
])
def test_init_that_does_not_fit_is_refused_in_one_line(hf_gpt2: Path, gpt2_data: Path, sample_corpus: Path,
                                                       tmp_path: Path, overrides: list[str], message: str) -> None:
    data_root = gpt2_data
    if overrides == ["data=spm"]:
        data_root, overrides = make_data_root(tmp_path / "spm-data", sample_corpus), []
    result = launch(1, tmp_path / "run", data_root, f"init={hf_gpt2}", *overrides, launcher="python", check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    refusal = [line for line in result.stderr.splitlines() if line.startswith(f"train: init={hf_gpt2}")]
    assert len(refusal) == 1, result.stderr[-2000:]
    if "{}" in message:
        message = message.format(tokenizer_identity(hf_gpt2)[:12],
                                 f"{data_root / 'tokenizer'}, {tokenizer_identity(data_root / 'tokenizer')[:12]}")
    assert message in refusal[0]


def test_fine_tuning_and_generation_take_a_gpt2_dir(hf_gpt2: Path, tmp_path: Path) -> None:
    """train.finetune from an HF GPT-2 dir with its BPE tokenizer: examples are GPT-2 ids, the exported model
    keeps GPT-2's tokenizer; model.generate reads the HF dir directly."""
    rows = [{"text": f"The share price of company {i} rose sharply today.", "label": "acq" if i % 2 else "crude"}
            for i in range(16)]
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "ft"
    run_module("train.finetune", f"init={hf_gpt2}", "task=reuters", f"run_dir={run_dir}",
               f"task.train={tmp_path / 'train.jsonl'}", f"task.validation={tmp_path / 'validation.jsonl'}",
               "train.max_steps=2", "train.micro_batch_size=4", "train.global_batch_size=8", "wandb.enabled=false",
               env={"OMP_NUM_THREADS": "1"}, check=True)
    model_dir = run_dir / "checkpoints" / "step00000002" / "model"
    assert tokenizer_identity(model_dir) == tokenizer_identity(hf_gpt2) == tokenizer_identity(ensure_gpt2_bpe())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val/accuracy" in row for row in metrics)
    sampled = run_module("model.generate", f"checkpoint={hf_gpt2}", "prompt=Hello", "max_new_tokens=4",
                         "temperature=0", check=True)
    assert sampled.stdout.startswith("Hello")
    assert np.isfinite([row["train/loss"] for row in metrics if "train/loss" in row]).all()


def test_an_hf_export_of_a_run_is_a_valid_init_for_its_own_data(sample_corpus: Path, tmp_path: Path) -> None:
    """The export carries the sentencepiece model the data was tokenized with, so `init=` recognises it."""
    data_root = make_data_root(tmp_path / "data", sample_corpus)
    steps = ["train.max_steps=2", "eval.every=0", "eval.sample_every=0", "precision=fp32"]
    launch(1, tmp_path / "first", data_root, *steps, launcher="python")
    exported = tmp_path / "hf-out"
    run_module("model.convert", "direction=to_hf", f"src={tmp_path / 'first'}", f"dst={exported}", check=True)
    assert tokenizer_identity(exported) == tokenizer_identity(data_root / "tokenizer")
    continued = launch(1, tmp_path / "second", data_root, *steps, f"init={exported}", launcher="python")
    assert f"initialized from {exported}" in continued.stdout + continued.stderr
