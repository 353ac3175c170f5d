"""`sbatch slurm/curate.sh` on the real local cluster: the submitted stages finish, a rerun skips them."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.commands import REPO
from tests.curation_fixtures import read_docs
from tests.slurm_jobs import submit, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _jobs_named(prefix: str) -> list[str]:
    queue = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in queue.splitlines() if line.split()[1].startswith(prefix)]


def _submit_curation(tmp_path: Path, sample_corpus: Path, data_root: Path, name: str) -> str:
    job = submit(REPO / "slurm" / "curate.sh", f"paths.data_root={data_root}", f"paths.raw_root={sample_corpus}",
                 "only=[webtext2]", "executor.job_name_prefix=" + name,
                 sbatch_options=(f"--output={tmp_path}/{name}-%j.out", f"--job-name={name}-submit"), cwd=REPO)
    assert wait_for(job, timeout_s=300) == "COMPLETED", next(tmp_path.glob(f"{name}-*.out")).read_text()[-3000:]
    return next(tmp_path.glob(f"{name}-{job}.out")).read_text()


def test_curate_sh_runs_the_stages_and_a_rerun_skips_them(tmp_path: Path, sample_corpus: Path) -> None:
    data_root = tmp_path / "data"
    _submit_curation(tmp_path, sample_corpus, data_root, "cur1")
    report = data_root / "report" / "curation.md"
    deadline = time.monotonic() + 900
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(2)
    assert report.exists(), f"the submitted stages did not produce {report}"
    assert read_docs(data_root / "curated" / "webtext2")
    while _jobs_named("cur1") and time.monotonic() < deadline:
        time.sleep(1)
    report_written = report.stat().st_mtime_ns

    rerun_log = _submit_curation(tmp_path, sample_corpus, data_root, "cur2")
    # the submitting job has ended, so every job it would queue is queued by now
    stages = re.findall(r"curation stage (\S+): slurm job (\S+)", rerun_log)
    assert stages and all(job == "-1" for _, job in stages), f"a rerun of completed work queued jobs:\n{rerun_log[-2000:]}"
    assert not _jobs_named("cur2"), f"a rerun of completed work queued jobs:\n{rerun_log[-2000:]}"
    assert report.stat().st_mtime_ns == report_written
