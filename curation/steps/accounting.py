"""Per-step accounting: what goes in, what comes out, and what was removed and why.

datatrove counts forwarded/dropped documents per filter; the report also needs characters, a
reason for every removal, and steps that rewrite text (extraction, PII masking) accounted
for, so that for every step `in = out + removed` holds for documents and
`in = out + removed + edited` for characters. What a step removes is counted under its reason
here and kept, as it entered the step, by the writer `removed_writer` builds.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers import JsonlWriter
from datatrove.pipeline.writers.disk_base import DiskWriter

from data_contract.layout import DataLayout

IN_DOCS, IN_CHARS = "in_docs", "in_chars"
OUT_DOCS, OUT_CHARS = "out_docs", "out_chars"
EDITED_CHARS = "edited_chars"  # characters a step cut from (or, if negative, added to) documents it kept
REMOVED_DOCS, REMOVED_CHARS, ERRORS = "removed_docs/", "removed_chars/", "errors/"


def count_removed(step: PipelineStep, reason: str, chars: int) -> None:
    """Counts one removed document (and its characters) under `reason`."""
    step.stat_update(REMOVED_DOCS + reason)
    step.stat_update(REMOVED_CHARS + reason, value=chars)


def count_kept(step: PipelineStep, doc: Document) -> None:
    """Counts one document the step passes on."""
    step.stat_update(OUT_DOCS)
    step.stat_update(OUT_CHARS, value=len(doc.text))


def removed_writer(layout: DataLayout, step: str, source: str | None = None) -> JsonlWriter:
    """Keeps what `step` removed under removed/<source>/<step>/, so nothing is lost silently.

    Without `source` (a stage over every source) each document goes under its own `source` metadata.
    """
    if source is None:
        return JsonlWriter(str(layout.root / "removed"), output_filename="${source}/" + step + "/${rank}.jsonl.gz")
    return JsonlWriter(str(layout.removed(source) / step), output_filename="${rank}.jsonl.gz")


class AccountedStep(PipelineStep):
    """Wraps one document-preserving step (filter, formatter, extractor, dedup filter) and accounts for it.

    The wrapped step must yield the very documents it receives, in order (all of datatrove's
    filters and formatters do); a document that goes in and does not come out was removed, under
    its `filter_reason` or the step's label. Removed documents are written as they entered the
    step, by the step's own exclusion writer when it has one, else by `removed_writer`.
    """

    def __init__(self, label: str, step: PipelineStep, removed_writer: DiskWriter | None = None):
        super().__init__()
        self.label = label
        self.step = step
        self.name, self.type = label, step.type
        self.stats = step.stats  # one stats block per step: datatrove's counters and ours
        self.stats.name = label
        self.removed_writer = None if getattr(step, "exclusion_writer", None) else removed_writer

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        in_flight: OrderedDict[int, tuple[Document, str]] = OrderedDict()

        def feed() -> DocumentsPipeline:
            for doc in data:
                self.stat_update(IN_DOCS)
                self.stat_update(IN_CHARS, value=len(doc.text))
                in_flight[id(doc)] = (doc, doc.text)
                yield doc

        with self.removed_writer or contextlib.nullcontext() as writer:

            def remove(doc: Document, original_text: str) -> None:
                count_removed(self, doc.metadata.get("filter_reason") or self.label, len(original_text))
                if writer:
                    doc.text = original_text
                    writer.write(doc, rank)

            for doc in self.step.run(feed(), rank, world_size):
                if id(doc) not in in_flight:
                    raise RuntimeError(f"{self.label}: AccountedStep needs a step that yields the documents it receives")
                while (entry := in_flight.popitem(last=False))[0] != id(doc):
                    remove(*entry[1])
                self.stat_update(EDITED_CHARS, value=len(entry[1][1]) - len(doc.text))
                count_kept(self, doc)
                yield doc
            while in_flight:
                remove(*in_flight.popitem(last=False)[1])


def _total(value: Any) -> float:
    return value.get("total", 0) if isinstance(value, dict) else value


def task_stats(logging_dir: Path, ranks: set[int] | None = None) -> dict[str, dict[str, float]]:
    """Stat totals per step name, summed over the tasks (optionally only `ranks`) of one stage."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for path in sorted((logging_dir / "stats").glob("*.json")):
        if ranks is not None and int(path.stem) not in ranks:
            continue
        for step in json.loads(path.read_text()):
            for label, value in step["stats"].items():
                totals[step["name"]][label] += _total(value)
    return totals
