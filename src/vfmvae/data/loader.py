"""From a `DataConfig` to batches: dataset choice, collation that drops bad samples, resumable position.

`DataStream` is what a training loop iterates. It yields batches (`image` uint8 (B, 3, H, W), `label`
int64 (B,)), keeps the skipped-sample counts, and its `state_dict()` is the exact data position to
store in a checkpoint: the global sample position for image folders, the per-worker raw-sample ordinal
for tar shards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from vfmvae.data.folder import ImageFolderDataset
from vfmvae.data.images import DEFAULT_MAX_PIXELS, SkipCounter
from vfmvae.data.sampler import ResumableSampler
from vfmvae.data.shards import TarShardDataset, list_shards
from vfmvae.data.source import DataSourcePath, is_pattern
from vfmvae.data.transforms import ImageOptions
from vfmvae.limits import MAX_IMAGE_SIDE
from vfmvae.seeding import derive_seed

__all__ = ["DataConfig", "collate_skip_bad", "DataStream", "detect_format", "build_dataset", "NoUsableImages"]


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are prepared."""

    source: DataSourcePath  # image folder (class subfolders = labels), tar shard(s), a brace pattern or a glob
    format: Literal["auto", "folder", "shards"] = "auto"
    resolution: int = 256  # crop to this size
    # adm_center: ADM centre crop (evaluation, caching); random_square: the official training augmentation, a
    # square of U(crop_min_fraction, 1) x the short side at a random position, LANCZOS-resized (transforms.py)
    crop: Literal["adm_center", "random_square"] = "adm_center"
    crop_min_fraction: float = 0.5
    hflip: bool = True  # random horizontal flip (seeded per sample, see transforms.py)
    min_size: int = 16  # images with a shorter side below this are skipped (the official
    # stages 1-2 train on images with a short side >= 256)
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are skipped as decompression bombs
    num_workers: int = 2
    seed: int = 0
    compressed_shards: bool = False  # read gzip/bz2/xz tar shards (refused by default: decompress them)

    def __post_init__(self) -> None:
        if self.resolution <= 0 or self.resolution % 8 or self.resolution > MAX_IMAGE_SIDE:
            raise ValueError(
                f"data.resolution must be a positive multiple of 8 up to {MAX_IMAGE_SIDE}, got {self.resolution}"
            )
        if self.num_workers < 0:
            raise ValueError("data.num_workers must be >= 0")
        if not 0 < self.crop_min_fraction <= 1:
            raise ValueError(f"data.crop_min_fraction must be in (0, 1], got {self.crop_min_fraction}")

    def image_options(self) -> ImageOptions:
        """How each image is prepared (the part of this config that folders and shards share)."""
        return ImageOptions(
            resolution=self.resolution,
            crop=self.crop,
            crop_min_fraction=self.crop_min_fraction,
            hflip=self.hflip,
            seed=self.seed,
            min_size=self.min_size,
            max_pixels=self.max_pixels,
        )


def detect_format(source: str | Path) -> Literal["folder", "shards"]:
    text = str(source)
    path = Path(source)
    if is_pattern(text) or (path.is_file() and path.suffix == ".tar"):
        return "shards"
    if path.is_dir() and any(path.glob("*.tar")):
        return "shards"
    return "folder"


def build_dataset(
    cfg: DataConfig, *, rank: int = 0, world: int = 1, loop: bool = True, start_ordinals: dict[int, int] | None = None
) -> ImageFolderDataset | TarShardDataset:
    fmt = detect_format(cfg.source) if cfg.format == "auto" else cfg.format
    if fmt == "folder":
        return ImageFolderDataset(cfg.source, cfg.image_options())
    list_shards(cfg.source)  # fail early with a clear message
    return TarShardDataset(
        cfg.source,
        cfg.image_options(),
        rank=rank,
        world=world,
        loop=loop,
        start_ordinals=start_ordinals,
        allow_compressed=cfg.compressed_shards,
    )


