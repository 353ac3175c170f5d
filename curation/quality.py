"""GPT-3's quality classifier: keep crawl documents that look like the curated sources.

    python -m curation.quality [overrides]      # after curation.dedup

Positives are paragraphs of the sources marked `quality: positive` (after dedup), negatives
paragraphs of extracted crawl text (`quality: scored`, before the heuristic filters, as GPT-3
used unfiltered CommonCrawl). The classifier and the sampling rule are in
`curation.steps.quality_classifier`.
"""

from __future__ import annotations

import hydra
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers import JsonlWriter
from omegaconf import DictConfig, OmegaConf

from curation.data_root_claim import claim_and_run
from curation.executors import Stage
from curation.sources import Source
from curation.steps.accounting import AccountedStep, removed_writer
from curation.steps.quality_classifier import MODEL_FILE, QualityFilter, TrainQualityClassifier
from curation.steps.readers import StageReader
from data_contract.layout import DataLayout
from data_contract.refusal import Refusal


def quality_stages(cfg: DictConfig, sources: list[Source], layout: DataLayout, after: tuple[str, ...]) -> list[Stage]:
    """Train the classifier (when sources to learn from are selected), then write curated/<source>/."""
    q = cfg.quality
    scored = [s for s in sources if s.quality == "scored" and q.enabled]
    positives = [s for s in sources if s.quality == "positive"]
    model_path = layout.classifier / MODEL_FILE
    stages: list[Stage] = []
    if scored and positives:
        negatives = [str(layout.work(s.name, "extracted")) for s in scored]
        params = OmegaConf.to_container(q, resolve=True)
        stages.append(Stage("quality_train", [TrainQualityClassifier(
            [str(layout.work(s.name, "dedup")) for s in positives], negatives, str(layout.classifier), params)],
            1, layout.logs("quality_train"), after))
        after = ("quality_train",)
    elif scored and not model_path.is_file():
        raise Refusal(f"quality: {scored[0].name} is scored but no `quality: positive` source is selected and "
                          f"no classifier exists at {model_path}; add one to only=[...] or set quality.enabled=false")
    for source in sources:
        pipeline: list[PipelineStep] = [StageReader(str(layout.work(source.name, "dedup")))]
        if source in scored:
            writer = removed_writer(layout, "quality", source.name)
            pipeline.append(AccountedStep("quality", QualityFilter(str(model_path), q.alpha, q.seed, writer)))
        pipeline.append(JsonlWriter(str(layout.curated(source.name)), output_filename="${rank}.jsonl.gz"))
        stages.append(Stage(f"curate_{source.name}", pipeline, source.tasks,
                            layout.logs("curate", source.name), after))
    return stages


@hydra.main(version_base="1.3", config_path="../conf", config_name="curate")
def main(cfg: DictConfig) -> None:
    claim_and_run(cfg, lambda sources, layout: quality_stages(cfg, sources, layout, after=()), with_dedup=True)


if __name__ == "__main__":
    main()
