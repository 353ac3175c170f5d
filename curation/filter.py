"""Read -> extract -> filter, per source, as configured in its yaml.

    python -m curation.filter [overrides]      # writes work/<source>/filtered/

For a `quality: scored` source, the text right after extraction is also kept under
work/<source>/extracted/: the quality classifier's negative examples.
"""

from __future__ import annotations

import hydra
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers import JsonlWriter
from omegaconf import DictConfig

from curation.data_root_claim import claim_and_run
from curation.executors import Stage
from curation.sources import Source, write_inputs_list
from curation.steps.accounting import removed_writer
from curation.steps.error_check import ErrorLossCheck
from curation.steps.readers import make_reader
from curation.steps.registry import build_step
from data_contract.layout import DataLayout


def negatives_writer(source: Source, layout: DataLayout) -> JsonlWriter:
    return JsonlWriter(str(layout.work(source.name, "extracted")), output_filename="${rank}.jsonl.gz")


def filter_pipeline(source: Source, layout: DataLayout) -> list[PipelineStep]:
    paths_file = None if source.format == "hf" else write_inputs_list(source, layout)
    reader_options = {**source.reader, "default_metadata": {"source": source.name}}
    pipeline: list[PipelineStep] = [make_reader(source.format, source.data_folder, paths_file, reader_options)]
    negatives_after = "extract" if "extract" in source.steps else None
    if source.quality == "scored" and negatives_after is None:
        pipeline.append(negatives_writer(source, layout))
    for name, params in source.steps.items():
        pipeline.append(build_step(name, params, removed_writer(layout, name, source.name)))
        if source.quality == "scored" and name == negatives_after:
            pipeline.append(negatives_writer(source, layout))
    pipeline.append(JsonlWriter(str(layout.work(source.name, "filtered")), output_filename="${rank}.jsonl.gz"))
    return pipeline


def filter_stages(sources: list[Source], layout: DataLayout) -> list[Stage]:
    """One stage per source, then the check that no source lost every document to errors."""
    stages = [Stage(f"filter_{s.name}", filter_pipeline(s, layout), s.tasks, layout.logs("filter", s.name))
              for s in sources]
    check = ErrorLossCheck(layout, {s.name: list(s.steps) for s in sources})
    return [*stages, Stage("filter_check", [check], 1, layout.logs("filter_check"), tuple(s.name for s in stages))]


@hydra.main(version_base="1.3", config_path="../conf", config_name="curate")
def main(cfg: DictConfig) -> None:
    claim_and_run(cfg, filter_stages, with_dedup=False)


if __name__ == "__main__":
    main()
