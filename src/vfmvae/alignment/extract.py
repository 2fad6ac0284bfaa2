"""One feature vector per image (mean over spatial tokens) from a VFM or a tokenizer, for CKNNA.

Sources: `vfm:NAME` (a registry name or a local folder; `*-test` names are random tiny models),
`tokenizer:DIR` (a VFMVAE folder; the latent's spatial mean, of a posterior sample with a per-image seed as
tianciB/VFM-VAE@b3a752a tools/evaluate_alignment/vaes/extract_features_by_vfm_vae.py takes it (`G.encode()`),
or of the posterior mean with `posterior="mean"`), and
`diffusion:DIR@BLOCK` (a trained DiffusionTransformer export: the image is encoded by the tokenizer named in
its `latent_stats.json` (a posterior sample), normalised, noised to t = 0.5 with a per-image seeded noise, and
run with the null label; the features are the output of block BLOCK (1-based; 0 = the patch embedding), averaged
over the image
tokens, class token excluded, or `proj`, the first REPA projector's output averaged over all tokens. REG models
get the image's real class token (the VFM of their latent cache, built and prepared as `cache-latents` built it:
the token equals the cached training target), noised to t like the latent, as
tools/evaluate_alignment/diffusions/get_block_features_from_reg.py).

`transform`: `clean`, `noise_0.050` ... (reads that folder of an `align transforms` output) or
`equivariance` (clean images, each rotated by its recorded multiple of 90 degrees, then downscaled by its
recorded scale before the model: the VFM's own pre-scaling path, as the official extractors do).

DINOv2 references (`vfm:dinov2-*`) take the official DINOv2 extractor's input
(tools/evaluate_alignment/vfms/extract_features_by_dinov2.py): clean and noisy images are resized to 224 px on the
short side, bicubic on the uint8 image (torchvision `Resize(224)` on PIL); under `equivariance` the rotated
float image is resized bilinearly (no antialias) to int(224 s) and reflect-padded at the right and bottom to a
multiple of the patch size (14). (224 = 16 patches of 14 px; the tiny `dinov2-test` with 8-px patches gets the
same 16-patch grid, 128 px.) Their position table is resampled to each input's grid as the official extractor's timm
ViT (`dynamic_img_size=True`, `resample_abs_pos_embed`: bicubic with antialias) does, not by transformers' own
interpolation (no antialias). Other VFMs are fed at the image size, as the official SigLIP2 extractor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vfmvae.data.folder import list_image_folder
from vfmvae.data.images import decode_image
from vfmvae.data.transforms import to_float01, to_uint8_tensor
from vfmvae.latents.stats import STATS_FILE, LatentStats
from vfmvae.seeding import derive_seed

__all__ = ["extract_features", "load_source", "dinov2_input"]

DINOV2_GRID = 16  # the official DINOv2 extractor's Resize(224): 16 x 16 patches of 14 px


def dinov2_input(x: torch.Tensor, scale: float, equivariance: bool, patch_size: int = 14) -> torch.Tensor:
    """The official DINOv2 extractor's pixels in [0, 1] for one (1, 3, H, W) image in [0, 1] (uint8 values).

    R = 16 * patch_size (224 for every DINOv2, whose patches are 14 px; 128 for the 8-px tiny test model).
    Clean/noise: torchvision `Resize(R, BICUBIC)` on the PIL image (short side to R). Equivariance (x already
    rotated): bilinear, no antialias, to int(R * scale) square, then reflect padding at the right and bottom up
    to a multiple of `patch_size`.
    """
    resolution = DINOV2_GRID * patch_size
    import torch.nn.functional as F
    from PIL import Image

    if not equivariance:
        from torchvision.transforms import InterpolationMode, Resize

        arr = (x[0].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        img = Resize(resolution, interpolation=InterpolationMode.BICUBIC)(Image.fromarray(arr))
        return to_float01(to_uint8_tensor(img))[None].to(x.device)
    target = int(resolution * scale)
    y = F.interpolate(x.float(), size=target, mode="bilinear", align_corners=False)
    pad_h, pad_w = (-y.shape[-2]) % patch_size, (-y.shape[-1]) % patch_size
    return F.pad(y, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else y


def load_source(source: str, device: str = "cpu", *, posterior: str = "sample", seed: int = 0):
    """(model, features) where `features(x, scale, equivariance, index)` is one (1, D) vector for image `index`."""
    kind, _, spec = source.partition(":")
    if kind == "vfm":
        from vfmvae.vfm import VFMSpec, build_vfm
        from vfmvae.vfm.positions import resample_positions_per_forward

        # fed at image size, as the official SigLIP2 extractor
        model = build_vfm(VFMSpec.from_name(spec, layers=(-1,), scale_factor=1.0))
        if model.family.startswith("dinov2"):
            # the official extractor's timm ViT (dynamic_img_size=True) resamples its table to every input's grid
            # bicubic with antialias; transformers' own interpolation has no antialias
            model = resample_positions_per_forward(model)

            def features(x: torch.Tensor, scale: float, equivariance: bool, index: int) -> torch.Tensor:
                return model(dinov2_input(x, scale, equivariance, model.patch_size)).tokens[0].mean(1)
        else:

            def features(x: torch.Tensor, scale: float, equivariance: bool, index: int) -> torch.Tensor:
                return model(x, extra_scale=scale).tokens[0].mean(1)

        return model.to(device), features
    if kind == "tokenizer":
        from vfmvae.tokenizer import VFMVAE
        from vfmvae.tokenizer.posterior import DiagonalGaussian

        if posterior not in ("sample", "mean"):
            raise ValueError(f"posterior {posterior!r}: use sample (the official extractor) or mean")
        model = VFMVAE.from_pretrained(spec).to(device)

        def features(x: torch.Tensor, scale: float, equivariance: bool, index: int) -> torch.Tensor:
            dist = DiagonalGaussian(model.encode_moments(x, extra_scale=scale).moments)
            if posterior == "mean":
                return dist.mode().mean((2, 3))
            g = torch.Generator().manual_seed(derive_seed(seed, index))  # per image: independent of batching
            return dist.sample(g).mean((2, 3))  # a posterior sample, spatially averaged

        return model, features
    if kind == "diffusion":
        return _diffusion_source(spec, device, posterior=posterior, seed=seed)
    raise ValueError(f"unknown source {source!r}; use vfm:NAME, tokenizer:DIR or diffusion:DIR@BLOCK")


def _reg_class_token_source(stats: LatentStats, folder: str, device: str):
    """The DINOv2 class token of an image as the REG model saw it in training: the VFM of the model's latent cache
    (`cache.json`: vfm_features, vfm_resolution), built and prepared by the function `cache-latents` used
    (`build_target_vfm`: REG's table resampling and resize), so the token equals the cached target."""
    from vfmvae.latents.cache import MANIFEST
    from vfmvae.latents.targets import build_target_vfm

    manifest_path = Path(stats.cache or "") / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{folder} is a REG model: its features need the real DINOv2 class token, read with the "
            f"VFM named in its latent cache's {MANIFEST}; {manifest_path} not found (the `cache` "
            "entry of latent_stats.json)"
        )
    manifest = json.loads(manifest_path.read_text())
    if not manifest.get("vfm_features"):
        raise ValueError(f"{manifest_path}: the cache has no vfm_features, so the REG class token is unknown")
    resolution = manifest.get("resolution") or manifest.get("image_size")
    if not resolution:
        raise ValueError(f"{manifest_path}: no resolution recorded, so the class token's input size is unknown")
    vfm = build_target_vfm(manifest["vfm_features"], resolution, manifest.get("vfm_resolution")).to(device)
    return lambda x: vfm(x).cls


