"""`VFMVAETransformer2DModel`: our class-conditional `DiffusionTransformer` (DiT/SiT, LightningDiT, REG) in
diffusers form.

The time convention is the package's (see `vfmvae.diffusion.transport`): `timestep` runs from 1 (noise) to 0
(data) and the output `sample` is the velocity d x_t / d t = noise - data, whatever convention the weights were
trained in. REG models also take and return their class token (`class_token`, `class_token_velocity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from vfmvae.config import config_from_dict, config_to_dict
from vfmvae.diffusers.loading import HeaderCheckedLoading
from vfmvae.diffusers.placement import placed_like
from vfmvae.diffusion.model import DiffusionTransformer, DiTConfig

__all__ = ["VFMVAETransformer2DModel", "VFMVAETransformerOutput", "ModelMixin"]


@dataclass
class VFMVAETransformerOutput(BaseOutput):
    sample: torch.Tensor  # velocity (B, C, H, W)
    class_token_velocity: torch.Tensor | None = None  # REG only: (B, class_token_dim)


class VFMVAETransformer2DModel(HeaderCheckedLoading, ModelMixin, AttentionMixin, ConfigMixin):
    """`transformer_config` is our `DiTConfig` as a dict; the weights are ours under the `dit.` prefix.

    `attn_processors` / `set_attn_processor(processor or {name: processor})` swap how each block's attention is
    computed (`vfmvae.diffusion.layers.SDPAProcessor`, the default, or `MathProcessor`, or your own callable
    `processor(attn, hidden_states)` reading `attn.heads_qkv`); diffusers' AttnProcessor2_0 / AttnProcessor run as
    those two; its other processors are refused, since they expect separate to_q/to_k/to_v projections and ours is
    one fused qkv (as in the published checkpoints).
    `enable_gradient_checkpointing()` recomputes each transformer block in the backward pass (training mode only).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]

    @register_to_config
    def __init__(self, transformer_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.dit = DiffusionTransformer(
            config_from_dict(DiTConfig, transformer_config or {}, source="VFMVAETransformer2DModel config.json")
        )

    @classmethod
    def from_vfmvae(cls, model: DiffusionTransformer | str | Path) -> VFMVAETransformer2DModel:
        """From our `DiffusionTransformer` (or its folder)."""
        if not isinstance(model, DiffusionTransformer):
            model = DiffusionTransformer.from_pretrained(model)
        out = cls(transformer_config=config_to_dict(model.config))
        out.dit.load_state_dict(model.state_dict(), strict=True)
        param = next(model.parameters())
        return placed_like(out, param)

    def set_default_attn_processor(self) -> None:
        """Every attention layer back to PyTorch's fused scaled-dot-product attention."""
        from vfmvae.diffusion.layers import SDPAProcessor

        self.set_attn_processor(SDPAProcessor())

    def to_vfmvae(self) -> DiffusionTransformer:
        """Our `DiffusionTransformer` (the wrapped module itself, sharing its weights)."""
        return self.dit

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        class_labels: torch.Tensor,
        class_token: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        """hidden_states: normalised latents (B, C, H, W); timestep in [0, 1] (1 = noise); class_labels (B,) with
        `num_classes` as the null label of classifier-free guidance."""
        t = torch.as_tensor(timestep, device=hidden_states.device, dtype=hidden_states.dtype)
        if t.ndim == 0:
            t = t.expand(hidden_states.shape[0])
        out = self.dit(hidden_states, t, class_labels, class_token)
        if not return_dict:
            return (out.sample, out.cls)
        return VFMVAETransformerOutput(sample=out.sample, class_token_velocity=out.cls)
