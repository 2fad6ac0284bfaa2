"""Discriminators of VFM-VAE training, in plain PyTorch
(tianciB/VFM-VAE@b3a752a networks/discriminator.py `ProjectedDiscriminator`).

* `ProjectedDiscriminator`: StyleGAN-T's projected discriminator on a frozen DINO ViT-S/16 (timm; local
  weights or random init for tests). Five token maps (after the position embedding and after blocks
  2, 5, 8, 11; with the class token added to every patch token) feed five heads of spectrally normalised
  1-D convolutions with local batch norm (spectral norm with the official power-iteration order,
  spectral_norm.py); the logits of all tokens are concatenated. Inputs in [-1, 1] get DiffAugment (colour,
  translation, cutout) and, when larger than the backbone's input, a random crop first, with the numbers of the
  call's `AugmentDraw` (draws.py).
* `MultiscalePatchGAN`: pix2pixHD's three-scale PatchGAN with local batch norm; returns every layer's
  output per scale (the last one is the logit map) for LSGAN and feature matching (stage 3).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vfmvae.tokenizer_training.draws import Augmentation, AugmentDraw
from vfmvae.tokenizer_training.spectral_norm import SpectralNormConv1d

__all__ = ["diff_augment", "ProjectedDiscriminator", "MultiscalePatchGAN", "BatchNormLocal"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def diff_augment(x: torch.Tensor, augmentation: Augmentation) -> torch.Tensor:
    """DiffAugment colour + translation + cutout on [-1, 1] images (differentiable), with the numbers of
    `augmentation` (official `training/diffaug.py`, policy 'color,translation,cutout')."""
    b, _, h, w = x.shape
    per_sample = lambda t: t.to(x.device, x.dtype).view(b, 1, 1, 1)  # noqa: E731
    x = x + per_sample(augmentation.brightness)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * per_sample(augmentation.saturation) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * per_sample(augmentation.contrast) + mean
    x = _translate(x, augmentation.shift.to(x.device))
    # one square per sample is zeroed: rows and columns [start, start + size), clipped to the image
    start = augmentation.cutout_start.to(x.device)
    rows = torch.arange(h, device=x.device)[None, :] - start[:, :1]  # (B, h): row index relative to the square
    cols = torch.arange(w, device=x.device)[None, :] - start[:, 1:]
    size_rows, size_cols = augmentation.cutout_size
    inside = ((rows >= 0) & (rows < size_rows))[:, :, None] & ((cols >= 0) & (cols < size_cols))[:, None, :]
    return x * (~inside)[:, None].to(x.dtype)


def _translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Output pixel (i, j) of sample b is input pixel (i + shift[b, 0], j + shift[b, 1]); zero outside.
    Gathered with index tensors on the device (no per-sample slicing, which would read the shifts back)."""
    b, _, h, w = x.shape
    rows = torch.arange(h, device=x.device)[None, :] + shift[:, :1]  # (B, h)
    cols = torch.arange(w, device=x.device)[None, :] + shift[:, 1:]  # (B, w)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # (B, h, w)
    batch = torch.arange(b, device=x.device)[:, None, None]
    moved = x.permute(0, 2, 3, 1)[batch, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
    return torch.where(inside[..., None], moved, torch.zeros((), dtype=x.dtype, device=x.device)).permute(0, 3, 1, 2)


class BatchNormLocal(nn.Module):
    """Batch norm over virtual batches of `group` samples (and all positions), no running statistics."""

    def __init__(self, channels: int, group: int = 8, eps: float = 1e-5) -> None:
        super().__init__()
        self.group, self.eps = group, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        b = shape[0]
        g = math.ceil(b / self.group)
        x = x.reshape(g, b // g, shape[1], -1) if b % g == 0 else x.reshape(1, b, shape[1], -1)
        mean = x.mean(dim=(1, 3), keepdim=True)
        var = x.var(dim=(1, 3), keepdim=True, unbiased=False)
        x = (x - mean) / torch.sqrt(var + self.eps)
        x = x.reshape(shape)
        view = (1, -1) + (1,) * (len(shape) - 2)
        return x * self.weight.view(view) + self.bias.view(view)


def _sn_conv1d(cin: int, cout: int, k: int) -> nn.Module:
    return SpectralNormConv1d(cin, cout, k, padding=k // 2, padding_mode="circular", eps=1e-12)


class _DiscHead(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.main = nn.Sequential(_sn_conv1d(channels, channels, 1), BatchNormLocal(channels), nn.LeakyReLU(0.2))
        self.res = nn.Sequential(_sn_conv1d(channels, channels, 9), BatchNormLocal(channels), nn.LeakyReLU(0.2))
        self.cls = _sn_conv1d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.main(x)
        h = (self.res(h) + h) / math.sqrt(2)
        return self.cls(h).flatten(1)  # (B, tokens)


class ProjectedDiscriminator(nn.Module):
    def __init__(
        self,
        backbone: str = "vit_small_patch16_224.dino",
        weights: str | Path | None = None,
        input_size: int = 224,
        taps: tuple[int, ...] = (2, 5, 8, 11),
        backbone_kwargs: dict | None = None,
        diffaug: bool = True,
        crop_probability: float = 0.5,
        resize_mode: str = "bilinear",
    ) -> None:
        """`resize_mode`: the interpolation of the VFM the tokenizer is built on (official `VFM2INTERPOLATION`:
        bilinear for SigLIP2, bicubic for DINOv2 and the CLIP family), used to resize inputs to `input_size`."""
        super().__init__()
        import timm

        kwargs = dict(backbone_kwargs or {})
        if weights is not None:
            if not Path(weights).is_file():
                raise FileNotFoundError(
                    f"DINO discriminator weights not found: {weights} (timm {backbone} weights, "
                    "e.g. model.safetensors from the hub; set disc.weights)"
                )
            self.dino = timm.create_model(
                backbone, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}, img_size=input_size, **kwargs
            )
        else:
            self.dino = timm.create_model(backbone, pretrained=False, img_size=input_size, **kwargs)
        self.dino.eval().requires_grad_(False)
        self.taps, self.input_size = taps, input_size
        self.diffaug, self.crop_probability, self.resize_mode = diffaug, crop_probability, resize_mode
        self.heads = nn.ModuleList(_DiscHead(self.dino.embed_dim) for _ in range(len(taps) + 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ProjectedDiscriminator:
        super().train(mode)
        self.dino.eval()  # the backbone stays in eval mode
        return self

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        d = self.dino
        tokens = d._pos_embed(d.patch_embed(x))
        tokens = d.norm_pre(d.patch_drop(tokens))
        maps = [tokens]
        for i, block in enumerate(d.blocks):
            tokens = block(tokens)
            if i in self.taps:
                maps.append(tokens)
        p = d.num_prefix_tokens
        # AddReadout: the class token is added to every patch token; (B, C, tokens) for the 1-D heads
        return [(t[:, p:] + t[:, :1]).transpose(1, 2) for t in maps]

    def forward(self, images: torch.Tensor, augment: AugmentDraw | None = None) -> torch.Tensor:
        """images in [-1, 1] -> logits (B, 5 x tokens). `augment`: this call's DiffAugment and crop draws
        (None: neither)."""
        size = self.input_size
        crop = None
        x = images
        if augment is not None:
            mapped = augment.mapped(tuple(images.shape[-2:]), size, self.crop_probability)
            x = diff_augment(x, mapped) if self.diffaug else x
            crop = mapped.crop
        x = (x + 1) / 2
        if crop is not None:  # one square for the whole batch, as torchvision's RandomCrop in the official
            top, left = crop
            x = x[..., top : top + size, left : left + size]
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(
                x, size=(size, size), mode=self.resize_mode, align_corners=False, antialias=x.shape[-1] > size
            )
        x = (x - self.mean) / self.std
        return torch.cat([head(f) for head, f in zip(self.heads, self._features(x))], dim=1)

    def advance_spectral_norm(self) -> None:
        """Advance every head's power iteration by one step, as a training-mode call does, without a forward pass
        (the official generator pass scores real images once more for PatchGAN feature matching; that call's
        logits are unused, but it moves the spectral-norm state)."""
        if self.training:
            for module in self.heads.modules():
                if isinstance(module, SpectralNormConv1d):
                    module.power_iteration()


class _PatchLayer(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int, norm: bool, act: bool) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, stride, padding=2)]
        nn.init.normal_(layers[0].weight, 0.0, 0.02)
        if norm:
            layers.append(BatchNormLocal(cout))
        if act:
            layers.append(nn.LeakyReLU(0.2))
        super().__init__(*layers)


class MultiscalePatchGAN(nn.Module):
    """pix2pixHD multiscale discriminator (ndf 64, 3 layers, 3 scales); forward returns per-scale layer outputs."""

    def __init__(self, ndf: int = 64, num_scales: int = 3) -> None:
        super().__init__()
        self.scales = nn.ModuleList(
            nn.ModuleList(
                [
                    _PatchLayer(3, ndf, 2, False, True),
                    _PatchLayer(ndf, ndf * 2, 2, True, True),
                    _PatchLayer(ndf * 2, ndf * 4, 2, True, True),
                    _PatchLayer(ndf * 4, ndf * 8, 1, True, True),
                    _PatchLayer(ndf * 8, 1, 1, False, False),
                ]
            )
            for _ in range(num_scales)
        )

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        outputs = []
        for i, layers in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            feats, h = [], x
            for layer in layers:
                h = layer(h)
                feats.append(h)
            outputs.append(feats)
        return outputs
