"""Class names of a diffusion export: the image-folder class names its latent cache was built from, in label order.

    DIFFUSION/class_names.json    ["cats", "dogs", ...]   (label i is class_names[i])

`vfmvae cache-latents` records them in cache.json (`class_names`, from the folder names of `root/<class>/...`; tar
shards carry only numeric labels, so none are recorded), `vfmvae train diffusion` copies them into its export, and
`vfmvae sample --classes cats,dogs` maps them to labels. An export without the file takes only numeric ids.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CLASS_NAMES_FILE", "read_class_names", "write_class_names", "label_of"]

CLASS_NAMES_FILE = "class_names.json"


def write_class_names(folder: str | Path, names: Sequence[str] | None) -> None:
    """Record `names` in `folder` (nothing when None or empty)."""
    from vfmvae.checkpoint.atomic import atomic_write_text

    if names:
        atomic_write_text(Path(folder) / CLASS_NAMES_FILE, json.dumps([str(n) for n in names]) + "\n")


def read_class_names(folder: str | Path) -> list[str] | None:
    path = Path(folder) / CLASS_NAMES_FILE
    if not path.is_file():
        return None
    names = json.loads(path.read_text())
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: expected a JSON list of class names")
    return names


def label_of(word: str, names: Sequence[str] | None, option: str = "--classes") -> int:
    """The label of one entry of a class list: an integer id, or a recorded class name."""
    from vfmvae.data.labels import parse_label

    word = word.strip()
    try:
        return parse_label(word)  # ASCII digits only: '٣' is not class 3
    except ValueError:
        pass
    if not names:
        raise ValueError(
            f"{option}: {word!r} is not a class id, and this model records no class names (class_names.json: "
            "written for models trained on a cache of an image folder with class subfolders); use class ids"
        )
    if word in names:
        return list(names).index(word)
    close = difflib.get_close_matches(word, list(names), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} classes)" if len(names) > 20 else "")
    raise ValueError(f"{option}: unknown class name {word!r} ({hint}the model's classes: {shown})")
