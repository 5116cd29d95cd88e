"""Errors that reach a user: each says what was wrong and what is accepted.

Every face (CLI, web, notebook) catches :class:`ConvlensError` and shows its message without a
traceback; anything else escaping is a bug in convlens.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConvlensError(ValueError):
    """A problem with the user's input (file, image, model, request or parameter)."""


class NotFoundError(ConvlensError, LookupError):
    """A name (method, layer, model, data set) that is not known."""


def unknown_name(kind: str, name: str, known: Iterable[str], *, limit: int = 40) -> NotFoundError:
    """Build the error for an unknown ``name``, suggesting close matches and listing the rest."""
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(names[:limit]) + (
        f", ... ({len(names)} in all)" if len(names) > limit else ""
    )
    return NotFoundError(f"unknown {kind} {name!r}.{hint} Known: {shown}.")
