"""`FrozenVFM`: one interface to every frozen vision foundation model.

Images in [0, 1] (or [-1, 1] with `input_range="-1,1"`) -> optional rescale by `scale_factor` (the
official VFM-VAE SigLIP2 setup upsamples 256 px to 512 px, bilinear) -> the family's mean/std -> the
transformers/timm model -> patch tokens of the requested layers as (B, N, C) and (B, C, H, W), plus the
class token and pooled output where the family has them. The model is frozen, always in eval mode, runs
without gradients, and under bf16 autocast on CUDA (outputs are float32).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vfmvae.vfm.families import FAMILIES, FamilyAdapter, VFMLoadError, family_of_model_type
from vfmvae.vfm.registry import VFM_REGISTRY, VFMEntry

__all__ = ["VFMConfig", "VFMFeatures", "FrozenVFM", "create_vfm", "load_vfm", "list_vfms", "vfm_by_name"]


@dataclass(frozen=True)
class VFMConfig:
    """Which frozen VFM to use and how to feed it."""

    name: str = "siglip2-large-patch16-512"   # registry name (`vfmvae vfm list`)
    path: str | None = None                    # local folder/file (or hub id) with the weights; None = the registry hub id
    layers: tuple[int, ...] = (-1,)            # taps: 0 = embeddings, k = block k, -1 = final (post-LN), -2 = last block
    scale_factor: float | None = None          # input rescale; None = the registry default for 256-px images
    input_range: Literal["0,1", "-1,1"] = "0,1"
    autocast: bool = True                      # bf16 autocast on CUDA
    random_init: bool = False                  # build the architecture with random weights (tests, benchmarks)
    seed: int = 0                              # for random_init


@dataclass
class VFMFeatures:
    tokens: list[torch.Tensor]        # per requested layer: patch tokens (B, N, C), row-major over the grid
    grid: tuple[int, int]             # (H, W) of the patch grid, N = H * W
    layers: tuple[int, ...]
    cls: torch.Tensor | None = None   # (B, C) class token of the final output, where the family has one
    pooled: torch.Tensor | None = None  # (B, C) the model's pooled output (SigLIP MAP head, CLIP/DINO pooler)

    def maps(self) -> list[torch.Tensor]:
        """The tokens as feature maps (B, C, H, W)."""
        h, w = self.grid
        return [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w) for t in self.tokens]


class FrozenVFM(nn.Module):
    def __init__(
        self,
        model: nn.Module,
        family: str,
        *,
        name: str = "",
        layers: Sequence[int] = (-1,),
        scale_factor: float = 1.0,
        input_range: str = "0,1",
        autocast: bool = True,
    ) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"unknown VFM family {family!r}; known: {', '.join(FAMILIES)}")
        if scale_factor <= 0:
            raise ValueError("scale_factor must be positive")
        self.adapter: FamilyAdapter = FAMILIES[family]
        self.family, self.name = family, name
        self.model = model.eval().requires_grad_(False)
        self.scale_factor = float(scale_factor)
        self.input_range = input_range
        self.autocast = autocast
        self.resize_antialias = True  # antialias when shrinking (REG's DINOv2 targets turn it off, latents/targets.py)
        self.patch_size = self.adapter.patch_size(model)
        self.width = self.adapter.width(model)
        self.num_layers = self.adapter.num_layers(model)
        self.layers = self.check_layers(layers)
        self.register_buffer("mean", torch.tensor(self.adapter.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.adapter.std).view(1, 3, 1, 1), persistent=False)

    # The VFM is frozen: train() never switches its dropout or norms to training behaviour.
    def train(self, mode: bool = True) -> FrozenVFM:
        return super().train(False)

    @property
    def num_taps(self) -> int:
        return self.num_layers + 2

    def check_layers(self, layers: Sequence[int]) -> tuple[int, ...]:
        layers = tuple(int(i) for i in layers)
        bad = [i for i in layers if not -self.num_taps <= i < self.num_taps]
        if bad or not layers:
            raise ValueError(f"layer indices {bad or '[]'} out of range for {self.name or self.family} with "
                             f"{self.num_layers} blocks (valid: {-self.num_taps} .. {self.num_taps - 1})")
        return layers

    def preprocess(self, images: torch.Tensor, extra_scale: float = 1.0) -> torch.Tensor:
        """[0, 1] images -> the model's pixel input. `extra_scale` < 1 first downsizes (with antialias)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        x = images.float()
        if self.input_range == "-1,1":
            x = (x + 1) / 2
        mode = self.adapter.resize_mode
        # Same two-step resize as the official encoders: scale factors (not sizes), antialias only when shrinking.
        for s in (extra_scale, self.scale_factor):
            if s != 1.0:
                x = F.interpolate(x, scale_factor=s, mode=mode, align_corners=False, antialias=s < 1 and self.resize_antialias)
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"VFM input {h}x{w} (after scale_factor {self.scale_factor}) is not a multiple of the "
                             f"patch size {self.patch_size}; choose an image size or scale_factor that gives one")
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor, layers: Sequence[int] | None = None, extra_scale: float = 1.0) -> VFMFeatures:
        layers = self.check_layers(layers) if layers is not None else self.layers
        pixels = self.preprocess(images, extra_scale)
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        use_bf16 = self.autocast and pixels.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            out = self.adapter.taps(self.model, pixels)
        prefix = out.num_prefix
        final = out.taps[-1].float()
        tokens = [out.taps[i][:, prefix:].float() for i in layers]
        expected = grid[0] * grid[1]
        if tokens[0].shape[1] != expected:
            raise RuntimeError(f"{self.name}: got {tokens[0].shape[1]} patch tokens, expected {expected} for grid {grid}")
        return VFMFeatures(
            tokens=tokens,
            grid=grid,
            layers=layers,
            cls=final[:, 0] if self.adapter.has_cls else None,
            pooled=out.pooled.float() if out.pooled is not None else None,
        )


