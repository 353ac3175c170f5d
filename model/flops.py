"""Training FLOPs per token, for model FLOPs utilisation (MFU), and the parameter counts they and a memory
plan (train/plan.py) start from, by arithmetic alone (no module is built).

Kaplan et al. 2020 (Scaling Laws, section 2.1) count 2N forward FLOPs per token for the
weight matmuls and twice that backward, hence 6N; PaLM (Chowdhery et al. 2022, appendix B)
adds the attention score and value products, 12 * n_layer * n_embd * seq_len per token for
forward plus backward. As in PaLM, the causal mask is not credited with halving that term,
and rematerialisation (activation checkpointing) is not counted: MFU counts the model's FLOPs, not
the hardware's.
"""

from __future__ import annotations

from model.config import GPTConfig


def matmul_params(config: GPTConfig) -> int:
    """Weights that take part in a matmul per token: the blocks' linears and the (padded) head.

    Embedding lookups, LayerNorms and biases cost no matmul FLOPs; the tied head does, over every
    padded row, since those columns are computed.
    """
    d = config.n_embd
    per_block = d * 3 * d + d * d + d * 4 * d + 4 * d * d
    return config.n_layer * per_block + config.padded_vocab_size * d


def flops_per_token(config: GPTConfig, seq_len: int) -> float:
    """Forward + backward FLOPs to train on one token at context length `seq_len`."""
    return 6.0 * matmul_params(config) + 12.0 * config.n_layer * config.n_embd * seq_len


def block_params(config: GPTConfig) -> int:
    """Parameters of one transformer block: ZeRO-3's fetch unit, and so the largest layer it gathers."""
    d, bias = config.n_embd, int(config.bias)
    linears = 12 * d * d + bias * (3 * d + d + 4 * d + d)
    return linears + 2 * (d + bias * d)


def parameter_count(config: GPTConfig) -> int:
    """Distinct parameters as the papers count them (GPT.num_params: position embeddings in, tied head once,
    the embedding's padding rows out)."""
    d = config.n_embd
    return (config.vocab_size + config.block_size) * d + config.n_layer * block_params(config) \
        + d + int(config.bias) * d
