"""`VFMVAEDiffusionPipeline`: class labels in, PIL images out, in diffusers form, with our samplers.

    pipe = DiffusionPipeline.from_pretrained(folder)            # written by `export_pipeline` / save_pretrained
    out = pipe(class_labels=[207, 360], num_inference_steps=250, guidance_scale=4.0, sampler="sde",
               guidance_interval=(0.0, 0.8), generator=torch.Generator().manual_seed(0))
    out.images  # list of PIL images

It runs `vfmvae.sampling.VFMVAEPipeline` on the wrapped modules, so an image depends on the same things as one
of `vfmvae sample`: with `generator=torch.Generator().manual_seed(s)`, image i is sample i of
`vfmvae sample --seed s` with the same labels and sampler options (each sample has its own seed (s, i)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import PIL.Image
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput

from vfmvae.diffusers.autoencoder import VFMVAEAutoencoder
from vfmvae.diffusers.transformer import VFMVAETransformer2DModel
from vfmvae.sampling.generate import images_to_uint8
from vfmvae.sampling.presets import resolve_sampler_config
from vfmvae.seeding import derive_seed

__all__ = ["VFMVAEDiffusionPipeline", "export_pipeline"]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class VFMVAEDiffusionPipeline(DiffusionPipeline):
    """Components: `transformer` (a `VFMVAETransformer2DModel`) and `vae` (a `VFMVAEAutoencoder` whose config
    carries the latent statistics the transformer was trained on)."""

    model_cpu_offload_seq = "transformer->vae"

    def __init__(
        self, transformer: VFMVAETransformer2DModel, vae: VFMVAEAutoencoder, sample_preset: str | None = None
    ) -> None:
        """`sample_preset`: the sampler preset recorded with the diffusion export (its sampler.json, as
        `vfmvae sample` reads it): the defaults of `__call__`. Kept in model_index.json."""
        super().__init__()
        if sample_preset is not None:
            resolve_sampler_config(sample_preset)  # an unknown name fails at load, not at the first call
        self.register_modules(transformer=transformer, vae=vae)
        self.register_to_config(sample_preset=sample_preset)

    # ---- conversion ------------------------------------------------------------------------------------------
    @classmethod
    def from_vfmvae(cls, pipe) -> VFMVAEDiffusionPipeline:
        """From our `vfmvae.sampling.VFMVAEPipeline` (its statistics go into the autoencoder's config, its preset
        into `sample_preset`)."""
        return cls(
            transformer=VFMVAETransformer2DModel.from_vfmvae(pipe.diffusion),
            vae=VFMVAEAutoencoder.from_vfmvae(pipe.tokenizer, latent_stats=pipe.stats),
            sample_preset=pipe.preset,
        )

    def to_vfmvae(self):
        """Our `VFMVAEPipeline` on the same modules."""
        from vfmvae.sampling.pipeline import VFMVAEPipeline

        stats = self.vae.latent_stats
        if stats is None:
            raise ValueError(
                "the vae config has no latents_mean/latents_std: this pipeline cannot normalise latents; "
                "export it with `vfmvae.diffusers.export_pipeline` from a diffusion export"
            )
        return VFMVAEPipeline(
            self.transformer.to_vfmvae(), self.vae.to_vfmvae(), stats, preset=self.config.get("sample_preset")
        )

    # ---- sampling --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        *,
        sampler: str | None = None,
        guidance_interval: tuple[float, float] | None = None,
        guidance_channels: int | str | None = None,
        class_token_guidance_scale: float | None = None,
        shift: float | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Sample one image per label.

        class_labels: an id, or ids in any shape (a list, nested lists, a tensor or array), flattened in order.
        Sampler settings left at None take the export's recorded preset (`self.config.sample_preset`, the
        default of `vfmvae sample` too; without one: Euler, 50 steps, no guidance); any value given overrides
        that one setting. sampler: "euler" | "heun" (ODE) | "sde" (Euler-Maruyama, as REG/SiT); guidance_scale
        1 = no guidance; guidance_interval: guide while low <= t <= high (t = 1 is noise); guidance_channels:
        guide only the first K latent channels (3 = LightningDiT's published behaviour), "all" for every channel;
        shift: ODE time-grid shift.
        generator: one CPU `torch.Generator` with seed s makes image i equal to sample i of
        `vfmvae sample --seed s`; a list of generators (one per image) gives image i the image that a one-label
        call with generator i gives. Only the generators' seeds are used (`initial_seed()`), not their state.
        Without one, s is drawn from torch's global generator (so `torch.manual_seed` fixes it).
        output_type: "pil" (list of PIL images), "np" (float NHWC in [0, 1]), "pt" (float NCHW in [0, 1]) or
        "latent" (the normalised latents, before de-normalisation and decoding).
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r}: choose one of {', '.join(OUTPUT_TYPES)}")
        num_classes = self.transformer.config.transformer_config.get("num_classes", 1000)
        labels = _flat_labels(class_labels, num_classes)
        channels = None if guidance_channels == "all" else guidance_channels
        config = resolve_sampler_config(
            self.config.get("sample_preset"),
            sampler=sampler,
            steps=num_inference_steps,
            cfg_scale=guidance_scale,
            interval=None if guidance_interval is None else tuple(guidance_interval),
            guide_channels=channels,
            cls_cfg_scale=class_token_guidance_scale,
            shift=shift,
        )
        if guidance_channels == "all":
            config = dataclasses.replace(config, guide_channels=None)
        seeds = _sample_seeds(generator, len(labels))
        ours = self.to_vfmvae()
        if output_type == "latent":
            images = ours.latents(labels, config=config, sample_seeds=seeds)
        else:
            images = ours(labels, config=config, sample_seeds=seeds)  # [0, 1], (B, 3, H, W)
            if output_type == "pil":
                images = [PIL.Image.fromarray(a) for a in images_to_uint8(images)]
            elif output_type == "np":
                images = images.float().cpu().permute(0, 2, 3, 1).numpy()
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def _flat_labels(class_labels, num_classes: int) -> torch.Tensor:
    """Class ids of any shape (int, nested lists, tensor, array) as one flat int64 tensor, checked."""
    try:
        labels = torch.as_tensor(class_labels).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"class_labels must be class ids (an int, a list, nested lists or a tensor): {err}") from None
    if labels.numel() == 0:
        raise ValueError("class_labels is empty: pass at least one class id")
    integral = labels.is_floating_point() and bool(torch.equal(labels, labels.round()))
    if labels.dtype == torch.bool or labels.is_complex() or (labels.is_floating_point() and not integral):
        raise ValueError(f"class_labels must be integer class ids, got {labels.tolist()[:8]}")
    labels = labels.long()
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise ValueError(
            f"class_labels must be ids in 0..{num_classes - 1} (this model's classes); got {bad.tolist()[:8]}"
        )
    return labels


def _sample_seeds(generator, count: int) -> list[int]:
    """The seed of each image's own generator: (s, i) for one generator of seed s, (s_i, 0) for a list."""
    if generator is None:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
    if isinstance(generator, (list, tuple)):
        if len(generator) != count:
            raise ValueError(
                f"a list of {len(generator)} generators for {count} images: pass one generator per image, "
                "or a single generator"
            )
        return [derive_seed(int(g.initial_seed()), 0) for g in generator]
    return [derive_seed(int(generator.initial_seed()), i) for i in range(count)]


def export_pipeline(
    diffusion: str | Path,
    out: str | Path,
    *,
    tokenizer: str | Path | None = None,
    latent_stats: str | Path | None = None,
) -> Path:
    """Write a diffusers pipeline folder from a diffusion export (as `vfmvae sample --diffusion` takes it).

    `out` must not exist yet (or be empty): the folder appears complete in one rename, or not at all.
    """
    from vfmvae.checkpoint.atomic import atomic_directory
    from vfmvae.sampling.pipeline import VFMVAEPipeline

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; export into a new folder")
    ours = VFMVAEPipeline.from_pretrained(diffusion, tokenizer, latent_stats)
    pipe = VFMVAEDiffusionPipeline.from_vfmvae(ours)
    with atomic_directory(out) as tmp:
        pipe.save_pretrained(tmp)
    return out
