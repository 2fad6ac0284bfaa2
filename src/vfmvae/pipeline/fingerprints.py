"""Digests that tell whether a step's inputs or outputs changed, cheap enough for every `pipeline status`.

* An external input file (a recipe, weights) is identified by its sha256, computed once and then re-used while its
  size and modification time stay the same (`InputDigests`, cached in OUT/.pipeline/inputs.json).
* An external input folder (a dataset of a million files, a model folder) by its listing: relative names and sizes
  (`vfmvae.checkpoint.digest.listing_digest`, as latent caches identify their data); nothing is read.
* A step's outputs by their listing with sizes and modification times (`outputs_digest`): recorded when the step
  finishes, compared by `status`, so an output deleted or written by something else afterwards is noticed. Every
  step downstream records this digest of what it read, so a step that ran again makes them stale.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vfmvae.checkpoint.atomic import atomic_write_text
from vfmvae.checkpoint.digest import file_sha256, listing_digest

__all__ = ["InputDigests", "outputs_digest", "walk_files"]


def walk_files(root: Path) -> list[Path]:
    """Files under `root` (or `root` itself), sorted; names starting with a dot (locks, temporary files) skipped."""
    if root.is_file():
        return [root]
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [Path(folder) / name for name in files if not name.startswith(".")]
    return sorted(found)


def outputs_digest(paths: Iterable[Path]) -> str | None:
    """sha256 over (path, size, modification time) of every file of `paths`; None if one of them is missing."""
    rows: list[Any] = []
    for path in paths:
        if not path.exists():
            return None
        for file in walk_files(path):
            info = file.stat()
            rows.append([str(file.relative_to(path.parent)), info.st_size, info.st_mtime_ns])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


class InputDigests:
    """Content digests of external inputs, cached by (size, mtime) in `cache_file` so a file is hashed once."""

    def __init__(self, cache_file: Path) -> None:
        self.cache_file = cache_file
        try:
            self.cache: dict[str, Any] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
        except ValueError:  # an unreadable cache is only a cache
            self.cache = {}
        self.memo: dict[str, str] = {}  # folders listed in this process
        self.dirty = False

    def digest(self, path: Path) -> str:
        key = str(path.resolve())
        if not path.exists():
            return "missing"
        if path.is_dir():
            if key not in self.memo:
                files = walk_files(path)
                self.memo[key] = "listing:" + listing_digest(path, files)
            return self.memo[key]
        info = path.stat()
        stamp = [info.st_size, info.st_mtime_ns]
        cached = self.cache.get(key)
        if cached is None or cached.get("stat") != stamp:
            cached = {"stat": stamp, "sha256": file_sha256(path)}
            self.cache[key] = cached
            self.dirty = True
        return "sha256:" + cached["sha256"]

    def save(self) -> None:
        if self.dirty and self.cache_file.parent.is_dir():
            atomic_write_text(self.cache_file, json.dumps(self.cache, indent=1) + "\n")
            self.dirty = False
