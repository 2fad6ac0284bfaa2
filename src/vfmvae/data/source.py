"""What `--data` / `data.source` may name, one rule for every command that reads images: an image folder, a `.tar`
shard, a folder of shards, a brace pattern (`train-{000000..000146}.tar`, every file must exist) or a glob
(`/data/train-*.tar`, quoted so that the shell leaves it to us; at least one regular file must match).

`source_problem` is the check a recipe's `data.source` gets at load time (before anything expensive runs);
`expand_pattern` lists the shards of a pattern for the loader.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Annotated

from vfmvae.config import MustExist

__all__ = ["DataSourcePath", "expand_pattern", "is_pattern", "source_problem"]

_GLOB_CHARACTERS = ("*", "?", "[")


def is_pattern(text: str | Path) -> bool:
    """A brace pattern or a glob (not a plain path)."""
    text = str(text)
    return "{" in text or any(c in text for c in _GLOB_CHARACTERS)


def expand_pattern(text: str | Path) -> list[Path]:
    """The files a brace pattern or glob names, in order (braces: as written; globs: sorted). Raises
    FileNotFoundError naming the pattern when a braced file is missing or a glob matches no regular file."""
    text = str(text)
    if "{" in text:
        from braceexpand import braceexpand

        paths = [Path(p) for p in braceexpand(text)]
        missing = [p for p in paths if not p.is_file()]  # is_file() is False for FIFOs and devices too
        if missing:
            raise FileNotFoundError(
                f"shard pattern {text}: {len(missing)} files missing or not regular files, e.g. {missing[0]}"
            )
        return paths
    paths = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
    if not paths:
        raise FileNotFoundError(f"shard pattern {text}: no regular file matches")
    return paths


def source_problem(value: str | Path) -> str | None:
    """None when `value` names data as above, else what is wrong (for a one-line error naming the key)."""
    if is_pattern(value):
        try:
            expand_pattern(value)
        except FileNotFoundError as err:
            return str(err)
        return None
    return None if Path(value).exists() else f"path does not exist: {value}"


DataSourcePath = Annotated[Path, MustExist(source_problem)]
"""A data source checked at load time by `source_problem` (folders, shards, brace patterns, globs)."""
