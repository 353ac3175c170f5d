"""DataLayout: where each folder of the contract lies under one `paths.data_root`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data_contract.tokenizer_files import TOKENIZER_MODEL


@dataclass(frozen=True)
class DataLayout:
    """Every path under one `paths.data_root`."""

    root: Path

    def curated(self, source: str) -> Path:
        return self.root / "curated" / source

    def removed(self, source: str) -> Path:
        return self.root / "removed" / source

    def work(self, source: str, stage: str) -> Path:
        return self.root / "work" / source / stage

    def inputs_list(self, source: str) -> Path:
        return self.root / "work" / source / "inputs.txt"

    def logs(self, stage: str, source: str | None = None) -> Path:
        path = self.root / "work" / "logs" / stage
        return path / source if source else path

    def dedup(self, kind: str) -> Path:
        return self.root / "work" / "dedup" / kind

    @property
    def classifier(self) -> Path:
        return self.root / "quality_classifier"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokenizer_model(self) -> Path:
        return self.tokenizer / TOKENIZER_MODEL

    def tokens(self, source: str) -> Path:
        return self.root / "tokens" / source

    def mix(self, mixture: str) -> Path:
        return self.root / "mix" / mixture

    def relative(self, path: Path) -> str:
        """`path` as the manifests name it: relative to the data root, so the root can move."""
        return path.resolve().relative_to(self.root.resolve()).as_posix()
