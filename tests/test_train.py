"""The DeepSpeed ZeRO-3 trainer, run for real: 2 ranks on CPU (gloo), exact resume, refusals."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from tests.commands import run_command, run_module
from tests.train_fixtures import SMALL_MODEL, launch, losses, make_data_root, read_metrics, wandb_ids
from train.checkpointing.checkpointer import newest_verified
from train.checkpointing.layout import complete_checkpoints
from train.cpu_shm_collectives import ranks_share_one_machine
from train.data import val_rounds
from train.spike_guard import LossSpikeGuard, SkipStepAdamW

METRICS = ["train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec", "train/mfu", "train/step_time_s",
           "train/tokens_seen", "val/loss", "val/bpb", "val/ppl", "sys/max_rss_gb"]

@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Path:
    return make_data_root(tmp_path_factory.mktemp("data"), sample_corpus, seq_len=64)


@pytest.mark.parametrize(("environ", "shared"), [
    ({"LOCAL_SIZE": "2"}, True),  # the deepspeed launcher
    ({"LOCAL_WORLD_SIZE": "1"}, False),  # torchrun, one rank on each of two nodes
    ({"SLURM_NTASKS_PER_NODE": "2"}, True),
    ({"SLURM_JOB_NUM_NODES": "1"}, True),  # srun --ntasks=2 on one node
    ({"SLURM_JOB_NUM_NODES": "2"}, False),
    ({}, False),  # nothing says where the other rank is
])
def test_shared_memory_collectives_need_every_rank_on_this_machine(environ: dict[str, str], shared: bool) -> None:
    assert ranks_share_one_machine(2, environ) is shared


def guard(**overrides: float) -> LossSpikeGuard:
    return LossSpikeGuard(**{"enabled": True, "zscore": 3.0, "window": 4, "min_history": 3, "max_consecutive": 2,
                             **overrides})


def test_spike_guard_skips_outliers_and_non_finite_losses_and_asks_for_a_roll_back() -> None:
    spikes = guard()
    verdicts = []
    for loss in (3.0, 3.1, 2.9, 9.0, 3.0, math.nan, math.inf, 3.05):
        spikes.observe(torch.tensor(loss, dtype=torch.float64))
        verdicts.append(spikes.settle())
    # Under min_history nothing is judged; 9.0 is far above the window; two skips in a row ask to roll back.
    assert verdicts == [(False, False), (False, False), (False, False), (True, False), (False, False),
                        (True, False), (True, True), (False, False)]
    state = spikes.state_dict()
    assert state == {"history": [3.1, 2.9, 3.0, 3.05], "consecutive": 0, "skipped_total": 3, "rollbacks": 0}
    restored = guard()
    restored.load_state_dict({**state, "history": [1.0, *state["history"]]})  # a longer window keeps the newest
    assert restored.state_dict() == state
    restored.observe(torch.tensor(50.0, dtype=torch.float64))
    assert restored.settle() == (True, False)


def test_skipped_update_leaves_weights_and_moments_alone_and_others_match_adamw() -> None:
    torch.manual_seed(0)
    weights = torch.randn(64)
    grads = [torch.randn(64) for _ in range(3)]

    def run(optimizer_class: type, skip_second: bool) -> tuple[torch.Tensor, torch.Tensor]:
        param = torch.nn.Parameter(weights.clone())
        extra = {"guard": guard(min_history=1)} if optimizer_class is SkipStepAdamW else {}
        optimizer = optimizer_class([param], lr=0.1, weight_decay=0.1, fused=True, **extra)
        for k, grad in enumerate(grads):
            skip = skip_second and k == 1
            if optimizer_class is SkipStepAdamW:
                optimizer.guard.observe(torch.tensor(math.nan if skip else 1.0))
            before = (param.detach().clone(), {key: value.clone() for key, value in optimizer.state[param].items()})
            param.grad = grad.clone()
            optimizer.step()
            if skip:
                assert torch.equal(param.detach(), before[0])
                assert all(torch.equal(value, before[1][key]) for key, value in optimizer.state[param].items())
        return param.detach(), optimizer.state[param]["exp_avg"]

    plain = run(torch.optim.AdamW, skip_second=False)
    assert all(torch.equal(a, b) for a, b in zip(run(SkipStepAdamW, skip_second=False), plain, strict=True))
    skipped = run(SkipStepAdamW, skip_second=True)
    assert not torch.equal(skipped[0], plain[0])


@pytest.mark.slow
def test_shared_memory_collectives_give_gloos_results(tmp_path: Path) -> None:
    """ZeRO-3's reduce-scatter and all-gather through DeepSpeed's shm kernel, bit for bit against gloo; the
    kernel's /dev/shm names are gone once the ranks are up (DeepSpeed alone leaves ~50 MB per rank per run)."""
    run_module("torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(31500 + os.getpid() % 1000),
               "-m", "tests.shm_collectives_job", str(tmp_path), env={"OMP_NUM_THREADS": "1"}, check=True)
    for rank in range(2):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report == {"installed": True, "mismatches": [], "leftovers": []}  # no /dev/shm buffer outlives a run


