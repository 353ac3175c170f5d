"""datatrove filters made to run with no network, and a step datatrove lacks (Project Gutenberg).

datatrove's URLFilter fetches the public suffix list and its LanguageFilter downloads lid.176
at first use; both fail on machines without internet. Here the suffix list is the snapshot
tldextract ships and the language model a local file (see `curation.assets`).
"""

from __future__ import annotations

import re

from datatrove.data import Document
from datatrove.pipeline.filters import LanguageFilter, URLFilter
from datatrove.pipeline.formatters.base import BaseFormatter


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


# The markers Project Gutenberg has used around the book text, e.g.
#   *** START OF THIS PROJECT GUTENBERG EBOOK BOTCHAN ***   /   *** END OF THE PROJECT GUTENBERG EBOOK ...
GUTENBERG_START = re.compile(r"^\*{3}\s*START OF (THIS|THE) PROJECT GUTENBERG EBOOK[^\n]*$", re.MULTILINE | re.IGNORECASE)
GUTENBERG_END = re.compile(
    r"^(\*{3}\s*END OF (THIS|THE) PROJECT GUTENBERG EBOOK|End of (the )?Project Gutenberg'?s?)[^\n]*$",
    re.MULTILINE | re.IGNORECASE,
)
GUTENBERG_PRODUCER = re.compile(r"\A\s*(Produced by|This e-?book was produced by)[^\n]*\n", re.IGNORECASE)


class GutenbergStripper(BaseFormatter):
    """Cuts a Project Gutenberg file down to the book: header, producer credits and license go.

    Texts without the markers pass unchanged, so the step is safe on any book source.
    """

    name = "📚 Project Gutenberg header/license"

    def format(self, text: str) -> str:
        start = GUTENBERG_START.search(text)
        if start is None:
            return text
        end = GUTENBERG_END.search(text, start.end())
        body = text[start.end(): end.start() if end else len(text)]
        return GUTENBERG_PRODUCER.sub("", body, count=1).strip() + "\n"
