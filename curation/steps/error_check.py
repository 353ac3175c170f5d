"""A one-task stage after filtering: a source that lost every document to errors stops the run.

A step that fails on every document (a broken install, a model file that does not load, a machine
too slow for the extraction timeout) removes them all under an error reason; the counts then show a
0% funnel and every later stage works on nothing. That is a broken run, not a result, so it stops
here with one line instead of going on to dedup, the classifier and training data.
"""

from __future__ import annotations

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from curation.steps.accounting import IN_DOCS, OUT_DOCS, REMOVED_DOCS, task_stats
from curation.steps.extraction import CRASHED, ERROR, TIMEOUT
from data_contract.layout import DataLayout
from data_contract.refusal import Refusal

ERROR_REASONS = (TIMEOUT, CRASHED, ERROR)


def losses_to_errors(layout: DataLayout, source: str, steps: list[str]) -> str | None:
    """The first step of `source` that removed every document it received for error reasons, described."""
    stats = task_stats(layout.logs("filter", source))
    for step in steps:
        counts = stats.get(step, {})
        docs_in = int(counts.get(IN_DOCS, 0))
        errors = {reason: int(counts.get(REMOVED_DOCS + reason, 0)) for reason in ERROR_REASONS}
        if docs_in and not counts.get(OUT_DOCS) and sum(errors.values()) == docs_in:
            reasons = ", ".join(f"{reason} ({n})" for reason, n in errors.items() if n)
            return (f"source {source} lost all {docs_in} documents at step {step} to {reasons}: the step fails "
                    f"here, not the data; see {layout.logs('filter', source)}/logs, fix it (e.g. `make setup`, "
                    f"or raise filters.{step}.timeout), then rerun")
    return None


class ErrorLossCheck(PipelineStep):
    """Refuses to go on when any source's filtering lost every document to errors."""

    type = "🚦 - CHECK"
    name = "no source lost to errors"

    def __init__(self, layout: DataLayout, steps_by_source: dict[str, list[str]]) -> None:
        super().__init__()
        self.layout, self.steps_by_source = layout, steps_by_source

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for source, steps in self.steps_by_source.items():
            if (problem := losses_to_errors(self.layout, source, steps)) is not None:
                raise Refusal(f"filter: {problem}")
        return data
