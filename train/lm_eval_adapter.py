"""EleutherAI's lm-evaluation-harness over this project's GPT: `python -m train.evaluate harness=lm_eval`
and `eval.harness=lm_eval` in pretraining.

`GPTForLMEval` is lm-eval's model interface (`lm_eval.api.model.LM`) over a GPT, or the DeepSpeed engine
holding one, and its tokenizer. It scores requests with the project's own scorer (train/multiple_choice.py:
`encode_pair` and `score_continuations` follow lm-eval's conventions), so `harness=lm_eval` and the
built-in harness give the same numbers on the same set, and lm-eval's `hf` model gives the same
log-likelihoods on an exported model (tests/test_lm_eval.py).

Under ZeRO-3 every forward gathers the partitioned parameters from all ranks, so every rank must run
the same number of forwards. The adapter tells lm-eval its rank and world size, so lm-eval gives each
rank its share of the documents and gathers the metrics to rank 0 (through `all_gather` and
`gather_object` below); the adapter then runs as many forwards on every rank as the busiest rank needs
(ranks with less to do repeat a one-token forward), and `lm_eval_metrics` hands rank 0's metrics to all
ranks. Sharing out the work, rather than scoring everything on every rank, keeps an evaluation's cost
per rank falling with the number of ranks, as the built-in harness's does.

lm-eval is an optional dependency (the `eval` extra, `pip install -e .[eval]`): only this module
imports it, and only `harness=lm_eval` imports this module.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from model.tokenizer import TextTokenizer
from train.metrics import Progress
from train.multiple_choice import FewShot, encode_pair, model_device, score_continuations

try:
    from lm_eval import simple_evaluate
    from lm_eval.api.instance import Instance
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager
except ImportError:
    raise ValueError("harness=lm_eval needs EleutherAI's lm-evaluation-harness: pip install -e .[eval]") from None

# the project's task YAMLs for lm-eval (the sample sets of `python -m train.build_task_sets`)
PROJECT_TASKS = Path(__file__).resolve().parents[1] / "conf" / "lm_eval_tasks"
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HF model's default for generate_until


class GPTForLMEval(LM):
    """lm-eval's model interface over `model` (a GPT or a DeepSpeed engine holding one) and its tokenizer.

    `batch_size`: loglikelihood requests scored per forward. `rank`/`world_size`: this process's place
    among the ranks that run the evaluation together (see the module docstring). `eos_before_context`:
    every context starts with EOS, as with lm-eval's HF model's `add_bos_token=True` on GPT-2's tokenizer.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: TextTokenizer, batch_size: int = 16,
                 rank: int = 0, world_size: int = 1, eos_before_context: bool = False) -> None:
        super().__init__()
        self.model, self.module = model, getattr(model, "module", model)
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.eos_before_context = eos_before_context
        self._rank, self._world_size = rank, world_size
        self._device = model_device(self.module)
        self.block_size: int = self.module.config.block_size

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tokenizer.encode, context, continuation, self.tokenizer.eos_id,
                             self.eos_before_context) for context, continuation in (request.args for request in requests)]
        return self._score(pairs, "loglikelihood")

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        """Each string's log-likelihood after EOS, in windows of block_size tokens that predict each token
        once with as much context as fits (lm-eval's rolling windows)."""
        windows: list[tuple[int, tuple[list[int], list[int]]]] = []
        for number, (text,) in enumerate(request.args for request in requests):
            sequence = [self._eos_id("loglikelihood_rolling"), *self.tokenizer.encode(text)]
            # tokens sequence[start + 1 : end + 1] are predicted from sequence[first : end]
            for start in range(0, len(sequence) - 1, self.block_size):
                end = min(start + self.block_size, len(sequence) - 1)
                first = max(0, end - self.block_size)
                windows.append((number, (sequence[first: start + 1], sequence[start + 1: end + 1])))
        totals = [0.0] * len(requests)
        for (number, _), (logprob, _) in zip(windows, self._score([w for _, w in windows], "rolling"), strict=True):
            totals[number] += logprob
        return totals

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy continuations, cut at the first stop string (EOS's text among them), as lm-eval's HF
        model makes them: at most `max_gen_toks` tokens after a context left-cut to leave room for them."""
        eos_text = self.tokenizer.decode([self.tokenizer.eos_id]) if self.tokenizer.eos_id is not None else None
        rounds = self._most_on_any_rank(len(requests))
        outputs = []
        progress = Progress("lm-eval generate_until, requests", len(requests), self.rank == 0)
        for number in range(rounds):
            if number >= len(requests):
                self._generate_in_step([], [], 0)
                continue
            context, options = requests[number].args
            stops, max_tokens = self._generation_options(options, eos_text)
            first = [self._eos_id("eos_before_context")] if self.eos_before_context else []
            context_ids = (first + self.tokenizer.encode(context))[-(self.block_size - max_tokens):]
            outputs.append(self._generate_in_step(context_ids, stops, max_tokens))
            progress.update(number + 1)
        return outputs

    def _generation_options(self, options: dict[str, Any], eos_text: str | None) -> tuple[list[str], int]:
        """(stop strings, most new tokens) of a request's generation kwargs; refuses sampling."""
        if options.get("do_sample") or float(options.get("temperature") or 0.0) > 0.0:
            raise ValueError(f"an lm-eval task asks for sampled generation ({options}); this adapter decodes "
                             "greedily: set do_sample: false in the task's generation_kwargs")
        until = options.get("until") or []
        stops = [until] if isinstance(until, str) else list(until)
        if eos_text and eos_text not in stops:
            stops.append(eos_text)
        max_tokens = int(options.get("max_gen_toks") or options.get("max_new_tokens") or DEFAULT_MAX_GEN_TOKS)
        if not 0 < max_tokens < self.block_size:
            raise ValueError(f"an lm-eval task asks for max_gen_toks={max_tokens}; this model's block holds "
                             f"{self.block_size} tokens, context included")
        return stops, max_tokens

    @torch.no_grad()
    def _generate_in_step(self, context_ids: list[int], stops: list[str], max_tokens: int) -> str:
        """Greedy decoding of one context with a KV cache; every rank steps until the last rank is done,
        a rank with nothing (left) to do running a one-token forward per step."""
        new_ids: list[int] = []
        cache = self.module.new_kv_cache(1, len(context_ids) + max_tokens) if context_ids else None
        step_input = context_ids
        text, done = "", not context_ids
        while True:
            if done:  # the same call path as decoding: hidden states, then logits
                self.module.logits(self.module.hidden_states(torch.zeros(1, 1, dtype=torch.long, device=self.device)))
            else:
                hidden = self.module.hidden_states(torch.tensor([step_input], device=self.device), cache)
                next_id = int(self.module.logits(hidden[:, -1]).argmax(-1))
                new_ids.append(next_id)
                text = self.tokenizer.decode(new_ids)
                done = (next_id == self.tokenizer.eos_id or len(new_ids) == max_tokens
                        or any(stop and stop in text for stop in stops))
                step_input = [next_id]
            if self._most_on_any_rank(int(not done)) == 0:
                break
        for stop in stops:
            if stop:
                text = text.split(stop)[0]
        return text

    def _score(self, pairs: Sequence[tuple[list[int], list[int]]], what: str) -> list[tuple[float, bool]]:
        """Scores of token pairs, longest first in forwards of `batch_size` rows."""
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        batches = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        scores: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        progress = Progress(f"lm-eval {what}, requests", len(pairs), self.rank == 0)
        for number in range(self._most_on_any_rank(len(batches))):
            if number >= len(batches):
                self._idle_forward()
                continue
            batch = batches[number]
            for i, score in zip(batch, score_continuations(self.model, [pairs[i] for i in batch], self.block_size,
                                                           self.device), strict=True):
                scores[i] = score
            progress.update(min((number + 1) * self.batch_size, len(pairs)))
        return scores

    def _idle_forward(self) -> None:
        """A one-token forward: under ZeRO-3 a rank takes part in every forward another rank runs."""
        self.model(torch.zeros(1, 1, dtype=torch.long, device=self.device))

    def _most_on_any_rank(self, count: int) -> int:
        if self.world_size == 1:
            return count
        value = torch.tensor(count, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value)

    def _eos_id(self, what: str) -> int:
        if self.tokenizer.eos_id is None:
            raise ValueError(f"lm-eval's {what} starts from the EOS token, and this tokenizer has none")
        return self.tokenizer.eos_id

    # lm-eval's evaluator shares documents out and gathers metrics through these when world_size > 1.
    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        parts = [torch.zeros_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor)
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        if self.world_size == 1:
            return [obj]
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, obj)
        return parts if self.rank == dst else None

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


