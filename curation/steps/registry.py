"""The steps a source can list under `steps:` in its yaml, by name, built from their settings.

Each step is wrapped in an AccountedStep (its removals counted under their reason, kept under
`removed/<source>/<step>/`). The filters are datatrove's own; only the offline variants
and the Gutenberg stripper come from this package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.writers import JsonlWriter

from curation.steps.accounting import AccountedStep
from curation.steps.extraction import AccountedTrafilatura
from curation.steps.gutenberg import GutenbergStripper
from curation.steps.offline_filters import OfflineLanguageFilter, OfflineURLFilter


def _language(exclusion_writer: JsonlWriter, languages: list[str], threshold: float, model_path: str) -> PipelineStep:
    return OfflineLanguageFilter(model_path=model_path, languages=list(languages), language_threshold=threshold,
                                 exclusion_writer=exclusion_writer)


def _with_writer(cls: type[PipelineStep]) -> Callable[..., PipelineStep]:
    return lambda exclusion_writer, **params: cls(exclusion_writer=exclusion_writer, **params)


def _without_writer(cls: type[PipelineStep]) -> Callable[..., PipelineStep]:
    return lambda exclusion_writer, **params: cls(**params)


STEPS: dict[str, Callable[..., PipelineStep]] = {
    "extract": _without_writer(AccountedTrafilatura),
    "url_filter": _with_writer(OfflineURLFilter),
    "language": _language,
    "gopher_repetition": _with_writer(GopherRepetitionFilter),
    "gopher_quality": _with_writer(GopherQualityFilter),
    "c4_quality": _with_writer(C4QualityFilter),
    "fineweb_quality": _with_writer(FineWebQualityFilter),
    "pii": _without_writer(PIIFormatter),
    "strip_gutenberg": _without_writer(GutenbergStripper),
}


def build_step(name: str, params: dict[str, Any], removed: JsonlWriter) -> AccountedStep:
    """Step `name` with `params`; what it removes goes to `removed` (see `accounting.removed_writer`)."""
    return AccountedStep(name, STEPS[name](removed, **params), removed_writer=removed)
