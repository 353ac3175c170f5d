"""The local cluster runs a real 2-rank DeepSpeed ZeRO-3 job through sbatch + srun."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.commands import REPO
from tests.slurm_jobs import submit, wait_for


@pytest.mark.slurm
@pytest.mark.slow
def test_sbatch_srun_runs_two_zero3_ranks(tmp_path: Path) -> None:
    job_script = tmp_path / "job.sh"
    job_script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --nodes=1 --ntasks-per-node=2 --cpus-per-task=1\n"
        f"#SBATCH --output={tmp_path}/slurm-%j.out\n"
        "export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1\n"
        f"cd {REPO}\n"
        f"srun {sys.executable} -m tests.zero3_smoke_job {tmp_path}\n"
    )
    job_id = submit(job_script)
    state = wait_for(job_id, timeout_s=600)
    log = next(tmp_path.glob("slurm-*.out")).read_text()
    assert state == "COMPLETED", f"job {job_id} ended {state}:\n{log[-3000:]}"
    done = [json.loads((tmp_path / f"rank{rank}.done").read_text()) for rank in (0, 1)]
    assert [d["rank"] for d in done] == [0, 1]
    assert all(d["world_size"] == 2 for d in done)
    checkpoint = tmp_path / "checkpoints" / "step4"
    shards = sorted(p.name for p in checkpoint.glob("*optim_states.pt"))
    assert len(shards) == 2, f"expected one ZeRO-3 optimizer shard per rank in {checkpoint}, got {shards}"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step4"
