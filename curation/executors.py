"""One pipeline definition, two executors: stages run locally in order, or as Slurm array jobs.

A stage is a datatrove pipeline with a task count, a logging folder (completions make a rerun
skip finished tasks) and the stages it waits for. `executor=local` runs the stages one after
the other with LocalPipelineExecutor; `executor=slurm` submits each with SlurmPipelineExecutor,
its Slurm dependency on every stage it waits for (`afterok:<id>:<id>...`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger
from omegaconf import DictConfig

from curation.steps.accounting import IN_DOCS, OUT_DOCS, task_stats
from data_contract.layout import DataLayout


@dataclass
class Stage:
    name: str
    pipeline: list[PipelineStep]
    tasks: int
    logging_dir: Path
    after: tuple[str, ...] = field(default_factory=tuple)


@contextmanager
def console_to(path: Path, unless: bool) -> Iterator[None]:
    """datatrove's task logs and stats tables go to `path` (they are also in the stage's logs/ and stats/):
    the console keeps one line per stage. On a failure the log's tail is shown."""
    if unless:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            _restore(saved)
            tail = path.read_text(errors="replace").splitlines()[-15:]
            print("\n".join(tail), file=sys.stderr)
            raise
        _restore(saved)


def _restore(saved: tuple[int, int]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    for target, fd in zip((1, 2), saved, strict=True):
        os.dup2(fd, target)
        os.close(fd)


def stage_line(stage: Stage, seconds: float, done_before: bool) -> str:
    """`stage: documents in -> out (elapsed)`, from the stats its tasks saved."""
    if done_before:
        return f"{stage.name}: already complete (skipped)"
    stats = list(task_stats(stage.logging_dir).values())
    docs_in = next((int(s[IN_DOCS]) for s in stats if IN_DOCS in s), None)
    docs_out = next((int(s[OUT_DOCS]) for s in reversed(stats) if OUT_DOCS in s), None)
    counts = f"{docs_in:,} -> {docs_out:,} documents" if docs_in is not None and docs_out is not None else "done"
    return f"{stage.name}: {counts} ({seconds:.1f} s)"


def layout_of(cfg: DictConfig) -> DataLayout:
    """Absolute paths, so Slurm tasks started elsewhere find the same files."""
    return DataLayout(Path(cfg.paths.data_root).resolve())


def default_venv_activate() -> str:
    return str(Path(sys.prefix) / "bin" / "activate")


def run_stages(stages: list[Stage], executor: DictConfig) -> None:
    """Run (local) or submit (slurm) `stages`, which are listed after the stages they wait for."""
    if executor.kind == "local":
        for stage in stages:
            started = time.monotonic()
            local = LocalPipelineExecutor(stage.pipeline, tasks=stage.tasks,
                                          workers=min(executor.workers, stage.tasks),
                                          logging_dir=str(stage.logging_dir))
            done_before = not local.get_incomplete_ranks()
            with console_to(stage.logging_dir / "console.log", unless=executor.get("verbose", False)):
                local.run()
            print(stage_line(stage, time.monotonic() - started, done_before), flush=True)
        return
    if executor.kind != "slurm":
        raise SystemExit(f"executor.kind={executor.kind} is unknown; use executor=local or executor=slurm")
    job_ids: dict[str, str | None] = {}
    for stage in stages:
        waits_on = [job_ids[name] for name in stage.after if job_ids.get(name) not in (None, -1, "-1")]
        slurm = SlurmPipelineExecutor(
            stage.pipeline, tasks=stage.tasks, time=executor.time, partition=executor.partition,
            cpus_per_task=executor.cpus_per_task, mem_per_cpu_gb=executor.mem_per_cpu_gb, qos=executor.qos,
            venv_path=executor.venv_path or default_venv_activate(),
            job_name=f"{executor.job_name_prefix}-{stage.name}", logging_dir=str(stage.logging_dir),
            depends_job_id=":".join(map(str, waits_on)) or None, sbatch_args=dict(executor.sbatch_args),
        )
        slurm.run()
        job_ids[stage.name] = slurm.job_id
        logger.info(f"curation stage {stage.name}: slurm job {slurm.job_id}")
