"""`vfmvae eval recon`: rFID, rIS, PSNR, SSIM and LPIPS of reconstructions against their originals.

Pairs are matched by relative path (the extension may differ). Every metric uses the same uint8 pixels that
go into rFID. rFID compares reconstructions with the *same* originals, never with training-set statistics.

The conventions are those of the official VFM-VAE evaluation (tianciB/VFM-VAE@b3a752a README and
tools/reconstruct/evaluate.py): rFID and rIS as `fidelity --fid --isc --input1 RECON --input2 ORIGINALS`
(torch-fidelity 0.4.0 defaults), SSIM by torchmetrics with data range 2 on [-1, 1], PSNR per image, LPIPS on
[-1, 1].

`pixel_metrics` and `reconstruction_summary` are the one implementation of these metrics: `eval recon` scores
folders with them and the online evaluator scores its in-memory reconstructions with them, so both report the same
numbers for the same weights, images and seeds. Every per-image value and Inception feature depends on its image
only, and the summary on the set of images, so no metric depends on the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vfmvae.data.images import IMAGE_EXTENSIONS
from vfmvae.evaluation.features import extract_features
from vfmvae.evaluation.image_metrics import load_lpips, psnr, ssim, ssim_signed
from vfmvae.evaluation.images import ImageSet
from vfmvae.evaluation.inception import load_inception
from vfmvae.evaluation.stats import (
    frechet_distance,
    gaussian_stats,
    inception_score_torch_fidelity,
    warn_if_too_few_for_fid,
)

__all__ = [
    "PER_IMAGE_METRICS",
    "evaluate_reconstruction",
    "fidelity_order",
    "paired_image_sets",
    "pixel_metrics",
    "reconstruction_summary",
]

PER_IMAGE_METRICS = ("psnr", "ssim", "ssim_uint8", "lpips")  # the columns of `pixel_metrics`


def pixel_metrics(
    reference: torch.Tensor,
    reconstruction: torch.Tensor,
    lpips: torch.nn.Module | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Per-image metrics of uint8 (B, 3, H, W) pairs: a float64 (B, 4) tensor on the CPU with the columns
    `PER_IMAGE_METRICS` (PSNR, SSIM on [-1, 1] with data range 2, SSIM on uint8, LPIPS; NaN without `lpips`)."""
    values = [psnr(reference, reconstruction), ssim_signed(reference, reconstruction), ssim(reference, reconstruction)]
    values.append(
        lpips(reference.to(device), reconstruction.to(device)).double().cpu()
        if lpips is not None
        else torch.full((len(reference),), float("nan"), dtype=torch.float64)
    )
    return torch.stack([v.double().cpu() for v in values], 1)


def fidelity_order(paths: Sequence[str | Path]) -> list[int]:
    """The order in which torch-fidelity lists a folder (sorted file paths), before its seeded shuffle for rIS."""
    return sorted(range(len(paths)), key=lambda i: str(paths[i]))


def reconstruction_summary(
    per_image: torch.Tensor,
    *,
    lpips: bool,
    pool: np.ndarray | None = None,
    logits: np.ndarray | None = None,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    order: Sequence[int] | None = None,
) -> dict:
    """The reported numbers from every image's `pixel_metrics` row and, for rFID and rIS, the reconstructions'
    Inception pool/logits features, the originals' (mu, sigma) and the images' `fidelity_order`.

    PSNR is the mean over images with a finite value (identical images give inf; only inf if all are identical)."""
    p = per_image[:, 0]
    result = {
        "rfid": None,
        "ris": None,
        "ris_std": None,
        "psnr": float(p[torch.isfinite(p)].mean()) if torch.isfinite(p).any() else float("inf"),
        "ssim": float(per_image[:, 1].mean()),
        "ssim_uint8": float(per_image[:, 2].mean()),
        "lpips": float(per_image[:, 3].mean()) if lpips else None,
    }
    if pool is not None and reference is not None:
        result["rfid"] = frechet_distance(*gaussian_stats(pool), *reference)
    if logits is not None:
        ordered = np.asarray(logits)[list(order) if order is not None else slice(None)]
        result["ris"], result["ris_std"] = inception_score_torch_fidelity(ordered)
    return result


