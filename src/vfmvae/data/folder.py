"""Image folders: `root/<class>/*.png` gives labels by sorted class-folder name; a flat folder is unlabeled (-1)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from vfmvae.data.images import IMAGE_EXTENSIONS, BadImage
from vfmvae.data.transforms import ImageOptions

__all__ = ["ImageFolderDataset", "list_image_folder"]


def _loops_back(folder: Path, root: Path) -> bool:
    """A class folder that is a link to `root` or one of its parents would list the dataset again (and again)."""
    target, top = folder.resolve(), root.resolve()
    if top == target or target in top.parents:
        warnings.warn(f"{folder} links back to {target}, which contains the dataset itself; not followed", stacklevel=2)
        return True
    return False


def list_image_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Files, labels and class names of an image folder. Files are sorted, so the order is reproducible.

    Every regular file in a class folder is listed, whatever its extension, except hidden files; files
    that are not images are skipped and counted when read, instead of silently vanishing here.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    subdirs = sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and not _loops_back(p, root)
    )
    if subdirs:
        classes = [p.name for p in subdirs]
        files, labels = [], []
        for label, d in enumerate(subdirs):
            for f in sorted(d.rglob("*")):
                if f.is_file() and not f.name.startswith("."):
                    files.append(f)
                    labels.append(label)
    else:
        classes = []
        files = sorted(f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        labels = [-1] * len(files)
    if not files:
        raise FileNotFoundError(f"no images found in {root} (expected class folders of images, or images)")
    return files, labels, classes


class ImageFolderDataset(Dataset):
    """Map-style dataset of cropped uint8 images (ADM centre crop, or the official random square crop).

    `__getitem__` takes an index or an `(epoch, index)` pair (what `ResumableSampler` yields); the epoch
    only seeds the flip. A bad file returns `None`, which `collate_skip_bad` drops and counts.
    """

    def __init__(self, root: str | Path, options: ImageOptions) -> None:
        self.root = Path(root)
        self.options = options
        self.files, self.labels, self.classes = list_image_folder(self.root)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | None:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        path = self.files[index]
        try:
            image = self.options.prepare(path, epoch=epoch, index=index)
        except BadImage as err:
            return {"bad": True, "name": str(path), "reason": err.reason, "detail": str(err)}
        return {"image": image, "label": self.labels[index], "index": index, "name": str(path.relative_to(self.root))}
