"""The semantic-equivariant image set of SE-CKNNA (tianciB/VFM-VAE@b3a752a tools/evaluate_alignment/preprocess.py).

From a folder of images (sorted by relative path; index = position), write:
* `clean/`: the images at `size` px (ADM centre crop), PNG;
* `noise_0.050/` ... `noise_0.200/`: x + 255 N(0, sigma^2) with a per-image seed 42 + index, clipped and
  truncated to uint8, as the official preprocessing;
* `manifest.json`: sizes, sigmas, and for each image its equivariance record (rotation in {0, 90, 180, 270}
  and scale in {1, 0.75, 0.5, 0.25}, drawn with seed 42 + index). Rotation and scale are applied at feature
  extraction (`align extract --transform equivariance`), because each model consumes the rescaled image its
  own way, as in the official scripts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from vfmvae.checkpoint.atomic import atomic_write_text
from vfmvae.data.folder import list_image_folder
from vfmvae.data.images import BadImage, SkipCounter, decode_image
from vfmvae.data.transforms import center_crop_adm

__all__ = ["NOISE_SIGMAS", "ROTATIONS", "SCALES", "make_transformed_set", "equivariance_record"]

NOISE_SIGMAS = (0.05, 0.10, 0.15, 0.20)
ROTATIONS = (0, 90, 180, 270)
SCALES = (1.0, 0.75, 0.5, 0.25)


def equivariance_record(index: int) -> dict:
    rng = np.random.RandomState(42 + index)
    rotation = int(rng.choice(ROTATIONS))
    scale = float(rng.choice(SCALES))
    return {"rotation": rotation, "scale": scale}


def make_transformed_set(images: str | Path, out: str | Path, size: int = 256, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    files, _, _ = list_image_folder(images)
    out = Path(out)
    skips = SkipCounter()
    records = []
    for index, path in enumerate(tqdm(files, desc="transforms", unit="img", disable=not progress)):
        try:
            img = center_crop_adm(decode_image(path), size)
        except BadImage as err:
            skips.add(str(path), err.reason, str(err))
            continue
        name = f"{index:06d}.png"
        (out / "clean").mkdir(parents=True, exist_ok=True)
        img.save(out / "clean" / name)
        arr = np.asarray(img, dtype=np.float64)
        for sigma in NOISE_SIGMAS:
            rng = np.random.RandomState(42 + index)
            noisy = np.clip(arr + 255.0 * rng.normal(0.0, sigma, arr.shape), 0, 255).astype(np.uint8)
            folder = out / f"noise_{sigma:.3f}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(noisy).save(folder / name)
        records.append(
            {"index": index, "name": name, "source": str(Path(path).relative_to(images)), **equivariance_record(index)}
        )
    manifest = {
        "size": size,
        "noise_sigmas": list(NOISE_SIGMAS),
        "num_images": len(records),
        "skipped": skips.as_dict(),
        "transformations": ["clean", "equivariance"] + [f"noise_{s:.3f}" for s in NOISE_SIGMAS],
        "images": records,
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest
