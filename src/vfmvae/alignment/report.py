"""`vfmvae align report`: the SE-CKNNA table for several models under each transformation.

SE-CKNNA(model, T) = CKNNA(reference features of the clean images, model features of the T-transformed
images), rows paired by image, official preprocessing, k = 10. See docs/alignment.md for the definition and
its relation to the paper.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

from vfmvae.alignment.extract import extract_features
from vfmvae.alignment.metrics import cknna, preprocess
from vfmvae.checkpoint.atomic import atomic_write_text
from vfmvae.config import ExistingPath

__all__ = ["AlignReportConfig", "run_report"]

DEFAULT_TRANSFORMS = ("clean", "equivariance", "noise_0.050", "noise_0.100", "noise_0.150", "noise_0.200")


@dataclass(frozen=True)
class AlignReportConfig:
    images: ExistingPath                        # an `align transforms` output folder
    out: Path                                   # report folder (features are cached in out/features)
    reference: str                              # the anchor, e.g. vfm:dinov2-base; its clean features are used
    models: tuple[str, ...]                     # vfm:NAME, tokenizer:DIR, ...
    transformations: tuple[str, ...] = DEFAULT_TRANSFORMS
    topk: int = 10
    device: str = "cpu"


def _slug(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("_")[-80:]


def _features(cfg: AlignReportConfig, source: str, transform: str) -> Path:
    path = Path(cfg.out) / "features" / f"{_slug(source)}__{transform}.safetensors"
    if not path.is_file():
        extract_features(source, cfg.images, path, transform=transform, device=cfg.device, progress=False)
    return path


def run_report(cfg: AlignReportConfig) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    reference = preprocess(load_file(str(_features(cfg, cfg.reference, "clean")))["features"])
    table: dict[str, dict[str, float]] = {}
    for model in (cfg.reference, *cfg.models):
        table[model] = {}
        for transform in cfg.transformations:
            feats = preprocess(load_file(str(_features(cfg, model, transform)))["features"])
            table[model][transform] = cknna(reference, feats, cfg.topk)
    result = {"definition": "SE-CKNNA(model, T) = CKNNA(reference on clean images, model on T(images)), "
                            f"official preprocessing, topk={cfg.topk}",
              "reference": cfg.reference, "num_images": int(reference.shape[0]), "table": table}
    atomic_write_text(out / "se_cknna.json", json.dumps(result, indent=2) + "\n")
    _plot(table, cfg, out / "se_cknna.png")
    result["plot"] = str(out / "se_cknna.png")
    result["markdown"] = _markdown(table, cfg.transformations)
    (out / "se_cknna.md").write_text(result["markdown"] + "\n")
    return result


def _markdown(table: dict[str, dict[str, float]], transforms: tuple[str, ...]) -> str:
    lines = ["| model | " + " | ".join(transforms) + " |", "|---" * (len(transforms) + 1) + "|"]
    for model, row in table.items():
        lines.append(f"| {model} | " + " | ".join(f"{row[t]:.4f}" for t in transforms) + " |")
    return "\n".join(lines)


def _plot(table: dict[str, dict[str, float]], cfg: AlignReportConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.4 * len(cfg.transformations) + 2, 3.6))
    for model, row in table.items():
        ax.plot(list(cfg.transformations), [row[t] for t in cfg.transformations], marker="o", label=model)
    ax.set_ylabel(f"SE-CKNNA vs {cfg.reference} (clean)")
    ax.set_ylim(bottom=min(0.0, *(v for r in table.values() for v in r.values())))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
