"""Image sets for evaluation: ADM `.npz` batches (streamed) or folders of PNG/JPEG files, as uint8 NHWC."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from vfmvae.data.images import IMAGE_EXTENSIONS

__all__ = ["ImageSet", "open_image_set"]


class ImageSet:
    """A sized, re-iterable source of uint8 (B, H, W, 3) batches with one image size."""

    def __init__(
        self, source: Path, count: int, shape: tuple[int, int, int], kind: str, files: list[Path] | None = None
    ):
        self.source, self.count, self.shape, self.kind, self.files = source, count, shape, kind, files

    def __len__(self) -> int:
        return self.count

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[np.ndarray]:
        n = self.count if limit is None else min(limit, self.count)
        if self.kind == "npz":
            yield from _stream_npz(self.source, "arr_0", batch_size, n)
            return
        for start in range(0, n, batch_size):
            yield np.stack([_read_rgb(p, self.shape) for p in self.files[start : min(start + batch_size, n)]])


def _read_rgb(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"))
    if arr.shape != shape:
        raise ValueError(
            f"mixed image sizes: {path} is {arr.shape[1]}x{arr.shape[0]}, the first image is "
            f"{shape[1]}x{shape[0]}; evaluation needs one size (resize/crop first)"
        )
    return arr


def npz_header(zf: zipfile.ZipFile, name: str):
    with zf.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version} for {name}")
        return shape, fortran, dtype, f.tell()


def _stream_npz(path: Path, name: str, batch_size: int, limit: int) -> Iterator[np.ndarray]:
    """Read `name` from an .npz batch by batch, without loading 50,000 images into memory."""
    with zipfile.ZipFile(path) as zf:
        shape, fortran, dtype, offset = npz_header(zf, name)
        if fortran or dtype.hasobject:
            yield from (b for b in np.array_split(np.load(path)[name][:limit], max(1, -(-limit // batch_size))))
            return
        item = int(np.prod(shape[1:])) * dtype.itemsize
        with zf.open(f"{name}.npy") as f:
            f.read(offset)
            for start in range(0, limit, batch_size):
                count = min(batch_size, limit - start)
                data = f.read(count * item)
                if len(data) != count * item:
                    raise ValueError(f"{path}: {name} is truncated")
                yield np.frombuffer(data, dtype=dtype).reshape(count, *shape[1:])


def open_image_set(source: str | Path, files: list[Path] | None = None) -> ImageSet:
    """An .npz (arr_0) or a folder of images (every image under it, or only `files` when given)."""
    source = Path(source)
    if source.is_file() and source.suffix == ".npz":
        try:
            with zipfile.ZipFile(source) as zf:
                if "arr_0.npy" not in zf.namelist():
                    raise ValueError(f"{source}: no arr_0 (ADM batches keep images in arr_0)")
                shape, _, dtype, _ = npz_header(zf, "arr_0")
        except zipfile.BadZipFile:
            raise ValueError(f"{source}: not a valid .npz file") from None
        if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8:
            raise ValueError(f"{source}: arr_0 must be uint8 (N, H, W, 3), got {dtype} {shape}")
        return ImageSet(source, shape[0], tuple(shape[1:]), "npz")
    if source.is_dir():
        if files is None:
            files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise FileNotFoundError(f"no images in {source}")
        with Image.open(files[0]) as img:
            shape = (img.height, img.width, 3)
        return ImageSet(source, len(files), shape, "dir", files)
    raise FileNotFoundError(f"image set not found: {source} (pass an .npz with arr_0 or a folder of images)")
