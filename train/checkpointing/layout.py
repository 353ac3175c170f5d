"""A run's checkpoints on disk: where they are, which are complete, and whether their files are intact.

`<run_dir>/checkpoints/<tag>/` holds the DeepSpeed checkpoint (sharded ZeRO state of every rank),
`model/` (consolidated weights) and `trainer_state.json`, written last, which lists every other file of
the checkpoint with its size and SHA-256. Tags are `step<8 digits>`, so checkpoints are ordered by the
step in their folder name and rotation never has to read (possibly damaged) state files.

Only the standard library is imported: the checks before training (train/preflight.py) read this
before torch is loaded, so a refusal comes at once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from data_contract.atomic_files import sha256_file
from data_contract.refusal import Refusal

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"  # written last into a checkpoint folder
TAG_PREFIX = "step"  # checkpoint folders are step<8 digits>
LATEST_FILE = "latest"
TMP_SUFFIX = ".tmp"
UNIVERSAL = "universal"  # DeepSpeed's rank-count independent copies, under checkpoints/


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def step_of(checkpoint: Path) -> int | None:
    """The step in a checkpoint folder's tag (`step00001000`), or None for any other folder."""
    number = checkpoint.name[len(TAG_PREFIX):]
    return int(number) if checkpoint.name.startswith(TAG_PREFIX) and number.isdigit() else None


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Renamed checkpoints (a folder counts once its state file is in it), oldest first by their tag's step."""
    if not checkpoints_dir.is_dir():
        return []
    found = [p for p in checkpoints_dir.iterdir()
             if p.is_dir() and step_of(p) is not None and (p / STATE_FILE).is_file()]
    return sorted(found, key=step_of)  # type: ignore[arg-type, return-value]


def readable_state(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's state, or None when the file is missing or not a whole JSON object."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def newest_state(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of the run whose state file reads, with that state."""
    for folder in reversed(complete_checkpoints(run_dir / CHECKPOINTS)):
        state = readable_state(folder)
        if state is not None:
            return folder, state
    return None


def resume_request(value: str) -> str | Path:
    """`train.resume` as the trainer takes it: auto, never or an existing checkpoint folder."""
    if value in ("auto", "never"):
        return value
    path = Path(value)
    if (path / STATE_FILE).is_file():
        return path.resolve()
    raise Refusal(f"train.resume={value} is not auto, never or a checkpoint folder (one holding "
                  f"{STATE_FILE}, e.g. runs/<run>/{CHECKPOINTS}/step00001000); fix the value")


def checkpoint_files(folder: Path) -> list[str]:
    """Every file of a checkpoint folder but the state file, relative and sorted (the same list on every rank)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name != STATE_FILE)


def writer_of(name: str, world_size: int) -> int:
    """The rank that wrote a checkpoint file, and so hashes it right after: DeepSpeed's
    `zero_pp_rank_<r>_...` files are rank r's own shard; everything else (the exported model, DeepSpeed's
    common files) is rank 0's."""
    match = re.match(r"zero_pp_rank_(\d+)_", Path(name).name)
    return int(match.group(1)) % world_size if match else 0


def file_entries(folder: Path, names: list[str]) -> dict[str, list[Any]]:
    """`name: [size, sha256]` for the given files of `folder`."""
    return {name: [(folder / name).stat().st_size, sha256_file(folder / name)] for name in names}


def problems_in(checkpoint: Path, state: dict[str, Any], names: list[str]) -> list[str]:
    """What is wrong with the files `names` of the state's list. A checkpoint written before the list
    existed has no `files` key and is taken unverified; an empty or malformed list is damage."""
    if "files" not in state:
        return []
    listed = state["files"]
    if not isinstance(listed, dict) or not listed:
        return [f"{STATE_FILE} lists no files"]
    problems = []
    for name in names:
        size, digest = listed[name]
        path = checkpoint / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{name} is {path.stat().st_size} bytes, {size} were written")
        elif sha256_file(path) != digest:
            problems.append(f"{name} does not match its checksum")
    return problems