@pytest.mark.slow
def test_two_rank_zero3_run_writes_every_metric_and_a_checkpoint(tmp_path: Path, data_root: Path) -> None:
    """In the precision this machine trains in (`precision=auto`): bf16 with AMX, fp32 where bf16 is emulated."""
    run_dir = tmp_path / "run"
    launch(2, run_dir, data_root, "train.max_steps=4", "eval.every=2", "eval.sample_every=4", "precision=auto")
    records = read_metrics(run_dir)
    logged = {key for record in records for key in record}
    assert set(METRICS) <= logged, f"missing metrics: {set(METRICS) - logged}"
    assert any("samples/text" in r for r in records)
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4]
    latest = newest_verified(complete_checkpoints(run_dir / "checkpoints"))[0]
    assert latest.name == "step00000004"
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["samples_consumed"] == 4 * 8 and len(state["rng"]) == 2
    assert len(list(latest.glob("*optim_states.pt"))) == 2, "ZeRO-3 writes one optimizer shard per rank"
    assert (latest / "model" / "model.safetensors").is_file()
    assert (run_dir / "config.yaml").is_file()
    assert len(wandb_ids(run_dir)) == 1

    from model.saved_model import load_pretrained

    exported = load_pretrained(run_dir)
    assert exported.config.vocab_size == 1000 and exported.config.n_layer == 2


@pytest.mark.slow
def test_prebuild_at_a_runs_settings_leaves_its_first_step_nothing_to_compile(
        tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inductor keys its CPU kernels on threads per rank and (bf16 attention backward) shapes: a run
    launched into an empty kernel cache says what its first step compiled; after `train.prebuild` with the
    run's own settings and ranks per node, the same launch finds every kernel built."""
    settings = [f"paths.data_root={data_root}", *SMALL_MODEL, "train.max_steps=1", "eval.every=0"]
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cold"))
    cold = launch(2, tmp_path / "cold-run", data_root, "train.max_steps=1", "eval.every=0", launcher="torchrun")
    assert "start-up:" in cold.stderr and "the first step compiled" in cold.stderr, cold.stderr[-2000:]

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "prebuilt"))
    run_module("train.prebuild", "--ranks-per-node", "2", *settings, check=True)
    warm = launch(2, tmp_path / "warm-run", data_root, "train.max_steps=1", "eval.every=0", launcher="torchrun")
    assert "start-up:" in warm.stderr and "the first step compiled" not in warm.stderr, warm.stderr[-2000:]


@pytest.mark.slow
def test_an_op_built_from_an_activated_venv_is_loaded_not_rebuilt_by_a_bare_python(tmp_path: Path) -> None:
    """torch runs the first ninja on PATH against DeepSpeed's build log of the op, and another ninja version
    reads that log as changed commands: a launch that did not activate the venv (the system's ninja
    first, or none at all) must still load what an activated one built, with the environment's ninja."""
    extensions = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or tmp_path / "extensions")
    build_op = [sys.executable, "-c", "from train.prebuild import build_shm_comm_op; build_shm_comm_op()"]
    system_path = os.pathsep.join(["/usr/local/bin", "/usr/bin", "/bin"])
    activated = {"TORCH_EXTENSIONS_DIR": str(extensions),
                 "PATH": os.pathsep.join([str(Path(sys.executable).parent), system_path])}
    first = run_command(build_op, env=activated, check=True)
    assert "cannot be built" not in first.stdout, first.stdout
    library = extensions / "deepspeed_shm_comm" / "deepspeed_shm_comm.so"
    built = library.stat().st_mtime_ns
    bare = run_command(build_op, env={**activated, "PATH": system_path}, check=True)
    assert "cannot be built" not in bare.stdout, bare.stdout
    assert library.stat().st_mtime_ns == built, "the bare python rebuilt the op the activated one had built"


@pytest.mark.slow
class MetaEngine:
    """An engine whose module lives on the `meta` device: any input left on the host fails its forward."""

    device = torch.device("meta")

    def __init__(self, model: torch.nn.Module) -> None:
        self.module = model

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.module(idx)


