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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vfmvae.vfm.families import VFM_ADAPTERS, FamilyAdapter, VFMLoadError, family_of_model_type
from vfmvae.vfm.registry import VFM_REGISTRY, VFMEntry
from vfmvae.vfm.spec import VFMSpec

__all__ = ["VFMFeatures", "FrozenVFM", "build_vfm", "list_vfms"]


@dataclass
class VFMFeatures:
    tokens: list[torch.Tensor]  # per requested layer: patch tokens (B, N, C), row-major over the grid
    grid: tuple[int, int]  # (H, W) of the patch grid, N = H * W
    layers: tuple[int, ...]
    cls: torch.Tensor | None = None  # (B, C) class token of the final output, where the family has one
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
        source: VFMSpec | None = None,
    ) -> None:
        super().__init__()
        if family not in VFM_ADAPTERS:
            raise ValueError(f"unknown VFM family {family!r}; known: {', '.join(VFM_ADAPTERS)}")
        if scale_factor <= 0:
            raise ValueError("scale_factor must be positive")
        self.adapter: FamilyAdapter = VFM_ADAPTERS[family]
        self.family, self.name = family, name
        self.source = source  # the spec it was built from (path, random_init), if any
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

    @property
    def spec(self) -> VFMSpec:
        """This VFM as a complete spec (family and architecture filled in): what a tokenizer config records, so
        that the tokenizer folder rebuilds its VFM offline, with or without the registry."""
        source = self.source or VFMSpec(name=self.name or self.family, family=self.family, arch=_architecture_of(self))
        return replace(
            source, family=self.family, arch=_architecture_of(self), layers=self.layers, scale_factor=self.scale_factor
        )

    def check_layers(self, layers: Sequence[int]) -> tuple[int, ...]:
        layers = tuple(int(i) for i in layers)
        bad = [i for i in layers if not -self.num_taps <= i < self.num_taps]
        if bad or not layers:
            raise ValueError(
                f"layer indices {bad or '[]'} out of range for {self.name or self.family} with "
                f"{self.num_layers} blocks (valid: {-self.num_taps} .. {self.num_taps - 1})"
            )
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
                x = F.interpolate(
                    x, scale_factor=s, mode=mode, align_corners=False, antialias=s < 1 and self.resize_antialias
                )
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"VFM input {h}x{w} (after scale_factor {self.scale_factor}) is not a multiple of the "
                f"patch size {self.patch_size}; choose an image size or scale_factor that gives one"
            )
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(
        self, images: torch.Tensor, layers: Sequence[int] | None = None, extra_scale: float = 1.0
    ) -> VFMFeatures:
        layers = self.check_layers(layers) if layers is not None else self.layers
        pixels = self.preprocess(images, extra_scale)
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        use_bf16 = self.autocast and pixels.device.type == "cuda"
        # pixels in the weights' precision (a VFM cast to fp16/bf16 as a whole); outputs stay float32 below
        pixels = pixels.to(next(self.model.parameters()).dtype)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            out = self.adapter.taps(self.model, pixels)
        prefix = out.num_prefix
        final = out.taps[-1].float()
        tokens = [out.taps[i][:, prefix:].float() for i in layers]
        expected = grid[0] * grid[1]
        if tokens[0].shape[1] != expected:
            raise RuntimeError(
                f"{self.name}: got {tokens[0].shape[1]} patch tokens, expected {expected} for grid {grid}"
            )
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


def _architecture_of(vfm: FrozenVFM) -> dict[str, Any]:
    """The architecture config that rebuilds `vfm.model` (the adapter's `build`)."""
    cfg = getattr(vfm.model, "config", None)
    if cfg is not None and hasattr(cfg, "to_diff_dict"):
        # Only what differs from the family's defaults: compact, and it survives the JSON round trip.
        arch = cfg.to_diff_dict()
        for key in ("transformers_version", "architectures", "_name_or_path", "torch_dtype", "dtype", "model_type"):
            arch.pop(key, None)
        return json.loads(json.dumps(arch))
    if vfm.source is not None and vfm.source.arch:
        return dict(vfm.source.arch)
    if vfm.name in VFM_REGISTRY:
        return dict(VFM_REGISTRY[vfm.name].arch)
    raise ValueError(f"cannot record the architecture of the VFM {vfm.name!r}; use a registered name")


def _family_of_folder(path: Path) -> str:
    config = path / "config.json"
    if not config.is_file():
        raise VFMLoadError(
            f"{path} has no config.json: not a transformers model folder. Pass a registry name "
            "(`vfmvae vfm list`) together with the folder, or a folder saved by `save_pretrained`."
        )
    model_type = json.loads(config.read_text()).get("model_type", "")
    return family_of_model_type(model_type)


def build_vfm(spec: VFMSpec, *, seed: int = 0, input_range: str = "0,1", autocast: bool = True) -> FrozenVFM:
    """The one way to build a frozen VFM.

    * pretrained weights (`spec.has_weights`): from `spec.path` (a local folder or file) or else the registry's hub
      id; offline or missing weights fail with a `VFMLoadError` that says how to provide them;
    * random weights of the architecture (`spec.random_init`, and the registry's tiny `*-test` VFMs, which have no
      weights), drawn from `seed` without touching the global random state: the architecture is `spec.arch`, else
      the registry's.

    `input_range` ("0,1" or "-1,1") and `autocast` (bf16 on CUDA) only say how images are fed at run time.
    """
    entry = spec.entry
    family = spec.family or (entry.family if entry is not None else None)
    arch = dict(spec.arch or (entry.arch if entry is not None else {}))
    arch.pop("model_type", None)
    if not spec.has_weights:
        if family is None or not arch:
            raise VFMLoadError(
                f"{spec.name}: random weights need the architecture: a registered name, or family and arch"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = VFM_ADAPTERS[family].build(arch)
        spec = replace(spec, random_init=True)
    elif entry is not None:
        model = VFM_ADAPTERS[family].load(spec.weights_source(), arch)
    else:
        folder = Path(spec.path)
        if not folder.exists():
            raise VFMLoadError(
                f"{spec.path!r} is neither a registered VFM name (`vfmvae vfm list`) nor an existing folder"
            )
        family = family or _family_of_folder(folder)
        model = VFM_ADAPTERS[family].load(folder, arch or None)
    return FrozenVFM(
        model,
        family,
        name=spec.name,
        layers=spec.layers,
        scale_factor=spec.resolved_scale_factor(),
        input_range=input_range,
        autocast=autocast,
        source=spec,
    )
