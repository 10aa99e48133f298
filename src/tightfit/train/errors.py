"""Errors and notes for the user of train/bench/generate.

``TrainInputError``: bad user input. The CLI prints its message as a single line and exits
with code 2, so every message names the bad value and what is allowed instead of
surfacing a traceback. ``note`` prints a one-line remark (data summary, a clamp, a
fallback) to stderr, where it never mixes with a command's JSON output.
"""

from __future__ import annotations

import difflib
import sys
from typing import Iterable


class TrainInputError(ValueError):
    """A file, name or size given by the user cannot be used."""


class NothingToDo(Exception):
    """A resumed run has already reached its last step: the message says where its result is."""


def did_you_mean(value: str, allowed: Iterable[str], what: str, listing: str) -> str:
    """'unknown <what> 'x'; did you mean a, b? (<listing>)' -- the close names, not all of them."""
    close = difflib.get_close_matches(value, list(allowed), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown {what} {value!r}{hint} ({listing})"


def note(message: str) -> None:
    print(f"tightfit: {message}", file=sys.stderr, flush=True)
