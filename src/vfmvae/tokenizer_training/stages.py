"""Which tokenizer parameters train in each stage, selected by module (never by fragile name substrings).

* `all` (stages 0-1): everything but the frozen VFM.
* `decoder` (stage 2): the decoder only: decompression, mapping, synthesis; the latent space is fixed.
* `late_decoder` (stage 3): the synthesis blocks whose output resolution is at least 1/4 of the image size
  (64/128/256 px at 256), including their ToRGB and skip upsamplers, and the latent injection feeding the
  first of them. The official selection for this stage matches no parameter at all (its names refer to an
  older `synthesis.b{res}` layout); this is the intended set, written explicitly.
"""

from __future__ import annotations

from torch import nn

from vfmvae.tokenizer import VFMVAE

__all__ = ["STAGES", "trainable_modules", "select_trainable"]

STAGES = ("all", "decoder", "late_decoder")


def trainable_modules(model: VFMVAE, stage: str) -> list[nn.Module]:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    decoder = [model.post_proj, model.mapping, model.synthesis]
    if stage == "all":
        encoder = [model.patch_projs, model.final_proj]
        extras = [m for m in (model.vf_proj, model.quantizer) if m is not None]
        return encoder + extras + decoder
    if stage == "decoder":
        return decoder
    threshold = model.config.image_size // 4
    late = [i for i, b in enumerate(model.synthesis.blocks) if b.resolution >= threshold]
    blocks = [model.synthesis.blocks[i] for i in late]
    first = str(late[0]) if late else None
    injections = [model.synthesis.latent_convs[first]] if first in model.synthesis.latent_convs else []
    return blocks + injections


def select_trainable(model: VFMVAE, stage: str) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze the stage's modules; returns the trainable parameters."""
    model.requires_grad_(False)
    params = []
    for module in trainable_modules(model, stage):
        module.requires_grad_(True)
        params.extend(module.parameters())
    return params
