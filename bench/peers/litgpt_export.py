"""litgpt's final weights as a torch.export program, so the project's evaluator can score them without litgpt.

    bench/.venv-litgpt/bin/python bench/peers/litgpt_export.py SPEC.json

Reads `<out_dir>/final/lit_model.pth` (litgpt's checkpoint: model, optimizer, dataloader, counters), loads
the model into litgpt's GPT and exports its eval-mode forward for token batches of SPEC's `export.shape`
to `export.path`. The peer environment pins the project's torch version, so the project's
`torch.export.load` reads the program back; the logits keep litgpt's padded vocabulary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from litgpt import GPT, Config


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    checkpoint = torch.load(Path(spec["out_dir"]) / "final" / "lit_model.pth", map_location="cpu", weights_only=False)
    model = GPT(Config(**spec["config"]))
    model.load_state_dict(checkpoint["model"])
    model.eval()
    example = torch.zeros(spec["export"]["shape"], dtype=torch.long)
    torch.export.save(torch.export.export(model, (example,)), spec["export"]["path"])


if __name__ == "__main__":
    main()
