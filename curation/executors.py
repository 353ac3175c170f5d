"""One pipeline definition, two executors: stages run locally in order, or as Slurm array jobs.

A stage is a datatrove pipeline with a task count, a logging folder (completions make a rerun
skip finished tasks) and the stages it waits for. `executor=local` runs the stages one after
the other with LocalPipelineExecutor; `executor=slurm` submits each with SlurmPipelineExecutor,
its Slurm dependency on every stage it waits for (`afterok:<id>:<id>...`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger
from omegaconf import DictConfig

from data_contract import DataLayout


@dataclass
class Stage:
    name: str
    pipeline: list[PipelineStep]
    tasks: int
    logging_dir: Path
    after: tuple[str, ...] = field(default_factory=tuple)


def layout_of(cfg: DictConfig) -> DataLayout:
    """Absolute paths, so Slurm tasks started elsewhere find the same files."""
    return DataLayout(Path(cfg.paths.data_root).resolve())


def default_venv_activate() -> str:
    return str(Path(sys.prefix) / "bin" / "activate")


def run_stages(stages: list[Stage], executor: DictConfig) -> None:
    """Run (local) or submit (slurm) `stages`, which are listed after the stages they wait for."""
    if executor.kind == "local":
        for stage in stages:
            logger.info(f"curation stage {stage.name}: {stage.tasks} task(s)")
            LocalPipelineExecutor(
                stage.pipeline, tasks=stage.tasks, workers=min(executor.workers, stage.tasks),
                logging_dir=str(stage.logging_dir),
            ).run()
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
