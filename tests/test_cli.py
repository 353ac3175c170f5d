"""`gptpipe`: one command line over every entry point, with each command's settings described."""

from __future__ import annotations

import sys
from pathlib import Path

from gptpipe import COMMANDS
from tests.commands import run_command

GPTPIPE = str(Path(sys.executable).parent / "gptpipe")  # the console script `make setup` installs


def test_help_lists_every_command() -> None:
    result = run_command([GPTPIPE, "--help"], check=True)
    for name, command in COMMANDS.items():
        assert f"  {name} " in result.stdout and f"(python -m {command.module})" in result.stdout


def test_a_commands_help_shows_its_groups_and_described_settings() -> None:
    train = run_command([GPTPIPE, "train", "--help"], check=True).stdout
    assert "  model: tiny, gpt2-124m," in train and "  mixture: demo, gpt3" in train
    assert "train.resume=auto    # auto: newest verified checkpoint in run_dir" in train
    assert "train.micro_batch_size=8    # per rank, per forward" in train
    assert "task:" not in train, "only the groups the command uses"
    finetune = run_command([GPTPIPE, "finetune", "--help"], check=True).stdout
    assert "  task: reuters," in finetune and "model:" not in finetune
    generate = run_command([GPTPIPE, "generate", "--help"], check=True).stdout
    assert "checkpoint=None    # required: run dir, checkpoint dir, saved-model dir, or HF GPT-2 dir" in generate


def test_a_command_runs_as_its_module_does() -> None:
    result = run_command([GPTPIPE, "train", "train.max_steps=abc"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("train: train.max_steps='abc'")
    unknown = run_command([GPTPIPE, "trian"])
    assert unknown.returncode == 1 and "no command 'trian'" in unknown.stderr
