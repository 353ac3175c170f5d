"""Fine-tuning examples: records of any file `datasets` reads, through the field names of a `conf/task/*.yaml`,
laid out as GPT-1 does.

Radford et al. 2018 (GPT-1), section 3.3: every task becomes token sequences the pretrained model
can read, with a start token <s>, a delimiter $ and an extract token <e> added to the vocabulary;
the head reads the final hidden state at <e>.

    classification   <s> text <e>                      one row
    entailment       <s> premise $ hypothesis <e>      one row
    similarity       <s> a $ b <e>, <s> b $ a <e>      two rows, hidden states added
    multiple_choice  <s> context $ answer_i <e>        one row per answer, scores soft-maxed
    instruction      template(instruction, input) response EOS   loss on the response only

A task yaml names the fields for each role (`fields.text: text` for IMDb, `fields.premise: sentence1`
for SNLI), so a user's data needs no conversion; a role may list several fields, which are joined with
a space (RACE: `context: [article, question]`). A task file is JSONL (read here, so a bad line is named
by its number) or anything else `datasets` reads from a local file, chosen by suffix: Parquet as the
hub ships IMDb, Alpaca's single JSON array, CSV, TSV, Arrow, compressed JSON/CSV; records are then
named by their 1-based position.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data_contract.refusal import Refusal

IGNORE = -100
KINDS = ("classification", "entailment", "similarity", "multiple_choice", "instruction")
ROLES = {
    "classification": ("text", "label"),
    "entailment": ("premise", "hypothesis", "label"),
    "similarity": ("a", "b", "score"),
    "multiple_choice": ("context", "choices", "label"),
    "instruction": ("instruction", "input", "response"),
}
# Roles a record may leave out (missing, null or empty): an instruction without input takes the no-input template.
OPTIONAL_ROLES = {"instruction": ("input",)}
# Stanford Alpaca's prompts, as its README gives them (https://github.com/tatsu-lab/stanford_alpaca, "Data
# Release"; its train.py leaves out the newline after "### Response:"): the templates of an instruction task
# whose yaml sets none.
ALPACA_PROMPT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                 "Write a response that appropriately completes the request.\n\n"
                 "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_PROMPT_NO_INPUT = ("Below is an instruction that describes a task. "
                          "Write a response that appropriately completes the request.\n\n"
                          "### Instruction:\n{instruction}\n\n### Response:\n")
# `datasets` loaders of a task file by suffix (after a compression suffix datasets undoes); keyword arguments.
DATASETS_FORMATS: dict[str, tuple[str, dict[str, str]]] = {
    ".jsonl": ("json", {}), ".json": ("json", {}), ".parquet": ("parquet", {}), ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}), ".arrow": ("arrow", {}),
}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of GPT-1's start, delimiter and extract tokens, added to the vocabulary by model.resize."""

    start: int
    delim: int
    extract: int


@dataclass(frozen=True)
class Example:
    """Token rows of one example: the target is a class or answer index, a score, or unused (instruction)."""

    rows: list[list[int]]
    target: float
    loss_start: int = 0  # instruction: first row position whose next token is scored


@dataclass(frozen=True)
class Batch:
    """Examples collated for one forward: every row right-padded to the longest."""

    idx: torch.Tensor  # (examples x rows, time) token ids, right-padded
    extract: torch.Tensor  # (examples x rows,) position of <e> in each row
    lm_targets: torch.Tensor  # (examples x rows, time) next token, IGNORE on padding and prompts
    targets: torch.Tensor  # (examples,) class/answer index or score
    rows_per_example: int

    def to(self, device: torch.device) -> Batch:
        """The batch on `device` (from pinned host memory without waiting, where there is some)."""
        return Batch(*(t.to(device, non_blocking=True) for t in (self.idx, self.extract, self.lm_targets,
                                                                  self.targets)), self.rows_per_example)


