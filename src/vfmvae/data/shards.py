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

from vfmvae.data.images import BadImage
from vfmvae.data.labels import parse_label
from vfmvae.data.source import expand_pattern, is_pattern
from vfmvae.data.transforms import ImageOptions
from vfmvae.seeding import derive_seed

__all__ = [
    "list_shards",
    "iter_tar_samples",
    "TarShardDataset",
    "IMAGE_KEYS",
    "MAX_IMAGE_MEMBER_BYTES",
    "MAX_OTHER_MEMBER_BYTES",
]

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
# Member size caps, checked from the tar header before a byte is read: a shard is streamed into memory one
# sample at a time, so one huge member (e.g. 2 GiB behind a 2 MB gzip) must be skipped, not read.
MAX_IMAGE_MEMBER_BYTES = 64 << 20  # a 64 MB encoded image is already far beyond ImageNet's largest
MAX_OTHER_MEMBER_BYTES = 1 << 20  # labels and metadata (.cls, .json, .txt) are a few bytes
# Magic numbers of compressed streams: tar shards are read uncompressed unless compression is allowed.
_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def compression_of(path: Path) -> str | None:
    """'gzip', 'bzip2', 'xz' or 'zstd' when the file starts with that format's magic number, else None."""
    with open(path, "rb") as f:
        head = f.read(6)
    return next((name for magic, name in _COMPRESSED_MAGIC.items() if head.startswith(magic)), None)


def list_shards(source: str | Path) -> list[Path]:
    """A `.tar` file, a folder of `.tar` files (searched recursively), a brace pattern `a-{000..009}.tar` or a glob
    `a-*.tar` (`vfmvae.data.source`: the one rule of every command that reads data)."""
    if is_pattern(source):
        return expand_pattern(source)
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        # Only regular files: opening a FIFO named *.tar would block forever.
        shards = sorted(p for p in path.rglob("*.tar") if p.is_file())
        if not shards:
            raise FileNotFoundError(f"no .tar shards (regular files) in {path}")
        return shards
    if path.exists():
        raise FileNotFoundError(f"shard source {path} is neither a regular file nor a folder")
    raise FileNotFoundError(f"shard source not found: {path}")


def _member_problem(member: tarfile.TarInfo, ext: str) -> BadImage | None:
    """Why a member is skipped without being read, or None to read it."""
    if member.issym() or member.islnk():
        return BadImage("link-member", f"{member.name} is a link; shards must hold regular files")
    if not member.isfile():
        return BadImage("special-member", f"{member.name} is not a regular file") if not member.isdir() else None
    limit = MAX_IMAGE_MEMBER_BYTES if ext in IMAGE_KEYS else MAX_OTHER_MEMBER_BYTES
    if member.size > limit:
        return BadImage("member-too-large", f"{member.name} is {member.size:,} bytes (limit {limit:,} for .{ext})")
    return None


def iter_tar_samples(
    path: Path, *, allow_compressed: bool = False
) -> Iterator[tuple[str, dict[str, bytes] | BadImage]]:
    """Group tar members into samples. A truncated or corrupt tail ends the shard with one BadImage.

    Members that are links, special files or over the size caps are yielded as BadImage (counted, never
    read). A compressed shard is refused unless `allow_compressed`: its members' sizes are still capped,
    but decompressing a bomb takes time, and WebDataset shards are normally stored uncompressed.
    """
    current_key: str | None = None
    files: dict[str, bytes] = {}
    try:
        compression = compression_of(path)
        if compression is not None and not allow_compressed:
            yield (
                f"{path.name}:<shard>",
                BadImage(
                    "compressed-shard",
                    f"{path} is {compression}-compressed; decompress it to a plain .tar, or set "
                    "data.compressed_shards=true to read it as it is",
                ),
            )
            return
        with tarfile.open(path, mode="r|*" if allow_compressed else "r|") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                key, _, ext = name.partition(".")
                prefix = member.name[: len(member.name) - len(name)]
                key = prefix + key
                ext = ext.lower()
                problem = _member_problem(member, ext)
                if problem is not None:
                    yield member.name, problem
                    continue
                if not member.isfile():
                    continue  # folders
                if key != current_key and current_key is not None:
                    yield current_key, files
                    files = {}
                current_key = key
                extracted = tar.extractfile(member)
                files[ext] = extracted.read() if extracted is not None else b""
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
        options: ImageOptions,
        *,
        rank: int = 0,
        world: int = 1,
        loop: bool = True,
        shuffle_shards: bool = True,
        start_ordinals: dict[int, int] | None = None,
        allow_compressed: bool = False,
    ) -> None:
        self.shards = list_shards(source)
        self.options = options
        self.allow_compressed = allow_compressed
        self.rank, self.world = rank, world
        self.loop, self.shuffle_shards = loop, shuffle_shards
        self.seed = options.seed  # the shard order's seed is the samples' seed
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
        g = torch.Generator().manual_seed(derive_seed(self.seed, "shuffle", epoch))
        return [self.shards[i] for i in torch.randperm(len(self.shards), generator=g).tolist()]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, stream, streams = self._streams()
        skip = self.start_ordinals.get(worker, 0)
        ordinal = 0
        for epoch in itertools.count() if self.loop else (0,):
            for shard in self._shard_order(epoch)[stream::streams]:
                for key, files in iter_tar_samples(shard, allow_compressed=self.allow_compressed):
                    this, ordinal = ordinal, ordinal + 1
                    if this < skip:
                        continue  # already consumed before the resume: not even decoded
                    yield self._make_item(key, files, epoch, this, worker)

    def _make_item(
        self, key: str, files: dict[str, bytes] | BadImage, epoch: int, ordinal: int, worker: int
    ) -> dict[str, Any]:
        base = {"name": key, "worker": worker, "ordinal": ordinal, "epoch": epoch}
        try:
            if isinstance(files, BadImage):
                raise files
            ext = next((e for e in IMAGE_KEYS if e in files), None)
            if ext is None:
                raise BadImage("no-image-in-sample", f"members: {sorted(files)}")
            image = self.options.prepare(files[ext], epoch=epoch, index=ordinal)
            label = parse_label(files["cls"].decode()) if "cls" in files else -1
        except BadImage as err:
            return {**base, "bad": True, "reason": err.reason, "detail": str(err)}
        except (ValueError, UnicodeDecodeError) as err:
            return {**base, "bad": True, "reason": "bad-label", "detail": str(err)}
        return {**base, "image": image, "label": label}
