"""Each configured step runs once on a small built-in document before any task starts.

A step whose library does not import or whose model file is missing would otherwise fail inside every
task, or (extraction) quietly drop every page; on a cluster that is found out hours later. Here it
stops the run at once, in one line naming the step, what failed and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datatrove.data import Document

from curation.sources import Source
from curation.steps.extraction import AccountedTrafilatura
from curation.steps.registry import STEPS
from data_contract.refusal import Refusal

PROBE_TEXT = (
    "The town council met on Tuesday evening to discuss the new library. Most members agreed that the old "
    "building was too small for the growing number of readers, and that a larger reading room was needed.\n"
    "The library will stay open during the work. Books can be borrowed as usual, and the staff will help "
    "anyone who needs to find a title. The council expects the new rooms to open next spring.\n"
) * 3
PROBE_HTML = f"<html><head><title>Library</title></head><body><article><p>{PROBE_TEXT}</p></article></body></html>"
FIXES = {
    "extract": "reinstall the environment with `make setup` (trafilatura needs lxml_html_clean)",
    "language": "fetch the model with `python -m curation.assets` or point filters.language.model_path at lid.176.ftz",
}


def _probe(name: str, params: dict[str, Any]) -> None:
    """Run step `name` on the probe document; raises with what went wrong."""
    if name == "language" and not Path(params["model_path"]).is_file():
        raise FileNotFoundError(f"no language-ID model at {params['model_path']}")
    step = STEPS[name](None, **params)
    if isinstance(step, AccountedTrafilatura):
        # what the extraction worker calls, here in this process: a worker that cannot import trafilatura
        # never reports ready, so through the sandbox the error would only show as a timeout
        if not step.extract(PROBE_HTML):
            raise RuntimeError("no text extracted from the built-in page")
        return
    document = Document(text=PROBE_TEXT, id="preflight",
                        metadata={"url": "https://example.org/library", "source": "preflight"})
    list(step.run(iter([document]), 0, 1))


def probe_steps(sources: list[Source]) -> None:
    """Probe every distinct (step, settings) the sources use; the first failure stops the run."""
    probed: set[tuple[str, str]] = set()
    for source in sources:
        for name, params in source.steps.items():
            key = (name, repr(sorted(params.items())))
            if key in probed:
                continue
            probed.add(key)
            try:
                _probe(name, params)
            except Exception as error:
                fix = FIXES.get(name, "reinstall the environment with `make setup`")
                what = " ".join(str(error).split())  # one line, whatever the library's message
                raise Refusal(f"preflight: step {name} of source {source.name} cannot run here "
                              f"({type(error).__name__}: {what}); {fix}") from None
