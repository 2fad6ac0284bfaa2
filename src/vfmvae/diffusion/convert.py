"""Import official LightningDiT (hustvl/LightningDiT, VFM-VAE's copy) and REG (Martinser/REG) checkpoints.

Our module names are those of the published code, so the mapping is mostly the identity; what differs:

* `pos_embed` is a fixed sin-cos table, a saved parameter there and a computed buffer here: it is checked
  against ours (a mismatch means a different grid or width) and dropped. LightningDiT's `feat_rope.*`
  buffers are handled the same way.
* Training checkpoints hold `model`, `ema`, `opt`, ... : `which` picks `ema` (default) or `model`; DDP
  (`module.`) and torch.compile (`_orig_mod.`) prefixes are removed.
* The input/latent size, channel count and class count are read from the weights; the rest of the architecture
  comes from the registry name (and overrides). Every other key must match exactly.

`.pt`/`.pth` files are read with `torch.load(weights_only=True)`: no pickled code is ever run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from vfmvae.checkpoint import load_state_dict_strict
from vfmvae.checkpoint.serialize import CheckpointFormatError
from vfmvae.checkpoint.torch_files import load_weights_only
from vfmvae.config import config_from_dict, config_to_dict
from vfmvae.diffusion.model import DiffusionTransformer, DiTConfig
from vfmvae.diffusion.registry import diffusion_config

__all__ = ["read_official_state", "convert_official_diffusion", "official_to_model"]

_FIXED = ("pos_embed", "feat_rope.freqs_cos", "feat_rope.freqs_sin")


def read_official_state(path: str | Path, which: str = "ema") -> dict[str, torch.Tensor]:
    """The weights inside an official checkpoint file, without wrapper prefixes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        state = load_weights_only(path, "checkpoint")
    if isinstance(state, dict) and which in state and isinstance(state[which], dict):
        state = state[which]
    elif (
        isinstance(state, dict)
        and any(k in state for k in ("ema", "model"))
        and not any(torch.is_tensor(v) for v in state.values())
    ):
        raise CheckpointFormatError(f"{path} has no {which!r} entry (it has {sorted(state)})")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointFormatError(
            f"{path}: expected a state dict of tensors (or a training checkpoint with {which!r})"
        )
    clean = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        clean[key] = value.float() if value.is_floating_point() else value
    return clean


def _shapes_from_state(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """in_channels, patch, input size and classes as the weights say (when the keys are there)."""
    out: dict[str, Any] = {}
    w = state.get("x_embedder.proj.weight")
    if w is not None:
        out["in_channels"], out["patch_size"] = int(w.shape[1]), int(w.shape[2])
        if "pos_embed" in state:
            tokens = state["pos_embed"].shape[1] - int("cls_projectors2.weight" in state)
            out["input_size"] = math.isqrt(tokens) * out["patch_size"]
    if "cls_projectors2.weight" in state:  # REG: the class token width is the VFM feature width
        out["class_token_dim"] = int(state["cls_projectors2.weight"].shape[1])
    if "projectors.0.0.weight" in state:
        n = len({k.split(".")[1] for k in state if k.startswith("projectors.")})
        out["projector_dim"] = int(state["projectors.0.0.weight"].shape[0])
        out["align_dims"] = tuple(int(state[f"projectors.{i}.4.weight"].shape[0]) for i in range(n))
    table = state.get("y_embedder.embedding_table.weight")
    if table is not None:
        # the null class exists when the model was trained with label dropout
        out["num_classes"] = int(table.shape[0]) - 1
    return out


def official_to_model(state: dict[str, torch.Tensor], config: DiTConfig, *, source: str) -> DiffusionTransformer:
    """Build the model and load the official weights strictly, after checking the fixed tables."""
    model = DiffusionTransformer(config)
    ours = dict(model.named_buffers())
    state = dict(state)
    for key in _FIXED:
        if key not in state:
            continue
        theirs = state.pop(key).float()
        mine = {"pos_embed": ours["pos_embed"]}.get(key)
        if mine is None and config.rope:
            rope = model.blocks[0].attn.rope
            mine = rope.cos if key.endswith("cos") else rope.sin
        if mine is None:  # a RoPE table in a checkpoint of a model without RoPE: left to the strict load
            state[key] = theirs
            continue
        if theirs.numel() != mine.numel():
            raise CheckpointFormatError(
                f"{source}: {key} has shape {tuple(theirs.shape)}, the model expects "
                f"{tuple(mine.shape)} (wrong input_size, patch_size or hidden_size?)"
            )
        if not torch.allclose(theirs.reshape(mine.shape), mine, atol=1e-5):
            raise CheckpointFormatError(f"{source}: {key} differs from the fixed table this architecture computes")
    load_state_dict_strict(model, state, source=source)
    return model.eval()


def convert_official_diffusion(
    weights: str | Path, family: str, arch: str, out: str | Path | None = None, *, which: str = "ema", **overrides: Any
) -> DiffusionTransformer:
    """`vfmvae convert official-lightningdit|official-reg`: official weights -> a DiffusionTransformer folder."""
    if family not in ("lightningdit", "reg"):
        raise ValueError(f"unknown official family {family!r} (lightningdit, reg)")
    state = read_official_state(weights, which)
    expected = "lightningdit" if family == "lightningdit" else "sit"
    if expected not in arch:
        raise ValueError(f"--arch {arch!r} is not a {expected} architecture (`vfmvae diffusion list`)")
    base = config_to_dict(diffusion_config(arch))
    config = config_from_dict(DiTConfig, {**base, **_shapes_from_state(state), **overrides}, source="--set")
    model = official_to_model(state, config, source=str(weights))
    if out is not None:
        model.save_pretrained(out)
    return model
