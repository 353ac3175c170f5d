"""What makes a run the same run: the settings a resume may not change behind the user's back.

A checkpoint records its run's identity (`trainer_state.json`: `identity`): the model's shape, the
global batch and sequence length, and hashes of the mixture plan and tokenizer. A resume computes
the identity of the command at hand and compares (train/checkpointing/checkpointer.py; the checks
before training, train/preflight.py, compare with the newest checkpoint first). A silent difference
would be costly: another `n_head` trains a different function of the same weights, another global batch re-reads or skips
samples of the plan. So every difference is refused in one line, naming each key with its old and
new value; `train.accept_changes=[key,...]` continues deliberately (the data position then follows
the samples consumed, not the step). A key that changes the weights' shapes cannot be accepted: the
checkpoint does not fit the model. The number of ranks is not identity (the Checkpointer reshards).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_contract.refusal import Refusal
from train.settings import FinetuneLoopSettings, PretrainLoopSettings, TaskSettings

# Keys whose change makes the checkpoint's tensors the wrong shape for the new model.
SHAPE_KEYS = ("model.vocab_size", "model.block_size", "model.n_layer", "model.n_embd", "model.bias",
              "model.vocab_multiple")


def pretrain_identity(model: Any, loop: PretrainLoopSettings, vocab_size: int, data_hashes: dict[str, str],
                      init: str | None = None) -> dict[str, Any]:
    """The identity of a pretraining command: `model` its ModelSettings, `vocab_size` the model's (the
    tokenizer's unless fixed), `init` the folder of the weights it started from, if any."""
    return {"model.vocab_size": vocab_size, "model.block_size": model.block_size, "model.n_layer": model.n_layer,
            "model.n_head": model.n_head, "model.n_embd": model.n_embd, "model.bias": model.bias,
            "model.vocab_multiple": model.vocab_multiple, "model.layer_norm_eps": model.layer_norm_eps,
            "train.global_batch_size": loop.global_batch_size, "train.seq_len": loop.seq_len,
            "mixture": data_hashes["mixture_sha256"][:16], "tokenizer": data_hashes["tokenizer_sha256"][:16],
            **({"init": init} if init else {})}


def finetune_identity(init: str | None, task: TaskSettings, loop: FinetuneLoopSettings, seed: int) -> dict[str, Any]:
    """The identity of a fine-tuning command. The model comes from `init` only at the start (a resume loads
    the fine-tuned weights), but another task or batch would make a different run."""
    return {"init": str(Path(init).resolve()) if init else None, "task.name": task.name, "task.type": task.type,
            "train.global_batch_size": loop.global_batch_size, "train.max_len": loop.max_len, "seed": seed}


def check_same_run(recorded: dict[str, Any] | None, current: dict[str, Any], accepted: list[str],
                   checkpoint: Path) -> list[str]:
    """Refuse a resume whose identity differs from the checkpoint's, unless every difference is accepted
    and none changes a shape. Returns the accepted differences (to log). A checkpoint written before
    identities were recorded has none and is taken as it is."""
    if recorded is None:
        return []
    changed = {key: (recorded.get(key), value) for key, value in current.items() if recorded.get(key) != value}
    if not changed:
        return []
    described = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items())
    shapes = [key for key in changed if key in SHAPE_KEYS]
    if shapes:
        raise Refusal(f"{checkpoint} was trained with other settings ({described}); {', '.join(shapes)} changes "
                      "the weights' shapes, so it cannot continue: start a new run (another run_dir, or "
                      "train.resume=never train.overwrite=true to replace this one)")
    unaccepted = [key for key in changed if key not in accepted]
    if unaccepted:
        raise Refusal(f"{checkpoint} was trained with other settings ({described}); to continue with them "
                      f"deliberately add train.accept_changes=[{','.join(changed)}], or start a new run "
                      "(another run_dir)")
    return [described]
