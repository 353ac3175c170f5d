"""`sbatch slurm/pretrain.sh` on the real local cluster: completion, preemption + requeue, hard kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.commands import REPO
from tests.slurm_jobs import SMALL, job_field, job_log, submit, wait_for, wait_until
from tests.train_fixtures import make_data_root

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Path:
    return make_data_root(tmp_path_factory.mktemp("data"), sample_corpus, seq_len=64)


def sbatch_pretrain(run_dir: Path, data_root: Path, *overrides: str) -> str:
    return submit(REPO / "slurm" / "pretrain.sh", f"run_dir={run_dir}", f"paths.data_root={data_root}", *SMALL,
                  *overrides, sbatch_options=(f"--output={run_dir.parent}/%x-%j.out",), cwd=REPO)


def train_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if "train/loss" in line]


def wandb_ids(run_dir: Path) -> set[str]:
    return {p.name.rsplit("-", 1)[-1] for p in (run_dir / "wandb").glob("offline-run-*")}


def test_pretrain_runs_to_completion_with_two_ranks(tmp_path: Path, data_root: Path) -> None:
    run_dir = tmp_path / "run"
    job = sbatch_pretrain(run_dir, data_root, "train.max_steps=4")
    state = wait_for(job, timeout_s=600)
    assert state == "COMPLETED", job_log(run_dir)[-3000:]
    assert train_steps(run_dir) == [1, 2, 3, 4]
    trainer_state = json.loads((run_dir / "checkpoints" / "step00000004" / "trainer_state.json").read_text())
    assert trainer_state["world_size"] == 2
    assert "training exited with status 0" in job_log(run_dir)


def test_preempted_job_checkpoints_requeues_and_resumes_without_gap(tmp_path: Path, data_root: Path) -> None:
    run_dir = tmp_path / "run"
    job = sbatch_pretrain(run_dir, data_root, "train.max_steps=40", "checkpoint.every=1000")
    wait_until(lambda: len(train_steps(run_dir)) >= 4, 300, "a few training steps")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    wait_until(lambda: job_field(job, "Restarts") == "1", 300, "the job to requeue itself")
    # Slurm holds a requeued job back until the first run's credential expires (AuthInfo=cred_expire in
    # slurm/local-cluster.sh); starting it earlier gets it killed ("Job credential revoked").
    wait_until(lambda: "resumed from" in job_log(run_dir), 600, "the requeued job to resume")
    state = wait_for(job, timeout_s=600)
    log = job_log(run_dir)
    assert state == "COMPLETED", log[-3000:]
    assert "got SIGUSR1" in log and "requeueing job" in log and "resumed from" in log
    assert train_steps(run_dir) == list(range(1, 41)), "no step done twice or skipped across the requeue"
    assert len(wandb_ids(run_dir)) == 1, "the requeued job continues the same wandb run"
    assert not (run_dir / "REQUEUE").exists()


def _rank_pids(run_dir: Path) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"^[^ ]*python[^ ]* -m train run_dir={run_dir} "], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_hard_killed_rank_then_resubmit_continues_from_last_checkpoint(tmp_path: Path, data_root: Path) -> None:
    run_dir = tmp_path / "run"
    job = sbatch_pretrain(run_dir, data_root, "train.max_steps=30", "checkpoint.every=5")
    wait_until(lambda: (run_dir / "checkpoints" / "step00000005" / "trainer_state.json").exists(), 300,
               "the step-5 checkpoint")
    wait_until(lambda: max(train_steps(run_dir), default=0) >= 7, 300, "training past the checkpoint")
    pids = _rank_pids(run_dir)
    assert len(pids) == 2, f"expected two ranks, found {pids}"
    subprocess.run(["kill", "-9", str(pids[-1])], check=True)
    assert wait_for(job, timeout_s=300) in {"FAILED", "CANCELLED"}
    newest = (run_dir / "checkpoints" / "latest").read_text().strip()
    resubmitted = sbatch_pretrain(run_dir, data_root, "train.max_steps=30", "checkpoint.every=5")
    assert wait_for(resubmitted, timeout_s=600) == "COMPLETED", job_log(run_dir)[-3000:]
    assert f"resumed from {run_dir}/checkpoints/{newest}" in job_log(run_dir)
    steps = train_steps(run_dir)
    assert steps[-1] == 30 and sorted(set(steps)) == list(range(1, 31))


def test_kill_during_checkpoint_write_falls_back_to_previous_checkpoint(tmp_path: Path, data_root: Path) -> None:
    # A wider model makes each checkpoint take long enough to be caught half-written.
    run_dir = tmp_path / "run"
    wide = ["model.n_layer=4", "model.n_embd=512", "model.n_head=8", "train.max_steps=12", "checkpoint.every=3",
            "checkpoint.keep_last=10"]
    job = sbatch_pretrain(run_dir, data_root, *wide)
    checkpoints = run_dir / "checkpoints"
    wait_until(lambda: (checkpoints / "step00000003" / "trainer_state.json").exists(), 600, "the first checkpoint")
    pids = _rank_pids(run_dir)
    assert len(pids) == 2, f"expected two ranks, found {pids}"
    wait_until(lambda: (checkpoints / "step00000006.tmp").exists(), 300, "the second checkpoint to start",
               poll_s=0.005)
    for pid in pids:  # straight from here: a round trip through slurmctld would let the write finish
        os.kill(pid, signal.SIGKILL)
    wait_for(job, timeout_s=300)
    assert (checkpoints / "latest").read_text().strip() == "step00000003"
    assert not (checkpoints / "step00000006" / "trainer_state.json").exists()
    resubmitted = sbatch_pretrain(run_dir, data_root, *wide)
    assert wait_for(resubmitted, timeout_s=900) == "COMPLETED", job_log(run_dir)[-3000:]
    assert f"resumed from {checkpoints}/step00000003" in job_log(run_dir)
    assert max(train_steps(run_dir)) == 12
