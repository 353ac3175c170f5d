"""`python -m train.plan`: memory per GPU and the cost of a run, against the ZeRO paper's arithmetic and
DeepSpeed's own estimator, and the trainer's refusal of a run that cannot fit its GPUs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.flops import block_params, parameter_count
from tests.commands import run_module
from tests.train_fixtures import make_data_root
from train.plan import PlannedRun, memory_plan
from train.settings import model_config_for
from train.typed_settings import pretrain_settings

GPT3_175B_ON_64_NODES = ["model=gpt3-175b", "train.seq_len=2048", "train.micro_batch_size=1",
                         "train.global_batch_size=1536", "cluster.nodes=64", "cluster.gpus_per_node=8",
                         "cluster.gpu_memory_gb=80"]


def plan_json(*overrides: str) -> dict:
    result = run_module("train.plan", *overrides, check=True)
    assert result.returncode == 0
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_gpt3_175b_on_64_nodes_fits_only_with_activation_checkpointing() -> None:
    without = plan_json(*GPT3_175B_ON_64_NODES, "model.activation_checkpointing=false")
    assert without["fits"] is False and without["fix"] == "model.activation_checkpointing=true"
    with_it = plan_json(*GPT3_175B_ON_64_NODES, "model.activation_checkpointing=true")
    assert with_it["fits"] is True and with_it["peak_gb_per_gpu"] <= 80
    zero_paper = 16 * with_it["params"] / 512 / 1e9  # Rajbhandari et al.: 16 bytes per parameter, partitioned
    assert with_it["model_states_gb_per_gpu"] == pytest.approx(zero_paper, rel=0.1)
    assert with_it["params"] == pytest.approx(175e9, rel=0.01)
    assert with_it["checkpoint_gb"] > 2000 and with_it["activations_gb_per_gpu"] < without["activations_gb_per_gpu"] / 5


def planned(*overrides: str) -> PlannedRun:
    settings = pretrain_settings(list(overrides))
    return PlannedRun(model_config_for(settings.model, settings.vocab_size, settings.model.vocab_size), settings.train, settings.deepspeed,
                      settings.cluster, settings.precision, settings.checkpoint)


def test_deepspeeds_estimator_is_reproduced() -> None:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    for name, nodes in (("gpt2-124m", 1), ("gpt3-13b", 64), ("gpt3-175b", 64)):
        run = planned(f"model={name}", f"cluster.nodes={nodes}", "cluster.gpus_per_node=8")
        _, gpu_bytes, _ = estimate_zero3_model_states_mem_needs(
            parameter_count(run.model), block_params(run.model), num_gpus_per_node=8, num_nodes=nodes, cpu_offload=False)
        assert memory_plan(run).deepspeed_model_states_gb_per_gpu == pytest.approx(gpu_bytes / 1e9, rel=1e-6)


def test_more_gpus_hold_less_and_offload_holds_no_model_states() -> None:
    run = planned("model=gpt3-13b", "cluster.gpus_per_node=8")
    one, four = memory_plan(run), memory_plan(run.changed(cluster={"nodes": 4}))
    assert four.model_states_gb_per_gpu == pytest.approx(one.model_states_gb_per_gpu / 4)
    assert four.activations_gb_per_gpu == one.activations_gb_per_gpu
    offloaded = planned("model=gpt3-13b", "cluster.gpus_per_node=8", "deepspeed=zero3-offload")
    assert memory_plan(offloaded).model_states_gb_per_gpu == 0


def test_the_trainer_refuses_a_run_that_cannot_fit_its_gpus_naming_the_fix(tmp_path: Path,
                                                                            sample_corpus: Path) -> None:
    data_root = make_data_root(tmp_path / "data", sample_corpus, seq_len=64)
    # 1.2B parameters: 19 GB of model states on one 16 GB GPU, 10 GB each on two nodes
    result = run_module("train", f"run_dir={tmp_path / 'run'}", f"paths.data_root={data_root}", "train.seq_len=64",
                        "model.n_layer=24", "model.n_embd=2048", "model.n_head=16", "cluster.gpu_memory_gb=16")
    assert result.returncode == 2
    refusal = [line for line in result.stderr.splitlines() if line.startswith("train: ")]
    assert len(refusal) == 1 and "more than cluster.gpu_memory_gb=16; set cluster.nodes=2" in refusal[0], \
        result.stderr[-2000:]
    assert "train.plan" in refusal[0] and not (tmp_path / "run" / "checkpoints").exists()
