"""Sentencepiece model -> `tokenizers` JSON, so an exported model carries a tokenizer HF can load.

Built from the sentencepiece model proto alone (no transformers): the same pieces and scores,
sentencepiece's own precompiled normalisation map, its whitespace handling (`▁`, dummy prefix,
collapsed spaces) and byte fallback. Encoding gives the ids `SentencePieceProcessor.encode` gives.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from data_contract.tokenizer_files import SAVED_SPM_MODEL

UNIGRAM, BPE = 1, 2  # TrainerSpec.ModelType
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4  # ModelProto.SentencePiece.Type
SPACE = "▁"


def _bpe_merges(proto: sentencepiece_model_pb2.ModelProto) -> list[tuple[str, str]]:
    """Merges implied by a BPE vocabulary: sentencepiece merges the pair whose result scores
    highest, i.e. has the lowest id, so a merge's priority is its result's id."""
    ids = {p.piece: i for i, p in enumerate(proto.pieces) if p.type == NORMAL}
    ranked = []
    for piece, piece_id in ids.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((piece_id, ids[left], ids[right], left, right))
    return [(left, right) for *_, left, right in sorted(ranked)]


def spm_to_tokenizer(spm_path: str | Path) -> Tokenizer:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(spm_path).read_bytes())
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type == UNIGRAM:
        model = models.Unigram(
            [(p.piece, p.score) for p in proto.pieces], unk_id=spec.unk_id, byte_fallback=spec.byte_fallback
        )
    elif spec.model_type == BPE:
        model = models.BPE(
            {p.piece: i for i, p in enumerate(proto.pieces)},
            _bpe_merges(proto),
            unk_token=spec.unk_piece,
            fuse_unk=True,
            byte_fallback=spec.byte_fallback,
        )
    else:
        raise ValueError(
            f"{spm_path}: sentencepiece model_type={spec.model_type} is not unigram (1) or bpe (2)"
        )
    tokenizer = Tokenizer(model)

    steps = [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=SPACE,
        prepend_scheme="always" if norm.add_dummy_prefix else "never",
        split=spec.split_by_whitespace,
    )
    decode_steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        decode_steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(decode_steps)
    tokenizer.add_tokens(
        [
            AddedToken(p.piece, special=p.type == CONTROL, normalized=False)
            for p in proto.pieces
            if p.type in (CONTROL, USER_DEFINED)
        ]
    )
    return tokenizer


def write_hf_tokenizer(spm_path: str | Path, directory: str | Path, model_max_length: int) -> dict[str, int]:
    """Write `tokenizer.json` + `tokenizer_config.json` for `AutoTokenizer`, and the sentencepiece model itself
    as `tokenizer.model`: the identity the data was tokenized with (data_contract/tokenizer_files.py), so the
    export is a valid `init=` for pretraining on the same data. Returns the special ids set."""
    directory = Path(directory)
    spm_to_tokenizer(spm_path).save(str(directory / "tokenizer.json"))
    shutil.copyfile(spm_path, directory / SAVED_SPM_MODEL)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(spm_path).read_bytes())
    spec = proto.trainer_spec
    special_ids = {
        name: i
        for name, i in (
            ("bos", spec.bos_id),
            ("eos", spec.eos_id),
            ("unk", spec.unk_id),
            ("pad", spec.pad_id),
        )
        if i >= 0
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        **{f"{name}_token": proto.pieces[i].piece for name, i in special_ids.items()},
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return special_ids
