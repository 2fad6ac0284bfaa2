"""The paper's figures, in one place: what the pipeline's result table puts beside the measured ones.

Sources (ImageNet 256x256, 50,000 samples, the ADM evaluator and reference batch):
* generation: arXiv 2510.18457 (v3), the system-level comparison table, as the official repository shows it
  (tianciB/VFM-VAE@b3a752a images/results.png): gFID and IS without guidance; gFID, sFID, IS, precision and recall
  with guidance (the guidance scale of each is in vfmvae.sampling.presets);
* REG-SiT-XL/1 without guidance, sFID / precision / recall, and the tokenizer's reconstruction figures (ImageNet
  val, 50,000 images): tianciB/VFM-VAE@b3a752a README.md, "Expected Results on ImageNet-256x256".
(v1/v2 of the paper give 2.20 for REG at 80 epochs; v3, the README and the table image give 2.22.)
"""

from __future__ import annotations

from typing import Any

__all__ = ["PAPER", "RECON_METRICS", "GEN_METRICS", "METRIC_NAMES"]

RECON_METRICS = ("rfid", "psnr", "ssim", "lpips", "ris")
GEN_METRICS = ("fid", "sfid", "inception_score", "precision", "recall")
METRIC_NAMES = {
    "rfid": "rFID",
    "psnr": "PSNR",
    "ssim": "SSIM",
    "lpips": "LPIPS",
    "ris": "rIS",
    "fid": "gFID",
    "sfid": "sFID",
    "inception_score": "IS",
    "precision": "Prec.",
    "recall": "Rec.",
}

_TABLE = "arXiv 2510.18457 v3 system-level table (tianciB/VFM-VAE@b3a752a images/results.png)"
_README = "tianciB/VFM-VAE@b3a752a README.md, Expected Results on ImageNet-256x256"


def _gen(fid: float, inception_score: float, **more: float) -> dict[str, float]:
    return {"fid": fid, "inception_score": inception_score, **more}


# key -> {"label", "source", and "recon" (reconstruction) or "no_cfg" / "cfg" (generation without / with guidance)}
PAPER: dict[str, dict[str, Any]] = {
    "vfmvae-f16d32": {
        "label": "VFM-VAE f16d32 tokenizer, 44M images (ImageNet val)",
        "source": _README,
        "recon": {"rfid": 0.52, "psnr": 22.99, "ssim": 0.593, "lpips": 0.221, "ris": 214.1},
    },
    "lightningdit-xl1-64ep": {
        "label": "LightningDiT-XL/1, 64 epochs",
        "source": _TABLE,
        "no_cfg": _gen(3.80, 152.8),
        "cfg": _gen(2.16, 232.8, sfid=4.26, precision=0.82, recall=0.58),
    },
    "lightningdit-xl1-80ep": {
        "label": "LightningDiT-XL/1, 80 epochs",
        "source": _TABLE,
        "no_cfg": _gen(3.41, 160.4),
    },
    "lightningdit-xl1-560ep": {
        "label": "LightningDiT-XL/1, 560 epochs",
        "source": _TABLE,
        "no_cfg": _gen(2.06, 205.8),
        "cfg": _gen(1.57, 254.4, sfid=4.56, precision=0.80, recall=0.64),
    },
    "reg-sit-xl1-64ep": {
        "label": "REG-SiT-XL/1, 64 epochs",
        "source": _TABLE,
        "no_cfg": _gen(2.42, 215.2),
        "cfg": _gen(2.03, 261.7, sfid=5.23, precision=0.83, recall=0.58),
    },
    "reg-sit-xl1-80ep": {
        "label": "REG-SiT-XL/1, 80 epochs",
        "source": f"{_TABLE}; sFID, precision, recall: {_README}",
        "no_cfg": _gen(2.22, 218.8, sfid=5.03, precision=0.83, recall=0.58),
    },
    "reg-sit-xl1-480ep": {
        "label": "REG-SiT-XL/1, 480 epochs",
        "source": _TABLE,
        "no_cfg": _gen(1.67, 238.3),
        "cfg": _gen(1.34, 302.7, sfid=4.59, precision=0.78, recall=0.65),
    },
    "reg-sit-xl1-640ep": {
        "label": "REG-SiT-XL/1, 640 epochs",
        "source": f"{_TABLE}; without guidance, sFID, precision, recall: {_README}",
        "no_cfg": _gen(1.62, 241.6, sfid=4.55, precision=0.81, recall=0.62),
        "cfg": _gen(1.31, 300.2, sfid=4.63, precision=0.78, recall=0.66),
    },
}
