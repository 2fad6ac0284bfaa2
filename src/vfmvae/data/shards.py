"""WebDataset-style tar shards, streamed, split by rank and worker, resumable to the exact sample.

A shard is a tar whose consecutive members that share a key (the file name up to its first dot) form
one sample: `00000042.png` (or .jpg/.jpeg/.webp) and optionally `00000042.cls` (integer label). This is
the layout `webdataset.TarWriter`, timm's `imagenet-1k-wds` and `vfmvae data synthetic --shards` use.

Splitting: in epoch e the shard list is shuffled with (seed, e); stream s of S = world x workers takes
shards s, s+S, ... . Each stream numbers the raw samples it reads (its *ordinal*); resuming skips the
already-consumed ordinals without decoding them. Samples are not shuffled inside a shard, so write
shards in shuffled order (ImageNet WDS shards and our synthetic shards are).
"""

from __future__ import annotations

import itertools
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from vfmvae.data.images import DEFAULT_MAX_PIXELS, BadImage, decode_image
from vfmvae.data.transforms import crop_image, flip_decision, to_uint8_tensor

__all__ = ["list_shards", "iter_tar_samples", "TarShardDataset", "IMAGE_KEYS"]

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


def list_shards(source: str | Path) -> list[Path]:
    """A `.tar` file, a folder of `.tar` files (searched recursively), or a brace pattern `a-{000..009}.tar`."""
    text = str(source)
    if "{" in text:
        from braceexpand import braceexpand

        paths = [Path(p) for p in braceexpand(text)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"shard pattern {text}: {len(missing)} files missing, e.g. {missing[0]}")
        return paths
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        shards = sorted(path.rglob("*.tar"))
        if not shards:
            raise FileNotFoundError(f"no .tar shards in {path}")
        return shards
    raise FileNotFoundError(f"shard source not found: {path}")


def iter_tar_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes] | BadImage]]:
    """Group tar members into samples. A truncated or corrupt tail ends the shard with one BadImage."""
    current_key: str | None = None
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                key, _, ext = name.partition(".")
                prefix = member.name[: len(member.name) - len(name)]
                key = prefix + key
                if key != current_key and current_key is not None:
                    yield current_key, files
                    files = {}
                current_key = key
                extracted = tar.extractfile(member)
                files[ext.lower()] = extracted.read() if extracted is not None else b""
    except (tarfile.TarError, EOFError, OSError) as err:
        yield f"{path.name}:<after {current_key}>", BadImage("corrupt-shard", f"{path}: {err}")
        return
    if current_key is not None:
        yield current_key, files


class TarShardDataset(IterableDataset):
    """Streams decoded, cropped (ADM centre or official random square) uint8 samples from tar shards.

    Items are dicts with `image`, `label`, `name`, `worker` and `ordinal`; unusable samples come through
    as `{"bad": True, ...}` so that `collate_skip_bad` can count them.
    `start_ordinals` maps worker id -> first raw sample to produce (from `DataStream.state_dict()`).
    """

    def __init__(
        self,
        source: str | Path,
        resolution: int,
        *,
        hflip: bool = False,
        seed: int = 0,
        min_size: int = 16,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        rank: int = 0,
        world: int = 1,
        loop: bool = True,
        shuffle_shards: bool = True,
        start_ordinals: dict[int, int] | None = None,
        crop: str = "adm_center",
        crop_min_fraction: float = 0.5,
    ) -> None:
        self.shards = list_shards(source)
        self.crop, self.crop_min_fraction = crop, crop_min_fraction
        self.resolution = resolution
        self.hflip, self.seed = hflip, seed
        self.min_size, self.max_pixels = min_size, max_pixels
        self.rank, self.world = rank, world
        self.loop, self.shuffle_shards = loop, shuffle_shards
        self.start_ordinals = dict(start_ordinals or {})

    def _streams(self) -> tuple[int, int, int]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        streams = self.world * workers
        if self.loop and len(self.shards) < streams:
            raise ValueError(
                f"{len(self.shards)} shards cannot feed {self.world} ranks x {workers} workers; "
                "write more shards or use fewer workers"
            )
        return worker, self.rank * workers + worker, streams

    def _shard_order(self, epoch: int) -> list[Path]:
        if not self.shuffle_shards:
            return list(self.shards)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return [self.shards[i] for i in torch.randperm(len(self.shards), generator=g).tolist()]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, stream, streams = self._streams()
        skip = self.start_ordinals.get(worker, 0)
        ordinal = 0
        for epoch in itertools.count() if self.loop else (0,):
            for shard in self._shard_order(epoch)[stream::streams]:
                for key, files in iter_tar_samples(shard):
                    this, ordinal = ordinal, ordinal + 1
                    if this < skip:
                        continue  # already consumed before the resume: not even decoded
                    yield self._make_item(key, files, epoch, this, worker)

    def _make_item(self, key: str, files: dict[str, bytes] | BadImage, epoch: int, ordinal: int, worker: int) -> dict[str, Any]:
        base = {"name": key, "worker": worker, "ordinal": ordinal}
        try:
            if isinstance(files, BadImage):
                raise files
            ext = next((e for e in IMAGE_KEYS if e in files), None)
            if ext is None:
                raise BadImage("no-image-in-sample", f"members: {sorted(files)}")
            img = decode_image(files[ext], min_size=self.min_size, max_pixels=self.max_pixels)
            label = int(files["cls"].decode().strip()) if "cls" in files else -1
        except BadImage as err:
            return {**base, "bad": True, "reason": err.reason, "detail": str(err)}
        except (ValueError, UnicodeDecodeError) as err:
            return {**base, "bad": True, "reason": "bad-label", "detail": str(err)}
        image = to_uint8_tensor(crop_image(img, self.resolution, self.crop, seed=self.seed, epoch=epoch, index=ordinal,
                                           min_fraction=self.crop_min_fraction))
        if self.hflip and flip_decision(self.seed, epoch, ordinal):
            image = image.flip(-1)
        return {**base, "image": image, "label": label}
