"""Refusal: the one exception for bad input or settings, shared by curation and training."""

from __future__ import annotations


class Refusal(SystemExit):
    """Bad input or settings, refused before any work: the message names the file or key and the fix.

    A SystemExit, so that an uncaught one prints that line alone (no traceback) and exits non-zero.
    """
