"""Deduplication within and across sources: exact (normalized text hash), then MinHash.

    python -m curation.dedup [overrides]      # after curation.filter

Both run over all selected sources at once. Every source gets a contiguous block of task
ranks, highest `priority` first; datatrove's exact dedup keeps the highest-priority copy by
itself, and the MinHash clustering here keeps the lowest (rank, document) of each cluster,
i.e. the copy from the best source: a crawl page that duplicates a Wikipedia article goes.
Stages 1, 2 and 4 of MinHash are datatrove's; only stage 3 (clustering) is replaced.
"""

from __future__ import annotations

import hydra
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.writers import JsonlWriter
from omegaconf import DictConfig

from curation.data_root_claim import claim_and_run
from curation.executors import Stage
from curation.sources import Source
from curation.steps.accounting import AccountedStep, removed_writer
from curation.steps.priority_dedup import (
    PriorityMinhashCluster,
    RankBlockReader,
    SourcePriority,
    normalized_text,
    rank_blocks,
)
from data_contract.layout import DataLayout


def dedup_stages(cfg: DictConfig, sources: list[Source], layout: DataLayout, after: tuple[str, ...]) -> list[Stage]:
    """Exact dedup (3 datatrove stages) then MinHash (4), writing `work/<source>/dedup/`."""
    blocks = rank_blocks(sources)
    tasks = sum(t for _, t in blocks)
    work = str(layout.root / "work")
    minhash = cfg.dedup.minhash.enabled
    first_output = "exact" if minhash else "dedup"

    def writer(stage: str) -> JsonlWriter:
        return JsonlWriter(work, output_filename="${source}/" + stage + "/${rank}.jsonl.gz")

    minhash_config = MinhashConfig(n_grams=cfg.dedup.minhash.n_grams, num_buckets=cfg.dedup.minhash.num_buckets,
                                   hashes_per_bucket=cfg.dedup.minhash.hashes_per_bucket, seed=cfg.dedup.minhash.seed)
    exact_config = ExactDedupConfig(content_getter=normalized_text,
                                    document_priority=SourcePriority({s.name: s.priority for s in sources}))
    stages: list[Stage] = []
    pass_one: list[PipelineStep] = [RankBlockReader(work, "filtered", blocks)]
    if cfg.dedup.exact:
        sigs, dups = layout.dedup("exact_signatures"), layout.dedup("exact_duplicates")
        stages += [
            Stage("exact_signatures", [RankBlockReader(work, "filtered", blocks),
                                       ExactDedupSignature(str(sigs), exact_config)],
                  tasks, layout.logs("exact_signatures"), after),
            Stage("exact_find", [ExactFindDedups(str(sigs), str(dups), exact_config)], 1,
                  layout.logs("exact_find"), ("exact_signatures",)),
        ]
        pass_one.append(AccountedStep("exact_dedup", ExactDedupFilter(
            str(dups), exact_config, exclusion_writer=removed_writer(layout, "exact_dedup"))))
        after = ("exact_find",)
    pass_one.append(writer(first_output))
    if minhash:
        pass_one.append(MinhashDedupSignature(str(layout.dedup("minhash_signatures")), config=minhash_config))
    stages.append(Stage("dedup_pass_one", pass_one, tasks, layout.logs("dedup_pass_one"), after))
    if minhash:
        sigs, buckets, clusters = (layout.dedup(k) for k in ("minhash_signatures", "minhash_buckets", "minhash_clusters"))
        minhash_filter = MinhashDedupFilter(str(clusters), exclusion_writer=removed_writer(layout, "minhash"))
        stages += [
            Stage("minhash_buckets", [MinhashDedupBuckets(str(sigs), str(buckets), config=minhash_config)],
                  minhash_config.num_buckets, layout.logs("minhash_buckets"), ("dedup_pass_one",)),
            Stage("minhash_cluster", [PriorityMinhashCluster(str(buckets), str(clusters), minhash_config, blocks)],
                  1, layout.logs("minhash_cluster"), ("minhash_buckets",)),
            Stage("minhash_filter", [RankBlockReader(work, "exact", blocks, own_file=True),
                                     AccountedStep("minhash", minhash_filter), writer("dedup")],
                  tasks, layout.logs("minhash_filter"), ("minhash_cluster",)),
        ]
    return stages


def last_dedup_stage(cfg: DictConfig) -> str:
    return "minhash_filter" if cfg.dedup.minhash.enabled else "dedup_pass_one"


@hydra.main(version_base="1.3", config_path="../conf", config_name="curate")
def main(cfg: DictConfig) -> None:
    claim_and_run(cfg, lambda sources, layout: dedup_stages(cfg, sources, layout, after=()), with_dedup=True)


if __name__ == "__main__":
    main()
