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

from collections.abc import Sequence
from pathlib import Path

import PIL.Image
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput

from vfmvae.diffusers.autoencoder import VFMVAEAutoencoder
from vfmvae.diffusers.transformer import VFMVAETransformer2DModel
from vfmvae.sampling.generate import images_to_uint8

__all__ = ["VFMVAEDiffusionPipeline", "export_pipeline"]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class VFMVAEDiffusionPipeline(DiffusionPipeline):
    """Components: `transformer` (a `VFMVAETransformer2DModel`) and `vae` (a `VFMVAEAutoencoder` whose config
    carries the latent statistics the transformer was trained on)."""

    model_cpu_offload_seq = "transformer->vae"

    def __init__(self, transformer: VFMVAETransformer2DModel, vae: VFMVAEAutoencoder) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae)

    # ---- conversion ------------------------------------------------------------------------------------------
    @classmethod
    def from_vfmvae(cls, pipe) -> VFMVAEDiffusionPipeline:
        """From our `vfmvae.sampling.VFMVAEPipeline` (its statistics go into the autoencoder's config)."""
        return cls(
            transformer=VFMVAETransformer2DModel.from_vfmvae(pipe.diffusion),
            vae=VFMVAEAutoencoder.from_vfmvae(pipe.tokenizer, latent_stats=pipe.stats),
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
        return VFMVAEPipeline(self.transformer.to_vfmvae(), self.vae.to_vfmvae(), stats)

    # ---- sampling --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | Sequence[int] | torch.Tensor,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        *,
        sampler: str = "euler",
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        guidance_channels: int | None = None,
        class_token_guidance_scale: float | None = None,
        shift: float = 1.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Sample one image per label.

        sampler: "euler" | "heun" (ODE) | "sde" (Euler-Maruyama, as REG/SiT); guidance_scale 1 = no guidance;
        guidance_interval: guide while low <= t <= high (t = 1 is noise); guidance_channels: guide only the first K
        latent channels (3 = LightningDiT's published behaviour); shift: ODE time-grid shift.
        generator: one CPU `torch.Generator`; its seed s makes image i equal to sample i of `vfmvae sample --seed s`.
        Without one, s is drawn from torch's global generator (so `torch.manual_seed` fixes it).
        output_type: "pil" (list of PIL images), "np" (float NHWC in [0, 1]), "pt" (float NCHW in [0, 1]) or
        "latent" (the normalised latents, before de-normalisation and decoding).
        """
        from vfmvae.sampling.pipeline import SamplerConfig

        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r}: choose one of {', '.join(OUTPUT_TYPES)}")
        labels = torch.as_tensor([class_labels] if isinstance(class_labels, int) else class_labels, dtype=torch.long)
        num_classes = self.transformer.config.transformer_config.get("num_classes", 1000)
        if labels.ndim != 1 or len(labels) == 0 or int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise ValueError(
                f"class_labels must be a non-empty list of ids in 0..{num_classes - 1}, got {labels.tolist()}"
            )
        config = SamplerConfig(
            sampler=sampler,
            steps=num_inference_steps,
            cfg_scale=guidance_scale,
            interval=tuple(guidance_interval),
            guide_channels=guidance_channels,
            cls_cfg_scale=class_token_guidance_scale,
            shift=shift,
        )
        seed = _run_seed(generator)
        ours = self.to_vfmvae()
        if output_type == "latent":
            images = ours.latents(labels, seed=seed, config=config)
        else:
            images = ours(labels, seed=seed, config=config)  # [0, 1], (B, 3, H, W)
            if output_type == "pil":
                images = [PIL.Image.fromarray(a) for a in images_to_uint8(images)]
            elif output_type == "np":
                images = images.float().cpu().permute(0, 2, 3, 1).numpy()
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def _run_seed(generator: torch.Generator | None) -> int:
    if generator is None:
        return int(torch.randint(0, 2**31 - 1, (1,)))
    if isinstance(generator, (list, tuple)):
        raise ValueError(
            "pass one torch.Generator (image i then uses the per-sample seed (seed, i), as `vfmvae sample`); "
            "a list of generators is not supported"
        )
    return int(generator.initial_seed())


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