def _diffusion_source(spec: str, device: str, t: float = 0.5, seed: int = 0, posterior: str = "sample"):
    from vfmvae.diffusion import DiffusionTransformer
    from vfmvae.tokenizer import VFMVAE

    folder, sep, block = spec.rpartition("@")
    if not sep or not folder:
        raise ValueError(
            f"diffusion source {spec!r} must look like diffusion:DIR@BLOCK (e.g. diffusion:runs/dit/export@8)"
        )
    model = DiffusionTransformer.from_pretrained(folder).to(device)
    cfg = model.config
    if block == "proj":
        if not cfg.align_dims:
            raise ValueError(f"{folder} has no REPA projector; choose a block 0..{cfg.depth}")
        tap = cfg.align_depth
    elif block.isdigit() and int(block) <= cfg.depth:
        tap = int(block)
    else:
        raise ValueError(f"block {block!r} of {folder}: use 0 (embedding) .. {cfg.depth}, or proj")
    stats_path = Path(folder) / STATS_FILE
    if not stats_path.is_file():
        raise FileNotFoundError(
            f"{stats_path} not found: diffusion features need the latent statistics and tokenizer "
            "that `vfmvae train diffusion` writes next to the export"
        )
    stats = LatentStats.load(stats_path)
    tokenizer_dir = stats.tokenizer_dir()
    if tokenizer_dir is None:
        raise ValueError(
            f"{stats_path} names no tokenizer (key 'tokenizer'): diffusion features encode the images "
            "with the tokenizer the model was trained on"
        )
    stats.check_tokenizer(tokenizer_dir)
    tokenizer = VFMVAE.from_pretrained(tokenizer_dir).to(device)
    class_token = _reg_class_token_source(stats, folder, device) if cfg.class_token_dim else None

    def features(x: torch.Tensor, scale: float, equivariance: bool, index: int) -> torch.Tensor:
        from vfmvae.tokenizer.posterior import DiagonalGaussian

        if scale != 1.0:  # a fixed-size model: downscale (the transformation), then back to the input size
            import torch.nn.functional as F

            small = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False, antialias=True)
            x = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)
        g = torch.Generator().manual_seed(derive_seed(seed, index))  # per image: independent of batching
        dist = DiagonalGaussian(tokenizer.encode_moments(x).moments)
        # the official prefetch stores a sampled z (G.encode()); `posterior="mean"` takes the mean
        z = stats.normalize(dist.sample(g) if posterior == "sample" else dist.mode())
        if z.shape[1:] != (cfg.in_channels, cfg.input_size, cfg.input_size):
            raise ValueError(
                f"latents {tuple(z.shape[1:])} do not fit the diffusion model ({cfg.in_channels}, "
                f"{cfg.input_size}, {cfg.input_size}); use images at the tokenizer's resolution"
            )
        noise = torch.randn(z.shape, generator=g).to(device)
        tt = torch.full((z.shape[0],), t, device=device)
        cls = None
        if class_token is not None:  # REG: the real class token of the image, noised to t like the latent
            cls_noise = torch.randn(z.shape[0], cfg.class_token_dim, generator=g).to(device)
            cls = (1 - t) * class_token(x).to(device) + t * cls_noise
        null = torch.full((z.shape[0],), cfg.num_classes, device=device, dtype=torch.long)
        out = model((1 - t) * z + t * noise, tt, null, cls, hidden_at=(tap,))
        if block == "proj":  # the projector output over all tokens, REG's class token included (as the official)
            return out.projected[0].mean(1)
        tokens = out.hidden[tap]
        if cfg.class_token_dim:
            tokens = tokens[:, 1:]
        return tokens.mean(1)

    return model, features


