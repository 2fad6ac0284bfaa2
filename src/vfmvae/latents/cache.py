"""The latent cache: a dataset encoded once by a tokenizer, in sharded safetensors, with its statistics inside.

Layout of a cache folder:

    cache.json                    manifest: image size, latent shape, shards with their counts, and the
                                  per-channel mean/std of the latents with the tokenizer's path and content
                                  digest (written and read by `LatentStats`, applied by `LatentDataset`)
    shard-r00-00000.safetensors   latents (N, C, h, w) float32, labels (N,) int64, and optionally
                                  latents_flip (the horizontally flipped image's latents), vfm_features
                                  (N, T, D) float16 (frozen-VFM final patch tokens, for REPA/REG alignment)
                                  with vfm_cls (N, D) (its class token, for REG) and, with --flip, the same
                                  two for the flipped image (vfm_features_flip, vfm_cls_flip); with --moments,
                                  latents is the posterior mean and latents_std (latents_flip_std) its std

What `latents` holds: the posterior mean (default); one posterior sample per image and per flip (`sample`, as
the official LightningDiT prefetch's `G.encode`); or the mean with `latents_std` beside it (`moments`, as the
official REG prefetch's [mean | std]), from which diffusion training draws a fresh z = mean + std * eps every
step. The statistics in the manifest come from the stored samples, or, for moments, from one posterior sample
per image (the official prefetch draws one sample per image for its statistics, over 10k random images).

Every shard is written atomically; `progress-rNN.json` records the finished shards of rank NN, so an
interrupted run continues where it stopped. Items are split across ranks (rank r takes items r, r+W, ...).
`LatentDataset` reads items lazily from the memory-mapped shards, so a cache larger than RAM (ImageNet with
DINOv2-B features is about 400 KB per image) costs no memory up front.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset, Subset

from vfmvae import distributed as dist_utils
from vfmvae.checkpoint.atomic import atomic_write_text
from vfmvae.checkpoint.serialize import save_tensors
from vfmvae.data import DataConfig, SkipCounter, build_dataset, collate_skip_bad, rank_shard, to_float01
from vfmvae.data.folder import ImageFolderDataset
from vfmvae.data.transforms import flip_decision
from vfmvae.latents.settings import cache_settings, claim_cache_folder
from vfmvae.latents.stats import CACHE_MANIFEST, LatentStats
from vfmvae.latents.targets import build_target_vfm
from vfmvae.seeding import derive_seed

__all__ = ["cache_latents", "LatentDataset", "CacheError", "draw_posterior"]

MANIFEST = CACHE_MANIFEST
# Labels at or above this are taken for a damaged label file, not a class count (ImageNet-21k has 21,841
# classes); the bound diffusion training applies too. `num_classes` (`--num-classes`) replaces it.
MAX_CLASSES = 100_000


class CacheError(ValueError):
    """A missing, truncated or inconsistent latent cache."""


def _shard_name(rank: int, index: int) -> str:
    return f"shard-r{rank:02d}-{index:05d}.safetensors"


def cache_latents(tokenizer: str | Path, data: str | Path, out: str | Path, **options: Any) -> dict[str, Any]:
    """Encode `data` with `tokenizer` into `out` (see the module docstring and `_cache_latents` for the options).
    Collective under torchrun; rank 0 holds the lock of `out` while caching."""
    with contextlib.ExitStack() as held:
        return _cache_latents(tokenizer, data, out, held=held, **options)


def _cache_latents(
    tokenizer: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    resolution: int | None = None,
    flip: bool = False,
    vfm_features: str | None = None,
    vfm_resolution: int | None = None,
    sample: bool = False,
    moments: bool = False,
    batch_size: int = 32,
    shard_size: int = 1024,
    num_workers: int = 2,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
    num_classes: int | None = None,
    held: contextlib.ExitStack,
) -> dict[str, Any]:
    """Encode `data` with `tokenizer` into `out` (see module docstring). Collective under torchrun.

    Labels must lie in [0, num_classes) (default bound: `MAX_CLASSES`); a missing, negative or larger one is
    refused naming the sample, before anything is encoded for a folder, before its batch for tar shards.
    """
    from vfmvae.tokenizer import VFMVAE

    if sample and moments:
        raise ValueError("cache_latents: choose sample (one posterior sample) or moments (mean and std), not both")
    # ---- set up: the tokenizer, the optional VFM targets, this rank's share of the data
    dev = dist_utils.init_distributed(device=device)  # joins the group under torchrun, with or without --device
    rank, world = dist_utils.rank(), dist_utils.world_size()
    out = Path(out)
    model = VFMVAE.from_pretrained(tokenizer).to(dev).eval()
    resolution = resolution or model.config.image_size
    # REPA/REG alignment targets: DINOv2 fed 224 px (16x16 tokens); default: the registry's scale for this resolution
    vfm = build_target_vfm(vfm_features, resolution, vfm_resolution).to(dev) if vfm_features else None
    source = DataConfig(source=Path(data), resolution=resolution, hflip=False, num_workers=num_workers)
    dataset = build_dataset(source, rank=rank, world=world, loop=False)
    labels = _LabelCheck(data, num_classes)
    if isinstance(dataset, ImageFolderDataset):  # a folder's labels are known from its listing: check them now
        labels.check(dataset.labels, dataset.files)

    # ---- claim the folder: rank 0 records or checks the settings first, then every other rank checks its own
    # (what a re-run resumes is verified: tokenizer content, data listing, flags; not item counts)
    settings = cache_settings(
        tokenizer,
        data,
        dataset,
        resolution=resolution,
        flip=flip,
        vfm_features=vfm_features,
        vfm_resolution=vfm_resolution,
        sample=sample,
        batch_size=batch_size,
        shard_size=shard_size,
        seed=seed,
        world_size=world,
    )
    _claim_on_every_rank(out, settings, rank, held)
    # image folders: label i is the i-th class folder's name (tar shards carry numeric labels only)
    class_names = list(dataset.classes) if isinstance(dataset, ImageFolderDataset) and dataset.classes else None
    if isinstance(dataset, ImageFolderDataset):
        dataset = Subset(dataset, list(rank_shard(len(dataset), rank, world)))

    # ---- encode this rank's items into shards, continuing after the last finished shard
    writer = _ShardWriter(out, rank, tokenizer)
    encode = _Encoder(model, vfm, flip=flip, sample=sample, moments=moments, tokenizer=tokenizer, seed=seed, rank=rank)
    _encode_all(dataset, writer, encode, labels, settings, workers=num_workers, progress=progress and rank == 0)
    if not writer.done["shards"]:
        if world == 1:  # every image was bad: say so, not that a progress file is missing
            raise CacheError(f"no usable images in {data} ({writer.skips.summary()})")
        writer.save_progress()  # an empty part; rank 0 decides whether any rank cached

    # ---- the manifest with the statistics, once every rank has finished
    dist_utils.barrier()
    if rank == 0:
        _write_manifest(out, model, settings, moments=moments, class_names=class_names)
    dist_utils.barrier()
    return writer.summary()


def _claim_on_every_rank(out: Path, settings: dict[str, Any], rank: int, held: contextlib.ExitStack) -> None:
    """Rank 0 records the settings in `out` (or checks them against a cache there) first, then every other rank
    checks its own against them. Rank 0 locks `out` like a run folder until `held` closes (when caching ends), so
    that a second cache-latents into the same folder is refused."""
    if rank == 0:
        held.callback(claim_cache_folder(out, settings, CacheError, lock=True).release)
    dist_utils.barrier()
    if rank != 0:
        claim_cache_folder(out, settings, CacheError)


class _LabelCheck:
    """Refuses the first label outside [0, bound): -1 is how a flat folder or a sample without `.cls` reads."""

    def __init__(self, data: str | Path, num_classes: int | None) -> None:
        self.data, self.num_classes = data, num_classes
        self.bound = num_classes or MAX_CLASSES

    def check(self, labels: list[int], names: list) -> None:
        for label, name in zip(labels, names):
            if label == -1:
                raise CacheError(
                    f"{name} in {self.data} has no class label (a flat folder, or a tar sample without a .cls "
                    "member): cached latents need labels 0..K-1 (one class subfolder per class)"
                )
            if label < 0:
                raise CacheError(f"{name} in {self.data} has label {label}: labels must be >= 0")
            if label >= self.bound:
                limit = (
                    f"--num-classes {self.num_classes}"
                    if self.num_classes
                    else f"the bound {MAX_CLASSES:,} (pass --num-classes)"
                )
                raise CacheError(f"{name} in {self.data} has label {label:,}, outside 0..{self.bound - 1:,} ({limit})")


class _ShardWriter:
    """Collects encoded batches and writes them as atomic shards; `progress-rNN.json` lists the finished shards of
    this rank and the items they consumed (good or bad), the resume position of a re-run."""

    def __init__(self, out: Path, rank: int, tokenizer: str | Path) -> None:
        self.out, self.rank, self.tokenizer = out, rank, tokenizer
        self.progress_file = out / f"progress-r{rank:02d}.json"
        self.done = (
            json.loads(self.progress_file.read_text()) if self.progress_file.is_file() else {"shards": [], "items": 0}
        )
        self.buffer: dict[str, list[torch.Tensor]] = {}
        self.consumed = 0  # items read in this pass, good or bad: the resume position
        self.skips = SkipCounter()

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, value in tensors.items():
            self.buffer.setdefault(key, []).append(value)

    @property
    def buffered(self) -> int:
        return sum(len(t) for t in self.buffer.get("labels", []))

    def flush(self) -> None:
        if not self.buffer:
            return
        tensors = {k: torch.cat(v) for k, v in self.buffer.items()}
        name = _shard_name(self.rank, len(self.done["shards"]))
        bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:  # NaN tokenizer weights would give an all-NaN cache reported as done
            raise CacheError(
                f"non-finite values in {', '.join(bad)} of {self.out / name} (encoded by {self.tokenizer}); "
                "nothing was written for this shard: check the tokenizer's weights"
            )
        save_tensors(self.out / name, tensors, metadata={"count": str(len(tensors["labels"]))})
        self.done["shards"].append({"file": name, "count": len(tensors["labels"])})
        self.done["items"] = self.consumed
        self.save_progress()
        self.buffer = {}

    def summary(self) -> dict[str, Any]:
        """What `cache_latents` returns: the manifest on rank 0; other ranks report their own part."""
        if self.rank == 0:
            return {**json.loads((self.out / MANIFEST).read_text()), "skipped": self.skips.as_dict()}
        own = self.done["shards"]
        return {"num_items": sum(s["count"] for s in own), "shards": own, "latent_shape": None, **self.skipped()}

    def skipped(self) -> dict[str, Any]:
        return {"skipped": self.skips.as_dict()}

    def save_progress(self) -> None:
        atomic_write_text(self.progress_file, json.dumps(self.done))


class _Encoder:
    """What one batch of images becomes: latents (mean, one posterior sample, or mean and std), of the flipped
    images too, and the VFM targets."""

    def __init__(self, model, vfm, *, flip: bool, sample: bool, moments: bool, tokenizer, seed: int, rank: int):
        self.model, self.vfm, self.flip, self.sample, self.moments = model, vfm, flip, sample, moments
        self.tokenizer = tokenizer
        self.generator = torch.Generator().manual_seed(derive_seed(seed, rank))  # --sample's draws, per rank

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        variants = {"latents": images, **({"latents_flip": images.flip(-1)} if self.flip else {})}
        for key, x in variants.items():
            post = self.model.encode(x)
            z = post.sample(self.generator) if self.sample and hasattr(post, "sample") else post.mode()
            out[key] = z.float().cpu()
            if self.moments:
                if not hasattr(post, "std"):
                    raise ValueError(
                        f"{self.tokenizer} is a discrete tokenizer: it has no posterior std to cache (moments)"
                    )
                out[key + "_std"] = post.std.float().cpu()
        if self.vfm is not None:
            for suffix, x in (("", images), ("_flip", images.flip(-1) if self.flip else None)):
                if x is None:
                    continue
                feats = self.vfm(x)
                out["vfm_features" + suffix] = feats.tokens[0].half().cpu()
                if feats.cls is not None:
                    out["vfm_cls" + suffix] = feats.cls.half().cpu()
        return out


@torch.no_grad()
def _encode_all(dataset, writer: _ShardWriter, encode: _Encoder, labels: _LabelCheck, settings, *, workers, progress):
    """Every batch of `dataset` through `encode` into `writer`'s shards; batches of finished shards are skipped."""
    from tqdm.auto import tqdm

    loader = DataLoader(dataset, batch_size=settings["batch_size"], num_workers=workers, collate_fn=collate_skip_bad)
    device = next(encode.model.parameters()).device
    total = len(dataset) if hasattr(dataset, "__len__") else None
    done = writer.done["items"]
    with tqdm(total=total, desc="caching latents", unit="img", disable=not progress, initial=done) as bar:
        for batch in loader:
            n_items = batch["num_items"]
            writer.consumed += n_items
            if writer.consumed <= done:  # already in a finished shard
                continue
            writer.skips.add_skipped(batch["skipped"])
            bar.update(n_items)
            if "image" not in batch:
                continue
            labels.check(batch["label"].tolist(), batch["name"])
            writer.add({**encode(to_float01(batch["image"]).to(device)), "labels": batch["label"]})
            if writer.buffered >= settings["shard_size"]:
                writer.flush()
        writer.flush()


