"""Reconstruct a folder of images with a tokenizer: PNGs, a side-by-side grid and per-image PSNR."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vfmvae.data import ImageFolderDataset, ImageOptions, SkipCounter, collate_skip_bad, to_float01
from vfmvae.tokenizer.model import VFMVAE
from vfmvae.vis import save_grid

__all__ = ["output_names", "reconstruct_folder", "to_uint8_from_signed"]


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
    names = output_names([str(f.relative_to(dataset.root)) for f in dataset.files])
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skip_bad)
    model = model.to(device).eval()
    generator = torch.Generator(device=device).manual_seed(seed)
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
            posterior = model.encode(to_float01(inputs).to(device))
            z = posterior.sample(generator) if sample else posterior.mode()
            recon = to_uint8_from_signed(model.decode(z).sample).cpu()
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
        "crop": crop,
        "uint8": "trunc(255 * (x + 1) / 2), as to_pil_image in the official reconstruct.py",
        "psnr_mean": float(np.mean(finite)) if finite else None,
        "psnr_definition": "mean over images of 20 log10(255 / RMSE) on uint8 RGB",
        "images_per_s": round(len(psnrs) / seconds, 2) if seconds > 0 else None,
        "grid": grid,
    }
    (output_dir / "reconstruct.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