@dataclass(frozen=True)
class TaskSpec:
    """A `conf/task/*.yaml`, checked: its kind, the record fields of each role, its labels and prompt templates."""

    name: str
    kind: str
    fields: dict[str, list[str]]
    labels: list[str] | None
    prompt_template: str
    prompt_template_no_input: str

    @classmethod
    def from_cfg(cls, task: Any) -> TaskSpec:
        """The task's settings (TaskSettings, or a mapping such as a task's YAML) as a checked spec."""
        def setting(key: str) -> Any:  # only the keys read are resolved (a task's YAML holds interpolations)
            return task.get(key) if isinstance(task, Mapping) else getattr(task, key, None)

        name, kind = setting("name"), setting("type")
        if kind not in KINDS:
            raise Refusal(f"task.type={kind!r} is not one of {', '.join(KINDS)}")
        fields = {}
        for role in ROLES[kind]:
            names = setting("fields").get(role) if setting("fields") else None
            if names is None and role in OPTIONAL_ROLES.get(kind, ()):
                names = []
            if names is None:
                raise Refusal(f"task.fields.{role} is missing: name the record field that holds the {role} "
                                f"of a {kind} example (task {name})")
            fields[role] = [names] if isinstance(names, str) else list(names)
        labels = [str(label) for label in setting("labels")] if setting("labels") else None
        if kind in ("classification", "entailment") and not labels:
            raise Refusal(f"task.labels is missing for {kind} task {name}: list the label values, "
                            "e.g. labels: [entailment, neutral, contradiction]")
        template = setting("prompt_template") or ""
        template_no_input = setting("prompt_template_no_input") or ""
        if kind == "instruction":
            if bool(template) != bool(template_no_input):
                unset = "prompt_template_no_input" if template else "prompt_template"
                raise Refusal(f"task.{unset} is missing for instruction task {name}: set both templates, "
                              "or neither for Alpaca's")
            template, template_no_input = template or ALPACA_PROMPT, template_no_input or ALPACA_PROMPT_NO_INPUT
        return cls(name, kind, fields, labels, template, template_no_input)

    @property
    def needs_special_tokens(self) -> bool:
        return self.kind != "instruction"

    @property
    def num_outputs(self) -> int:
        """Width of the linear head: one logit per class; one score per row for similarity and choices."""
        if self.kind in ("classification", "entailment"):
            assert self.labels is not None
            return len(self.labels)
        return 0 if self.kind == "instruction" else 1


def read_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) of every example in a task file: `file:line` for JSONL, `file:record N` for any
    other format, read by `datasets` from the local file (no hub involved); or a one-line refusal."""
    if not path.is_file():
        raise Refusal(f"no task data at {path}; build the sample tasks with `python -m train.build_task_sets` or "
                      "point task.train / task.validation at your file (JSONL, JSON, Parquet, CSV, ...)")
    if path.suffix == ".jsonl":
        records = [(f"{path}:{line_no}", record) for line_no, record in _read_jsonl(path)]
    else:
        records = [(f"{path}:record {n}", record) for n, record in enumerate(_read_with_datasets(path), 1)]
    if not records:
        raise Refusal(f"{path} holds no examples")
    return records


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of every non-blank line, or a refusal naming the file and line."""
    records = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as bad:
            raise Refusal(f"{path}:{line_no}: not JSON ({bad.msg}); one JSON object per line") from None
        if not isinstance(record, dict):
            raise Refusal(f"{path}:{line_no}: a JSON {type(record).__name__}, not an object; one JSON object per line")
        records.append((line_no, record))
    return records


def _read_with_datasets(path: Path) -> list[dict[str, Any]]:
    """Every record of a file `datasets` reads, by the loader its suffix names. Its Arrow copy goes to a
    temporary cache: the examples are held in memory for the run anyway, each rank converts its own (no
    lock between ranks), and no copy of the user's data stays behind in ~/.cache."""
    import datasets
    from datasets.exceptions import DatasetsError
    from pyarrow import ArrowException

    uncompressed = Path(path.stem) if path.suffix in COMPRESSION_SUFFIXES else path
    loader, options = DATASETS_FORMATS.get(uncompressed.suffix, (None, {}))
    if loader is None:
        raise Refusal(f"{path}: no known format in its name; name the file by its format ("
                      f"{', '.join(DATASETS_FORMATS)}, optionally compressed: {', '.join(COMPRESSION_SUFFIXES)})")
    with tempfile.TemporaryDirectory(prefix="task-data-") as cache:
        try:
            table = datasets.load_dataset(loader, data_files=str(path), split="train", cache_dir=cache,
                                          keep_in_memory=True, **options)
        except (DatasetsError, ArrowException, ValueError, OSError) as bad:
            cause: BaseException = bad
            while cause.__cause__ is not None:
                cause = cause.__cause__
            reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            raise Refusal(f"{path}: `datasets` cannot read it as {loader} ({reason}); check the file, or rename it "
                          "for its real format") from None
        return list(table)


def _role(spec: TaskSpec, record: dict[str, Any], role: str, where: str) -> Any:
    """A role's value: its one field, or its fields joined with a space; a missing or null field is refused,
    except in an optional role, which is then empty."""
    names = spec.fields[role]
    present = [name for name in names if record.get(name) is not None]
    if len(present) < len(names) and role not in OPTIONAL_ROLES.get(spec.kind, ()):
        missing = next(name for name in names if name not in present)
        problem = f"field {missing!r} is null" if missing in record else f"no field {missing!r}"
        raise Refusal(f"{where}: {problem} (task.fields.{role}); fields present: "
                      f"{', '.join(k for k, v in record.items() if v is not None)}")
    values = [record[name] for name in present]
    return values[0] if len(values) == 1 else " ".join(str(v) for v in values)


