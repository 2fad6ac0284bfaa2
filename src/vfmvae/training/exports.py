"""Versioned exports: training longer adds an export, it never replaces one that others may have built on.

    RUN/exports/images-000000002400/   the export after 2,400 training images (a model folder)
    RUN/exports/images-000000004800/   the export after the run was continued to 4,800 images
    RUN/export -> exports/images-000000004800   a relative symlink to the newest, swapped atomically

A latent cache, a diffusion run or a sample folder records the tokenizer or model folder it used by its resolved
path (`Path.resolve()` follows the link) and its content digest, so what was built on the 2,400-image export keeps
finding that folder, unchanged, after the run is continued. Exporting the same length again (re-running a finished
command) rewrites the same folder with the same weights.

Runs written before versioning have `RUN/export` as a real folder: it is moved (never deleted) into
`RUN/exports/` under the image count its training.json records, or `unversioned-N`, before the link takes its
place. `--resume fresh` removes `RUN/exports/` with the rest of the run's outputs, as its help says.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["EXPORT_LINK", "EXPORTS_DIR", "export_name", "publish_export"]

EXPORT_LINK = "export"
EXPORTS_DIR = "exports"


def export_name(images: int) -> str:
    """The folder name of the export after `images` training images of this run."""
    return f"images-{int(images):012d}"


def publish_export(run_dir: str | Path, images: int, write: Callable[[Path], None]) -> Path:
    """`write(folder)` the export of a run that has trained on `images` images into RUN/exports/images-N, then point
    RUN/export at it. Returns the versioned folder."""
    run_dir = Path(run_dir)
    versions = run_dir / EXPORTS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    link = run_dir / EXPORT_LINK
    if link.exists() and not link.is_symlink():
        _keep_unversioned(link, versions)
    target = versions / export_name(images)
    write(target)
    tmp = run_dir / f".{EXPORT_LINK}.link-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(Path(EXPORTS_DIR) / target.name, tmp)  # relative: the run folder can be moved or copied whole
    os.replace(tmp, link)  # one rename: readers see the old export or the new one, never none
    return target


def _keep_unversioned(folder: Path, versions: Path) -> Path:
    """Move an export written before versioning into RUN/exports (named by its image count when it records one)."""
    name = None
    state = folder / "training.json"  # tokenizer exports record the images of all stages so far
    if state.is_file():
        try:
            name = f"unversioned-images-total-{int(json.loads(state.read_text())['images_total']):012d}"
        except (ValueError, KeyError, TypeError):
            name = None
    candidates = [name] if name else []
    candidates += [f"unversioned-{i}" for i in range(1, 1000)]
    for candidate in candidates:
        destination = versions / candidate
        if not destination.exists():
            os.rename(folder, destination)
            return destination
    raise FileExistsError(f"{versions} holds 1000 unversioned exports; move some away and re-run")
