"""Stage hand-off, as the official `resume_*` settings (tianciB/VFM-VAE@b3a752a training/training_loop.py).

Each official stage starts from the previous stage's snapshot {"G", "G_ema", "D"}: the raw generator trains on,
the EMA continues from the EMA, the discriminator from the discriminator (`resume_discriminator: True`), and the
image counter `cur_nimg` continues from `resume_kimg`, so the EMA ramp-up (half-life capped at 5 % of the images
seen) does not restart. Our stage export therefore holds, in one atomically written folder:

    config.json, model.safetensors   the EMA tokenizer (what inference, caching and evaluation load)
    generator_raw.safetensors         the raw generator (without the frozen VFM, which the EMA file carries)
    discriminators.safetensors        `projected.*` (the DINO discriminator's heads) and `patchgan.*` (stage 3)
    training.json                     images seen over all stages so far

An export without the extra files (an older export, or a converted official model) starts the next stage the
old way: raw = EMA, new discriminators, image count 0; `load_stage` says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from vfmvae.checkpoint.atomic import atomic_directory, atomic_write_text
from vfmvae.checkpoint.serialize import load_tensors, save_tensors
from vfmvae.tokenizer import VFMVAE
from vfmvae.tokenizer_training.spectral_norm import upgrade_spectral_norm_keys

__all__ = ["RAW_GENERATOR", "DISCRIMINATORS", "TRAINING_STATE", "export_stage", "load_stage"]

RAW_GENERATOR = "generator_raw.safetensors"
DISCRIMINATORS = "discriminators.safetensors"
TRAINING_STATE = "training.json"


def export_stage(
    directory: str | Path, raw: VFMVAE, ema: VFMVAE, discriminators: dict[str, nn.Module], images_total: int
) -> Path:
    """Write the stage export (see module docstring), replacing `directory` atomically."""
    with atomic_directory(directory) as tmp:
        ema.save_pretrained(tmp)
        save_tensors(tmp / RAW_GENERATOR, raw.state_dict_without_vfm())
        disc = {f"{name}.{k}": v for name, module in discriminators.items() for k, v in module.state_dict().items()}
        if disc:
            save_tensors(tmp / DISCRIMINATORS, disc)
        atomic_write_text(tmp / TRAINING_STATE, json.dumps({"images_total": int(images_total)}, indent=2) + "\n")
    return Path(directory)


def load_stage(directory: str | Path, raw: VFMVAE, discriminators: dict[str, nn.Module]) -> tuple[int, list[str]]:
    """Load the raw generator and the discriminators that `directory` holds into `raw` / `discriminators`.

    The EMA comes from `model.safetensors` when the model is built (`VFMVAE.from_pretrained`). Returns the
    images seen over the previous stages and notes on what was not carried over. A discriminator that the
    previous stage did not train (the PatchGAN of stage 3) starts new.
    """
    directory = Path(directory)
    notes = []
    if (directory / RAW_GENERATOR).is_file():
        state = load_tensors(directory / RAW_GENERATOR)
        missing, unexpected = raw.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.startswith("vfm.")] + list(unexpected)
        if bad:
            raise RuntimeError(f"{directory / RAW_GENERATOR} does not match the model: {bad[:8]}")
    else:
        notes.append(f"{directory} has no {RAW_GENERATOR}: the raw generator starts from the EMA weights")
    stored = load_tensors(directory / DISCRIMINATORS) if (directory / DISCRIMINATORS).is_file() else {}
    stored = upgrade_spectral_norm_keys(stored)  # exports written with torch's spectral-norm parametrization
    for name, module in discriminators.items():
        part = {k[len(name) + 1 :]: v for k, v in stored.items() if k.startswith(name + ".")}
        if part:
            module.load_state_dict(part, strict=True)
        else:
            notes.append(f"{directory} has no {name} discriminator: it starts new")
    images = 0
    if (directory / TRAINING_STATE).is_file():
        images = int(json.loads((directory / TRAINING_STATE).read_text())["images_total"])
    else:
        notes.append(f"{directory} has no {TRAINING_STATE}: the EMA ramp-up counts images from 0")
    return images, notes