def test_a_pretraining_step_feeds_the_engine_on_its_own_device(data_root: Path) -> None:
    from hydra import compose, initialize_config_dir

    from model import GPT
    from train.pretrain import Pretraining
    from train.settings import PretrainSettings
    from train.stage import RunSetup
    from train.typed_settings import typed

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base=None):
        cfg = compose("pretrain", overrides=["run_name=meta", f"paths.data_root={data_root}", *SMALL_MODEL])
    stage = Pretraining(typed(cfg, PretrainSettings), RunSetup(0, 1, "fp32", 1, False))
    with torch.device("meta"):
        engine = MetaEngine(GPT(stage.model.config))
    host_batch = stage.data.batch(0, 2)
    assert host_batch.device.type == "cpu"
    assert stage.loss(engine, host_batch)["loss"].device.type == "meta"


@pytest.mark.parametrize("windows", [0, 1, 7, 32])
def test_every_rank_count_validates_the_same_windows_in_as_many_batches(windows: int) -> None:
    for world_size in (1, 2, 3, 4, 16, 40):
        shares = [val_rounds(windows, 4, rank, world_size) for rank in range(world_size)]
        assert len({len(share) for share in shares}) == 1, "every rank runs the same number of forwards"
        real = sorted(w for share in shares for rows, mask in share for w, keep in zip(rows, mask, strict=True) if keep)
        assert real == list(range(windows)), f"{world_size} ranks: each window once"


@pytest.mark.slow
def test_more_ranks_than_validation_batches_still_log_val_loss_and_deepspeed_keeps_off_the_console(tmp_path: Path, data_root: Path) -> None:
    run_dir = tmp_path / "run"
    result = launch(4, run_dir, data_root, "train.micro_batch_size=2", "train.global_batch_size=8",
                    "eval.max_batches=2", "train.max_steps=2", "eval.every=2", "eval.sample_every=0",
                    "wandb.enabled=false", launcher="torchrun")
    assert [m["step"] for m in read_metrics(run_dir) if "val/loss" in m] == [2]
    # the console as quiet as litgpt's: DeepSpeed's own lines go to the run's deepspeed.log
    console, deepspeed_log = result.stdout + result.stderr, (run_dir / "deepspeed.log").read_text()
    assert "untested optimizer" not in console and "built successfully" not in console
    assert "untested optimizer" in deepspeed_log


def test_exact_resume_continues_the_same_losses_samples_and_wandb_run(tmp_path: Path, data_root: Path) -> None:
    steps = ["train.max_steps=6", "eval.every=0", "eval.sample_every=0", "precision=fp32"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    launch(2, whole, data_root, *steps, launcher="torchrun")
    stopped = launch(2, split, data_root, *steps, "train.stop_at_step=3", launcher="torchrun", check=False)
    # Each rank exits 75 (EX_TEMPFAIL: requeue me); torchrun reports it as a failed child.
    assert stopped.returncode != 0 and "exitcode  : 75" in stopped.stderr, stopped.stderr[-2000:]
    assert max(losses(split)) == 3
    launch(2, split, data_root, *steps, launcher="torchrun")
    expected, resumed = losses(whole), losses(split)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in range(4, 7):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=0)
    samples = [r["train/samples_seen"] for r in read_metrics(split) if "train/samples_seen" in r]
    assert samples == [8 * s for s in range(1, 7)], "no plan sample used twice or skipped"
    assert len(wandb_ids(split)) == 1, "the resumed job continues the same wandb run"


@pytest.mark.slow
def test_resume_with_another_rank_count_through_a_universal_checkpoint(tmp_path: Path, data_root: Path) -> None:
    steps = ["train.max_steps=5", "eval.every=0", "eval.sample_every=0", "precision=fp32"]
    run_dir = tmp_path / "run"
    launch(2, run_dir, data_root, *steps, "train.stop_at_step=3", check=False)
    resumed = launch(1, run_dir, data_root, *steps, launcher="python")
    record = losses(run_dir)
    assert sorted(record) == [1, 2, 3, 4, 5]
    reference = tmp_path / "reference"
    launch(2, reference, data_root, *steps)
    # The first step after the switch runs on exactly the restored weights (summed in another order).
    assert record[4] == pytest.approx(losses(reference)[4], rel=1e-5)
    assert record[5] == pytest.approx(losses(reference)[5], rel=1e-3)
    assert f"converted {run_dir / 'checkpoints' / 'step00000003'} to DeepSpeed's universal format" in resumed.stderr
    assert not (run_dir / "checkpoints" / "universal").exists(), "the converted copy goes with the next save"


