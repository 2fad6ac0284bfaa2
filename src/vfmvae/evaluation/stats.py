"""FID/sFID, Inception Score and precision/recall exactly as the ADM evaluator computes them.

(openai/guided-diffusion `evaluations/evaluator.py` at its published revision.)
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

__all__ = [
    "gaussian_stats",
    "frechet_distance",
    "inception_score",
    "inception_score_torch_fidelity",
    "precision_recall",
    "manifold_radii",
]


def gaussian_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased (N - 1) covariance in float64."""
    x = np.asarray(features.cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {x.shape[0]}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


MIN_FID_SAMPLES = 2048  # the pool3 feature dimension: below it the sample covariance is singular


def warn_if_too_few_for_fid(num: int, what: str = "FID") -> bool:
    """Warn (and return False) when `num` images are too few for a comparable FID."""
    if num >= MIN_FID_SAMPLES:
        return True
    warnings.warn(
        f"{what} from {num} images: fewer than {MIN_FID_SAMPLES} (the 2048-d Inception pool3 features), so "
        "the covariance is singular and the value is not comparable with published numbers (which use "
        "50,000 samples)",
        stacklevel=3,
    )
    return False


def _psd_eigen(sigma: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and vectors of a covariance, negative rounding noise and values below the matrix's numerical
    rank threshold (LAPACK's, as `numpy.linalg.matrix_rank`: D * eps * largest) set to 0; warns if it is not
    positive semi-definite beyond rounding."""
    values, vectors = np.linalg.eigh((sigma + sigma.T) / 2)
    top = max(float(np.max(np.abs(values))), np.finfo(np.float64).tiny)
    if values[0] < -1e-6 * top:
        warnings.warn(
            f"FID: the {which} covariance is not positive semi-definite (eigenvalue {values[0]:.3g}, largest "
            f"{top:.3g}): not a covariance matrix; its negative part is ignored and the value is unreliable",
            stacklevel=3,
        )
    values = np.where(values > sigma.shape[0] * np.finfo(np.float64).eps * top, values, 0.0)
    return values, vectors


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrtm(S1 S2) in float64: the ADM evaluator's (and torch-fidelity's)
    Fréchet distance, computed so that it is never NaN, complex or negative.

    S1 S2 has the eigenvalues of the symmetric positive semi-definite S1^1/2 S2 S1^1/2, so tr sqrtm(S1 S2) is the
    sum of the square roots of the eigenvalues of A^T S2 A with A = V sqrt(L) from S1 = V L V^T (`eigh`, with
    eigenvalues below the numerical rank threshold set to 0; the factor of lower rank is taken). On well-conditioned
    covariances this equals ADM's `scipy.linalg.sqrtm(S1 @ S2)` and torch-fidelity's `eigvals(S1 @ S2)` to about
    1e-12 relative. On singular ones (fewer samples than feature dimensions: the sample covariance has rank N - 1)
    the general `sqrtm` of the non-symmetric product loses accuracy: ADM's path then returns values off by up to
    1e-4 absolute (negative for identical statistics) or stops with "imaginary component"; here it stays exact (as
    the nuclear norm of the centred feature cross-product) and warns that the value is not comparable."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics of different sizes: {mu1.shape} vs {mu2.shape}, {s1.shape} vs {s2.shape}")
    if not all(np.isfinite(x).all() for x in (mu1, mu2, s1, s2)):
        raise ValueError("FID: the statistics hold NaN or infinite values (non-finite features?)")
    diff = mu1 - mu2
    (values1, vectors1), (values2, vectors2) = _psd_eigen(s1, "first"), _psd_eigen(s2, "second")
    rank1, rank2 = int(np.count_nonzero(values1)), int(np.count_nonzero(values2))
    if min(rank1, rank2) < s1.shape[0]:
        warnings.warn(
            f"FID: singular covariance (rank {rank1} and {rank2} of {s1.shape[0]}; fewer samples than feature "
            "dimensions, or constant features): the value is finite and exact for these statistics, but biased "
            "and not comparable with published numbers (which use 50,000 samples)",
            stacklevel=2,
        )
    # the root of the factor of lower rank: the small (rank x rank) product holds every non-zero eigenvalue
    values, vectors, other = (values1, vectors1, s2) if rank1 <= rank2 else (values2, vectors2, s1)
    keep = values > 0
    root = vectors[:, keep] * np.sqrt(values[keep])
    inner = root.T @ other @ root
    products = np.linalg.eigvalsh((inner + inner.T) / 2) if keep.any() else np.zeros(0)
    floor = products.size * np.finfo(np.float64).eps * float(np.max(np.abs(products), initial=0.0))
    trace_sqrt = float(np.sqrt(products[products > floor]).sum())  # rounding noise around 0 left out
    fid = float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)
    return max(fid, 0.0)  # a squared distance: rounding must not make it negative


def inception_score(logits: np.ndarray | torch.Tensor, split_size: int = 5000) -> float:
    """ADM: softmax of the unbiased logits (float32), consecutive splits of `split_size`, no shuffle,
    exp(mean KL(p(y|x) || p(y))) per split, mean over splits (50,000 samples give 10 splits).

    Where a probability underflows to 0 in float32 (a logit margin above ~100), ADM's `p * log(p)` is
    0 * -inf = NaN and its IS is NaN; here such a term takes its limit, 0. Every finite ADM value is unchanged.
    """
    x = torch.as_tensor(np.asarray(logits.cpu() if isinstance(logits, torch.Tensor) else logits), dtype=torch.float32)
    preds = torch.softmax(x, dim=1).numpy()
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i : i + split_size]
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
        kl = np.where(part > 0, kl, 0.0)
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def inception_score_torch_fidelity(
    logits: np.ndarray | torch.Tensor, splits: int = 10, seed: int = 2020
) -> tuple[float, float]:
    """torch-fidelity 0.4.0's ISC (`metric_isc.isc_features_to_metric`, its defaults): rows shuffled by
    `np.random.RandomState(seed).permutation`, float64 softmax and log-softmax, `splits` chunks with bounds
    i * N // splits, exp(mean KL) per chunk; returns (mean, std) over chunks.

    Used for rIS, as the official VFM-VAE README computes it (`fidelity --isc`). The shuffle makes the score
    independent of how the files are ordered (a class-sorted folder does not collapse it). Where a float64
    probability underflows to 0 (margin above ~700) torch-fidelity would return NaN; that term is 0 here.
    """
    x = torch.as_tensor(np.asarray(logits.cpu() if isinstance(logits, torch.Tensor) else logits))
    n = x.shape[0]
    if x.ndim != 2 or n < splits:
        raise ValueError(f"Inception Score with {splits} splits needs (N >= {splits}, C) logits, got {tuple(x.shape)}")
    x = x[torch.from_numpy(np.random.RandomState(seed).permutation(n))].double()
    p, log_p = x.softmax(dim=1), x.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        chunk = slice(i * n // splits, (i + 1) * n // splits)
        p_chunk, log_p_chunk = p[chunk], log_p[chunk]
        log_q = p_chunk.mean(dim=0, keepdim=True).log()
        kl = torch.where(p_chunk > 0, p_chunk * (log_p_chunk - log_q), torch.zeros((), dtype=p.dtype))
        scores.append(kl.sum(dim=1).mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def _pairwise_sq_dists(u: torch.Tensor, v: torch.Tensor, fp16: bool) -> torch.Tensor:
    """max(|u|^2 - 2 u.v + |v|^2, 0). ADM computes this in float16 and falls back to float32 if not finite;
    `fp16=True` emulates that (inputs and result rounded to half precision, products accumulated in float32)."""

    def block(a: torch.Tensor, b: torch.Tensor, half: bool) -> torch.Tensor:
        cast = (lambda t: t.half().float()) if half else (lambda t: t)
        a, b = cast(a), cast(b)
        d = cast(cast((a * a).sum(1, keepdim=True)) - cast(2 * (a @ b.T)) + cast((b * b).sum(1)[None]))
        return d.clamp_min(0.0)

    d = block(u, v, fp16)
    if fp16 and not torch.isfinite(d).all():
        d = block(u, v, False)
    return d


def manifold_radii(features: torch.Tensor, k: int = 3, block: int = 10000, fp16: bool = True) -> torch.Tensor:
    """Squared distance of every point to its k-th nearest neighbour, not counting itself."""
    n = features.shape[0]
    if n <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, got {n}")
    radii = torch.empty(n)
    for start in range(0, n, block):
        rows = features[start : start + block]
        dists = torch.cat([_pairwise_sq_dists(rows, features[s : s + block], fp16) for s in range(0, n, block)], 1)
        radii[start : start + block] = dists.kthvalue(k + 1, dim=1).values  # index 0 is the point itself
    return radii


def precision_recall(
    reference: np.ndarray | torch.Tensor,
    samples: np.ndarray | torch.Tensor,
    k: int = 3,
    block: int = 10000,
    fp16: bool = True,
) -> tuple[float, float]:
    """Kynkäänniemi et al. (2019) as in ADM: precision = share of samples inside some reference k-NN ball,
    recall = share of reference points inside some sample k-NN ball (squared distances, `<=`)."""
    ref = torch.as_tensor(np.asarray(reference), dtype=torch.float32)
    smp = torch.as_tensor(np.asarray(samples), dtype=torch.float32)
    ref_radii, smp_radii = manifold_radii(ref, k, block, fp16), manifold_radii(smp, k, block, fp16)
    ref_in = torch.zeros(len(ref), dtype=torch.bool)
    smp_in = torch.zeros(len(smp), dtype=torch.bool)
    for i in range(0, len(ref), block):
        for j in range(0, len(smp), block):
            d = _pairwise_sq_dists(ref[i : i + block], smp[j : j + block], fp16)
            ref_in[i : i + block] |= (d <= smp_radii[j : j + block][None, :]).any(1)
            smp_in[j : j + block] |= (d <= ref_radii[i : i + block][:, None]).any(0)
    return float(smp_in.double().mean()), float(ref_in.double().mean())
