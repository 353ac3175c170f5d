"""`gptpipe <command> [key=value ...]`: every entry point of the pipeline under one name, as litgpt has.

Each command is the project's `python -m <module>` (which keeps working), started in this process's
place, so launchers, signals and exit codes behave exactly as with the module. `gptpipe --help` lists
the commands; `gptpipe <command> --help` shows that command's config groups and settings with their
defaults and the descriptions written beside them in conf/ or in the command's settings dataclasses
(train/settings.py), with the choices of each setting that has a few.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parent / "conf"


@dataclass(frozen=True)
class Command:
    module: str
    summary: str
    config: str | None = None  # conf/<config>.yaml; None: a structured config of the module (`config_class`)
    config_class: str | None = None


COMMANDS: dict[str, Command] = {
    "curate": Command("curation.run", "every curation stage: filter, dedup, quality, report, tokenizer, token files, "
                      "mixture plan", "curate"),
    "filter": Command("curation.filter", "read, extract and filter each source", "curate"),
    "dedup": Command("curation.dedup", "exact and MinHash deduplication across sources", "curate"),
    "quality": Command("curation.quality", "the GPT-3-style quality classifier and resampling", "curate"),
    "report": Command("curation.report", "what each step removed, and the curated totals", "curate"),
    "train_tokenizer": Command("curation.train_tokenizer", "train the sentencepiece tokenizer", "curate"),
    "tokenize": Command("curation.tokenize", "token files per source", "curate"),
    "mix": Command("curation.mix", "the mixture plan: GPT-3-style weights and epochs", "curate"),
    "sample_data": Command("curation.sample_data", "fetch the sample corpus", "sample_data"),
    "assets": Command("curation.assets", "fetch the language-ID model and GPT-2's tokenizer files", "assets"),
    "train": Command("train", "pretrain a GPT with DeepSpeed ZeRO-3", "pretrain"),
    "plan": Command("train.plan", "memory per GPU, checkpoint cost and step time of a run, before it is launched "
                    "(cluster.nodes, cluster.gpus_per_node, cluster.gpu_memory_gb, ...)", "pretrain"),
    "prebuild": Command("train.prebuild", "compile a CPU run's kernels ahead of its launch "
                        "(--ranks-per-node N, then the run's train settings)", "pretrain"),
    "finetune": Command("train.finetune", "GPT-1-style fine-tuning and instruction tuning", "finetune"),
    "evaluate": Command("train.evaluate", "zero- and few-shot tasks on a saved model (built-in or lm-eval)", "evaluate"),
    "build_task_sets": Command("train.build_task_sets", "the sample fine-tuning and zero-shot sets", "build_task_sets"),
    "summary": Command("train.summary", "what a run learned, in a few lines", "summary"),
    "generate": Command("model.generate", "sample text from a saved model", config_class="GenerateCommand"),
    "convert": Command("model.convert", "convert between the project's saved model and HF GPT-2",
                       config_class="ConvertCommand"),
}
_KEY_COMMENT = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_]\w*)\s*:[^#]*?(?:#\s*(?P<comment>.*))?$")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(overview())
        return
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        sys.exit(f"gptpipe: no command {name!r}; `gptpipe --help` lists them")
    command = COMMANDS[name]
    if rest[:1] in (["-h"], ["--help"]):
        print(settings_help(name, command))
        return
    os.execv(sys.executable, [sys.executable, "-m", command.module, *rest])


def overview() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: gptpipe <command> [key=value ...]    (gptpipe <command> --help: its settings)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {command.summary}  (python -m {command.module})" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def yaml_descriptions(path: Path, prefix: str = "") -> dict[str, str]:
    """`dotted.key: comment` for each key of a YAML file with a comment beside it (or on the lines above)."""
    descriptions: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    above: list[str] = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        match = _KEY_COMMENT.match(line)
        if not match or stripped.startswith("-"):
            above = []
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([*(k for _, k in stack), match["key"]])
        stack.append((indent, match["key"]))
        text = match["comment"] or (" ".join(above) if indent else "")
        if text:
            descriptions[prefix + key] = text
        above = []
    return descriptions


def settings_help(name: str, command: Command) -> str:
    """The command's groups (with their options) and settings (with defaults and descriptions)."""
    from omegaconf import OmegaConf

    lines = [f"gptpipe {name}: {command.summary}  (python -m {command.module})", ""]
    if command.config is None:
        config_class = getattr(importlib.import_module(command.module), command.config_class or "")
        values = {k: v for k, v in OmegaConf.to_container(OmegaConf.structured(config_class)).items()
                  if k not in ("defaults", "hydra")}
        source = inspect.getsource(config_class)
        descriptions = {m["key"]: m["comment"] for m in map(_KEY_COMMENT.match, source.splitlines())
                        if m and m["comment"]}
    else:
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose(config_name=command.config, return_hydra_config=True)
        choices = {group: choice for group, choice in cfg.hydra.runtime.choices.items()
                   if not group.startswith("hydra") and choice}
        descriptions = yaml_descriptions(CONF_DIR / f"{command.config}.yaml")
        if choices:
            lines.append("config groups (group=option; the default first):")
            for group, choice in sorted(choices.items()):
                options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if p.stem != choice)
                lines.append(f"  {group}: {', '.join([choice, *options])}")
                descriptions.update(yaml_descriptions(CONF_DIR / group / f"{choice}.yaml", f"{group}."))
            lines.append("")
        values = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
        if command.config in ("pretrain", "finetune"):  # typed settings: defaults and choices from their dataclasses
            from train.settings import SCHEMAS
            from train.typed_settings import described_fields, with_defaults

            values = with_defaults(values, SCHEMAS[command.config])
            descriptions = {**described_fields(SCHEMAS[command.config]), **descriptions}
    lines.append("settings (key=value):")
    for key, value in _leaves(values):
        description = descriptions.get(key, "")
        lines.append(f"  {key}={value}" + (f"    # {description}" if description else ""))
    return "\n".join(lines)


def _leaves(values: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(values, dict) and values:
        return [leaf for key, value in values.items() for leaf in _leaves(value, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), values)]


if __name__ == "__main__":
    main()
