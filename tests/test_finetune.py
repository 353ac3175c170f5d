"""GPT-1 fine-tuning: special tokens, input layouts, the auxiliary LM objective, and 2-rank ZeRO-3 runs."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import load_file

from data_contract.refusal import Refusal
from model import GPT, GPTConfig
from model.generate import generate
from model.load import load_model_and_tokenizer
from model.resize import add_tokens
from model.saved_model import load_pretrained
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
# Stanford Alpaca's prompts, written out as its README gives them (https://github.com/tatsu-lab/stanford_alpaca).
ALPACA_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                     "{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                   "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


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


REVIEWS = [{"text": "A fine film, well acted.", "label": 1}, {"text": "Dull and far too long.", "label": 0},
           {"text": "Worth seeing twice.", "label": 1}]


def write_task_file(path: Path, records: list[dict]) -> Path:
    """`records` in the format `path`'s suffix names, written by the library that format belongs to."""
    table = pa.Table.from_pylist(records)
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    elif path.suffix in (".csv", ".tsv"):
        pcsv.write_csv(table, path, pcsv.WriteOptions(delimiter="\t" if path.suffix == ".tsv" else ","))
    elif path.suffix == ".arrow":
        with pa.ipc.new_stream(path, table.schema) as stream:
            stream.write_table(table)
    elif path.suffix == ".json":
        path.write_text(json.dumps(records))  # one JSON array, as Alpaca ships its data
    else:
        lines = "".join(json.dumps(r) + "\n" for r in records)
        path.write_bytes(gzip.compress(lines.encode()) if path.suffix == ".gz" else lines.encode())
    return path


@pytest.mark.parametrize("name", ["train.jsonl", "train.json", "train.jsonl.gz", "train.parquet", "train.csv",
                                  "train.tsv", "train.arrow"])
def test_task_files_in_any_format_datasets_reads_give_the_same_examples(
        tmp_path: Path, tokenizer: spm.SentencePieceProcessor, name: str) -> None:
    imdb = spec("imdb")
    expected = [encode_example(imdb, r, tokenizer.encode, SPECIAL, 2, 64, "x") for r in REVIEWS]
    examples = load_examples(imdb, write_task_file(tmp_path / name, REVIEWS), tokenizer.encode, SPECIAL, 2, 64)
    assert examples == expected
    assert [e.target for e in examples] == [1, 0, 1]  # IMDb's 0/1 labels are class indices as they stand


def test_bad_records_of_other_formats_are_refused_naming_file_and_record(
        tmp_path: Path, tokenizer: spm.SentencePieceProcessor) -> None:
    def load(path: Path) -> list[Example]:
        return load_examples(spec("imdb"), path, tokenizer.encode, SPECIAL, 2, 64)

    with pytest.raises(Refusal, match=r"train.parquet:record 2: label 2 is not in task.labels \['0', '1'\]"):
        load(write_task_file(tmp_path / "train.parquet", [REVIEWS[0], {"text": "Odd.", "label": 2}]))
    with pytest.raises(Refusal, match=r"reviews.csv:record 1: no field 'text' \(task.fields.text\); fields present: "
                                      r"review, label"):
        load(write_task_file(tmp_path / "reviews.csv", [{"review": "Good.", "label": 1}]))
    with pytest.raises(Refusal, match=r"nulls.json:record 2: field 'text' is null \(task.fields.text\)"):
        load(write_task_file(tmp_path / "nulls.json", [REVIEWS[0], {"label": 0}]))  # datasets fills the gap with null
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(Refusal, match=r"broken.parquet: `datasets` cannot read it as parquet \(.+\); check the file"):
        load(tmp_path / "broken.parquet")
    (tmp_path / "train.xlsx").write_bytes(b"x")
    with pytest.raises(Refusal, match=r"train.xlsx: no known format in its name; name the file by its format"):
        load(tmp_path / "train.xlsx")
    with pytest.raises(Refusal, match=r"no task data at .*absent.parquet; .* point task.train / task.validation at"):
        load(tmp_path / "absent.parquet")
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    with pytest.raises(Refusal, match=r"list.jsonl:1: a JSON list, not an object; one JSON object per line"):
        load(tmp_path / "list.jsonl")


