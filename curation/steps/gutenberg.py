"""A step datatrove lacks: cut a Project Gutenberg file down to the book."""

from __future__ import annotations

import re

from datatrove.pipeline.formatters.base import BaseFormatter

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
