"""`vfmvae align report`: CKNNA per transformation and SE-CKNNA for several models.

Pairing `same` (the default, the paper's definition): CKNNA(T) = CKNNA(reference features of T(x), model
features of T(x)), both on the same transformed images, as tianciB/VFM-VAE@b3a752a
tools/evaluate_alignment/extract.sh extracts every model, the VFMs included, in every mode. SE-CKNNA is the mean
of CKNNA(T) over the transformations other than `clean` (the paper: (1/|T|) sum over T); CKNNA(clean) is the
ordinary CKNNA. Pairing `clean-reference` compares the reference on the clean images with the model on T(x).
Rows paired by image, official preprocessing, k = 10. See docs/alignment.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file

from vfmvae.alignment.extract import extract_features
from vfmvae.alignment.metrics import cknna, preprocess
from vfmvae.checkpoint.atomic import atomic_write_text
from vfmvae.config import ExistingPath

__all__ = ["AlignReportConfig", "run_report", "se_cknna_table"]

DEFAULT_TRANSFORMS = ("clean", "equivariance", "noise_0.050", "noise_0.100", "noise_0.150", "noise_0.200")


@dataclass(frozen=True)
class AlignReportConfig:
    images: ExistingPath  # an `align transforms` output folder
    out: Path  # report folder (features are cached in out/features)
    reference: str  # the anchor, e.g. vfm:dinov2-base; its clean features are used
    models: tuple[str, ...]  # vfm:NAME, tokenizer:DIR, ...
    transformations: tuple[str, ...] = DEFAULT_TRANSFORMS
    topk: int = 10
    device: str = "cpu"
    pairing: Literal["same", "clean-reference"] = "same"  # reference on T(x) (paper) or on the clean x
    posterior: Literal["sample", "mean"] = "sample"  # tokenizer latents: a posterior sample (official) or mean


def _slug(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("_")[-80:]


def _features(cfg: AlignReportConfig, source: str, transform: str) -> Path:
    suffix = f"__{cfg.posterior}" if source.startswith("tokenizer:") else ""
    path = Path(cfg.out) / "features" / f"{_slug(source)}__{transform}{suffix}.safetensors"
    if not path.is_file():
        extract_features(
            source, cfg.images, path, transform=transform, device=cfg.device, posterior=cfg.posterior, progress=False
        )
    return path


def se_cknna_table(
    reference: dict[str, torch.Tensor],
    models: dict[str, dict[str, torch.Tensor]],
    topk: int = 10,
    pairing: str = "same",
) -> tuple[dict[str, dict[str, float]], dict[str, float | None]]:
    """CKNNA per model and transformation, and SE-CKNNA (mean over the transformations other than `clean`).

    `reference[T]` and `models[name][T]` are preprocessed feature matrices, rows paired by image. With pairing
    `same` the reference features of T(x) meet the model's features of T(x); with `clean-reference` the
    reference's clean features meet them.
    """
    if pairing not in ("same", "clean-reference"):
        raise ValueError(f"pairing {pairing!r}: use same or clean-reference")
    table: dict[str, dict[str, float]] = {}
    se: dict[str, float | None] = {}
    for name, by_transform in models.items():
        table[name] = {}
        for transform, feats in by_transform.items():
            anchor = reference[transform if pairing == "same" else "clean"]
            table[name][transform] = cknna(anchor, feats, topk)
        shifted = [v for t, v in table[name].items() if t != "clean"]
        se[name] = sum(shifted) / len(shifted) if shifted else None
    return table, se


def run_report(cfg: AlignReportConfig) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    def load(source: str, transform: str) -> torch.Tensor:
        return preprocess(load_file(str(_features(cfg, source, transform)))["features"])

    needed = cfg.transformations if cfg.pairing == "same" else ("clean",)
    reference = {t: load(cfg.reference, t) for t in needed}
    models = {m: {t: load(m, t) for t in cfg.transformations} for m in (cfg.reference, *cfg.models)}
    table, se = se_cknna_table(reference, models, cfg.topk, cfg.pairing)
    anchor = "T(images), the same transformed images" if cfg.pairing == "same" else "the clean images"
    result = {
        "definition": f"CKNNA(model, T) = CKNNA(reference on {anchor}, model on T(images)); "
        "SE-CKNNA = mean of CKNNA(model, T) over the transformations other than clean",
        "protocol": {
            "pairing": cfg.pairing,
            "topk": cfg.topk,
            "preprocess": "official: clip at the 95th percentile of |x| per file, row L2 norm",
            "features": "mean over spatial tokens per image",
            "tokenizer_latent": f"posterior {cfg.posterior}",
            "dinov2_input": "short side to 224 bicubic (PIL; 16 patches); equivariance: rot90, "
            "bilinear to int(224 s), reflect pad right/bottom to a multiple of 14",
            "other_vfm_input": "the image size (official SigLIP2 extractor); equivariance: rot90, "
            "downscale by s (bilinear, antialias)",
            "se_cknna_over": [t for t in cfg.transformations if t != "clean"],
        },
        "reference": cfg.reference,
        "num_images": int(next(iter(reference.values())).shape[0]),
        "table": table,
        "se_cknna": se,
    }
    atomic_write_text(out / "se_cknna.json", json.dumps(result, indent=2) + "\n")
    _plot(table, cfg, out / "se_cknna.png")
    result["plot"] = str(out / "se_cknna.png")
    result["markdown"] = _markdown(table, cfg.transformations, se)
    (out / "se_cknna.md").write_text(result["markdown"] + "\n")
    return result


def _markdown(table: dict[str, dict[str, float]], transforms: tuple[str, ...], se: dict[str, float | None]) -> str:
    lines = ["| model | " + " | ".join(transforms) + " | SE-CKNNA |", "|---" * (len(transforms) + 2) + "|"]
    for model, row in table.items():
        mean = "-" if se[model] is None else f"{se[model]:.4f}"
        lines.append(f"| {model} | " + " | ".join(f"{row[t]:.4f}" for t in transforms) + f" | {mean} |")
    return "\n".join(lines)


def _plot(table: dict[str, dict[str, float]], cfg: AlignReportConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.4 * len(cfg.transformations) + 2, 3.6))
    for model, row in table.items():
        ax.plot(list(cfg.transformations), [row[t] for t in cfg.transformations], marker="o", label=model)
    ax.set_ylabel(f"CKNNA vs {cfg.reference} ({'same T(x)' if cfg.pairing == 'same' else 'clean'})")
    ax.set_ylim(bottom=min(0.0, *(v for r in table.values() for v in r.values())))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
