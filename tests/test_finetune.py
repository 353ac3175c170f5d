"""GPT-1 fine-tuning: special tokens, input layouts, the auxiliary LM objective, and 2-rank ZeRO-3 runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import load_file

from data_contract import Refusal
from model import GPT, GPTConfig
from model.generate import generate
from model.load import load_model_and_tokenizer
from model.pretrained import load_pretrained
from model.resize import add_tokens
from tests.commands import REPO, run_module
from tests.finetune_fixtures import TOKENIZER, memoriser, task_data_root
from train.finetune.examples import (
    IGNORE,
    Example,
    SpecialTokens,
    TaskSpec,
    collate,
    encode_example,
    load_examples,
)
from train.finetune.heads import TaskModel, objective
from train.finetune.task import HEAD_FILE, TASK_FILE, example_order, validate

SPECIAL = SpecialTokens(start=1000, delim=1001, extract=1002)


def spec(name: str) -> TaskSpec:
    return TaskSpec.from_cfg(OmegaConf.load(REPO / "conf" / "task" / f"{name}.yaml"))


@pytest.fixture(scope="module")
def tokenizer(sample_corpus: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(sample_corpus / TOKENIZER))


def test_special_tokens_take_padding_rows_and_leave_existing_rows_alone() -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=1000, block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()
    before = gpt.tok_emb.weight.detach().clone()
    idx = torch.randint(0, 1000, (2, 16))
    logits_before = gpt(idx)
    assert add_tokens(gpt, 3) == [1000, 1001, 1002]
    assert gpt.config.vocab_size == 1003 and gpt.tok_emb.weight.shape == before.shape  # 1024 padded rows suffice
    assert torch.equal(gpt.tok_emb.weight[:1000], before[:1000])
    assert torch.equal(gpt(idx)[..., :1000], logits_before)
    assert gpt.lm_head.weight is gpt.tok_emb.weight


def test_special_tokens_grow_the_embedding_past_its_padding() -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=1024, block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()
    before = gpt.tok_emb.weight.detach().clone()
    idx = torch.randint(0, 1024, (2, 16))
    logits_before = gpt(idx)
    assert add_tokens(gpt, 3) == [1024, 1025, 1026]
    assert gpt.tok_emb.weight.shape == (1088, 32) and gpt.lm_head.weight is gpt.tok_emb.weight
    assert torch.equal(gpt.tok_emb.weight[:1024], before)
    assert gpt.tok_emb.weight[1024:1027].std() > 0.01
    assert torch.equal(gpt(idx)[..., :1024], logits_before)
    assert gpt(torch.tensor([[1026]])).shape[-1] == 1027


def test_input_layouts_follow_gpt1(tokenizer: spm.SentencePieceProcessor) -> None:
    enc = tokenizer.encode
    text, other = "Oil prices fell.", "Shares rose."
    example = encode_example(spec("reuters"), {"text": text, "label": "crude"}, enc, SPECIAL, 2, 64, "x")
    assert example.rows == [[1000, *enc(text), 1002]] and example.target == 1
    example = encode_example(spec("wiki_continuation"), {"premise": text, "hypothesis": other, "label": "unrelated"},
                             enc, SPECIAL, 2, 64, "x")
    assert example.rows == [[1000, *enc(text), 1001, *enc(other), 1002]] and example.target == 1
    example = encode_example(spec("wiki_relatedness"), {"sentence1": text, "sentence2": other, "score": 0.5},
                             enc, SPECIAL, 2, 64, "x")
    assert example.rows == [[1000, *enc(text), 1001, *enc(other), 1002], [1000, *enc(other), 1001, *enc(text), 1002]]
    example = encode_example(spec("next_sentence"), {"context": text, "choices": [other, text], "label": 1},
                             enc, SPECIAL, 2, 64, "x")
    assert example.rows == [[1000, *enc(text), 1001, *enc(c), 1002] for c in (other, text)] and example.target == 1
    # Too long: the context keeps its end, the tokens nearest the answer.
    example = encode_example(spec("next_sentence"), {"context": text * 20, "choices": [other, text], "label": 0},
                             enc, SPECIAL, 2, 24, "x")
    assert all(len(row) <= 24 for row in example.rows) and example.rows[0][-len(enc(other)) - 2:-1] == [1001, *enc(other)]
    assert example.rows[0][1:4] != enc(text * 20)[:3]


def test_instruction_loss_covers_the_response_and_eos_only(tokenizer: spm.SentencePieceProcessor) -> None:
    task = spec("reuters_headlines")
    record = {"instruction": "Write a headline.", "input": "Oil prices fell.", "response": "OIL FALLS"}
    example = encode_example(task, record, tokenizer.encode, None, tokenizer.eos_id(), 128, "x")
    prompt = tokenizer.encode(task.prompt_template.format(instruction="Write a headline.", input="Oil prices fell."))
    batch = collate([example], pad_id=tokenizer.eos_id())
    scored = batch.lm_targets[0][batch.lm_targets[0] != IGNORE].tolist()
    assert scored == [*tokenizer.encode("OIL FALLS"), tokenizer.eos_id()]
    assert batch.idx[0, : len(prompt)].tolist() == prompt


def test_auxiliary_lm_loss_adds_lambda_times_its_gradient() -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=1000, block_size=16, n_layer=2, n_head=2, n_embd=32))
    add_tokens(gpt, 3)
    model = TaskModel(gpt, "classification", 2, dropout=0.0)
    batch = collate([Example([[1000, 5, 6, 7, 8, 1002]], 1), Example([[1000, 9, 10, 1002]], 0)], pad_id=0)
    params = list(model.parameters())

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        found = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, found, strict=True)]

    logits, hidden = gpt(batch.idx, return_hidden=True)
    task = F.cross_entropy(model.head(hidden[[0, 1], [5, 3]]), torch.tensor([1, 0]))
    # LM on the same inputs: every real token after the first, padding excluded.
    lm = F.cross_entropy(torch.cat([logits[0, :5], logits[1, :3]]), torch.tensor([5, 6, 7, 8, 1002, 9, 10, 1002]))
    task_grads, lm_grads = grads(task), grads(lm)
    for weight in (0.5, 0.0):
        combined = grads(objective(model, batch, "classification", weight)[0])
        for got, t, m in zip(combined, task_grads, lm_grads, strict=True):
            torch.testing.assert_close(got, t + weight * m, rtol=1e-5, atol=1e-7)
    assert any(m.abs().sum() > 0 for m in lm_grads[:-2])


def test_bad_task_data_is_refused_naming_file_and_line(tmp_path: Path, tokenizer: spm.SentencePieceProcessor) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"text": "a", "label": "acq"}) + "\n" + json.dumps({"text": "b", "label": "earn"}) + "\n")
    with pytest.raises(Refusal, match=r"train.jsonl:2: label 'earn' is not in task.labels \['acq', 'crude'\]"):
        load_examples(spec("reuters"), data, tokenizer.encode, SPECIAL, 2, 64)
    data.write_text(json.dumps({"body": "a", "label": "acq"}) + "\n")
    with pytest.raises(Refusal, match=r"train.jsonl:1: no field 'text' \(task.fields.text\)"):
        load_examples(spec("reuters"), data, tokenizer.encode, SPECIAL, 2, 64)
    with pytest.raises(Refusal, match=r"task\.labels is missing"):
        TaskSpec.from_cfg(OmegaConf.create({"name": "x", "type": "entailment", "fields": {
            "premise": "p", "hypothesis": "h", "label": "l"}}))


def test_each_epoch_visits_every_example_once_in_its_own_order() -> None:
    order = [i for step in range(7) for i in example_order(step * 4, 4, 14, seed=1)]  # 28 positions: 2 epochs
    assert sorted(order[:14]) == sorted(order[14:]) == list(range(14))
    assert order[:14] != order[14:]
    assert example_order(20, 4, 14, seed=1) == order[20:24]  # a pure function of the position: resumable


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Path:
    return memoriser(tmp_path_factory, sample_corpus)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Path:
    if not (sample_corpus / "reuters" / ".complete").is_file():
        pytest.skip(f"Reuters articles missing in {sample_corpus / 'reuters'}: run `make data`")
    return task_data_root(tmp_path_factory, sample_corpus)


def finetune(run_dir: Path, data_root: Path, init: Path, task: str, *overrides: str) -> list[dict]:
    run_module("torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(31500 + os.getpid() % 1000),
               "-m", "train.finetune", f"task={task}", f"init={init}", f"paths.data_root={data_root}",
               f"run_dir={run_dir}", "train.max_steps=3", "train.micro_batch_size=2", "train.global_batch_size=4",
               "optim.lr=1e-4", *overrides, env={"OMP_NUM_THREADS": "1"}, check=True)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(("task", "metric", "head_width"), [("wiki_continuation", "val/accuracy", 2),
                                                            ("next_sentence", "val/accuracy", 1),
                                                            ("wiki_relatedness", "val/pearson", 1)])
def test_two_rank_fine_tuning_computes_the_validation_metric(tmp_path: Path, data_root: Path, pretrained: Path,
                                                             task: str, metric: str, head_width: int) -> None:
    records = finetune(tmp_path / "run", data_root, pretrained, task)
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3]
    assert all(r["train/loss"] > r["train/task_loss"] for r in records if "train/loss" in r)  # + 0.5 x LM loss
    final = next(r for r in records if metric in r)
    assert -1.0 <= final[metric] <= 1.0 and final["val/loss"] > 0
    if metric == "val/pearson":
        assert -1.0 <= final["val/spearman"] <= 1.0
    exported = load_pretrained(tmp_path / "run")
    assert exported.config.vocab_size == 1003
    head = load_file(tmp_path / "run" / "checkpoints" / "step00000003" / "model" / HEAD_FILE)
    assert head["weight"].shape == (head_width, exported.config.n_embd)


@pytest.fixture(scope="module")
def reuters_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path, pretrained: Path) -> Path:
    """Three uninterrupted fp32 steps on Reuters, with GPT-1's head dropout (so the RNG matters)."""
    run_dir = tmp_path_factory.mktemp("reuters") / "run"
    finetune(run_dir, data_root, pretrained, "reuters", "precision=fp32")
    return run_dir


