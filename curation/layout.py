"""Where every artifact of a curation run lives, relative to `paths.data_root`.

    curated/<source>/*.jsonl.gz, stats.json, manifest.json   kept documents (the contract)
    removed/<source>/<step>/*.jsonl.gz                       what each step removed
    report/curation.md, funnel.png                           the run report
    quality_classifier/                                      classifier + manifest
    work/<source>/<stage>/                                   intermediate documents
    work/logs/<stage>[/<source>]/                            datatrove logs, stats, completions
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    data_root: Path

    def curated(self, source: str) -> Path:
        return self.data_root / "curated" / source

    def removed(self, source: str) -> Path:
        return self.data_root / "removed" / source

    def work(self, source: str, stage: str) -> Path:
        return self.data_root / "work" / source / stage

    def inputs_list(self, source: str) -> Path:
        return self.data_root / "work" / source / "inputs.txt"

    def logs(self, stage: str, source: str | None = None) -> Path:
        path = self.data_root / "work" / "logs" / stage
        return path / source if source else path

    def dedup(self, kind: str) -> Path:
        return self.data_root / "work" / "dedup" / kind

    @property
    def classifier(self) -> Path:
        return self.data_root / "quality_classifier"

    @property
    def report(self) -> Path:
        return self.data_root / "report"