@torch.no_grad()
def extract_features(
    source: str,
    images: str | Path,
    out: str | Path,
    *,
    transform: str = "clean",
    device: str = "cpu",
    posterior: str = "sample",
    progress: bool = True,
) -> dict:
    from tqdm.auto import tqdm

    images = Path(images)
    manifest_path = images / "manifest.json"
    records = json.loads(manifest_path.read_text())["images"] if manifest_path.is_file() else None
    folder = images / ("clean" if transform == "equivariance" else transform) if records is not None else images
    if transform not in ("clean", "equivariance") and records is None:
        raise FileNotFoundError(
            f"{manifest_path} not found: transform {transform!r} needs an `align transforms` output"
        )
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files, _, _ = list_image_folder(folder)
    names = [str(p.relative_to(folder)) for p in files]
    by_name = {r["name"]: r for r in records} if records else {}
    model, features = load_source(source, device, posterior=posterior)
    rows = []
    items = list(zip(files, names))
    for index, (path, name) in enumerate(tqdm(items, desc=f"{source} [{transform}]", unit="img", disable=not progress)):
        x = to_float01(to_uint8_tensor(decode_image(path)))[None].to(device)
        scale = 1.0
        if transform == "equivariance":
            record = by_name.get(name)
            if record is None:
                raise ValueError(f"{name} has no equivariance record in {manifest_path}")
            x = torch.rot90(x, k=record["rotation"] // 90, dims=(-2, -1))
            scale = record["scale"]
        rows.append(features(x, scale, transform == "equivariance", index).float().cpu())
    feats = torch.cat(rows)
    meta = {
        "source": source,
        "transform": transform,
        "images": str(folder),
        "names": json.dumps(names),
        "posterior": posterior if source.startswith("tokenizer:") else "",
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": feats.contiguous()}, str(out), metadata=meta)
    return {"out": str(out), "num": feats.shape[0], "dim": feats.shape[1], "source": source, "transform": transform}
