"""lm-eval task YAMLs for tests: copies of the project's own (conf/lm_eval_tasks/) over a test's files."""

from __future__ import annotations

from pathlib import Path

from tests.commands import REPO


def lm_eval_task(folder: Path, name: str, files: dict[str, Path], template: str = "wiki_next_sentence") -> Path:
    """`folder` holding conf/lm_eval_tasks/<template>.yaml as task `name`, each split reading `files[split]`."""
    text = (REPO / "conf" / "lm_eval_tasks" / f"{template}.yaml").read_text()
    for split, path in files.items():
        text = text.replace(f"{split}: data/tasks/", f"{split}: {path}  # was data/tasks/")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(text.replace(f"task: {template}", f"task: {name}"))
    return folder


def lm_eval_rolling_and_generation_tasks(folder: Path, prefix: str, data: Path) -> list[str]:
    """Two lm-eval tasks over a multiple-choice JSONL's contexts: `<prefix>_perplexity` (loglikelihood_rolling:
    as many windows as each context needs) and `<prefix>_continuation` (generate_until a space: greedy
    generations of different lengths). Returns their names."""
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}_perplexity.yaml").write_text(
        f"task: {prefix}_perplexity\n{common}output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: context\nmetric_list:\n  - metric: word_perplexity\n    aggregation: weighted_perplexity\n"
        "    higher_is_better: false\n  - metric: bits_per_byte\n"
        "    aggregation: bits_per_byte\n    higher_is_better: false\n")
    (folder / f"{prefix}_continuation.yaml").write_text(
        f"task: {prefix}_continuation\n{common}output_type: generate_until\ndoc_to_text: context\n"
        "doc_to_target: '{{choices[label]}}'\ngeneration_kwargs:\n  until: [' ']\n  max_gen_toks: 8\n"
        "  do_sample: false\nmetric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    return [f"{prefix}_perplexity", f"{prefix}_continuation"]
