"""A small pretrained model for fine-tuning and evaluation tests: a tiny GPT that has memorised real text.

Plain torch, one process, a few seconds: the trainer's own 2-rank runs are covered by test_train.py,
and a model that knows its text makes zero-shot accuracy a property to check rather than noise.
The text is the opening MEMORISED_SENTENCES sentences of held-out Wikipedia articles
`train.finetune.task_sets` builds its sets from, one document each, starting with EOS as documents
do in pretraining (articles whose opening does not fit the context are passed over).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from model import GPT, GPTConfig
from model.loss import next_token_loss
from model.saved_model import save_pretrained
from train.finetune.task_sets import heldout_wikipedia

TOKENIZER = "tokenizers/sentencepiece/botchan_en_bpe_1000.model"
MEMORISED_ARTICLES = 16
MEMORISED_SENTENCES = 3
CONFIG = GPTConfig(vocab_size=1000, block_size=128, n_layer=2, n_head=4, n_embd=128)


def memorised_articles(corpus: Path) -> list[dict]:
    tokenizer = spm.SentencePieceProcessor(model_file=str(corpus / TOKENIZER))
    chosen = []
    for article in heldout_wikipedia(corpus, 50):
        opening = article["sentences"][:MEMORISED_SENTENCES]
        if len(opening) > 1 and len(tokenizer.encode(" ".join(opening))) < CONFIG.block_size:
            chosen.append({**article, "sentences": opening})
    return chosen[:MEMORISED_ARTICLES]


def train_memoriser(out: Path, corpus: Path, steps: int = 80, seed: int = 0) -> Path:
    """Fit CONFIG on the memorised articles until it recites them; save it with its tokenizer."""
    tokenizer = spm.SentencePieceProcessor(model_file=str(corpus / TOKENIZER))
    docs = [[tokenizer.eos_id(), *tokenizer.encode(" ".join(a["sentences"]))] for a in memorised_articles(corpus)]
    length = max(len(doc) for doc in docs)
    batch = torch.full((len(docs), length), -100, dtype=torch.long)
    for i, doc in enumerate(docs):
        batch[i, : len(doc)] = torch.tensor(doc)
    inputs, targets = batch[:, :-1].clamp(min=0), batch[:, 1:]
    torch.manual_seed(seed)
    model = GPT(CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs no faster on two, and the test machine is shared
    try:
        for _ in range(steps):
            loss = next_token_loss(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    save_pretrained(model, out, tokenizer=corpus / TOKENIZER)
    (out / "final_loss.txt").write_text(f"{loss.item():.6f}\n")
    return out


def shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder shared by every test module of the session (module fixtures would rebuild it per module)."""
    return tmp_path_factory.getbasetemp() / name


def memoriser(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    out = shared_dir(tmp_path_factory, "memoriser")
    if not (out / "final_loss.txt").is_file():
        train_memoriser(out, corpus)
    return out


def task_data_root(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """A data root whose tasks/ holds every set `python -m train.build_task_sets` writes."""
    from train.finetune.task_sets import build

    root = shared_dir(tmp_path_factory, "task_data")
    if not (root / "tasks" / "zero_shot").is_dir():
        build(corpus, root / "tasks", wiki_articles=50, seed=0)
    return root
