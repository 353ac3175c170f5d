"""The training-data stage of `curation.run`: tokenizer, token files and mixture plan, once the sources are curated.

The report stage runs after it, so the run's one report counts the tokens per source too.
"""

from __future__ import annotations

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger
from omegaconf import DictConfig, OmegaConf

from data_contract.refusal import Refusal


def probe_tokenizer_libraries() -> None:
    """The tokenizer and token-file steps' libraries import, or the run stops before its first stage."""
    try:
        import sentencepiece  # noqa: F401
        from datatrove.pipeline.tokens import DocumentTokenizer  # noqa: F401
    except ImportError as error:
        raise Refusal(f"preflight: the tokenizer stage cannot run here ({error}); reinstall the environment "
                      "with `make setup`") from None


class PrepareTrainingData(PipelineStep):
    """Tokenizer, token files and mixture plan as one single-task stage after the curated outputs.

    These steps work on whole sources (a sample across all of them, validation splits, one plan),
    so they run in one task; the tokenize step parallelises inside it. Not in `curation.run`, which
    runs as `__main__`: datatrove pickles a step by reference only when its module can be imported.
    """

    name = "tokenizer + tokens + mixture"
    type = "🔢 - TOKENIZE"

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        # Resolved now: Slurm tasks start with another environment and working directory.
        self.config = OmegaConf.to_container(cfg, resolve=True)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        # imported here: a missing sentencepiece is then probe_tokenizer_libraries' one line, not an ImportError
        from curation.mix import build_mix
        from curation.tokenize import tokenize_sources
        from curation.train_tokenizer import train_tokenizer

        cfg = OmegaConf.create(self.config)
        train_tokenizer(cfg)
        tokenize_sources(cfg)
        logger.info(f"mixture plan: {build_mix(cfg)}")
