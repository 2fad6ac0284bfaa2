"""Representation alignment: CKNNA (as the official VFM-VAE code) and SE-CKNNA across models and transforms."""

from vfmvae.alignment.metrics import all_metrics, cka, cknna, mutual_knn, preprocess, unbiased_cka
from vfmvae.alignment.report import AlignReportConfig, run_report
from vfmvae.alignment.transforms import make_transformed_set

__all__ = [
    "AlignReportConfig",
    "all_metrics",
    "cka",
    "cknna",
    "make_transformed_set",
    "mutual_knn",
    "preprocess",
    "run_report",
    "unbiased_cka",
]
