"""What defines a latent cache, recorded in `OUT/settings.json` when caching starts and verified on every re-run.

A re-run (or a resume after a kill) continues a cache only when the tokenizer's content, the data listing
and every flag that changes the cached values or the resume position (batch size, shard size, processes)
are the same; anything else is refused with the differing keys, so latents of two tokenizers, two data
listings or two batch boundaries are never mixed under one set of statistics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vfmvae.checkpoint.atomic import atomic_write_text
from vfmvae.checkpoint.digest import listing_digest, model_folder_digest
from vfmvae.checkpoint.folder_lock import LOCK_NAME, RunFolderLock, lock_output_folder

__all__ = ["SETTINGS", "cache_settings", "claim_cache_folder"]

SETTINGS = "settings.json"


def cache_settings(tokenizer: str | Path, data: str | Path, dataset: Any, **flags: Any) -> dict[str, Any]:
    """The settings of a cache: tokenizer digest, data listing digest and the flags."""
    if hasattr(dataset, "files"):  # an image folder: file names, sizes and class labels
        listing = listing_digest(dataset.root, dataset.files, dataset.labels)
    else:  # tar shards: shard names and sizes
        listing = listing_digest(data, dataset.shards)
    return {
        "tokenizer": str(Path(tokenizer).resolve()),
        "tokenizer_sha256": model_folder_digest(tokenizer),
        "data": str(Path(data).resolve()) if "{" not in str(data) else str(data),
        "data_listing_sha256": listing,
        **flags,
    }


def claim_cache_folder(
    out: Path, settings: dict[str, Any], error: type[Exception], *, lock: bool = False
) -> RunFolderLock | None:
    """Record `settings` in a new cache folder, or check them against an existing one (raising `error`).

    With `lock` (rank 0), the folder is then locked like a run folder, checked again under the lock and the lock
    returned (release it when caching ends): a second `cache-latents` into the same folder is refused. Nothing, not
    even the lock file, is written into a folder that is refused.
    """
    _check_cache_folder(out, settings, error)
    held = lock_output_folder(out, "--out") if lock else None
    try:
        if held is not None:
            _check_cache_folder(out, settings, error)  # another process may have claimed it meanwhile
        if not (out / SETTINGS).is_file():
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / SETTINGS, json.dumps(settings, indent=2) + "\n")
    except BaseException:
        if held is not None:
            held.release()
        raise
    return held


def _check_cache_folder(out: Path, settings: dict[str, Any], error: type[Exception]) -> None:
    """Refuse a folder that holds a cache of other settings, or anything that is not a cache of ours."""
    path = out / SETTINGS
    if path.is_file():
        stored = json.loads(path.read_text())
        changed = sorted(
            k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k) and k != "tokenizer"
        )
        if changed:
            shown = "; ".join(f"{k}: {stored.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise error(
                f"{out} holds a cache made with other settings ({shown}); a cache belongs to one tokenizer, "
                "data listing and set of flags: use another --out, or delete this one to re-cache"
            )
        return
    if out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()):  # the lock file of a claim that failed
        raise error(
            f"{out} is not empty and holds no {SETTINGS} (not a cache of this vfmvae version); refusing to "
            "cache into it, since its files could not be checked: use a new or empty --out"
        )
