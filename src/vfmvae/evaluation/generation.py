"""`vfmvae eval gen` and `vfmvae eval ref-stats`: the ADM generation protocol."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from vfmvae.checkpoint.atomic import write_npz_atomic
from vfmvae.checkpoint.sample_digests import recorded_sample_files
from vfmvae.evaluation.features import extract_features
from vfmvae.evaluation.images import npz_header, open_image_set
from vfmvae.evaluation.inception import load_inception
from vfmvae.evaluation.stats import (
    frechet_distance,
    gaussian_stats,
    inception_score,
    precision_recall,
    warn_if_too_few_for_fid,
)

__all__ = ["evaluate_generation", "build_reference", "generation_metrics", "load_reference"]

RESIZE = "TF1-legacy bilinear to 299 inside the network (torch-fidelity port of the 2015-12-05 graph)"


# Feature widths of the 2015-12-05 Inception graph: pool3 2048, the ADM spatial features 2023. A statistic wider
# than this is not from that network, and a header that declares one is refused before anything is read.
MAX_STAT_DIM = 4096
STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


def _check_reference_headers(path: Path) -> list[str]:
    """Array names of an ADM .npz, after checking every statistic's shape and dtype from its header alone."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")]
            for name in names:
                if name not in STAT_KEYS:
                    continue
                shape, _, dtype, _ = npz_header(zf, name)
                square = name.startswith("sigma")
                ok = (
                    dtype.kind == "f"
                    and len(shape) == (2 if square else 1)
                    and 0 < shape[0] <= MAX_STAT_DIM
                    and (not square or shape[0] == shape[1])
                )
                if not ok:
                    raise ValueError(
                        f"reference batch {path}: {name} has shape {shape} and dtype {dtype}; expected "
                        f"float {'(D, D)' if square else '(D,)'} with D <= {MAX_STAT_DIM}"
                    )
    except (zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"reference batch {path}: not an .npz file ({err})") from None
    return names


def load_reference(path: Path) -> dict[str, np.ndarray]:
    """The statistics an ADM reference batch stores (mu, sigma, mu_s, sigma_s, those present) and whether it holds
    images (`has_images`, for precision/recall); its headers are checked before anything is read."""
    if not path.is_file():
        raise FileNotFoundError(f"reference batch not found: {path}")
    names = _check_reference_headers(path)
    with np.load(path) as ref:
        stats = {k: ref[k] for k in names if k in STAT_KEYS}
    return stats | {"has_images": np.array("arr_0" in names)}


def generation_metrics(
    features: dict[str, np.ndarray], reference: dict[str, np.ndarray], reference_pool: np.ndarray | None = None
) -> dict:
    """FID, sFID, IS, precision and recall of samples from their Inception `features` (pool, spatial, logits; in
    sample-index order, which IS's consecutive splits depend on), the reference's statistics (mu, sigma, mu_s,
    sigma_s) and, for precision/recall, the pool features of the reference images. The one implementation of
    `vfmvae eval gen`'s numbers, also used by the online evaluator."""
    s_mu, s_sigma = gaussian_stats(features["pool"])
    s_mu_s, s_sigma_s = gaussian_stats(features["spatial"])
    result = {
        "fid": frechet_distance(s_mu, s_sigma, reference["mu"], reference["sigma"]),
        "sfid": frechet_distance(s_mu_s, s_sigma_s, reference["mu_s"], reference["sigma_s"]),
        "inception_score": inception_score(features["logits"]),
        "precision": None,
        "recall": None,
    }
    if reference_pool is not None:
        result["precision"], result["recall"] = precision_recall(reference_pool, features["pool"])
    return result


