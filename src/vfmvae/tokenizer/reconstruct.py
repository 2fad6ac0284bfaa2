"""Reconstruct a folder of images with a tokenizer: PNGs, a side-by-side grid and per-image PSNR.

`reconstruct_images` is the one reconstruction step of `vfmvae reconstruct`, `vfmvae eval recon --tokenizer` and the
online evaluator: image i decodes its posterior mean plus std times noise drawn from its own generator, seeded by
(seed, i) (`POSTERIOR_SEEDS`), so a reconstruction depends on the image and its index only, never on the batch it
was encoded in, the batch size, the device or the number of processes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vfmvae.data import ImageFolderDataset, ImageOptions, SkipCounter, collate_skip_bad, to_float01
from vfmvae.seeding import derive_seed
from vfmvae.tokenizer.model import VFMVAE
from vfmvae.tokenizer.posterior import DiagonalGaussian
from vfmvae.vis import save_grid

__all__ = ["POSTERIOR_SEEDS", "output_names", "posterior_noise", "reconstruct_folder", "reconstruct_images"]

POSTERIOR_SEEDS = 'derive_seed(seed, "eval-recon", i)'  # the generator of image i's posterior noise


def posterior_noise(shape: Sequence[int], indices: Sequence[int], seed: int) -> torch.Tensor:
    """Standard normal noise (len(indices), *shape) in float32 on the CPU: row k from its own generator, seeded by
    `derive_seed(seed, "eval-recon", indices[k])` (the tag is the online evaluator's, which drew it first)."""
    rows = [
        torch.randn(tuple(shape), generator=torch.Generator().manual_seed(derive_seed(seed, "eval-recon", i)))
        for i in indices
    ]
    return torch.stack(rows) if rows else torch.zeros((0, *shape))


@torch.no_grad()
def reconstruct_images(
    model: VFMVAE, images: torch.Tensor, indices: Sequence[int], *, sample: bool = True, seed: int = 0
) -> torch.Tensor:
    """uint8 (B, 3, H, W) images -> their uint8 reconstructions (on the CPU), as the official
    tools/reconstruct/reconstruct.py makes them: z = a posterior sample (`sample=False`: the mean; a discrete
    tokenizer's latent is deterministic), decode, `to_uint8_from_signed`. `indices` are the images' positions in
    the whole set: image i's noise is `posterior_noise(..., [i], seed)`, whatever batch it comes in."""
    if len(indices) != len(images):
        raise ValueError(f"{len(images)} images but {len(indices)} indices")
    device = next(model.parameters()).device
    posterior = model.encode(to_float01(images).to(device))
    z = posterior.mode()
    if sample and isinstance(posterior, DiagonalGaussian):
        eps = posterior_noise(z.shape[1:], indices, seed).to(device=z.device, dtype=z.dtype)
        z = posterior.mean + posterior.std * eps  # DiagonalGaussian.sample with per-image noise
    return to_uint8_from_signed(model.decode(z).sample).cpu()


def to_uint8_from_signed(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 as tianciB/VFM-VAE@b3a752a tools/reconstruct/reconstruct.py saves reconstructions:
    `to_pil_image(((x + 1) / 2).clamp(0, 1))`, i.e. trunc(255 * x01) in float32 (truncation, not rounding)."""
    return ((images.float() + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8)


def output_names(names: list[str]) -> dict[str, str]:
    """PNG output name of every input: `a.jpg` -> `a.png`, unless two inputs would share it (`a.png`, `a.jpg`,
    `a.webp` in one folder): those keep their extension (`a.jpg.png`), so no reconstruction overwrites another."""
    plain = {n: str(Path(n).with_suffix(".png")) for n in names}
    counts: dict[str, int] = {}
    for out in plain.values():
        counts[out] = counts.get(out, 0) + 1
    result = {
        n: out if counts[out] == 1 else (n if n.lower().endswith(".png") else f"{n}.png") for n, out in plain.items()
    }
    if len(set(result.values())) != len(result):
        clash = sorted(n for n in result if list(result.values()).count(result[n]) > 1)
        raise ValueError(f"input names {clash[:4]} map to the same output file; rename them")
    return result


def _save_and_score(
    inputs: torch.Tensor, recon: torch.Tensor, files: list[str], output_dir: Path, save_inputs: bool
) -> list[float]:
    """Write the uint8 reconstructions (and the cropped inputs) as PNGs under OUTPUT/images (OUTPUT/inputs); the PSNR
    of each pair, 20 log10(255 / RMSE) (inf for an exact copy)."""
    psnrs = []
    for file, original, out in zip(files, inputs, recon):
        for folder, image in (("images", out), *((("inputs", original),) if save_inputs else ())):
            target = output_dir / folder / file
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(target)
        mse = float(((original.double() - out.double()) ** 2).mean())
        psnrs.append(float("inf") if mse == 0 else 20 * np.log10(255.0 / np.sqrt(mse)))
    return psnrs


def reconstruct_folder(
    model: VFMVAE,
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    batch_size: int = 8,
    resolution: int | None = None,
    device: str = "cpu",
    sample: bool = False,
    seed: int = 0,
    grid_size: int = 8,
    num_workers: int = 2,
    progress: bool = True,
    save_inputs: bool = False,
    crop: str = "resize_center",
) -> dict:
    """`save_inputs` also writes the cropped originals to OUTPUT/inputs (the rFID reference). `crop`: the official
    `resize_center` (torchvision Resize + CenterCrop) or `adm_center`."""
    from tqdm.auto import tqdm

    output_dir = Path(output_dir)
    resolution = resolution or model.config.image_size
    dataset = ImageFolderDataset(input_dir, ImageOptions(resolution, crop=crop))
    stale = [d for d in ("images", "inputs") if (output_dir / d).is_dir() and any((output_dir / d).iterdir())]
    if stale:  # old reconstructions would be scored with the new ones
        raise FileExistsError(
            f"{output_dir} already holds {' and '.join(f'{d}/' for d in stale)} of an earlier run; "
            "use a new or empty output folder (or delete them first)"
        )
    relative = [str(f.relative_to(dataset.root)) for f in dataset.files]
    names = output_names(relative)
    position = {name: i for i, name in enumerate(relative)}  # an image's index seeds its posterior noise
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skip_bad)
    model = model.to(device).eval()
    skips = SkipCounter()
    psnrs: list[float] = []
    grid_in, grid_out = [], []
    start = time.perf_counter()
    with torch.no_grad(), tqdm(total=len(dataset), desc="reconstructing", unit="img", disable=not progress) as bar:
        for batch in loader:
            skips.add_skipped(batch["skipped"])
            bar.update(batch["num_items"])
            if "image" not in batch:
                continue
            inputs = batch["image"]
            recon = reconstruct_images(model, inputs, [position[n] for n in batch["name"]], sample=sample, seed=seed)
            files = [names[name] for name in batch["name"]]
            psnrs += _save_and_score(inputs, recon, files, output_dir, save_inputs)
            take = max(0, grid_size - len(grid_in))
            grid_in.extend(inputs[:take])
            grid_out.extend(recon[:take])
    seconds = time.perf_counter() - start
    grid = None
    if grid_in:
        pairs = [img for pair in zip(grid_in, grid_out) for img in pair]  # input, reconstruction, ...
        grid = str(save_grid(torch.stack(pairs), output_dir / "comparison.png", nrow=2 * min(4, len(grid_in))))
    finite = [p for p in psnrs if np.isfinite(p)]
    summary = {
        "input": str(input_dir),
        "num_images": len(psnrs),
        "skipped": skips.as_dict(),
        "resolution": resolution,
        "latent": "posterior sample" if sample else "posterior mean",
        "posterior_seeds": POSTERIOR_SEEDS.replace("seed", str(seed), 1) + ", i = index in sorted file order"
        if sample
        else None,
        "crop": crop,
        "uint8": "trunc(255 * (x + 1) / 2), as to_pil_image in the official reconstruct.py",
        "psnr_mean": float(np.mean(finite)) if finite else None,
        "psnr_definition": "mean over images of 20 log10(255 / RMSE) on uint8 RGB",
        "images_per_s": round(len(psnrs) / seconds, 2) if seconds > 0 else None,
        "grid": grid,
    }
    (output_dir / "reconstruct.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
