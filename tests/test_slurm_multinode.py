"""Two nodes for real: `sbatch --nodes=2 slurm/pretrain.sh` on a local cluster of two nodes.

`slurm/local-cluster.sh up --nodes 2` makes each node a network namespace with its own hostname,
/dev/shm and address, so the ranks of one job meet over an address, as between machines. This module
brings the two nodes up and puts the one-node cluster back when it is done.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.commands import REPO, require, run_module
from tests.curation_fixtures import read_docs
from tests.slurm_jobs import SMALL, job_field, job_log, submit, wait_for, wait_until
from tests.train_fixtures import make_data_root

TWO_NODES = ("--nodes=2", "--ntasks-per-node=1")
CLUSTER = REPO / "slurm" / "local-cluster.sh"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def two_nodes() -> Iterator[None]:
    require(os.geteuid() == 0, "a two-node local cluster needs root (network namespaces)")
    result = subprocess.run([str(CLUSTER), "up", "--nodes", "2"], capture_output=True, text=True)
    require(result.returncode == 0, f"no two-node local cluster: {result.stdout[-1000:]}{result.stderr[-1000:]}")
    yield
    subprocess.run([str(CLUSTER), "up", "--nodes", "1"], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Path:
    return make_data_root(tmp_path_factory.mktemp("data"), sample_corpus, seq_len=64)


def sbatch_pretrain(run_dir: Path, data_root: Path, layout: tuple[str, ...], *overrides: str) -> str:
    return submit(REPO / "slurm" / "pretrain.sh", f"run_dir={run_dir}", f"paths.data_root={data_root}", *SMALL,
                  *overrides, sbatch_options=(*layout, f"--output={run_dir.parent}/%x-%j.out"), cwd=REPO)


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_two_nodes_train_as_one_node_does_and_share_memory_only_within_a_node(tmp_path: Path,
                                                                              data_root: Path) -> None:
    across, within = tmp_path / "across" / "run", tmp_path / "within" / "run"
    for run_dir in (across, within):
        run_dir.parent.mkdir(parents=True)
    jobs = [sbatch_pretrain(across, data_root, TWO_NODES, "train.max_steps=4"),
            sbatch_pretrain(within, data_root, ("--nodes=1", "--ntasks-per-node=2"), "train.max_steps=4")]
    for job, run_dir in zip(jobs, (across, within), strict=True):
        assert wait_for(job, timeout_s=600) == "COMPLETED", job_log(run_dir)[-3000:]
    assert "ranks: 0@node1, 1@node2; collectives: gloo" in job_log(across)
    assert "collectives: shared memory" in job_log(within), "the kernel serves ranks of one node"
    expected, measured = losses(within), losses(across)
    assert sorted(measured) == [1, 2, 3, 4]
    for step, loss in expected.items():
        assert measured[step] == pytest.approx(loss, rel=1e-6, abs=0)


def test_preemption_across_nodes_requeues_and_resumes_into_one_run(tmp_path: Path, data_root: Path) -> None:
    run_dir = tmp_path / "run"
    job = sbatch_pretrain(run_dir, data_root, TWO_NODES, "train.max_steps=12", "checkpoint.every=1000")
    wait_until(lambda: (run_dir / "metrics.jsonl").is_file() and len(losses(run_dir)) >= 3, 300, "a few steps")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    wait_until(lambda: job_field(job, "Restarts") == "1", 300, "the job to requeue itself")
    wait_until(lambda: "resumed from" in job_log(run_dir), 600, "the requeued job to resume")
    state = wait_for(job, timeout_s=600)
    log = job_log(run_dir)
    assert state == "COMPLETED", log[-3000:]
    assert log.count("ranks: 0@node1, 1@node2") == 2, "both runs of the job span both nodes"
    assert sorted(losses(run_dir)) == list(range(1, 13))
    assert len({p.name.rsplit("-", 1)[-1] for p in (run_dir / "wandb").glob("offline-run-*")}) == 1


def _rank_on(node: str, run_dir: Path) -> int:
    found = subprocess.run(["pgrep", "-f", "--", f"-m train run_dir={run_dir} "], capture_output=True, text=True)
    for pid in map(int, found.stdout.split()):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"SLURMD_NODENAME={node}".encode() in environ:
            return pid
    raise AssertionError(f"no rank of {run_dir} on {node}")


def test_a_killed_rank_on_the_second_node_ends_the_job_and_one_node_continues(tmp_path: Path,
                                                                              data_root: Path) -> None:
    run_dir = tmp_path / "run"
    job = sbatch_pretrain(run_dir, data_root, TWO_NODES, "train.max_steps=20", "checkpoint.every=5")
    wait_until(lambda: (run_dir / "checkpoints" / "step00000005" / "trainer_state.json").is_file(), 300,
               "the step-5 checkpoint")
    os.kill(_rank_on("node2", run_dir), signal.SIGKILL)
    assert wait_for(job, timeout_s=120) in {"FAILED", "CANCELLED"}, "the job ends instead of hanging"
    # resubmitted as one rank on one node: the two-rank checkpoint goes through the universal format
    resubmitted = sbatch_pretrain(run_dir, data_root, ("--nodes=1", "--ntasks-per-node=1"), "train.max_steps=20",
                                  "checkpoint.every=5")
    assert wait_for(resubmitted, timeout_s=600) == "COMPLETED", job_log(run_dir)[-3000:]
    log = job_log(run_dir)
    assert "resumed from" in log and "to DeepSpeed's universal format" in log
    assert not (run_dir / "checkpoints" / "universal").exists(), "the converted copy goes with the next save"
    assert sorted(losses(run_dir)) == list(range(1, 21)), "steps continue once, without a gap"


def _nodes_of_jobs_named(prefix: str) -> set[str]:
    """Nodes of every job (array tasks included) whose name starts with `prefix`, finished ones too
    (slurmctld keeps them for MinJobAge)."""
    shown = subprocess.run(["scontrol", "show", "job", "--oneliner"], capture_output=True, text=True).stdout
    nodes = set()
    for line in shown.splitlines():
        name, node_list = re.search(r"\bJobName=(\S+)", line), re.search(r"\bNodeList=(\S+)", line)
        if name and node_list and name.group(1).startswith(prefix) and node_list.group(1) != "(null)":
            hosts = subprocess.run(["scontrol", "show", "hostnames", node_list.group(1)], capture_output=True,
                                   text=True).stdout
            nodes.update(hosts.split())
    return nodes


def test_curation_array_tasks_spread_over_both_nodes_and_match_the_local_executor(tmp_path: Path,
                                                                                  sample_corpus: Path) -> None:
    # A task that needs a whole node's CPUs makes Slurm place concurrent tasks on both nodes.
    common = [f"paths.raw_root={sample_corpus}", "only=[webtext2]", "sources.webtext2.tasks=4"]
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    cpus = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    job = submit(REPO / "slurm" / "curate.sh", f"paths.data_root={on_slurm}", *common, "executor.job_name_prefix=mn",
                 f"executor.cpus_per_task={cpus}", sbatch_options=(f"--output={tmp_path}/submit-%j.out",), cwd=REPO)
    assert wait_for(job, timeout_s=300) == "COMPLETED"
    report = on_slurm / "report" / "curation.md"
    wait_until(report.exists, 900, f"the submitted stages to write {report}")
    assert {"node1", "node2"} <= _nodes_of_jobs_named("mn"), "the array tasks ran on both nodes"
    run_module("curation.run", f"paths.data_root={local}", *common, check=True)
    curated = [read_docs(root / "curated" / "webtext2") for root in (on_slurm, local)]
    assert curated[0] and sorted(curated[0], key=lambda d: d["id"]) == sorted(curated[1], key=lambda d: d["id"])