def _index(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        what = "is a file; expected a folder of images" if folder.exists() else "not found"
        raise FileNotFoundError(f"image folder {folder} {what}")
    found = {
        str(p.relative_to(folder).with_suffix("")): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    }
    if not found:
        raise FileNotFoundError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return found


def paired_image_sets(reference: str | Path, reconstructions: str | Path) -> tuple[ImageSet, ImageSet]:
    ref, rec = _index(Path(reference)), _index(Path(reconstructions))
    missing = sorted(set(ref) - set(rec))
    if missing or not ref:
        raise ValueError(
            f"{len(missing)} of {len(ref)} reference images have no reconstruction "
            f"(e.g. {missing[:3]}); names must match by relative path"
        )
    keys = sorted(ref)
    with Image.open(ref[keys[0]]) as img:
        shape = (img.height, img.width, 3)
    return (
        ImageSet(Path(reference), len(keys), shape, "dir", [ref[k] for k in keys]),
        ImageSet(Path(reconstructions), len(keys), shape, "dir", [rec[k] for k in keys]),
    )


def evaluate_reconstruction(
    reference: str | Path,
    reconstructions: str | Path,
    *,
    inception: str | Path | None = None,
    lpips_weights: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    progress: bool = True,
) -> dict:
    from tqdm.auto import tqdm

    ref_set, rec_set = paired_image_sets(reference, reconstructions)
    lpips_net, provenance, skipped = None, {}, []
    if lpips_weights is not None:
        lpips_net, info = load_lpips(lpips_weights, device)
        provenance.update(info)
    else:
        skipped.append("lpips (no --lpips VGG16 weights)")
    net = None
    if inception is not None:  # loaded (and checked) before any image is scored, like LPIPS
        net, info = load_inception(inception, device)
        provenance.update(info)
    per_image = []
    pairs = zip(ref_set.batches(batch_size), rec_set.batches(batch_size))
    for a, b in tqdm(pairs, total=-(-len(ref_set) // batch_size), desc="pixel metrics", disable=not progress):
        ta, tb = (torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2) for x in (a, b))
        per_image.append(pixel_metrics(ta, tb, lpips_net, device))
    features = {}
    if net is not None:
        fr = extract_features(
            net, ref_set, batch_size=batch_size, device=device, desc="reference features", progress=progress
        )
        fc = extract_features(
            net, rec_set, batch_size=batch_size, device=device, desc="reconstruction features", progress=progress
        )
        warn_if_too_few_for_fid(len(fr["pool"]), "rFID")
        features = {
            "pool": fc["pool"],
            "logits": fc["logits"],
            "reference": gaussian_stats(fr["pool"]),
            "order": fidelity_order(rec_set.files),  # torch-fidelity's listing of the reconstructions
        }
    else:
        skipped.append("rfid and ris (no --inception weights)")
    result = reconstruction_summary(torch.cat(per_image), lpips=lpips_net is not None, **features)
    result["protocol"] = {
        **provenance,
        "num_images": len(ref_set),
        "image_size": list(ref_set.shape[:2]),
        "convention": "tianciB/VFM-VAE@b3a752a tools/reconstruct/evaluate.py and README (torch-fidelity 0.4.0)",
        "psnr": "mean over images of per-image PSNR, data range 2 on [-1, 1] (= 20 log10(255 / RMSE) on uint8 RGB)",
        "ssim": "torchmetrics StructuralSimilarityIndexMeasure(data_range=2.0) on (x/255 - 0.5)/0.5: Gaussian "
        "11x11, sigma 1.5, reflect padding, mean over images",
        "ssim_uint8": "the same window on uint8 values with data range 255 (not the paper's convention)",
        "lpips": "VGG (lpips 0.1.4 heads = taming LPIPS), inputs x/127.5 - 1 in [-1, 1]",
        "rfid": "torch-fidelity FID: pool3 (2048) of reconstructions vs the same originals, TF1-legacy resize",
        "ris": "torch-fidelity ISC of the reconstructions: logits_unbiased, files in sorted path order shuffled "
        "by np.random.RandomState(2020).permutation, 10 splits, float64 log-softmax; mean (ris) and std",
        "skipped": skipped,
    }
    return result
