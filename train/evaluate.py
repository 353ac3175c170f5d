"""`python -m train.evaluate init=RUN_OR_MODEL_DIR 'tasks=[a.jsonl,...]'`: zero-shot multiple choice of a saved model.

Loads the model and its tokenizer, scores every set with train/zero_shot.py in one process, and
prints a table and, on the last line, the metrics as JSON (the names pretraining logs them under).
Config: conf/evaluate.yaml.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from model.pretrained import TOKENIZER_FILE, load_pretrained, resolve_model_dir
from train.zero_shot import set_name, zero_shot_metrics


@hydra.main(config_path="../conf", config_name="evaluate", version_base=None)
def main(cfg: DictConfig) -> None:
    import sentencepiece as spm

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # progress of long sets
    try:
        if cfg.init is None or not cfg.tasks:
            raise ValueError("give init=RUN_CHECKPOINT_OR_MODEL_DIR and tasks=[path.jsonl, ...]")
        model_dir = resolve_model_dir(cfg.init)
        tokenizer_path = Path(cfg.tokenizer) if cfg.tokenizer else model_dir / TOKENIZER_FILE
        if not tokenizer_path.is_file():
            raise ValueError(f"{model_dir}: no {TOKENIZER_FILE} beside the model; pass tokenizer=PATH/TO/spm.model")
        model = load_pretrained(model_dir, device=cfg.device)
        tokenizer = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
        torch.set_num_threads(cfg.threads or torch.get_num_threads())
        eos = tokenizer.eos_id()
        results = zero_shot_metrics(model, list(cfg.tasks), tokenizer.encode, eos if eos >= 0 else None, 0, 1)
    except ValueError as bad:
        sys.exit(f"evaluate: {bad}")
    print(f"{'set':<32} {'acc':>7} {'acc_norm':>9} {'acc/token':>9}")
    for path_name in cfg.tasks:
        name = set_name(Path(path_name))
        print(f"{name:<32} {results[f'eval/{name}/acc']:7.4f} {results[f'eval/{name}/acc_norm']:9.4f} "
              f"{results[f'eval/{name}/acc_per_token']:9.4f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
