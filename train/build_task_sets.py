"""`python -m train.build_task_sets [raw=data/raw] [out=data/tasks] [wiki_articles=50] [seed=0]`.

Writes the sample task sets of train/finetune/task_sets.py (fine-tuning sets per task and split, and
the zero-shot set) from the sample corpus, and prints how many examples each got. Config:
conf/build_task_sets.yaml.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from train.finetune.task_sets import build


@hydra.main(config_path="../conf", config_name="build_task_sets", version_base=None)
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out)
    counts = build(Path(cfg.raw), out, int(cfg.wiki_articles), int(cfg.seed))
    for task, splits in counts.items():
        print(f"{out / task}: " + ", ".join(f"{n} {split}" for split, n in splits.items()))


if __name__ == "__main__":
    main()
