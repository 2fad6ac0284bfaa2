"""One adapter per VFM family: how to build or load it (transformers or timm, never re-written) and how to
read its per-layer tokens.

Every adapter returns the *taps* of a forward pass: a list of L + 2 token tensors (B, T, C) for a model of
L blocks, `[embedding output, block 1, ..., block L, final]`, where *final* is the post-layernorm output
where the family has one. Python indexing over that list is the layer convention of the official VFM-VAE
code: 0 = embeddings, k = block k, -1 = final, -2 = last block, -3 = the block before, ...
The first `num_prefix_tokens(model)` tokens of each tap are class/register tokens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["FamilyAdapter", "VFM_ADAPTERS", "family_of_model_type", "VFMLoadError"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


class VFMLoadError(FileNotFoundError):
    """A VFM could not be loaded; the message says how to provide it offline."""


@dataclass(frozen=True)
class Taps:
    taps: list[torch.Tensor]
    num_prefix: int
    pooled: torch.Tensor | None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _how_to_provide(source: str, kind: str) -> str:
    return (
        f"Download it on a machine with internet, e.g. `huggingface-cli download {source} --local-dir DIR` "
        f"({kind}), copy DIR here and pass the folder path instead of the hub id."
    )


class FamilyAdapter:
    """Base for the transformers families; EVA (timm) overrides `load`, `build` and `taps`."""

    name: str
    model_types: tuple[str, ...] = ()
    mean: tuple[float, float, float] = HALF
    std: tuple[float, float, float] = HALF
    resize_mode: str = "bilinear"
    has_cls: bool = False

    # -- construction ---------------------------------------------------------------------------------
    def model_class(self) -> type:
        raise NotImplementedError

    def config_class(self) -> type:
        raise NotImplementedError

    def build(self, arch: dict[str, Any]) -> nn.Module:
        """A randomly initialised model of architecture `arch` (used for tests and benchmarks)."""
        return self.model_class()(self.config_class()(**arch))

    def load(self, source: str | Path, arch: dict[str, Any] | None = None) -> nn.Module:
        """From a local folder (config.json + weights), or a hub id when online."""
        path = Path(source)
        local = path.exists()
        if not local and _offline():
            raise VFMLoadError(
                f"VFM {source!r} is not a local folder and the hub is offline (HF_HUB_OFFLINE=1). "
                + _how_to_provide(str(source), "transformers format")
            )
        try:
            return self.model_class().from_pretrained(str(source), local_files_only=local, **self.load_kwargs())
        except (OSError, ValueError) as err:
            where = f"the folder {path}" if local else f"the hub id {source!r}"
            raise VFMLoadError(
                f"could not load a {self.name} vision model from {where}: {err}. "
                + _how_to_provide(str(source), "transformers format")
            ) from None

    def load_kwargs(self) -> dict[str, Any]:
        return {}

    # -- introspection --------------------------------------------------------------------------------
    def patch_size(self, model: nn.Module) -> int:
        return int(model.config.patch_size)

    def width(self, model: nn.Module) -> int:
        return int(model.config.hidden_size)

    def num_layers(self, model: nn.Module) -> int:
        return int(model.config.num_hidden_layers)

    def num_prefix_tokens(self, model: nn.Module) -> int:
        return 1 if self.has_cls else 0

    # -- forward --------------------------------------------------------------------------------------
    def call(self, model: nn.Module, pixels: torch.Tensor) -> Any:
        return model(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True)

    def final(self, model: nn.Module, out: Any) -> torch.Tensor:
        return out.last_hidden_state

    def taps(self, model: nn.Module, pixels: torch.Tensor) -> Taps:
        out = self.call(model, pixels)
        taps = list(out.hidden_states) + [self.final(model, out)]
        return Taps(taps, self.num_prefix_tokens(model), getattr(out, "pooler_output", None))


class SiglipAdapter(FamilyAdapter):
    """SigLIP and SigLIP2 (fixed-resolution checkpoints) through `SiglipVisionModel`, as the official code."""

    name = "siglip"
    model_types = ("siglip", "siglip_vision_model")

    def model_class(self) -> type:
        from transformers import SiglipVisionModel

        return SiglipVisionModel

    def config_class(self) -> type:
        from transformers import SiglipVisionConfig

        return SiglipVisionConfig


class Dinov2Adapter(FamilyAdapter):
    name = "dinov2"
    model_types = ("dinov2",)
    mean, std, resize_mode, has_cls = IMAGENET_MEAN, IMAGENET_STD, "bicubic", True

    def model_class(self) -> type:
        from transformers import Dinov2Model

        return Dinov2Model

    def config_class(self) -> type:
        from transformers import Dinov2Config

        return Dinov2Config

    def call(self, model: nn.Module, pixels: torch.Tensor) -> Any:
        return model(pixel_values=pixels, output_hidden_states=True)  # always interpolates


class Dinov2RegAdapter(Dinov2Adapter):
    """DINOv2 with registers: the register tokens are dropped with the class token (the official code kept them)."""

    name = "dinov2-reg"
    model_types = ("dinov2_with_registers",)

    def model_class(self) -> type:
        from transformers import Dinov2WithRegistersModel

        return Dinov2WithRegistersModel

    def config_class(self) -> type:
        from transformers import Dinov2WithRegistersConfig

        return Dinov2WithRegistersConfig

    def num_prefix_tokens(self, model: nn.Module) -> int:
        return 1 + int(model.config.num_register_tokens)


class Dinov3Adapter(Dinov2RegAdapter):
    """DINOv3 ViT (RoPE, any resolution that is a multiple of the patch size)."""

    name = "dinov3"
    model_types = ("dinov3_vit",)

    def model_class(self) -> type:
        from transformers import DINOv3ViTModel

        return DINOv3ViTModel

    def config_class(self) -> type:
        from transformers import DINOv3ViTConfig

        return DINOv3ViTConfig


class ClipAdapter(FamilyAdapter):
    """CLIP ViT. Its `last_hidden_state` is not normalised; `final` applies `post_layernorm` to every token."""

    name = "clip"
    model_types = ("clip", "clip_vision_model")
    mean, std, resize_mode, has_cls = CLIP_MEAN, CLIP_STD, "bicubic", True

    def model_class(self) -> type:
        from transformers import CLIPVisionModel

        return CLIPVisionModel

    def config_class(self) -> type:
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig

    def final(self, model: nn.Module, out: Any) -> torch.Tensor:
        return model.post_layernorm(out.last_hidden_state)


class MaeAdapter(FamilyAdapter):
    """MAE ViT with masking off: mask ratio 0 and an ascending noise so tokens keep their order.

    (The official wrapper left the 0.75 random masking on; see docs/architecture.md.)
    """

    name = "mae"
    model_types = ("vit_mae",)
    mean, std, resize_mode, has_cls = IMAGENET_MEAN, IMAGENET_STD, "bilinear", True

    def model_class(self) -> type:
        from transformers import ViTMAEModel

        return ViTMAEModel

    def config_class(self) -> type:
        from transformers import ViTMAEConfig

        return ViTMAEConfig

    def build(self, arch: dict[str, Any]) -> nn.Module:
        return super().build({**arch, "mask_ratio": 0.0})

    def load_kwargs(self) -> dict[str, Any]:
        return {"mask_ratio": 0.0}

    def call(self, model: nn.Module, pixels: torch.Tensor) -> Any:
        if model.config.mask_ratio != 0.0:
            raise ValueError("MAE must run with mask_ratio 0 at inference")
        b, _, h, w = pixels.shape
        n = (h // model.config.patch_size) * (w // model.config.patch_size)
        noise = torch.arange(n, device=pixels.device, dtype=torch.float32).expand(b, n)
        return model(pixel_values=pixels, noise=noise, output_hidden_states=True, interpolate_pos_encoding=True)


class EvaAdapter(FamilyAdapter):
    """EVA / EVA-CLIP through timm (`dynamic_img_size=True`), blocks run one by one to tap every layer.

    `final` is the output after the model's final norm (the official code returned the pre-norm tokens).
    """

    name = "eva"
    model_types = ()
    mean, std, resize_mode, has_cls = CLIP_MEAN, CLIP_STD, "bicubic", True

    def build(self, arch: dict[str, Any]) -> nn.Module:
        import timm

        arch = dict(arch)
        name = arch.pop("timm_name")
        return timm.create_model(name, pretrained=False, dynamic_img_size=True, **arch)

    def load(self, source: str | Path, arch: dict[str, Any] | None = None) -> nn.Module:
        import timm

        if not arch or "timm_name" not in arch:
            raise VFMLoadError(
                "EVA models load through a registry name that fixes the timm architecture, "
                "e.g. `eva02-large-patch14-clip-336` with a local weights file"
            )
        arch = dict(arch)
        name = arch.pop("timm_name")
        path = Path(source)
        if path.is_dir():
            files = [
                p
                for p in (
                    path / "model.safetensors",
                    path / "open_clip_model.safetensors",
                    path / "pytorch_model.bin",
                    path / "open_clip_pytorch_model.bin",
                )
                if p.is_file()
            ]
            if not files:
                raise VFMLoadError(f"no weights file (model.safetensors, open_clip_pytorch_model.bin, ...) in {path}")
            path = files[0]
        if not path.is_file():
            raise VFMLoadError(
                f"EVA weights not found at {source!r}. Download `timm/{name}` on a machine with "
                "internet (e.g. `huggingface-cli download timm/<tag> --local-dir DIR`) and pass DIR."
            )
        # timm reads the local file with its own checkpoint filter (which remaps open_clip key names).
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, dynamic_img_size=True, **arch
        )

    def patch_size(self, model: nn.Module) -> int:
        return int(model.patch_embed.patch_size[0])

    def width(self, model: nn.Module) -> int:
        return int(model.embed_dim)

    def num_layers(self, model: nn.Module) -> int:
        return len(model.blocks)

    def num_prefix_tokens(self, model: nn.Module) -> int:
        return int(model.num_prefix_tokens)

    def taps(self, model: nn.Module, pixels: torch.Tensor) -> Taps:
        x = model.patch_embed(pixels)
        x, rope = model._pos_embed(x)
        taps = [x]
        x = model.norm_pre(x)
        for block in model.blocks:
            x = block(x, rope=rope)
            taps.append(x)
        taps.append(model.norm(x))
        pooled = taps[-1][:, 0] if model.num_prefix_tokens else None
        return Taps(taps, self.num_prefix_tokens(model), pooled)


# family name -> its adapter (how to build, load and tap that family's models)
VFM_ADAPTERS: dict[str, FamilyAdapter] = {
    a.name: a
    for a in (
        SiglipAdapter(),
        Dinov2Adapter(),
        Dinov2RegAdapter(),
        Dinov3Adapter(),
        ClipAdapter(),
        MaeAdapter(),
        EvaAdapter(),
    )
}


def family_of_model_type(model_type: str) -> str:
    for name, adapter in VFM_ADAPTERS.items():
        if model_type in adapter.model_types:
            return name
    raise VFMLoadError(
        f"unsupported VFM model_type {model_type!r}; supported: "
        + ", ".join(t for a in VFM_ADAPTERS.values() for t in a.model_types)
    )