def collate_skip_bad(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack the good items; report the bad ones under `skipped` as (name, reason, detail) triples."""
    good = [it for it in items if it is not None and not it.get("bad")]
    bad = [(it["name"], it["reason"], it.get("detail", "")) for it in items if it is not None and it.get("bad")]
    batch: dict[str, Any] = {"skipped": bad, "num_items": len(items)}
    if good:
        batch["image"] = torch.stack([it["image"] for it in good])
        batch["label"] = torch.tensor([it["label"] for it in good], dtype=torch.int64)
        batch["name"] = [it["name"] for it in good]
    if items and items[0] is not None and "worker" in items[0]:
        batch["worker"] = items[0]["worker"]  # one DataLoader batch always comes from one worker
        batch["next_ordinal"] = max(it["ordinal"] for it in items) + 1
        batch["epoch"] = max(it.get("epoch", 0) for it in items)
    return batch


class NoUsableImages(ValueError):
    """A whole pass over the data produced no usable image: training would wait forever."""


class DataStream:
    """Endless training batches of `batch_size` per rank, resumable from `state`.

    Batches whose every item was bad are consumed silently (and counted); others may be smaller than
    `batch_size` by the number of skipped items.
    """

    def __init__(
        self,
        cfg: DataConfig,
        batch_size: int,
        *,
        rank: int = 0,
        world: int = 1,
        state: dict[str, Any] | None = None,
        skips: SkipCounter | None = None,
    ) -> None:
        self.cfg, self.batch_size = cfg, batch_size
        self.rank, self.world = rank, world
        self.skips = skips or SkipCounter()
        state = state or {}
        fmt = detect_format(cfg.source) if cfg.format == "auto" else cfg.format
        self.format = fmt
        # The loader draws worker seeds from this private generator, not from torch's global RNG, so that
        # creating the iterator after a resume does not shift the training noise (found by the resume test).
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "loader", rank))
        if fmt == "folder":
            self.position = int(state.get("position", 0))
            dataset = build_dataset(cfg)
            sampler = ResumableSampler(len(dataset), rank=rank, world=world, seed=cfg.seed, start=self.position)
            self.loader = DataLoader(
                dataset,
                batch_size=batch_size,
                sampler=sampler,
                num_workers=cfg.num_workers,
                collate_fn=collate_skip_bad,
                persistent_workers=cfg.num_workers > 0,
                drop_last=False,
                generator=generator,
            )
        else:
            self.ordinals = {int(k): int(v) for k, v in state.get("ordinals", {}).items()}
            dataset = build_dataset(cfg, rank=rank, world=world, start_ordinals=self.ordinals)
            self.loader = DataLoader(
                dataset,
                batch_size=batch_size,
                num_workers=cfg.num_workers,
                collate_fn=collate_skip_bad,
                persistent_workers=cfg.num_workers > 0,
                generator=generator,
            )
        self.dataset = dataset
        self._iter: Iterator[dict[str, Any]] | None = None
        # Until the first usable image: items consumed (folders) or the epoch each shard worker reached.
        self._seen_good = False
        self._items_without_good = 0
        self._worker_epochs: dict[int, int] = {}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._iter is None:
            self._iter = iter(self.loader)
        while True:
            batch = next(self._iter)
            self.skips.add_skipped(batch["skipped"])
            if self.format == "folder":
                # Every rank consumes batch_size positions per batch; global position advances by W x B.
                self.position += batch["num_items"] * self.world
            else:
                self.ordinals[batch["worker"]] = batch["next_ordinal"]
            if "image" in batch:
                self._seen_good = True
                return batch
            if not self._seen_good:
                self._check_any_usable(batch)

    def _check_any_usable(self, batch: dict[str, Any]) -> None:
        """Raise once a full pass over this rank's data has yielded nothing but skips."""
        if self.format == "folder":
            self._items_without_good += batch["num_items"]
            exhausted = self._items_without_good >= -(-len(self.dataset) // self.world)
        else:
            self._worker_epochs[batch["worker"]] = batch.get("epoch", 0)
            workers = max(1, self.cfg.num_workers)
            exhausted = len(self._worker_epochs) == workers and min(self._worker_epochs.values()) >= 1
        if exhausted:
            raise NoUsableImages(f"no usable images in {self.cfg.source} ({self.skips.summary()})")

    def state_dict(self) -> dict[str, Any]:
        if self.format == "folder":
            return {"format": "folder", "position": self.position}
        return {"format": "shards", "ordinals": {str(k): v for k, v in self.ordinals.items()}}
