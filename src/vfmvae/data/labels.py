"""Class labels written as text (a tar shard's `.cls` member, `--classes 1,5,9`): ASCII digits only.

Python's `int()` also reads other scripts' digits ('٣' is 3), full-width digits and underscores ('1_000'); a label
file holding such text is damaged or foreign, not class 3, so it is refused like any other bad label.
"""

from __future__ import annotations

import re

__all__ = ["parse_label", "is_label"]

_LABEL = re.compile(r"-?[0-9]{1,18}")


def parse_label(text: str) -> int:
    """The integer written in `text` (surrounding ASCII whitespace allowed); ValueError for anything else."""
    stripped = text.strip(" \t\r\n")
    if not _LABEL.fullmatch(stripped):
        raise ValueError(f"label {text[:40]!r} is not an integer written in ASCII digits")
    return int(stripped)


def is_label(text: str) -> bool:
    """Whether `text` is an integer written in ASCII digits (what `parse_label` accepts)."""
    try:
        parse_label(text)
    except ValueError:
        return False
    return True