# ---------------------------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------------------------


def list_vfms(include_test: bool = True) -> list[VFMEntry]:
    return [e for e in VFM_REGISTRY.values() if include_test or not e.name.endswith("-test")]


def _entry(name: str) -> VFMEntry:
    if name not in VFM_REGISTRY:
        raise KeyError(f"unknown VFM {name!r}; `vfmvae vfm list` shows the names "
                       f"(e.g. {', '.join(list(VFM_REGISTRY)[:4])}), or pass a local model folder")
    return VFM_REGISTRY[name]


def create_vfm(name: str, *, layers: Sequence[int] = (-1,), seed: int = 0, **kwargs) -> FrozenVFM:
    """A randomly initialised VFM of a registered architecture (no weights needed)."""
    entry = _entry(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FAMILIES[entry.family].build(entry.arch)
    kwargs.setdefault("scale_factor", entry.scale_factor)
    return FrozenVFM(model, entry.family, name=name, layers=layers, **kwargs)


def _family_of_folder(path: Path) -> str:
    config = path / "config.json"
    if not config.is_file():
        raise VFMLoadError(f"{path} has no config.json: not a transformers model folder. Pass a registry name "
                           "(`vfmvae vfm list`) together with the folder, or a folder saved by `save_pretrained`.")
    model_type = json.loads(config.read_text()).get("model_type", "")
    return family_of_model_type(model_type)


def load_vfm(name_or_path: str | Path, *, path: str | Path | None = None, layers: Sequence[int] = (-1,),
             scale_factor: float | None = None, **kwargs) -> FrozenVFM:
    """Load a pretrained VFM.

    * `load_vfm("dinov2-base")`: the registry's hub id (needs the hub; offline it fails with instructions);
    * `load_vfm("dinov2-base", path="/models/dinov2-base")`: registry settings, weights from a local folder;
    * `load_vfm("/models/dinov2-base")`: a local transformers folder; the family is read from config.json.
    """
    text = str(name_or_path)
    if text in VFM_REGISTRY:
        entry = VFM_REGISTRY[text]
        source = path if path is not None else entry.hub_id
        if source is None:
            raise VFMLoadError(f"{text} is a random test architecture with no weights; use create_vfm({text!r})")
        model = FAMILIES[entry.family].load(source, entry.arch)
        family, default_scale = entry.family, entry.scale_factor
    else:
        folder = Path(path or name_or_path)
        if not folder.exists():
            raise VFMLoadError(f"{text!r} is neither a registered VFM name (`vfmvae vfm list`) nor an existing folder")
        family, default_scale = _family_of_folder(folder), 1.0
        model = FAMILIES[family].load(folder)
    return FrozenVFM(model, family, name=text, layers=layers,
                     scale_factor=default_scale if scale_factor is None else scale_factor, **kwargs)


def vfm_by_name(name: str, **kwargs) -> FrozenVFM:
    """A registered tiny `*-test` VFM is built with random weights; anything else is loaded (`load_vfm`)."""
    if name.endswith("-test") and name in VFM_REGISTRY:
        return create_vfm(name, **kwargs)
    return load_vfm(name, **kwargs)


def vfm_from_config(cfg: VFMConfig) -> FrozenVFM:
    kwargs = dict(layers=cfg.layers, input_range=cfg.input_range, autocast=cfg.autocast)
    if cfg.random_init:
        if cfg.scale_factor is not None:
            kwargs["scale_factor"] = cfg.scale_factor
        return create_vfm(cfg.name, seed=cfg.seed, **kwargs)
    return load_vfm(cfg.name, path=cfg.path, scale_factor=cfg.scale_factor, **kwargs)