def test_instructions_take_alpacas_prompts_with_or_without_input(
        tmp_path: Path, tokenizer: spm.SentencePieceProcessor) -> None:
    alpaca = spec("alpaca")
    assert (alpaca.prompt_template, alpaca.prompt_template_no_input) == (ALPACA_WITH_INPUT, ALPACA_NO_INPUT)
    records = [{"instruction": "Give the headline.", "input": "Oil prices fell today.", "output": "OIL FALLS"},
               {"instruction": "Name a colour.", "input": "", "output": "Blue"},  # Alpaca's own way: empty input
               {"instruction": "Name a fruit.", "output": "Apple"}]  # no input key at all
    examples = load_examples(alpaca, write_task_file(tmp_path / "alpaca_data.json", records), tokenizer.encode,
                             None, tokenizer.eos_id(), 256)
    prompts = [ALPACA_WITH_INPUT.format(instruction="Give the headline.", input="Oil prices fell today."),
               ALPACA_NO_INPUT.format(instruction="Name a colour."), ALPACA_NO_INPUT.format(instruction="Name a fruit.")]
    for example, prompt, record in zip(examples, prompts, records, strict=True):
        assert example.rows == [[*tokenizer.encode(prompt), *tokenizer.encode(record["output"]), tokenizer.eos_id()]]
        assert example.loss_start == len(tokenizer.encode(prompt)) - 1
    # the same record without an input key, read from JSONL (no datasets filling it with null)
    missing = encode_example(alpaca, records[2], tokenizer.encode, None, tokenizer.eos_id(), 256, "x")
    assert missing == examples[2]
    # a task yaml setting one template but not the other is refused; setting both replaces Alpaca's
    assert spec("reuters_headlines").prompt_template.startswith("### Instruction:")
    half = {"name": "x", "type": "instruction", "prompt_template": "Q: {instruction} {input}\nA: ",
            "fields": {"instruction": "instruction", "response": "output"}}
    with pytest.raises(Refusal, match=r"task.prompt_template_no_input is missing for instruction task x"):
        TaskSpec.from_cfg(OmegaConf.create(half))


def test_validation_reports_the_baseline_accuracy_must_beat(tokenizer: spm.SentencePieceProcessor) -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=1000, block_size=32, n_layer=1, n_head=2, n_embd=32))
    add_tokens(gpt, 3)
    labels = [0, 1, 1, 1, 0, 1, 1]  # 5 of 7 in the larger class
    examples = [Example([[1000, 5 + i, 6, 1002]], label) for i, label in enumerate(labels)]
    results = validate(TaskModel(gpt, "classification", 2, dropout=0.0), spec("imdb"), examples, 3, 0, 0.5, 0, 1)
    assert results["val/majority_baseline"] == pytest.approx(5 / 7) and 0 <= results["val/accuracy"] <= 1
    choices = [Example([[1000, 5, 1001, 6 + k, 1002] for k in range(4)], i % 4) for i in range(5)]
    results = validate(TaskModel(gpt, "multiple_choice", 1, dropout=0.0), spec("next_sentence"), choices, 2, 0,
                       0.5, 0, 1)
    assert results["val/chance_baseline"] == 0.25 and "val/majority_baseline" not in results


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
    if task == "next_sentence":
        assert final["val/chance_baseline"] == 0.25  # one of four answers
    exported = load_pretrained(tmp_path / "run")
    assert exported.config.vocab_size == 1003
    head = load_file(tmp_path / "run" / "checkpoints" / "step00000003" / "model" / HEAD_FILE)
    assert head["weight"].shape == (head_width, exported.config.n_embd)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def imdb_shaped(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> list[str]:
    """IMDb's layout and format (Parquet; `text`, `label` 0/1) holding the Reuters sets (acq 0, crude 1): overrides
    pointing task=imdb at them."""
    folder = tmp_path_factory.mktemp("imdb")
    for split, name in (("train", "train"), ("validation", "test")):
        records = [{"text": r["text"], "label": int(r["label"] == "crude")}
                   for r in read_jsonl(data_root / "tasks" / "reuters" / f"{split}.jsonl")]
        write_task_file(folder / f"{name}.parquet", records)
    return [f"task.train={folder / 'train.parquet'}", f"task.validation={folder / 'test.parquet'}"]


@pytest.fixture(scope="module")
def imdb_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path, pretrained: Path,
             imdb_shaped: list[str]) -> Path:
    """Three uninterrupted fp32 steps on IMDb-shaped Parquet, with GPT-1's head dropout (so the RNG matters)."""
    run_dir = tmp_path_factory.mktemp("imdb_run") / "run"
    finetune(run_dir, data_root, pretrained, "imdb", "precision=fp32", *imdb_shaped)
    return run_dir