def _label_index(spec: TaskSpec, value: Any, where: str, count: int | None = None) -> int:
    if spec.labels is not None:
        if str(value) not in spec.labels:
            raise Refusal(f"{where}: label {value!r} is not in task.labels {spec.labels}")
        return spec.labels.index(str(value))
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise Refusal(f"{where}: label {value!r} must be an answer index (or set task.labels to map it)")
    if count is not None and not 0 <= int(value) < count:
        raise Refusal(f"{where}: label {value} is out of range for {count} choices")
    return int(value)


def _fit(first: list[int], second: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Cut the longer segment first (down to half the budget) until both fit; a first segment followed
    by a second keeps its end (the context nearest the answer), anything else keeps its start."""
    if len(first) + len(second) <= budget:
        return first, second
    keep_second = min(len(second), max(budget // 2, budget - len(first)))
    keep_first = budget - keep_second
    return (first[len(first) - keep_first:] if second else first[:keep_first]), second[:keep_second]


def encode_example(spec: TaskSpec, record: dict[str, Any], encode: Callable[[str], list[int]],
                   special: SpecialTokens | None, eos_id: int | None, max_len: int, where: str) -> Example:
    """One record -> the token rows of its layout, cut to `max_len` tokens per row."""
    if spec.kind == "instruction":
        instruction, given, response = (str(_role(spec, record, r, where)) for r in ROLES["instruction"])
        template = spec.prompt_template if given.strip() else spec.prompt_template_no_input
        prompt = encode(template.format(instruction=instruction, input=given))
        answer = [*encode(response), *([eos_id] if eos_id is not None else [])]
        prompt, answer = _fit(prompt, answer, max_len)
        return Example([prompt + answer], 0.0, loss_start=max(len(prompt) - 1, 0))
    assert special is not None
    s, d, e = special.start, special.delim, special.extract
    if spec.kind == "classification":
        text, _ = _fit(encode(str(_role(spec, record, "text", where))), [], max_len - 2)
        return Example([[s, *text, e]], _label_index(spec, _role(spec, record, "label", where), where))
    if spec.kind == "entailment":
        premise, hypothesis = _fit(encode(str(_role(spec, record, "premise", where))),
                                   encode(str(_role(spec, record, "hypothesis", where))), max_len - 3)
        return Example([[s, *premise, d, *hypothesis, e]],
                       _label_index(spec, _role(spec, record, "label", where), where))
    if spec.kind == "similarity":
        a, b = (encode(str(_role(spec, record, r, where))) for r in ("a", "b"))
        a, b = _fit(a, b, max_len - 3)
        score = _role(spec, record, "score", where)
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise Refusal(f"{where}: score {score!r} must be a number")
        return Example([[s, *a, d, *b, e], [s, *b, d, *a, e]], float(score))
    choices = _role(spec, record, "choices", where)
    if not isinstance(choices, list) or len(choices) < 2:
        raise Refusal(f"{where}: {spec.fields['choices'][0]!r} must be a list of at least two answers")
    context = encode(str(_role(spec, record, "context", where)))
    rows = []
    for choice in choices:
        kept_context, answer = _fit(context, encode(str(choice)), max_len - 3)
        rows.append([s, *kept_context, d, *answer, e])
    return Example(rows, _label_index(spec, _role(spec, record, "label", where), where, len(choices)))


def load_examples(spec: TaskSpec, path: Path, encode: Callable[[str], list[int]],
                  special: SpecialTokens | None, eos_id: int | None, max_len: int) -> list[Example]:
    """Every example of a task file, laid out for the model."""
    examples = [encode_example(spec, record, encode, special, eos_id, max_len, where)
                for where, record in read_records(path)]
    widths = {len(example.rows) for example in examples}
    if len(widths) > 1:
        raise Refusal(f"{path}: examples have {sorted(widths)} choices; every example of a task needs the same "
                        "number (batches stack them)")
    return examples


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    """Right-pad every row to the longest; LM targets skip padding and, for instructions, the prompt."""
    rows = [row for example in examples for row in example.rows]
    starts = [example.loss_start for example in examples for _ in example.rows]
    length = max(len(row) for row in rows)
    idx = torch.full((len(rows), length), pad_id, dtype=torch.long)
    lm_targets = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        tokens = torch.tensor(row, dtype=torch.long)
        idx[i, : len(row)] = tokens
        lm_targets[i, start : len(row) - 1] = tokens[start + 1 :]
    extract = torch.tensor([len(row) - 1 for row in rows], dtype=torch.long)
    targets = torch.tensor([example.target for example in examples], dtype=torch.float32)
    return Batch(idx, extract, lm_targets, targets, len(examples[0].rows))
