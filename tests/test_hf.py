"""HF GPT-2 import/export checked against transformers itself (models built from configs, no hub)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece
import torch

from model import GPT, GPTConfig
from model.convert import convert
from model.hf import load_hf_gpt2, save_hf_gpt2
from model.saved_model import load_pretrained, save_pretrained
from tests.commands import SAMPLE_CORPUS, run_module

transformers = pytest.importorskip("transformers")

HF_SHAPE = {"vocab_size": 1000, "n_positions": 64, "n_layer": 2, "n_head": 4, "n_embd": 64}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF_SHAPE, initializer_range=0.1))
    directory = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(directory)
    return directory


@pytest.fixture
def token_ids() -> torch.Tensor:
    return torch.randint(0, HF_SHAPE["vocab_size"], (3, 40), generator=torch.Generator().manual_seed(1))


def hf_logits(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def spm_models() -> list[Path]:
    models = sorted((SAMPLE_CORPUS / "tokenizers" / "sentencepiece").glob("botchan_en_*.model"))
    if not models:
        pytest.skip(f"no sample sentencepiece models under {SAMPLE_CORPUS}; run `make data`")
    return models


def test_imported_gpt2_gives_transformers_logits(hf_dir, token_ids):
    ours = load_hf_gpt2(hf_dir)
    assert ours.config.padded_vocab_size == 1024
    with torch.no_grad():
        logits = ours(token_ids)
    assert (logits - hf_logits(hf_dir, token_ids)).abs().max().item() <= 1e-4


def test_pickled_bin_checkpoint_in_the_original_layout_imports_too(hf_dir, token_ids, tmp_path):
    # OpenAI's released GPT-2 files: a GPT2Model (no `transformer.` prefix, no head) with mask buffers.
    state = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).state_dict()
    state = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
    state |= {f"h.{i}.attn.bias": torch.ones(1, 1, 64, 64).tril() for i in range(HF_SHAPE["n_layer"])}
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    with torch.no_grad():
        torch.testing.assert_close(load_hf_gpt2(tmp_path)(token_ids), load_hf_gpt2(hf_dir)(token_ids))


@pytest.mark.parametrize("bias", [True, False])
def test_exported_model_gives_our_logits_in_transformers(bias, token_ids, tmp_path):
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=1000, block_size=64, n_layer=2, n_head=4, n_embd=64, bias=bias)).eval()
    with torch.no_grad():  # spread the weights so the comparison is not between near-zero logits
        for p in ours.parameters():
            p.mul_(5)
    save_hf_gpt2(ours, tmp_path)
    with torch.no_grad():
        expected = ours(token_ids)
    assert (hf_logits(tmp_path, token_ids) - expected).abs().max().item() <= 1e-4


def test_exported_tokenizer_loads_in_autotokenizer_with_sentencepiece_ids(spm_models, tmp_path):
    text = (SAMPLE_CORPUS / "books" / "gutenberg" / "pg8868_botchan.txt").read_text(encoding="utf-8")[
        20_000:40_000
    ]
    lines = [*text.splitlines(), "  spaces   inside  ", "Ünïcödé — “quotes” ½"]
    gpt = GPT(GPTConfig(vocab_size=1000, block_size=64, n_layer=1, n_head=2, n_embd=16))
    for spm_path in spm_models:
        out = save_hf_gpt2(gpt, tmp_path / spm_path.stem, tokenizer=spm_path)
        processor = sentencepiece.SentencePieceProcessor(model_file=str(spm_path))
        tokenizer = transformers.AutoTokenizer.from_pretrained(out)
        assert tokenizer.eos_token_id == processor.eos_id()
        assert json.loads((out / "config.json").read_text())["eos_token_id"] == processor.eos_id()
        for line in lines:
            assert tokenizer(line)["input_ids"] == processor.encode(line), (spm_path.name, line)
        ids = processor.encode("It was a fine day, and the master smiled.")
        assert tokenizer.decode(ids) == processor.decode(ids)


def test_non_gpt2_directory_is_refused_in_one_line(hf_dir, tmp_path):
    config = json.loads((hf_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match=r"model_type='llama' is not 'gpt2'"):
        load_hf_gpt2(tmp_path)


def test_mismatched_tensor_shape_is_named(hf_dir, tmp_path):
    config = json.loads((hf_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_positions": 128}))
    (tmp_path / "model.safetensors").symlink_to(hf_dir / "model.safetensors")
    with pytest.raises(
        ValueError, match=r"wpe.weight has shape \(64, 64\) but config.json implies \(128, 64\)"
    ):
        load_hf_gpt2(tmp_path)


def test_convert_round_trip_through_the_command(hf_dir, token_ids, tmp_path):
    run_module("model.convert", "direction=from_hf", f"src={hf_dir}", f"dst={tmp_path / 'ours'}", check=True)
    convert("to_hf", tmp_path / "ours", tmp_path / "back")
    with torch.no_grad():
        ours = load_pretrained(tmp_path / "ours")(token_ids)
    assert (ours - hf_logits(hf_dir, token_ids)).abs().max().item() <= 1e-4
    assert (hf_logits(tmp_path / "back", token_ids) - ours).abs().max().item() <= 1e-4


def test_convert_command_reports_bad_input_in_one_line(tmp_path):
    save_pretrained(
        GPT(GPTConfig(vocab_size=100, block_size=8, n_layer=1, n_head=2, n_embd=16)), tmp_path / "ours"
    )
    result = run_module("model.convert", "direction=from_hf", f"src={tmp_path / 'ours'}", f"dst={tmp_path / 'out'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'ours' / 'config.json'}: model_type=None is not 'gpt2'; only GPT-2 checkpoints can be imported"
    ]