@pytest.mark.slow
def test_fine_tuning_resumes_exactly_dropout_included(tmp_path: Path, data_root: Path, pretrained: Path,
                                                      imdb_shaped: list[str], imdb_run: Path) -> None:
    split = tmp_path / "split"
    with pytest.raises(AssertionError, match="exited"):  # each rank exits 75: checkpoint written, requeue me
        finetune(split, data_root, pretrained, "imdb", "precision=fp32", "train.stop_at_step=1", *imdb_shaped)
    resumed = finetune(split, data_root, pretrained, "imdb", "precision=fp32", *imdb_shaped)
    whole = read_jsonl(imdb_run / "metrics.jsonl")
    assert [r["step"] for r in resumed if "train/loss" in r] == [1, 2, 3]
    for name in ("train/loss", "train/task_loss"):
        expected = {r["step"]: r[name] for r in whole if name in r}
        assert {r["step"]: r[name] for r in resumed if name in r} == pytest.approx(expected, rel=1e-6, abs=0)


@pytest.mark.slow
def test_classification_metric_matches_the_exported_model(pretrained: Path, imdb_shaped: list[str], imdb_run: Path,
                                                          tokenizer: spm.SentencePieceProcessor) -> None:
    records = read_jsonl(imdb_run / "metrics.jsonl")
    logged = next(r for r in records if "val/accuracy" in r)
    model_dir = imdb_run / "checkpoints" / "step00000003" / "model"
    info = json.loads((model_dir / TASK_FILE).read_text())
    assert info["special_tokens"] == {"start": 1000, "delim": 1001, "extract": 1002}
    gpt = load_pretrained(model_dir)
    original = load_pretrained(pretrained)
    assert not torch.equal(gpt.blocks[0].mlp.fc.weight, original.blocks[0].mlp.fc.weight)  # it trained
    model = TaskModel(gpt, "classification", 2, dropout=0.0)
    model.head.load_state_dict(load_file(model_dir / HEAD_FILE))
    validation = Path(imdb_shaped[1].removeprefix("task.validation="))
    val_set = load_examples(spec("imdb"), validation, tokenizer.encode, SpecialTokens(**info["special_tokens"]),
                            tokenizer.eos_id(), gpt.config.block_size)
    recomputed = validate(model, spec("imdb"), val_set, 4, tokenizer.eos_id(), 0.5, 0, 1)
    assert recomputed["val/accuracy"] == logged["val/accuracy"]
    assert recomputed["val/loss"] == pytest.approx(logged["val/loss"], rel=1e-4)
    labels = pq.read_table(validation)["label"].to_pylist()
    assert logged["val/majority_baseline"] == max(labels.count(0), labels.count(1)) / len(labels) > 0.5


def alpaca_shaped(folder: Path, data_root: Path) -> list[str]:
    """Alpaca's layout and format (one JSON array; `instruction`, `input`, `output`) holding the Reuters headline
    sets, a third with the article as input, a third with an empty input and a third with none (the article then
    in the instruction): overrides pointing task=alpaca at them."""
    for split in ("train", "validation"):
        records = []
        for k, r in enumerate(read_jsonl(data_root / "tasks" / "reuters_headlines" / f"{split}.jsonl")):
            with_input = {"instruction": r["instruction"], "input": r["input"], "output": r["response"]}
            inline = {"instruction": f"{r['instruction']} {r['input']}", "output": r["response"]}
            records.append([with_input, {**inline, "input": ""}, inline][k % 3])
        write_task_file(folder / f"{split}.json", records)
    return [f"task.train={folder / 'train.json'}", f"task.validation={folder / 'validation.json'}"]


@pytest.mark.slow
def test_instruction_tuned_model_follows_the_template_in_generate(tmp_path: Path, data_root: Path,
                                                                  pretrained: Path) -> None:
    records = finetune(tmp_path / "run", data_root, pretrained, "alpaca", *alpaca_shaped(tmp_path, data_root))
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3]
    assert next(r for r in records if "val/loss" in r)["val/ppl"] > 1
    model, tokenizer, _ = load_model_and_tokenizer(tmp_path / "run")
    assert model.config.vocab_size == 1000  # the template is plain text: no tokens added
    info = json.loads((tmp_path / "run/checkpoints/step00000003/model" / TASK_FILE).read_text())
    assert (info["prompt_template"], info["prompt_template_no_input"]) == (ALPACA_WITH_INPUT, ALPACA_NO_INPUT)
    prompt = tokenizer.encode(info["prompt_template"].format(instruction="Write a headline for this news article.",
                                                             input="Oil prices fell sharply today."))
    out = generate(model, torch.tensor([prompt]), 8, temperature=0.0)
    assert out.shape[1] > len(prompt)
