"""Main-text extraction (datatrove's Trafilatura) with every removed page counted under why it was removed.

datatrove's extractor drops a page that timed out, crashed the worker or raised with the same silent
`continue` as a page with no main text, so the counts could not tell "nothing to extract" from
"the machine was busy". Here a removed page carries its reason (`extract_timeout`, `extract_crashed`,
`extract_error`) to the AccountedStep around it; a page with no text stays under the step's own label.

The per-page timeout only guards against pathological pages: a page that times out on a loaded
machine and not on an idle one makes the output depend on the machine's load, so the default
(conf/filters/default.yaml) is far above what any sample page takes.
"""

from __future__ import annotations

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.extractors.base import ExtractorSandbox
from datatrove.utils.logging import logger
from datatrove.utils.typeshelper import StatHints

TIMEOUT, CRASHED, ERROR = "extract_timeout", "extract_crashed", "extract_error"


class AccountedTrafilatura(Trafilatura):
    """Trafilatura whose removed pages say why in `metadata["filter_reason"]` and in the step's stats."""

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with ExtractorSandbox(timeout=self.timeout, warmup_text="") as sandbox:
            for doc in data:
                self.stat_update(StatHints.total)
                with self.track_time():
                    try:
                        doc.text = sandbox.process_document(doc.text, self.extract)
                    except TimeoutError:
                        self._removed(doc, TIMEOUT, f"no result within extract.timeout={self.timeout}s")
                        continue
                    except EOFError:
                        self._removed(doc, CRASHED, "the extraction worker died")
                        continue
                    except Exception as error:
                        self._removed(doc, ERROR, f"{type(error).__name__}: {error}")
                        continue
                if doc.text:
                    self.stat_update(StatHints.forwarded)
                    self.update_doc_stats(doc)
                    yield doc
                else:
                    self.stat_update(StatHints.dropped)

    def _removed(self, doc: Document, reason: str, why: str) -> None:
        doc.metadata["filter_reason"] = reason
        self.stat_update(reason)
        logger.warning(f"{doc.id}: {reason} ({why})")