@functools.cache
def task_manager(task_names: tuple[str, ...], include_dirs: tuple[str, ...]) -> TaskManager:
    """lm-eval's task index over the project's YAMLs and `include_dirs`, and over lm-eval's own tasks only
    when a name is not found there (indexing lm-eval's thousands of YAMLs takes tens of seconds); kept for
    the evaluations of a training run that follow."""
    dirs = [str(PROJECT_TASKS)]
    for folder in include_dirs:
        if not Path(folder).is_dir():
            raise ValueError(f"lm_eval_include: {folder} is not a folder of lm-eval task YAMLs")
        dirs.append(str(Path(folder).resolve()))
    manager = TaskManager(include_path=dirs, include_defaults=False)
    if set(task_names) <= set(manager.all_tasks):
        return manager
    manager = TaskManager(include_path=dirs)
    unknown = sorted(set(task_names) - set(manager.all_tasks))
    if unknown:
        raise ValueError(f"lm-eval task(s) {', '.join(unknown)} not found in {', '.join(dirs)} or lm-eval's own "
                         "tasks; put a task YAML in a folder and add it to lm_eval_include")
    return manager


def _metric_names(task: str, results: dict[str, Any], samples: list[dict[str, Any]], output_type: str | None
                  ) -> dict[str, float]:
    """lm-eval's `<metric>,<filter>` values as `eval/<task>/<metric>` (filter `none`) or
    `eval/<task>/<metric>_<filter>`, plus `chance` for multiple choice."""
    named = {}
    for key, value in results.items():
        if "," not in key or not isinstance(value, int | float):
            continue
        metric, filter_name = key.split(",", 1)
        named[f"eval/{task}/{metric}" + ("" if filter_name == "none" else f"_{filter_name}")] = float(value)
    if output_type == "multiple_choice" and samples:
        # one loglikelihood request per choice, twice as many with acc_mutual_info's unconditional ones
        choices = [len(s["arguments"]) // (2 if "acc_mutual_info" in s["metrics"] else 1) for s in samples]
        named[f"eval/{task}/chance"] = sum(1 / n for n in choices) / len(choices)
    return named


def lm_eval_metrics(model: torch.nn.Module, tokenizer: TextTokenizer, task_names: Sequence[str],
                    include_dirs: Sequence[str], fewshot: FewShot, batch_size: int, rank: int = 0,
                    world_size: int = 1, eos_before_context: bool = False) -> dict[str, float]:
    """`eval/<task>/<metric>` of lm-eval's tasks, the same on every rank (collective across ranks).

    `fewshot.shots` and `fewshot.seed` become lm-eval's num_fewshot and fewshot_random_seed; a task's YAML
    sets its own separator (`fewshot_delimiter`) and the split shots are drawn from (`fewshot_split`).
    lm-eval's global seeding is left off, so an evaluation inside training leaves the training RNGs alone.
    """
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    manager = task_manager(tuple(task_names), tuple(include_dirs))
    lm = GPTForLMEval(model, tokenizer, batch_size, rank, world_size, eos_before_context)
    was_training = lm.module.training
    lm.model.eval()
    try:
        output = simple_evaluate(model=lm, tasks=list(task_names), num_fewshot=fewshot.shots,
                                 fewshot_random_seed=fewshot.seed, task_manager=manager, random_seed=None,
                                 numpy_random_seed=None, torch_random_seed=None, log_samples=True)
    except FileNotFoundError as missing:
        raise ValueError(f"{str(missing).splitlines()[0]}: a task YAML's data files are read relative to the "
                         "directory the command runs in; the project's tasks read data/tasks/ "
                         "(python -m train.build_task_sets)") from None
    finally:
        lm.model.train(was_training)
    metrics: dict[str, float] = {}
    if output is not None:  # rank 0
        for task, values in output["results"].items():
            output_type = output["configs"].get(task, {}).get("output_type")
            metrics.update(_metric_names(task, values, output.get("samples", {}).get(task, []), output_type))
    if world_size > 1:
        shared = [metrics]
        dist.broadcast_object_list(shared, src=0)
        metrics = shared[0]
    return metrics