@pytest.mark.slow
def test_half_written_checkpoints_are_never_resumed_from(tmp_path: Path, data_root: Path) -> None:
    steps = ["eval.every=0", "eval.sample_every=0", "precision=fp32", "checkpoint.every=2"]
    run_dir = tmp_path / "run"
    launch(1, run_dir, data_root, "train.max_steps=4", *steps, "train.stop_at_step=2", launcher="python",
           check=False)
    checkpoints = run_dir / "checkpoints"
    # A save killed midway: the temporary folder, and a folder whose state file never got written,
    # with `latest` already pointing at it.
    (checkpoints / "step00000003.tmp").mkdir()
    (checkpoints / "step00000003").mkdir()
    (checkpoints / "step00000003" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"partial")
    (checkpoints / "latest").write_text("step00000003\n")
    assert [p.name for p in complete_checkpoints(checkpoints)] == ["step00000002"]
    assert newest_verified(complete_checkpoints(checkpoints))[0].name == "step00000002"
    result = launch(1, run_dir, data_root, "train.max_steps=4", *steps, launcher="python")
    assert "resumed from" in result.stderr + result.stdout and "step00000002" in result.stderr + result.stdout
    assert sorted(losses(run_dir)) == [1, 2, 3, 4]


@pytest.mark.slow
def test_spike_guard_skips_updates_and_rolls_back(tmp_path: Path, data_root: Path) -> None:
    # A z-score threshold far below zero makes every step after the history a "spike".
    run_dir = tmp_path / "run"
    launch(1, run_dir, data_root, "train.max_steps=6", "eval.every=0", "eval.sample_every=0", "precision=fp32",
           "checkpoint.every=2", "spike_guard.zscore=-1000", "spike_guard.min_history=2",
           "spike_guard.max_consecutive=2", launcher="python")
    records = read_metrics(run_dir)
    skipped = [r["train/skipped_steps"] for r in records if "train/skipped_steps" in r]
    assert skipped == [0, 0, 1, 2, 3, 4]
    assert any(r.get("train/rollbacks") == 1 for r in records)
    assert any(r.get("train/rollbacks") == 2 for r in records)


