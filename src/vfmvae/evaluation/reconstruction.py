"""`vfmvae eval recon`: rFID, rIS, PSNR, SSIM and LPIPS of reconstructions against their originals.

Pairs are matched by relative path (the extension may differ). Every metric uses the same uint8 pixels that
go into rFID. rFID compares reconstructions with the *same* originals, never with training-set statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vfmvae.data.images import IMAGE_EXTENSIONS
from vfmvae.evaluation.features import extract_features
from vfmvae.evaluation.image_metrics import load_lpips, psnr, ssim
from vfmvae.evaluation.images import ImageSet
from vfmvae.evaluation.inception import load_inception
from vfmvae.evaluation.stats import frechet_distance, gaussian_stats, inception_score, warn_if_too_few_for_fid

__all__ = ["evaluate_reconstruction", "paired_image_sets"]


def _index(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return {str(p.relative_to(folder).with_suffix("")): p for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}


def paired_image_sets(reference: str | Path, reconstructions: str | Path) -> tuple[ImageSet, ImageSet]:
    ref, rec = _index(Path(reference)), _index(Path(reconstructions))
    missing = sorted(set(ref) - set(rec))
    if missing or not ref:
        raise ValueError(f"{len(missing)} of {len(ref)} reference images have no reconstruction "
                         f"(e.g. {missing[:3]}); names must match by relative path")
    keys = sorted(ref)
    with Image.open(ref[keys[0]]) as img:
        shape = (img.height, img.width, 3)
    return (ImageSet(Path(reference), len(keys), shape, "dir", [ref[k] for k in keys]),
            ImageSet(Path(reconstructions), len(keys), shape, "dir", [rec[k] for k in keys]))


def evaluate_reconstruction(reference: str | Path, reconstructions: str | Path, *, inception: str | Path | None = None,
                            lpips_weights: str | Path | None = None, device: str = "cpu", batch_size: int = 32,
                            progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    ref_set, rec_set = paired_image_sets(reference, reconstructions)
    lpips_net, provenance, skipped = None, {}, []
    if lpips_weights is not None:
        lpips_net, info = load_lpips(lpips_weights, device)
        provenance.update(info)
    else:
        skipped.append("lpips (no --lpips VGG16 weights)")
    psnrs, ssims, lpipss = [], [], []
    pairs = zip(ref_set.batches(batch_size), rec_set.batches(batch_size))
    for a, b in tqdm(pairs, total=-(-len(ref_set) // batch_size), desc="pixel metrics", disable=not progress):
        ta, tb = (torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2) for x in (a, b))
        psnrs.append(psnr(ta, tb))
        ssims.append(ssim(ta, tb))
        if lpips_net is not None:
            lpipss.append(lpips_net(ta.to(device), tb.to(device)).cpu())
    p = torch.cat(psnrs)
    result = {
        "rfid": None,
        "ris": None,
        "psnr": float(p[torch.isfinite(p)].mean()) if torch.isfinite(p).any() else float("inf"),
        "ssim": float(torch.cat(ssims).mean()),
        "lpips": float(torch.cat(lpipss).mean()) if lpipss else None,
    }
    if inception is not None:
        net, info = load_inception(inception, device)
        provenance.update(info)
        fr = extract_features(net, ref_set, batch_size=batch_size, device=device, desc="reference features", progress=progress)
        fc = extract_features(net, rec_set, batch_size=batch_size, device=device, desc="reconstruction features",
                              progress=progress)
        warn_if_too_few_for_fid(len(fr["pool"]), "rFID")
        result["rfid"] = frechet_distance(*gaussian_stats(fc["pool"]), *gaussian_stats(fr["pool"]))
        result["ris"] = inception_score(fc["logits"])
    else:
        skipped.append("rfid and ris (no --inception weights)")
    result["protocol"] = {
        **provenance,
        "num_images": len(ref_set),
        "image_size": list(ref_set.shape[:2]),
        "psnr": "mean over images of 20 log10(255 / RMSE), uint8 RGB",
        "ssim": "Gaussian 11x11, sigma 1.5, data range 255, reflect padding (torchmetrics 1.9), mean over images",
        "lpips": "VGG (lpips 0.1.4 heads), inputs in [-1, 1]",
        "rfid": "pool3 FID, reconstructions vs the same originals, TF1-legacy resize",
        "skipped": skipped,
    }
    return result
