"""One feature vector per image (mean over spatial tokens) from a VFM or a tokenizer, for CKNNA.

Sources: `vfm:NAME` (a registry name or a local folder; `*-test` names are random tiny models),
`tokenizer:DIR` (a VFMVAE folder; the latent's spatial mean, posterior mean unless `sample`), and
`diffusion:DIR@BLOCK` (not available until the diffusion models land).

`transform`: `clean`, `noise_0.050` ... (reads that folder of an `align transforms` output) or
`equivariance` (clean images, each rotated by its recorded multiple of 90 degrees, then downscaled by its
recorded scale before the model: the VFM's own pre-scaling path, as the official extractors do).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vfmvae.data.folder import list_image_folder
from vfmvae.data.images import decode_image
from vfmvae.data.transforms import to_float01, to_uint8_tensor

__all__ = ["extract_features", "load_source"]


def load_source(source: str, device: str = "cpu"):
    kind, _, spec = source.partition(":")
    if kind == "vfm":
        from vfmvae.vfm import vfm_by_name

        model = vfm_by_name(spec, layers=(-1,), scale_factor=1.0)  # fed at image size, as the official SigLIP2 extractor

        def features(x: torch.Tensor, scale: float) -> torch.Tensor:
            return model(x, extra_scale=scale).tokens[0].mean(1)

        return model.to(device), features
    if kind == "tokenizer":
        from vfmvae.tokenizer import VFMVAE

        model = VFMVAE.from_pretrained(spec).to(device)

        def features(x: torch.Tensor, scale: float) -> torch.Tensor:
            moments = model.encode_moments(x, extra_scale=scale)
            return moments[:, : model.config.z_dim].mean((2, 3))  # posterior mean, spatially averaged

        return model, features
    if kind == "diffusion":
        raise ValueError("diffusion:DIR@BLOCK sources need the diffusion models, which this version does not "
                         "include yet; extract VFM and tokenizer features for now")
    raise ValueError(f"unknown source {source!r}; use vfm:NAME, tokenizer:DIR or diffusion:DIR@BLOCK")


@torch.no_grad()
def extract_features(source: str, images: str | Path, out: str | Path, *, transform: str = "clean",
                     device: str = "cpu", progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    images = Path(images)
    manifest_path = images / "manifest.json"
    records = json.loads(manifest_path.read_text())["images"] if manifest_path.is_file() else None
    folder = images / ("clean" if transform == "equivariance" else transform) if records is not None else images
    if transform not in ("clean", "equivariance") and records is None:
        raise FileNotFoundError(f"{manifest_path} not found: transform {transform!r} needs an `align transforms` output")
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files, _, _ = list_image_folder(folder)
    names = [str(p.relative_to(folder)) for p in files]
    by_name = {r["name"]: r for r in records} if records else {}
    model, features = load_source(source, device)
    rows = []
    for path, name in tqdm(list(zip(files, names)), desc=f"{source} [{transform}]", unit="img", disable=not progress):
        x = to_float01(to_uint8_tensor(decode_image(path)))[None].to(device)
        scale = 1.0
        if transform == "equivariance":
            record = by_name.get(name)
            if record is None:
                raise ValueError(f"{name} has no equivariance record in {manifest_path}")
            x = torch.rot90(x, k=record["rotation"] // 90, dims=(-2, -1))
            scale = record["scale"]
        rows.append(features(x, scale).float().cpu())
    feats = torch.cat(rows)
    meta = {"source": source, "transform": transform, "images": str(folder), "names": json.dumps(names)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": feats.contiguous()}, str(out), metadata=meta)
    return {"out": str(out), "num": feats.shape[0], "dim": feats.shape[1], "source": source, "transform": transform}