_SHARD_FILE = re.compile(r"^shard-r\d{2,}-\d{5,}\.safetensors$")  # the names `_shard_name` gives


def shard_entries(record: Any, root: Path, source: Path) -> list[dict[str, Any]]:
    """The `shards` list of a manifest or progress file, each a file inside `root` named as we name shards, with a
    count; anything else (an absolute path, `../`, another cache's shard through a link) is refused naming
    `source`, before any shard is opened."""
    entries = record.get("shards") if isinstance(record, dict) else None
    if not isinstance(entries, list):
        raise CacheError(f"{source}: no list of shards ('shards'); not a latent cache file of vfmvae")
    for entry in entries:
        name = entry.get("file") if isinstance(entry, dict) else None
        count = entry.get("count") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _SHARD_FILE.match(name):
            raise CacheError(
                f"{source}: shard {name!r} is not a shard file name of this cache (shard-rNN-NNNNN.safetensors "
                f"inside {root}); refusing to read anything outside the cache folder"
            )
        if (root / name).is_symlink():
            raise CacheError(f"{source}: shard {name} is a symbolic link; a cache's shards are its own files")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise CacheError(f"{source}: shard {name} has count {count!r}; expected a number of items")
    return entries


def _write_manifest(
    out: Path, model, settings: dict[str, Any], *, moments: bool, class_names: list[str] | None
) -> None:
    """cache.json from every rank's finished shards and `settings` (those `cache_settings` recorded)."""
    world = settings["world_size"]
    shards = []
    for r in range(world):
        progress = out / f"progress-r{r:02d}.json"
        shards += shard_entries(json.loads(progress.read_text()), out, progress)
    if not shards:
        raise CacheError(f"no usable images in the data on any of the {world} ranks: nothing was cached into {out}")
    mean, std, latent_shape = _channel_statistics(out, shards, moments, settings["seed"])
    # the statistics with the tokenizer they belong to, as LatentStats writes them: its absolute path (training and
    # sampling read it from any directory) and its content digest
    # (a constant, dead channel is refused by LatentStats here, before anything is written)
    stats = LatentStats(
        mean,
        std,
        tokenizer=settings["tokenizer"],
        tokenizer_sha256=settings["tokenizer_sha256"],
        source=out / MANIFEST,
    )
    manifest = {
        "kind": "vfmvae-latent-cache",
        "format_version": 1,
        "tokenizer_config": {"z_dim": model.config.latent_channels, "image_size": model.config.image_size},
        "resolution": settings["resolution"],
        "latent_shape": latent_shape,
        "latent": "posterior moments" if moments else "posterior sample" if settings["sample"] else "posterior mean",
        "flip": settings["flip"],
        "vfm_features": settings["vfm_features"],
        "vfm_resolution": settings["vfm_resolution"],
        "num_items": sum(s["count"] for s in shards),
        "class_names": class_names,  # label i's folder name (None for tar shards: numeric labels only)
        "shards": shards,
        **stats.to_dict(),
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _channel_statistics(
    out: Path, shards: list[dict[str, Any]], moments: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Per-channel mean and std (float64) over (N, h, w) of the unflipped latents, streamed over the shards; with
    moments, of one posterior sample per image (seeded per shard), as the official prefetch."""
    total, s1, s2 = 0, None, None
    for index, shard in enumerate(shards):
        with safe_open(str(out / shard["file"]), framework="pt") as f:
            z = f.get_tensor("latents").double()
            if moments:
                # (per shard; only with moments, where the per-rank generator of --sample draws nothing)
                draws = torch.Generator().manual_seed(derive_seed(seed, index))
                noise = torch.randn(z.shape, generator=draws, dtype=torch.float64)
                z = z + f.get_tensor("latents_std").double() * noise
        flat = z.transpose(0, 1).reshape(z.shape[1], -1)  # (C, N*h*w)
        s1 = flat.sum(1) if s1 is None else s1 + flat.sum(1)
        s2 = (flat**2).sum(1) if s2 is None else s2 + (flat**2).sum(1)
        total += flat.shape[1]
        latent_shape = list(z.shape[1:])
    mean = s1 / total
    return mean, (s2 / total - mean**2).clamp_min(0).sqrt(), latent_shape


class LatentDataset(Dataset):
    """A latent cache, normalised with its stored per-channel statistics: (z - mean) / std.

    With `flip=True` each item is the flipped copy half of the time (seeded per (seed, epoch, index)); the
    VFM features then come from the flipped image too. Items are dicts with `latents` (C, h, w), `label`,
    and `vfm_features` (T, D) / `vfm_cls` (D,) when cached. Shards are opened lazily in each process.
    """

    def __init__(self, root: str | Path, flip: bool = False, seed: int = 0) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise CacheError(
                f"{path} not found: not a finished latent cache (run `vfmvae cache-latents` to completion)"
            )
        try:
            self.manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise CacheError(f"{path}: not valid JSON ({type(err).__name__})") from None
        self.keys: set[str] | None = None
        starts, total = [], 0
        for shard in shard_entries(self.manifest, self.root, path):
            file = self.root / shard["file"]
            try:
                with safe_open(str(file), framework="pt") as f:
                    counts = {k: f.get_slice(k).get_shape()[0] for k in f.keys()}
            except Exception as err:
                raise CacheError(f"{file}: missing or truncated shard ({type(err).__name__}: {err})") from None
            if set(counts.values()) != {shard["count"]}:
                raise CacheError(
                    f"{file}: inconsistent shard, tensor lengths {counts} vs {shard['count']} in {MANIFEST}"
                )
            if self.keys is not None and set(counts) != self.keys:
                raise CacheError(f"{file}: holds {sorted(counts)}, other shards hold {sorted(self.keys)}")
            self.keys = set(counts)
            starts.append(total)
            total += shard["count"]
        self.keys = self.keys or set()
        self.starts, self.total = torch.tensor(starts), total
        if flip and "latents_flip" not in self.keys:
            raise CacheError(f"{self.root} has no flipped latents; cache with --flip or load with flip=False")
        if "latents_std" in self.keys and flip and "latents_flip_std" not in self.keys:
            raise CacheError(f"{self.root} has posterior std for the images but not for their flips")
        self.stats = LatentStats.from_manifest(self.manifest, self.root)
        self.flip, self.seed, self.epoch = flip, seed, 0
        self._handles: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own handles
        return {**self.__dict__, "_handles": {}}

    def __len__(self) -> int:
        return self.total

    @property
    def has_vfm_features(self) -> bool:
        return "vfm_features" in self.keys

    @property
    def has_vfm_cls(self) -> bool:
        return "vfm_cls" in self.keys

    @property
    def has_moments(self) -> bool:
        """Whether items carry `latents_std`: `latents` is then the posterior mean (see `draw_posterior`)."""
        return "latents_std" in self.keys

    @property
    def mean(self) -> torch.Tensor:  # (C, 1, 1), as `stats.mean` broadcasts over an item
        return self.stats.mean.view(-1, 1, 1)

    @property
    def std(self) -> torch.Tensor:
        return self.stats.std.view(-1, 1, 1)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return self.stats.normalize(z)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return self.stats.denormalize(z)

    def column(self, key: str) -> torch.Tensor:
        """One stored tensor over the whole cache, raw (e.g. `labels`, or un-normalised `latents`)."""
        if key not in self.keys:
            raise KeyError(f"{self.root} has no {key!r} (it holds {sorted(self.keys)})")
        parts = []
        for shard in self.manifest["shards"]:
            with safe_open(str(self.root / shard["file"]), framework="pt") as f:
                parts.append(f.get_tensor(key))
        return torch.cat(parts)

    def _read(self, index: int, key: str) -> torch.Tensor:
        if not 0 <= index < self.total:
            raise IndexError(f"index {index} out of range for a cache of {self.total} items")
        shard = int(torch.searchsorted(self.starts, torch.tensor(index), right=True)) - 1
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.root / self.manifest["shards"][shard]["file"]), framework="pt")
        row = index - int(self.starts[shard])
        return self._handles[shard].get_slice(key)[row : row + 1][0]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        use_flip = self.flip and flip_decision(self.seed, epoch, index)
        key = "latents_flip" if use_flip else "latents"
        z = self._read(index, key)
        item = {"latents": self.normalize(z.float()), "label": int(self._read(index, "labels"))}
        if self.has_moments:  # in normalised units: (mean + std * eps - mu) / sigma = norm(mean) + std / sigma * eps
            item["latents_std"] = self.stats.normalize_scale(self._read(index, key + "_std").float())
        for name in ("vfm_features", "vfm_cls"):
            if name in self.keys:
                flipped = name + "_flip"
                item[name] = self._read(index, flipped if use_flip and flipped in self.keys else name).float()
        return item


def draw_posterior(latents: torch.Tensor, latents_std: torch.Tensor | None, eps: torch.Tensor) -> torch.Tensor:
    """A fresh posterior sample in normalised units, mean + std * eps (REG's `sample_posterior`); the stored
    latents unchanged for a cache without moments."""
    return latents if latents_std is None else latents + latents_std * eps
