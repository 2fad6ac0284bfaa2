"""Content digests that let a resumed job verify what it resumes: a model folder, a data listing.

Resuming must check that it continues the same work, not count items: a model folder replaced at the same
path, a class folder added to a dataset or another batch size all leave counts plausible while mixing two
runs' outputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

__all__ = ["file_sha256", "model_folder_digest", "listing_digest"]


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def model_folder_digest(directory: str | Path) -> str:
    """sha256 over the `config.json` and every `*.safetensors` file of a model folder (names and contents)."""
    directory = Path(directory)
    files = sorted(
        p for p in directory.iterdir() if p.is_file() and (p.name == "config.json" or p.suffix == ".safetensors")
    )
    return hashlib.sha256(json.dumps([[p.name, file_sha256(p)] for p in files]).encode()).hexdigest()


def listing_digest(root: str | Path, files: Iterable[Path], labels: Iterable[int] | None = None) -> str:
    """sha256 over (path relative to `root`, size, label) of every listed file: what a data source holds."""
    root = Path(root)
    labels = list(labels) if labels is not None else None
    rows = []
    for i, f in enumerate(files):
        f = Path(f)
        name = str(f.relative_to(root)) if f.is_relative_to(root) else str(f)
        rows.append([name, f.stat().st_size, labels[i] if labels is not None else None])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()
