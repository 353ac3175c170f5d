"""All curation stages: filter -> dedup -> quality -> tokenizer, token files, mixture plan -> report.

    python -m curation.run [overrides]
    python -m curation.run only=[commoncrawl] sources.commoncrawl.input='/data/cc/*.warc.gz'
    python -m curation.run executor=slurm            # what slurm/curate.sh runs

Every source and setting is checked before the first stage starts. A rerun skips the tasks
that completed (datatrove's completion markers) and redoes the others from their start.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from curation.data_root_claim import claim_and_run
from curation.dedup import dedup_stages, last_dedup_stage
from curation.executors import Stage, layout_of
from curation.filter import filter_stages
from curation.quality import quality_stages
from curation.report import CurationReport
from curation.sources import Source
from curation.training_data import PrepareTrainingData, probe_tokenizer_libraries
from data_contract.layout import DataLayout


def curation_stages(cfg: DictConfig, sources: list[Source], layout: DataLayout) -> list[Stage]:
    """The report comes last, after the training data when this run prepares it, so it counts their tokens."""
    stages = filter_stages(sources, layout)
    stages += dedup_stages(cfg, sources, layout, after=tuple(s.name for s in stages))
    quality = quality_stages(cfg, sources, layout, after=(last_dedup_stage(cfg),))
    stages += quality
    report_after = tuple(s.name for s in quality)
    prepare = cfg.prepare_training_data
    if prepare == "auto":
        prepare = cfg.only is None and cfg.get("mixture") is not None
    if prepare:
        probe_tokenizer_libraries()
        stages.append(Stage("training_data", [PrepareTrainingData(cfg)], 1, layout.logs("training_data"),
                            after=report_after))
        report_after = ("training_data",)
    stages.append(Stage("report", [CurationReport(cfg, sources, layout)], 1, layout.logs("report"),
                        after=report_after))
    return stages


@hydra.main(version_base="1.3", config_path="../conf", config_name="curate")
def main(cfg: DictConfig) -> None:
    claim_and_run(cfg, lambda sources, layout: curation_stages(cfg, sources, layout), with_dedup=True)
    if cfg.executor.kind == "local":
        print(f"curation report: {layout_of(cfg).report / 'curation.md'}")


if __name__ == "__main__":
    main()