def evaluate_generation(
    samples: str | Path,
    ref: str | Path,
    inception: str | Path,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
) -> dict:
    """FID, sFID, IS, precision and recall of `samples` (.npz or folder) against an ADM reference batch."""
    ref = Path(ref)
    reference = load_reference(ref)

    # a `vfmvae sample` folder: exactly its recorded samples (checked by digest), extra files left out with a warning
    sample_set = open_image_set(samples, files=recorded_sample_files(samples) if Path(samples).is_dir() else None)
    net, provenance = load_inception(inception, device)
    feats = extract_features(
        net, sample_set, batch_size=batch_size, device=device, desc="sample features", progress=progress
    )
    ref_set = open_image_set(ref) if bool(reference["has_images"]) else None
    ref_feats = (
        extract_features(
            net, ref_set, batch_size=batch_size, device=device, desc="reference features", progress=progress
        )
        if ref_set is not None
        else None
    )
    if "mu" in reference:  # ADM: stored statistics win over the images
        mu, sigma, mu_s, sigma_s = (reference[k] for k in ("mu", "sigma", "mu_s", "sigma_s"))
    elif ref_feats is not None:
        (mu, sigma), (mu_s, sigma_s) = gaussian_stats(ref_feats["pool"]), gaussian_stats(ref_feats["spatial"])
    else:
        raise ValueError(f"{ref}: neither statistics (mu, sigma, mu_s, sigma_s) nor images (arr_0)")
    comparable = warn_if_too_few_for_fid(len(sample_set))
    reference_stats = {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}
    result = generation_metrics(feats, reference_stats, ref_feats["pool"] if ref_feats is not None else None)
    result["protocol"] = {
        "evaluator": "ADM (openai/guided-diffusion evaluations/evaluator.py) conventions",
        **provenance,
        "num_samples": len(sample_set),
        "fid_comparable": comparable,  # False below 2048 samples (warned)
        "num_reference_images": len(ref_set) if ref_set is not None else 0,
        "reference": str(ref),
        "reference_statistics": "stored mu/sigma" if "mu" in reference else "computed from arr_0",
        "resize": RESIZE,
        "inception_score_splits": f"consecutive chunks of 5000, no shuffle ({-(-len(sample_set) // 5000)} splits)",
        "inception_score_underflow": "float32 softmax as ADM; a probability that underflows to 0 contributes "
        "0 (the limit of p log p) where ADM's float math gives NaN",
        "precision_recall": "k=3, squared distances in float16 (float32 fallback), reference arr_0 vs samples",
        "sample_images_per_s": round(len(sample_set) / float(feats["seconds"]), 2),
    }
    return result


def build_reference(
    images: str | Path,
    out: str | Path,
    inception: str | Path,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    max_images: int = 10000,
    progress: bool = True,
) -> dict:
    """An ADM-layout reference batch: mu, sigma (pool3), mu_s, sigma_s (spatial), arr_0 (first `max_images`)."""
    image_set = open_image_set(images)
    net, provenance = load_inception(inception, device)
    feats = extract_features(net, image_set, batch_size=batch_size, device=device, progress=progress)
    (mu, sigma), (mu_s, sigma_s) = gaussian_stats(feats["pool"]), gaussian_stats(feats["spatial"])
    kept = (
        np.concatenate(list(image_set.batches(batch_size, max_images)))
        if max_images
        else np.zeros((0, 1, 1, 3), np.uint8)
    )
    write_npz_atomic(out, arr_0=kept, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    return {"out": str(out), "num_images": len(image_set), "num_kept_images": len(kept), **provenance}


def write_reference_images(images: str | Path, out: str | Path, *, max_images: int = 10000) -> dict:
    """A reference batch of images only (`arr_0`, the first `max_images` in sorted order): what a recipe's `eval.ref`
    needs when the evaluator computes the statistics with its own Inception (and what any Inception can use)."""
    image_set = open_image_set(images)
    kept = np.concatenate(list(image_set.batches(64, max_images)))
    write_npz_atomic(out, arr_0=kept)
    return {"out": str(out), "num_images": len(image_set), "num_kept_images": len(kept), "statistics": None}
