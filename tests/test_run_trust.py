"""Runs you can trust: damaged checkpoints, resumes of another run, one trainer per run_dir, sweeps, hangs.

Each test starts the real trainer (`python -m train`, DeepSpeed ZeRO-3 on CPU) on the small real data
of tests/train_fixtures.py, as a user would, and reads back what it left in the run dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.commands import command_env, require, run_command
from tests.train_fixtures import SMALL_MODEL, launch, losses, make_data_root, read_metrics, wandb_ids
from train.checkpointing.checkpointer import newest_verified
from train.checkpointing.layout import complete_checkpoints, step_of

QUIET = ["eval.every=0", "eval.sample_every=0", "precision=fp32", "checkpoint.every=2"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Path:
    return make_data_root(tmp_path_factory.mktemp("data"), sample_corpus, seq_len=64)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """A run of 8 steps stopped after step 4, with checkpoints at steps 2 and 4."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    result = launch(1, run_dir, data_root, "train.max_steps=8", "train.stop_at_step=4", *QUIET, launcher="python",
                    check=False)
    assert result.returncode == 75, result.stderr[-2000:]
    return run_dir


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one `train: ...` line of a refused command, which stopped before DeepSpeed started."""
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("train: ")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "deepspeed" not in (result.stdout + result.stderr).lower(), "refused only after DeepSpeed started"
    return lines[0]


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.n_head=4"], "(model.n_head 2 -> 4); to continue with them deliberately add "
                         "train.accept_changes=[model.n_head]"),
    (["train.global_batch_size=16"], "(train.global_batch_size 8 -> 16); to continue with them deliberately add "
                                     "train.accept_changes=[train.global_batch_size]"),
    (["model.n_embd=128"], "(model.n_embd 64 -> 128); model.n_embd changes the weights' shapes"),
    (["model.n_embd=128", "train.accept_changes=[model.n_embd]"], "model.n_embd changes the weights' shapes"),
    (["train.resume=autp"], "train.resume=autp is not auto, never or a checkpoint folder"),
    (["train.resume=never"], "train.resume=never but run_dir="),
])
def test_a_resume_of_another_run_is_refused_in_one_line(stopped_run: Path, data_root: Path,
                                                        overrides: list[str], message: str) -> None:
    before = sorted(p.name for p in (stopped_run / "checkpoints").iterdir())
    line = refusal(launch(1, stopped_run, data_root, "train.max_steps=8", *QUIET, *overrides, launcher="python",
                          check=False))
    assert message in line
    assert sorted(p.name for p in (stopped_run / "checkpoints").iterdir()) == before


@pytest.mark.slow
def test_damaged_checkpoints_are_skipped_and_metrics_read_as_one_run(stopped_run: Path, data_root: Path,
                                                                     tmp_path: Path) -> None:
    run_dir = copy_of(stopped_run, tmp_path)
    checkpoints = run_dir / "checkpoints"
    shard = next((checkpoints / "step00000004").glob("*optim_states.pt"))
    with open(shard, "r+b") as f:  # the newest checkpoint's optimizer shard cut short
        f.truncate(shard.stat().st_size // 2)
    state = checkpoints / "step00000002" / "trainer_state.json"
    state.write_text(state.read_text()[:100])  # and the older one's state file too
    # The job resumed from step 2 would be fine; with both damaged it starts over, and says why.
    result = launch(1, run_dir, data_root, "train.max_steps=8", *QUIET, "checkpoint.keep_last=2",
                    launcher="python")
    log = result.stdout + result.stderr
    assert f"checkpoint {checkpoints / 'step00000004'} is damaged ({shard.name} is" in log
    assert f"checkpoint {checkpoints / 'step00000002'} is damaged (trainer_state.json is not readable)" in log
    assert "resumed from" not in log
    assert [p.name for p in sorted(checkpoints.glob("step*"))] == ["step00000006", "step00000008"]  # rotated
    steps = [r["step"] for r in read_metrics(run_dir) if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8], "steps of the first job are not logged twice"


@pytest.mark.slow
def test_a_fallback_resumes_from_the_newest_verified_checkpoint(stopped_run: Path, data_root: Path,
                                                                tmp_path: Path) -> None:
    run_dir = copy_of(stopped_run, tmp_path)
    model = run_dir / "checkpoints" / "step00000004" / "model" / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed
    model.write_bytes(bytes(data))
    result = launch(1, run_dir, data_root, "train.max_steps=6", *QUIET, launcher="python")
    log = result.stdout + result.stderr
    assert "model/model.safetensors does not match its checksum" in log
    assert f"resumed from {run_dir / 'checkpoints' / 'step00000002'} at step 2" in log
    # the console's step line, and the work between steps announced with its duration
    assert re.search(r"step 6/6 \| loss \d+\.\d{4} \| lr \S+ \| [\d,]+ tok/s \| mfu [\d.]+% \| [\d.]+ s/step \| "
                     r"elapsed \d+:\d\d:\d\d \| eta 0:00:00", log), log[-3000:]
    assert re.search(r"checkpoint \S+step00000006 written in [\d.]+ s", log)
    records = read_metrics(run_dir)
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["train/samples_seen"] for r in records if "train/loss" in r] == [8 * s for s in range(1, 7)]
    assert len(wandb_ids(run_dir)) == 1


@pytest.mark.slow
def test_an_accepted_batch_change_continues_from_the_samples_consumed(stopped_run: Path, data_root: Path,
                                                                     tmp_path: Path) -> None:
    run_dir = copy_of(stopped_run, tmp_path)
    result = launch(1, run_dir, data_root, "train.max_steps=6", *QUIET, "train.global_batch_size=16",
                    "train.accept_changes=[train.global_batch_size]", launcher="python")
    assert "as accepted: train.global_batch_size 8 -> 16" in result.stdout + result.stderr
    samples = [r["train/samples_seen"] for r in read_metrics(run_dir) if "train/loss" in r]
    assert samples == [8, 16, 24, 32, 48, 64], "the plan continues at sample 32: none skipped or repeated"
    state = json.loads((run_dir / "checkpoints" / "step00000006" / "trainer_state.json").read_text())
    assert state["identity"]["train.global_batch_size"] == 16 and state["samples_consumed"] == 64


@pytest.mark.slow
def test_a_checkpoint_path_starts_a_new_run_dir_from_it(stopped_run: Path, data_root: Path, tmp_path: Path) -> None:
    checkpoint = stopped_run / "checkpoints" / "step00000004"
    run_dir = tmp_path / "branch"
    result = launch(1, run_dir, data_root, "train.max_steps=6", *QUIET, f"train.resume={checkpoint}",
                    launcher="python")
    assert f"resumed from {checkpoint} at step 4" in result.stdout + result.stderr
    assert sorted(losses(run_dir)) == [5, 6]
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("step*"))] == ["step00000006"]
    assert not (stopped_run / "checkpoints" / "step00000006").exists()
    assert len(wandb_ids(run_dir)) == 1 and wandb_ids(run_dir) != wandb_ids(stopped_run)


@pytest.mark.slow
def test_never_with_overwrite_replaces_the_earlier_run(stopped_run: Path, data_root: Path, tmp_path: Path) -> None:
    run_dir = copy_of(stopped_run, tmp_path)
    launch(1, run_dir, data_root, "train.max_steps=2", *QUIET, "train.resume=never", "train.overwrite=true",
           launcher="python")
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("step*"))] == ["step00000002"]
    assert sorted(losses(run_dir)) == [1, 2]
    assert len(wandb_ids(run_dir)) == 1


@pytest.mark.slow
def test_one_trainer_per_run_dir_and_a_dead_holders_lock_is_taken_over(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [f"run_dir={run_dir}", f"paths.data_root={data_root}", *SMALL_MODEL, *QUIET, "train.max_steps=1000"]
    first = subprocess.Popen([sys.executable, "-m", "train", *args], env=command_env({"OMP_NUM_THREADS": "1"}),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not complete_checkpoints(run_dir / "checkpoints"):
            assert first.poll() is None and time.monotonic() < deadline, "the first trainer did not get going"
            time.sleep(0.05)
        # Frozen, the holder is alive and keeps its lock however fast this machine would finish the plan.
        os.killpg(first.pid, signal.SIGSTOP)
        assert first.poll() is None, "the first trainer finished its plan before it could be frozen"
        second = run_command([sys.executable, "-m", "train", *args])
        line = refusal(second)
        assert f"run_dir={run_dir} is in use by the trainer" in line and f"pid {first.pid}" in line
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)  # the holder dies without a word
        first.wait()
    newest = step_of(complete_checkpoints(run_dir / "checkpoints")[-1])
    resumed = run_command([sys.executable, "-m", "train", *args[:-1], f"train.max_steps={newest + 2}"], check=True)
    assert f"resumed from {run_dir / 'checkpoints'}" in resumed.stdout + resumed.stderr
    assert sorted(losses(run_dir)) == list(range(1, newest + 3))


@pytest.mark.slow
def test_each_job_of_a_sweep_trains_in_its_own_run_dir(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "sweep"
    run_command([sys.executable, "-m", "train", "--multirun", f"run_dir={run_dir}", f"paths.data_root={data_root}",
                 *SMALL_MODEL, *QUIET, "train.max_steps=2", "optim.lr=1e-3,2e-3"], check=True)
    for lr in ("0.001", "0.002"):
        job = run_dir / f"optim.lr={lr}"
        assert sorted(losses(job)) == [1, 2], f"{job} did not train"
        assert json.loads((job / "checkpoints" / "step00000002" / "trainer_state.json").read_text())["step"] == 2
    assert losses(run_dir / "optim.lr=0.001")[2] != losses(run_dir / "optim.lr=0.002")[2]


@pytest.mark.slow
def test_a_stopped_rank_ends_the_job_within_the_timeout(data_root: Path, tmp_path: Path) -> None:
    """Two ranks started as a launcher would; rank 1 frozen with SIGSTOP after a few steps."""
    run_dir = tmp_path / "run"
    args = [f"run_dir={run_dir}", f"paths.data_root={data_root}", *SMALL_MODEL, *QUIET, "train.max_steps=1000",
            "train.collective_timeout_s=10"]
    port = str(32500 + os.getpid() % 1000)
    logs = [tmp_path / f"rank{rank}.log" for rank in range(2)]
    ranks = [subprocess.Popen([sys.executable, "-m", "train", *args], stdout=subprocess.DEVNULL,
                              stderr=logs[rank].open("w"),
                              env=command_env({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                                               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                               "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}))
             for rank in range(2)]
    try:
        deadline = time.monotonic() + 180
        while len(losses(run_dir) if (run_dir / "metrics.jsonl").is_file() else {}) < 3:
            assert ranks[0].poll() is None and time.monotonic() < deadline, "the run did not get going"
            time.sleep(0.5)
        ranks[1].send_signal(signal.SIGSTOP)
        ranks[0].wait(timeout=120)  # ends on its own: 10 s without progress
    finally:
        for process in ranks:
            process.kill()
            process.wait()
    stderr = logs[0].read_text()
    assert ranks[0].returncode == 75, stderr[-2000:]
    assert "train: rank 0 made no progress for" in stderr and "train.collective_timeout_s=10" in stderr
    assert (run_dir / "REQUEUE").is_file(), "slurm/pretrain.sh requeues the job on the marker"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 5 MB tmpfs: room for one checkpoint of the small model (about 3 MB), not two."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    require(mounted.returncode == 0, f"a small filesystem to fill (mount tmpfs: {mounted.stderr.strip()})")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_disk_that_fills_during_a_save_stops_the_run_in_one_line(small_disk: Path, data_root: Path) -> None:
    run_dir = small_disk / "run"
    result = launch(1, run_dir, data_root, "train.max_steps=6", "checkpoint.every=2", "checkpoint.keep_last=3",
                    "eval.every=0", "eval.sample_every=0", "wandb.enabled=false", launcher="python", check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    refusal = [line for line in result.stderr.splitlines() if line.startswith("train: ")]
    assert len(refusal) == 1 and "not written: the disk of" in refusal[0] and "is full" in refusal[0], refusal
    kept = complete_checkpoints(run_dir / "checkpoints")
    assert kept and f"{kept[-1].name} is kept" in refusal[0]
    assert not list((run_dir / "checkpoints").glob("*.tmp")), "the half-written checkpoint is gone"
    assert newest_verified(kept) is not None and newest_verified(kept)[0] == kept[-1], "the kept one verifies"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == kept[-1].name
