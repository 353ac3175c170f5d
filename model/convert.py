"""Convert between this project's saved models and Hugging Face GPT-2 directories.

    python -m model.convert from_hf HF_GPT2_DIR OUT_DIR     # -> config.json + model.safetensors
    python -m model.convert to_hf MODEL_DIR OUT_DIR [--tokenizer spm.model]

MODEL_DIR may also be a checkpoint or run dir (see model.pretrained.resolve_model_dir); to_hf
exports the sentencepiece model saved beside the weights unless --tokenizer names another.
"""

from __future__ import annotations

import argparse
import sys

from model.hf import load_hf_gpt2, save_hf_gpt2
from model.pretrained import TOKENIZER_FILE, load_pretrained, resolve_model_dir, save_pretrained


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="direction", required=True)
    from_hf = sub.add_parser("from_hf", help="HF GPT-2 dir -> project saved-model dir")
    to_hf = sub.add_parser("to_hf", help="project saved-model/checkpoint/run dir -> HF GPT-2 dir")
    to_hf.add_argument("--tokenizer", help="sentencepiece .model to export as tokenizer.json")
    for p in (from_hf, to_hf):
        p.add_argument("src")
        p.add_argument("dst")
    args = parser.parse_args(argv)
    try:
        if args.direction == "from_hf":
            save_pretrained(load_hf_gpt2(args.src), args.dst)
        else:
            model_dir = resolve_model_dir(args.src)
            tokenizer = args.tokenizer
            if tokenizer is None and (model_dir / TOKENIZER_FILE).is_file():
                tokenizer = model_dir / TOKENIZER_FILE
            save_hf_gpt2(load_pretrained(model_dir), args.dst, tokenizer=tokenizer)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    main()
