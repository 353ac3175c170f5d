"""Supervised fine-tuning the GPT-1 way, on the pretraining trainer (train/trainer.py).

    __main__.py   the command, `python -m train.finetune task=<name> init=<dir> [overrides]`
    task.py       the trainer task: example order, objective, validation metrics, export
    heads.py      the model with its linear head, and the task + auxiliary LM objective
    examples.py   task configs and their records (JSONL or any file `datasets` reads) as GPT-1's token sequences
    task_sets.py  the sample task sets built from the corpus (`python -m train.build_task_sets`)
"""
