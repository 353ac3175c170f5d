"""The GPT module, its config, presets, loss, FLOPs and native saved-model format."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from model import GPT, GPTConfig
from model.activation import gelu_tanh
from model.attention import attention
from model.flops import flops_per_token
from model.loss import next_token_loss
from model.saved_model import load_pretrained, save_pretrained
from train.model_presets import PRESETS_DIR, PUBLISHED_PARAMS, count_params, load_preset, preset_names

SMALL = GPTConfig(vocab_size=1000, block_size=32, n_layer=2, n_head=4, n_embd=64)


@pytest.fixture
def gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(SMALL).eval()


def test_logits_cover_the_real_vocab_and_the_head_is_the_embedding(gpt):
    idx = torch.randint(0, SMALL.vocab_size, (2, 16))
    logits, hidden = gpt(idx, return_hidden=True)
    assert SMALL.padded_vocab_size == 1024
    assert logits.shape == (2, 16, SMALL.vocab_size)
    assert hidden.shape == (2, 16, SMALL.n_embd)
    assert torch.equal(hidden, gpt.hidden_states(idx))
    assert gpt.lm_head.weight is gpt.tok_emb.weight
    assert sum(p is gpt.tok_emb.weight for p in gpt.parameters()) == 1


def test_attention_is_causal(gpt):
    idx = torch.randint(0, SMALL.vocab_size, (1, 20))
    changed = idx.clone()
    changed[0, 12:] = (changed[0, 12:] + 1) % SMALL.vocab_size
    with torch.no_grad():
        a, b = gpt(idx), gpt(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_sequence_longer_than_block_size_is_refused(gpt):
    with pytest.raises(ValueError, match="block_size=32"):
        gpt(torch.zeros(1, 33, dtype=torch.long))


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=512, block_size=64, n_layer=8, n_head=4, n_embd=256)
    model = GPT(config)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    assert model.blocks[3].attn.proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert model.blocks[3].mlp.proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert model.blocks[3].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(model.blocks[3].mlp.fc.bias) == 0


def test_bias_and_dropout_are_configurable():
    config = GPTConfig(vocab_size=100, block_size=8, n_layer=1, n_head=2, n_embd=16, bias=False, dropout=0.5)
    model = GPT(config)
    assert all(not name.endswith("bias") for name, _ in model.named_parameters())
    idx = torch.randint(0, 100, (2, 8))
    model.train()
    assert not torch.equal(model(idx), model(idx))  # dropout active
    model.eval()
    assert torch.equal(model(idx), model(idx))


def test_next_token_loss_ignores_masked_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 10, (2, 5))
    kept = torch.ones_like(targets, dtype=torch.bool)
    kept[0, :3] = False
    expected = F.cross_entropy(logits[kept], targets[kept])
    assert not torch.allclose(F.cross_entropy(logits.view(-1, 11), targets.view(-1)), expected)
    torch.testing.assert_close(next_token_loss(logits, targets.masked_fill(~kept, -100)), expected)
    torch.testing.assert_close(
        next_token_loss(logits, targets.masked_fill(~kept, 10), ignore_index=10), expected
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_next_token_loss_has_the_fp32_cross_entropy_value_and_gradient(dtype):
    torch.manual_seed(0)
    padded = (torch.randn(3, 70, 1024) * 4).to(dtype)
    logits = padded[..., :1000].requires_grad_()  # non-contiguous, as GPT.logits slices padding off
    targets = torch.randint(0, 1000, (3, 70))
    targets[1, 10:] = -100
    ours = next_token_loss(logits, targets)
    (grad,) = torch.autograd.grad(ours * 3, logits)
    expected = F.cross_entropy(logits.float().reshape(-1, 1000), targets.reshape(-1))
    (expected_grad,) = torch.autograd.grad(expected * 3, logits)
    assert ours.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("shape", [(4, 100), (300, 512)])  # eager below 64k elements, fused above
def test_gelu_is_gpt2s_tanh_gelu_with_its_gradient(shape):
    torch.manual_seed(0)
    x = (torch.randn(shape, dtype=torch.float64) * 3).float().requires_grad_()
    ours = gelu_tanh(x)
    (grad,) = torch.autograd.grad(ours.sum(), x)
    exact_x = x.detach().double().requires_grad_()
    exact = F.gelu(exact_x, approximate="tanh")
    (exact_grad,) = torch.autograd.grad(exact.sum(), exact_x)
    torch.testing.assert_close(ours.double(), exact, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.double(), exact_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seq", [100, 300])  # one query block; three, the last one partial
def test_cpu_bf16_attention_backward_is_as_accurate_as_sdpa(seq):
    torch.manual_seed(0)
    batch, heads, head_dim = 2, 3, 32
    qkv = torch.randn(batch, seq, 3, heads, head_dim).to(torch.bfloat16)
    grad_out = torch.randn(batch, heads, seq, head_dim).to(torch.bfloat16)

    def output_and_grad(dtype: torch.dtype, attend) -> tuple[torch.Tensor, torch.Tensor]:
        x = qkv.to(dtype, copy=True).requires_grad_()
        q, k, v = x.permute(2, 0, 3, 1, 4)  # strided views, as CausalSelfAttention makes them
        out = attend(q, k, v)
        out.backward(grad_out.to(dtype))
        return out, x.grad.double()

    sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    ours = lambda q, k, v: attention(q, k, v, None, True, 0.0)  # noqa: E731
    _, exact_grad = output_and_grad(torch.float64, sdpa)
    sdpa_out, sdpa_grad = output_and_grad(torch.bfloat16, sdpa)
    our_out, our_grad = output_and_grad(torch.bfloat16, ours)
    assert type(our_out.grad_fn).__name__ == "CpuCausalAttentionBackward"
    torch.testing.assert_close(our_out, sdpa_out, rtol=0, atol=0)  # the forward is SDPA's own
    sdpa_error = (sdpa_grad - exact_grad).norm() / exact_grad.norm()
    our_error = (our_grad - exact_grad).norm() / exact_grad.norm()
    assert our_error < 1.5 * sdpa_error, (our_error, sdpa_error)  # measured 1.3x: bf16 matmul inputs


def test_bf16_module_takes_int64_ids_and_gives_an_fp32_loss(gpt):
    gpt = gpt.to(torch.bfloat16).train()
    idx = torch.randint(0, SMALL.vocab_size, (2, 16))
    logits = gpt(idx)
    assert logits.dtype == torch.bfloat16
    loss = next_token_loss(logits, idx)
    assert loss.dtype == torch.float32
    loss.backward()
    assert gpt.tok_emb.weight.grad is not None


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = GPT(GPTConfig(**{**SMALL.to_dict(), "activation_checkpointing": checkpointing})).train()
        idx = torch.randint(0, SMALL.vocab_size, (2, 16))
        next_token_loss(model(idx), idx).backward()
        grads.append([p.grad for p in model.parameters()])
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, recomputed)


def test_kv_cache_gives_the_logits_of_a_full_forward(gpt):
    idx = torch.randint(0, SMALL.vocab_size, (2, 20))
    with torch.no_grad():
        full = gpt(idx)
        cache = gpt.new_kv_cache(batch_size=2)
        pieces = [gpt(idx[:, :8], cache)]  # prefill
        pieces.append(gpt(idx[:, 8:11], cache))  # a chunk after cached positions
        pieces += [gpt(idx[:, t : t + 1], cache) for t in range(11, 20)]  # one position at a time
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"n_embd": 770, "n_head": 12}, "model.n_embd=770 is not divisible by model.n_head=12"),
        ({"n_layer": 0}, "model.n_layer=0 must be a positive integer"),
        ({"dropout": 1.5}, r"model.dropout=1.5 must be a number in \[0, 1\)"),
        ({"bias": "yes"}, "model.bias='yes' must be true or false"),
        ({"n_embdd": 64}, "model.n_embdd is not a GPTConfig field"),
    ],
)
def test_bad_config_is_refused_in_one_line(values, message):
    with pytest.raises(ValueError, match=message) as error:
        GPTConfig.from_dict({**SMALL.to_dict(), **values})
    assert "\n" not in str(error.value)


def test_missing_required_field_is_named():
    values = SMALL.to_dict()
    del values["block_size"]
    with pytest.raises(ValueError, match=r"model\.block_size is required"):
        GPTConfig.from_dict(values)


def test_presets_hold_exactly_config_fields():
    fields = set(SMALL.to_dict()) | {"name"}
    assert set(PUBLISHED_PARAMS) | {"tiny"} == set(preset_names())
    for name in preset_names():
        values = yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text())
        assert set(values) <= fields, name
        assert values["name"] == name


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_preset_parameter_count_matches_the_published_figure(name):
    config = load_preset(name)
    assert config.vocab_size == 50257
    assert count_params(config) == pytest.approx(PUBLISHED_PARAMS[name], rel=0.02)


def test_tiny_preset_is_small_enough_for_a_cpu():
    config = load_preset("tiny")
    assert count_params(config) < 10e6
    assert config.block_size <= 256


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown model preset 'gpt5'.*gpt2-124m"):
        load_preset("gpt5")


def test_flops_per_token_is_6n_plus_the_attention_term():
    config = load_preset("gpt3-175b")
    seq = config.block_size
    attention = 12 * config.n_layer * config.n_embd * seq
    assert flops_per_token(config, seq) - flops_per_token(config, 0) == attention
    # Every weight but the position table takes part in a matmul, so 6N matches the parameter count.
    non_positional = count_params(config) - config.block_size * config.n_embd
    assert flops_per_token(config, 0) == pytest.approx(6 * non_positional, rel=1e-3)


def test_save_and_load_pretrained_round_trip(gpt, tmp_path):
    spm = tmp_path / "spm.model"
    spm.write_bytes(b"not parsed by save_pretrained")
    save_pretrained(gpt, tmp_path / "saved", tokenizer=spm)
    assert json.loads((tmp_path / "saved" / "config.json").read_text()) == SMALL.to_dict()
    assert (tmp_path / "saved" / "tokenizer.model").read_bytes() == spm.read_bytes()
    loaded = load_pretrained(tmp_path / "saved")
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    idx = torch.randint(0, SMALL.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), gpt(idx), atol=0, rtol=0)


def test_load_pretrained_follows_a_run_dir_to_the_latest_checkpoint(gpt, tmp_path):
    save_pretrained(gpt, tmp_path / "run" / "checkpoints" / "step_00000010" / "model")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_00000010\n")
    loaded = load_pretrained(tmp_path / "run")
    torch.testing.assert_close(loaded.tok_emb.weight, gpt.tok_emb.weight)
    with pytest.raises(ValueError, match=r"no config\.json"):
        load_pretrained(tmp_path)


def test_load_pretrained_names_a_shape_mismatch(gpt, tmp_path):
    save_pretrained(gpt, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": 2000}))
    with pytest.raises(
        ValueError, match=r"tok_emb.weight has shape \(1024, 64\) but the config implies \(2048, 64\)"
    ):
        load_pretrained(tmp_path)
