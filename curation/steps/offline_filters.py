"""datatrove filters made to run with no network.

datatrove's URLFilter fetches the public suffix list and its LanguageFilter downloads lid.176
at first use; both fail on machines without internet. Here the suffix list is the snapshot
tldextract ships and the language model a local file (see `curation.assets`).
"""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters import LanguageFilter, URLFilter


class OfflineURLFilter(URLFilter):
    """datatrove's URLFilter on its shipped block lists and tldextract's bundled suffix list."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        from tldextract import TLDExtract

        self.tldextractor = TLDExtract(suffix_list_urls=())


class OfflineLanguageFilter(LanguageFilter):
    """fastText lid.176 from a local file; a removal names the language that was detected."""

    def __init__(self, model_path: str, **kwargs):
        super().__init__(backend="ft176", **kwargs)
        self.model.MODEL_URL = model_path  # read when the model is first loaded, in the task process

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if super().filter(doc):
            return True
        language = doc.metadata["language"]
        return False, f"language_{language}" if language not in (self.languages or ()) else "language_low_confidence"
