"""`LatentStats`: the per-channel mean and std that put a tokenizer's latents in diffusion units.

Diffusion models are trained on, and sample, normalised latents (z - mean) / std; the tokenizer decodes raw ones.
One object holds the statistics wherever they are needed (the latent cache, training exports, the sampling
pipeline, the diffusers export, alignment features) and reads every file that carries them:

    cache.json          a latent cache's manifest (`vfmvae cache-latents`): the statistics measured while caching,
                        written by `LatentStats.to_dict` with the tokenizer's path and content digest (caches written
                        before the digest moved into the manifest have it in their settings.json only)
    latent_stats.json   next to a diffusion export: {"mean", "std", "tokenizer", "tokenizer_sha256"?, "cache"?}
    latents_stats.pt    the official file ({'mean', 'std'} tensors, as tianciB/VFM-VAE@b3a752a's LightningDiT
                        training writes it), read with torch.load(weights_only=True); it names no tokenizer

Statistics belong to the tokenizer whose latents they were measured on: decoding with another tokenizer gives
plausible-looking garbage, so `check_tokenizer` refuses a tokenizer folder whose content differs from the one
recorded with the statistics (and warns where nothing was recorded).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vfmvae.checkpoint.atomic import atomic_write_text
from vfmvae.checkpoint.digest import model_folder_digest
from vfmvae.checkpoint.torch_files import load_weights_only

__all__ = ["LatentStats", "STATS_FILE", "CACHE_MANIFEST", "MIN_STD"]

STATS_FILE = "latent_stats.json"  # ours, next to a diffusion export
CACHE_MANIFEST = "cache.json"  # a latent cache's manifest (vfmvae.latents.cache.MANIFEST)
MIN_STD = 1e-6  # smallest per-channel std accepted: dividing by less turns rounding noise into huge latents
_CACHE_SETTINGS = "settings.json"  # a latent cache's settings, with the tokenizer's digest (vfmvae.latents.settings)


@dataclass(frozen=True)
class LatentStats:
    """Per-channel statistics, and where they came from.

    `mean` and `std` are float32 tensors of shape (C,). `tokenizer` is the tokenizer folder as recorded (a relative
    path is relative to the folder of `source`, the file the statistics were read from), `tokenizer_sha256` its
    content digest (`vfmvae.checkpoint.digest.model_folder_digest`) when known, `cache` the latent cache they were
    measured on.
    """

    mean: torch.Tensor
    std: torch.Tensor
    tokenizer: str | None = None
    tokenizer_sha256: str | None = None
    cache: str | None = None
    source: Path | None = None

    def __post_init__(self) -> None:
        if self.mean.shape != self.std.shape or self.mean.ndim != 1 or not self.mean.numel():
            raise ValueError(
                f"latent statistics{self._where()}: mean has shape {tuple(self.mean.shape)}, std "
                f"{tuple(self.std.shape)}; expected one value per latent channel in each"
            )
        # normalising divides by std: a zero, tiny, negative (sign-flipped latents) or non-finite value gives NaN or
        # garbage steps long after loading, so it is refused here, wherever the statistics come from
        bad_mean = (~torch.isfinite(self.mean)).nonzero()
        bad_std = (~torch.isfinite(self.std) | (self.std < MIN_STD)).nonzero()
        if len(bad_mean) or len(bad_std):
            name, values, channel = ("mean", self.mean, bad_mean) if len(bad_mean) else ("std", self.std, bad_std)
            index = int(channel[0])
            more = f" (and {len(channel) - 1} more channel(s))" if len(channel) > 1 else ""
            raise ValueError(
                f"latent statistics{self._where()}: {name} of channel {index} is {float(values[index]):.3g}{more}; "
                f"a mean must be finite and a std finite and >= {MIN_STD:g}. Re-measure them (re-run "
                "`vfmvae cache-latents`) or pass other statistics (--latent-stats)"
            )

    # ---- the normalisation -----------------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return self.mean.numel()

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (..., C, h, w) -> diffusion units: (z - mean) / std per channel."""
        return (z - self._per_channel(self.mean, z)) / self._per_channel(self.std, z)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion units (..., C, h, w) -> raw latents for the tokenizer's decoder: z * std + mean per channel."""
        return z * self._per_channel(self.std, z) + self._per_channel(self.mean, z)

    def normalize_scale(self, s: torch.Tensor) -> torch.Tensor:
        """A per-element spread of raw latents (e.g. the posterior std) in diffusion units: s / std."""
        return s / self._per_channel(self.std, s)

    @staticmethod
    def _per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like.device).view(-1, 1, 1)  # broadcasts over (C, h, w) and (B, C, h, w)

    # ---- reading and writing ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> LatentStats:
        """Statistics from a `latent_stats.json`, a cache's `cache.json`, an official `latents_stats.pt`, or a
        folder holding one of the first two (a diffusion export or a latent cache)."""
        path = Path(path)
        if path.is_dir():
            found = [path / name for name in (STATS_FILE, CACHE_MANIFEST) if (path / name).is_file()]
            if not found:
                raise FileNotFoundError(f"latent statistics: {path} holds neither {STATS_FILE} nor {CACHE_MANIFEST}")
            path = found[0]
        if not path.is_file():
            raise FileNotFoundError(
                f"latent statistics not found: {path} (pass --latent-stats FILE: a {STATS_FILE} "
                f"from `vfmvae train diffusion`, a {CACHE_MANIFEST}, or an official "
                "latents_stats.pt)"
            )
        if path.suffix in (".pt", ".pth"):
            return cls._from_dict(load_weights_only(path, "latent statistics"), path)
        data = cls._read_json(path)
        if path.name == CACHE_MANIFEST:
            return cls.from_manifest(data, path.parent)
        return cls._from_dict(data, path)

    @classmethod
    def from_cache(cls, folder: str | Path) -> LatentStats:
        """The statistics a latent cache measured (its `cache.json`)."""
        path = Path(folder) / CACHE_MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: not a finished latent cache (run `vfmvae cache-latents` to completion)"
            )
        return cls.from_manifest(cls._read_json(path), path.parent)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], folder: str | Path) -> LatentStats:
        """From a cache manifest already read. The tokenizer digest is the manifest's; an older cache has it only in
        its settings.json."""
        folder = Path(folder)
        digest = manifest.get("tokenizer_sha256")
        settings = folder / _CACHE_SETTINGS
        if digest is None and settings.is_file():
            digest = cls._read_json(settings).get("tokenizer_sha256")
        return cls._from_dict({**manifest, "tokenizer_sha256": digest, "cache": str(folder)}, folder / CACHE_MANIFEST)

    @classmethod
    def _from_dict(cls, data: Any, path: Path) -> LatentStats:
        missing = [k for k in ("mean", "std") if not isinstance(data, dict) or k not in data]
        if missing:
            raise ValueError(
                f"latent statistics {path}: no {' or '.join(repr(k) for k in missing)} entry "
                "(expected 'mean' and 'std' per latent channel)"
            )
        keys = ("tokenizer", "tokenizer_sha256", "cache")
        record = {k: (str(data[k]) if data.get(k) is not None else None) for k in keys}
        try:
            mean, std = (torch.as_tensor(data[k]).float().flatten() for k in ("mean", "std"))
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"latent statistics {path}: mean and std must be lists of numbers ({err})") from None
        return cls(mean, std, **record, source=path)

    @staticmethod
    def _read_json(path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"latent statistics {path}: not valid JSON ({err})") from None

    def to_dict(self) -> dict[str, Any]:
        """The `latent_stats.json` content: mean, std and whatever is known of their tokenizer and cache."""
        record = {"tokenizer": self.tokenizer, "tokenizer_sha256": self.tokenizer_sha256, "cache": self.cache}
        known = {k: v for k, v in record.items() if v is not None}
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), **known}

    def save(self, path: str | Path) -> Path:
        """Write `latent_stats.json` (or `path` when it names a file) atomically; reading it back gives the same
        float32 values."""
        path = Path(path)
        if path.is_dir():
            path = path / STATS_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    # ---- which tokenizer -------------------------------------------------------------------------------------
    def tokenizer_dir(self) -> Path | None:
        """The recorded tokenizer folder (a relative path is relative to the statistics file's folder, never to the
        working directory, which could hold an unrelated `./tok`); None when none is recorded."""
        if self.tokenizer is None:
            return None
        stored = Path(self.tokenizer)
        path = stored if stored.is_absolute() or self.source is None else self.source.parent / stored
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"tokenizer {stored} named in {self.source} (key 'tokenizer') is not a model "
                f"folder (looked at {path}); pass --tokenizer DIR"
            )
        return path

    def check_tokenizer(self, tokenizer: str | Path) -> None:
        """Refuse the tokenizer folder `tokenizer` when these statistics were measured on another tokenizer's latents.

        With a recorded digest the folder's content must match it. With only a recorded path, the folder must be
        that folder, or have the same content when the recorded folder is here. Where nothing can be compared (no
        record, as in an official latents_stats.pt, or a recorded folder that is not on this machine) it warns.
        """
        folder = Path(tokenizer)
        if self.tokenizer is None and self.tokenizer_sha256 is None:
            warnings.warn(
                f"latent statistics{self._where()} record no tokenizer: cannot check that they belong to "
                f"the tokenizer {folder}",
                stacklevel=2,
            )
            return
        expected, recorded = self.tokenizer_sha256, None
        if expected is None:
            stored = Path(self.tokenizer)
            recorded = stored if stored.is_absolute() or self.source is None else self.source.parent / stored
            if recorded.resolve() == folder.resolve():
                return
            if not (recorded / "config.json").is_file():
                warnings.warn(
                    f"latent statistics{self._where()} were measured with the tokenizer {self.tokenizer}, "
                    f"which is not on this machine: cannot check that they belong to {folder}",
                    stacklevel=2,
                )
                return
            expected = model_folder_digest(recorded)
        found = model_folder_digest(folder)
        if found != expected:
            raise ValueError(
                f"latent statistics{self._where()} belong to the tokenizer {self.tokenizer or '?'} "
                f"(sha256 {expected[:12]}), not to {folder} (sha256 {found[:12]}): decode with that "
                "tokenizer (--tokenizer), or pass statistics measured with this one (--latent-stats)"
            )

    def _where(self) -> str:
        return f" {self.source}" if self.source is not None else ""
