"""Checkpointing, in one place: the folder layout and its verification (layout.py, torch-free, so the checks
before training read it at once), what makes a run the same run (identity.py), and the Checkpointer that
plans a resume, loads, decides when a save is due, saves, rotates and rolls back (checkpointer.py)."""
