"""The lm-evaluation-harness adapter (train/lm_eval_adapter.py) against lm-eval's own `hf` model, on a GPT-2
exported with GPT-2's released tokenizer: the same log-likelihood for every request (loglikelihood, rolling,
generation), the same task accuracy, and the built-in scorer's numbers equal to both; few-shot prompts
built as lm-eval builds them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import transformers
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from curation.assets import ensure_gpt2_bpe
from data_contract.tokenizer_files import BPE_MERGES, BPE_VOCAB
from model.load import load_model_and_tokenizer
from tests.lm_eval_fixtures import lm_eval_task
from train.finetune.task_sets import heldout_wikipedia, next_sentence_items, write_jsonl
from train.lm_eval_adapter import GPTForLMEval
from train.multiple_choice import FewShot, load_items, prompt, zero_shot_metrics

BLOCK = 64  # short, so that long contexts are cut from the left on both sides
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer GPT-2 saved as Hugging Face saves one, with GPT-2's real tokenizer. Weights drawn wider
    than GPT-2's init so that the answers' log-likelihoods differ by content, not only by length."""
    bpe = ensure_gpt2_bpe()
    vocab = json.loads((bpe / BPE_VOCAB).read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in (bpe / BPE_MERGES).read_text(encoding="utf-8").splitlines()[1:] if line]
    tokenizer = transformers.GPT2TokenizerFast(vocab=vocab, merges=merges)
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=BLOCK, vocab_size=len(vocab),
                                     initializer_range=0.5)
    out = tmp_path_factory.mktemp("gpt2")
    transformers.GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def next_sentence_set(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Path:
    """Next-sentence items of held-out Wikipedia articles: contexts from a few tokens to past the block."""
    path = tmp_path_factory.mktemp("sets") / "parity" / "test.jsonl"
    write_jsonl(path, next_sentence_items(heldout_wikipedia(sample_corpus, 10), random.Random(0))[:12])
    return path


def test_adapter_and_lm_eval_hf_model_agree(exported_gpt2: Path, next_sentence_set: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs no faster on two, and the test machine is shared
    try:
        # float64 on both sides: what is left of a difference is the adapter's, not float32 rounding
        gpt, tokenizer, _ = load_model_and_tokenizer(exported_gpt2, dtype=torch.float64)
        ours = GPTForLMEval(gpt, tokenizer, batch_size=8)
        theirs = HFLM(pretrained=str(exported_gpt2), device="cpu", batch_size=8, dtype="float64")
        include = lm_eval_task(tmp_path / "tasks", "parity_next_sentence", {"test": next_sentence_set})
        manager = TaskManager(include_path=str(include), include_defaults=False)
        runs = [simple_evaluate(model=lm, tasks=["parity_next_sentence"], num_fewshot=0, task_manager=manager,
                                log_samples=True) for lm in (ours, theirs)]
        samples = [sorted(run["samples"]["parity_next_sentence"], key=lambda s: s["doc_id"]) for run in runs]
        requests = [[(args, resp[0]) for s in run for args, resp in zip(s["arguments"], s["resps"], strict=True)]
                    for run in samples]
        assert len(requests[0]) == 12 * 4 and [a for a, _ in requests[0]] == [a for a, _ in requests[1]]
        assert max(len(tokenizer.encode(context + answer)) for (context, answer), _ in requests[0]) > BLOCK + 1
        differences = [abs(a[0] - b[0]) for (_, a), (_, b) in zip(*requests, strict=True)]
        assert max(differences) < TOLERANCE, max(differences)
        assert [a[1] for _, a in requests[0]] == [b[1] for _, b in requests[1]]  # is_greedy
        # EOS before every context: lm-eval's add_bos_token=True, for models that start documents after EOS
        first = [Instance("loglikelihood", {}, tuple(args), i) for i, (args, _) in enumerate(requests[0][:12])]
        eos_first = HFLM(pretrained=str(exported_gpt2), device="cpu", batch_size=8, dtype="float64", add_bos_token=True)
        scored = [GPTForLMEval(gpt, tokenizer, 8, eos_before_context=True).loglikelihood(first),
                  eos_first.loglikelihood(first)]
        assert max(abs(a[0] - b[0]) for a, b in zip(*scored, strict=True)) < TOLERANCE
        assert max(abs(a[0] - b[1][0]) for a, b in zip(scored[0], requests[0][:12], strict=True)) > 1  # EOS counts
        results = [run["results"]["parity_next_sentence"] for run in runs]
        for metric in ("acc,none", "acc_norm,none"):
            assert results[0][metric] == results[1][metric]
        # the built-in scorer follows lm-eval's conventions: the same accuracies, and the chance baseline
        builtin = zero_shot_metrics(gpt, [str(next_sentence_set)], tokenizer.encode, tokenizer.eos_id, 0, 1)
        assert builtin["eval/parity/acc"] == results[1]["acc,none"] and builtin["eval/parity/chance"] == 0.25
        assert builtin["eval/parity/acc_norm"] == results[1]["acc_norm,none"]

        text = " ".join(json.loads(line)["context"] for line in next_sentence_set.read_text().splitlines()[:6])
        assert len(tokenizer.encode(text)) > 3 * BLOCK  # several rolling windows
        rolling = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate([text, "A short one."])]
        scored = [ours.loglikelihood_rolling(rolling), theirs.loglikelihood_rolling(rolling)]
        assert max(abs(a - b) for a, b in zip(*scored, strict=True)) < TOLERANCE, scored

        options = {"until": ["."], "max_gen_toks": 12, "do_sample": False}
        contexts = [text[:150], "The capital of France is", text[-400:]]
        generation = [Instance("generate_until", {}, (c, dict(options)), i) for i, c in enumerate(contexts)]
        generated = [ours.generate_until(generation), theirs.generate_until(generation)]
        assert generated[0] == generated[1] and any(generated[0]), generated
    finally:
        torch.set_num_threads(threads)


def test_fewshot_prompt_is_the_one_lm_eval_builds(next_sentence_set: Path, tmp_path: Path) -> None:
    items = load_items(next_sentence_set)
    train, test = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    train.write_text("".join(line + "\n" for line in next_sentence_set.read_text().splitlines()[:8]))
    test.write_text("".join(line + "\n" for line in next_sentence_set.read_text().splitlines()[8:]))
    include = lm_eval_task(tmp_path / "tasks", "fewshot_format", {"train": train, "validation": test},
                           template="next_sentence")
    (include / "fewshot_format.yaml").write_text((include / "fewshot_format.yaml").read_text()
                                                 + "fewshot_config:\n  sampler: first_n\n")  # the first k train items
    task = TaskManager(include_path=str(include), include_defaults=False).load(["fewshot_format"])["tasks"]["fewshot_format"]
    doc = task.validation_docs()[0]
    assert task.fewshot_context(doc, num_fewshot=3) == prompt(items[8], items[:3], FewShot().separator)
