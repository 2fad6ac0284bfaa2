"""Evaluation by the ADM protocol: FID/sFID/IS/precision/recall, and rFID/PSNR/SSIM/LPIPS for tokenizers."""

from vfmvae.evaluation.generation import build_reference, evaluate_generation
from vfmvae.evaluation.image_metrics import LPIPSMetric, load_lpips, psnr, ssim, ssim_signed
from vfmvae.evaluation.inception import InceptionV3, load_inception
from vfmvae.evaluation.reconstruction import evaluate_reconstruction
from vfmvae.evaluation.stats import (
    frechet_distance,
    gaussian_stats,
    inception_score,
    inception_score_torch_fidelity,
    precision_recall,
)

__all__ = [
    "InceptionV3",
    "LPIPSMetric",
    "build_reference",
    "evaluate_generation",
    "evaluate_reconstruction",
    "frechet_distance",
    "gaussian_stats",
    "inception_score",
    "inception_score_torch_fidelity",
    "load_inception",
    "load_lpips",
    "precision_recall",
    "psnr",
    "ssim",
    "ssim_signed",
]