@pytest.mark.parametrize(("overrides", "message"), [
    (["vocab_size=500"], "is smaller than the tokenizer's vocabulary"),
    (["train.seq_len=128", "model.block_size=64"], "train.seq_len=128 but the plan"),
    (["model.block_size=32"], "longer than the model's context model.block_size=32"),
    (["train.global_batch_size=10"], "train.global_batch_size=10 is not a multiple"),
    (["model.n_embd=66", "model.n_head=4"], "model.n_embd=66 is not divisible by model.n_head=4"),
    (["data.mix_dir=/nonexistent/mix/demo"], "no mixture plan at /nonexistent/mix/demo/mixture.json"),
    (["train.max_steps=abc"], "train.max_steps='abc': Value 'abc' of type 'str' could not be converted to Integer"),
    (["optim.betas=0.9"], "optim.betas=0.9: must be a list"),
    (["+train.foo=1"], "train.foo is not a setting (known under train: "),
    (["precision=fp16"], "precision='fp16' is not one of auto, bf16, fp32"),
])
def test_refuses_bad_runs_with_one_line(tmp_path: Path, data_root: Path, overrides: list[str], message: str) -> None:
    result = launch(1, tmp_path / "run", data_root, *overrides, launcher="python", check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    refusal = [line for line in result.stderr.splitlines() if line.startswith("train: ")]
    assert len(refusal) == 1 and message in refusal[0], result.stderr[-2000:]
    assert "deepspeed" not in (result.stdout + result.stderr).lower(), "refused only after DeepSpeed started"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_refuses_a_mix_built_with_another_tokenizer(tmp_path: Path, data_root: Path, sample_corpus: Path) -> None:
    other = make_data_root(tmp_path / "data", sample_corpus, seq_len=64)
    another = sample_corpus / "tokenizers" / "sentencepiece" / "botchan_en_unigram_1000.model"
    (other / "tokenizer" / "spm.model").write_bytes(another.read_bytes())
    result = launch(1, tmp_path / "run", other, launcher="python", check=False)
    assert result.returncode == 2
    assert "was built with tokenizer" in result.stderr


def test_time_budget_fixes_the_schedule_once_and_a_resume_keeps_it(tmp_path: Path, data_root: Path) -> None:
    """train.time_budget_s ends the schedule at the step that fits (well before the plan's 291 steps here);
    the decision is in the checkpoint, so the resumed job ends at the same step with the cosine at its floor."""
    run_dir = tmp_path / "run"
    settings = ("train.time_budget_s=10", "eval.every=0", "eval.sample_every=0", "checkpoint.every=0",
                "schedule.warmup_steps=5", "precision=fp32")
    first = launch(1, run_dir, data_root, *settings, "train.stop_at_step=6", launcher="python", check=False)
    assert first.returncode == 75, first.stderr[-2000:]
    assert "time budget 10 s: " in first.stderr
    state = json.loads((run_dir / "checkpoints" / "step00000006" / "trainer_state.json").read_text())
    decided = state["time_budget"]["total_steps"]
    assert state["time_budget"]["budget_s"] == 10 and 6 < decided < 2330 // 8 and state["total_steps"] == decided
    second = launch(1, run_dir, data_root, *settings, launcher="python")
    assert "time budget" not in second.stderr  # kept, not decided again
    rows = [row for row in read_metrics(run_dir) if "train/lr" in row]
    assert rows[-1]["step"] == decided and rows[-1]["train/lr"] == pytest.approx(6e-4 * 0.1)


def test_summary_command_reads_a_run_dir(tmp_path: Path) -> None:
    records = [{"step": 0, "val/unigram_bpb": 5.0}, {"step": 1, "val/loss": 6.0, "val/bpb": 6.5},
               {"step": 2, "train/loss": 7.0, "train/tokens_seen": 1e6, "train/tokens_per_sec": 900.0,
                "train/mfu": 0.01}, {"step": 2, "val/loss": 4.0, "val/bpb": 4.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_module("train.summary", f"run_dir={tmp_path}", check=True)
    assert "val bpb: 6.500 (step 1) -> 4.500 (step 2)" in result.stdout
    assert "the model is below it" in result.stdout
    missing = run_module("train.summary", f"run_dir={tmp_path / 'none'}")
    assert missing.returncode == 1 and "summary: no " in missing.stderr
    # a fine-tuning run: examples and epochs instead of tokens, the task's metric against its baselines
    finetuned = tmp_path / "finetuned"
    finetuned.mkdir()
    records = [{"step": 1, "train/loss": 0.9, "train/epoch": 0.5}, {"step": 2, "train/loss": 0.4, "train/epoch": 1.0},
               {"step": 2, "val/loss": 0.5, "val/accuracy": 0.9, "val/majority_baseline": 0.7}]
    (finetuned / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_module("train.summary", f"run_dir={finetuned}", check=True)
    assert "trained 2 steps, 1.00 epochs; train loss 0.900 -> 0.400" in result.stdout
    assert "val at step 2: accuracy 0.900 (against majority baseline 0.700)" in result.stdout


def test_progress_lines_show_long_work_and_leave_short_work_quiet(caplog: pytest.LogCaptureFixture) -> None:
    from train.metrics import Progress

    caplog.set_level("INFO", logger="train")
    long, short = Progress("zero-shot set, items", 3, True, every_s=0.0), Progress("quick", 3, True, every_s=1e9)
    for done in (1, 2, 3):
        long.update(done)
        short.update(done)
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split(" (")[0] for line in lines] == [f"zero-shot set, items: {n}/3" for n in (1, 2, 3)]


@pytest.mark.parametrize(("local_rank", "visible", "device"), [(5, 8, 5), (5, 1, 0), (0, 1, 0), (9, 8, 1)])
def test_a_rank_takes_the_gpu_it_can_see(local_rank: int, visible: int, device: int) -> None:
    from train.distributed import cuda_device_index

    assert cuda_device_index(local_rank, visible) == device


@pytest.mark.slow
def test_a_partitioned_build_holds_about_the_models_share_per_rank() -> None:
    """zero.Init: while the model is built, a rank's peak host memory grows by about the model over the ranks
    (plus one module gathered at a time for its initialisation), not by the whole model. glibc's allocator
    is told to return what is freed (a fixed mmap threshold), so the peak measures what is held rather than
    what the allocator kept of the modules gathered and released."""
    def build(kind: str) -> list[dict]:
        result = run_command([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                              "--master_port", str(31500 + os.getpid() % 1000), "-m", "tests.partitioned_build_job",
                              kind], env={"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}, check=True)
        # the ranks print at once: their lines may run together
        return [json.loads(found) for found in re.findall(r'\{"rank"[^{}]*\}', result.stdout)]

    whole, partitioned = build("whole"), build("partitioned")
    assert len(whole) == len(partitioned) == 2
    model_gb = whole[0]["model_gb"]
    assert all(rank["grown_gb"] > 0.9 * model_gb for rank in whole), whole
    assert all(rank["grown_gb"] < 0.7 * model_gb for rank in partitioned), partitioned
    assert sum(rank["held_params"] for rank in partitioned) == pytest.approx(whole[0]["held_params"], rel=0.01)