@pytest.mark.slow
def test_fine_tuning_resumes_exactly_dropout_included(tmp_path: Path, data_root: Path, pretrained: Path,
                                                      reuters_run: Path) -> None:
    split = tmp_path / "split"
    with pytest.raises(AssertionError, match="exited"):  # each rank exits 75: checkpoint written, requeue me
        finetune(split, data_root, pretrained, "reuters", "precision=fp32", "train.stop_at_step=1")
    resumed = finetune(split, data_root, pretrained, "reuters", "precision=fp32")
    whole = [json.loads(line) for line in (reuters_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed if "train/loss" in r] == [1, 2, 3]
    for name in ("train/loss", "train/task_loss"):
        expected = {r["step"]: r[name] for r in whole if name in r}
        assert {r["step"]: r[name] for r in resumed if name in r} == pytest.approx(expected, rel=1e-6, abs=0)


@pytest.mark.slow
def test_classification_metric_matches_the_exported_model(data_root: Path, pretrained: Path, reuters_run: Path,
                                                          tokenizer: spm.SentencePieceProcessor) -> None:
    records = [json.loads(line) for line in (reuters_run / "metrics.jsonl").read_text().splitlines()]
    logged = next(r for r in records if "val/accuracy" in r)
    model_dir = reuters_run / "checkpoints" / "step00000003" / "model"
    info = json.loads((model_dir / TASK_FILE).read_text())
    assert info["special_tokens"] == {"start": 1000, "delim": 1001, "extract": 1002}
    gpt = load_pretrained(model_dir)
    original = load_pretrained(pretrained)
    assert not torch.equal(gpt.blocks[0].mlp.fc.weight, original.blocks[0].mlp.fc.weight)  # it trained
    model = TaskModel(gpt, "classification", 2, dropout=0.0)
    model.head.load_state_dict(load_file(model_dir / HEAD_FILE))
    val_set = load_examples(spec("reuters"), data_root / "tasks" / "reuters" / "validation.jsonl", tokenizer.encode,
                            SpecialTokens(**info["special_tokens"]), tokenizer.eos_id(), gpt.config.block_size)
    recomputed = validate(model, spec("reuters"), val_set, 4, tokenizer.eos_id(), 0.5, 0, 1)
    assert recomputed["val/accuracy"] == logged["val/accuracy"]
    assert recomputed["val/loss"] == pytest.approx(logged["val/loss"], rel=1e-4)


@pytest.mark.slow
def test_instruction_tuned_model_follows_the_template_in_generate(tmp_path: Path, data_root: Path,
                                                                  pretrained: Path) -> None:
    records = finetune(tmp_path / "run", data_root, pretrained, "reuters_headlines")
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3]
    assert next(r for r in records if "val/loss" in r)["val/ppl"] > 1
    model, tokenizer, _ = load_model_and_tokenizer(tmp_path / "run")
    assert model.config.vocab_size == 1000  # the template is plain text: no tokens added
    template = json.loads((tmp_path / "run/checkpoints/step00000003/model" / TASK_FILE).read_text())["prompt_template"]
    prompt = tokenizer.encode(template.format(instruction="Write a headline for this news article.",
                                              input="Oil prices fell sharply today."))
    out = generate(model, torch.tensor([prompt]), 8, temperature=0.0)
    assert out.shape[1] > len(prompt)
