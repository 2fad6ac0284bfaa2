"""`VFMVAEPipeline`: class labels in, images out (diffusion sampler -> de-normalise -> tokenizer decoder).

    pipe = VFMVAEPipeline.from_pretrained("runs/reg-sit-xl1/export")        # tokenizer from latent_stats.json
    images = pipe([207, 360, 387, 974], seed=0)              # the export's preset (sampler.json), e.g. reg-sde
    images = pipe([207, 360, 387, 974], seed=0, cfg_scale=1.0)            # the preset with one setting changed
    labels = class_labels("random", 16, 1000, seed=0)        # uniformly random, seeded (vfmvae.sampling)

Without a preset (`preset=None`: a model exported before presets existed, or a recipe without
`sample_preset`) the settings are SamplerConfig's defaults (Euler, 50 steps, no guidance).

Every sample has its own seed (`vfmvae.seeding.derive_seed(seed, index)` = `seed * 1_000_003 + index`, `index` =
its position in the whole run), from which its initial noise, its REG class-token noise and its SDE step noises
are drawn on the CPU; an image therefore depends on its seed and index only, not on the batch it was drawn in or
the device count. (The arithmetic is another matter: float32 kernels may sum in a different order for another batch
size, which moves outputs by about 1e-6 and, measured on CPU, flips 3-5 of 73,728 uint8 values by one level; in
float64 the images are identical. See tests/test_sampling.py.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from vfmvae.checkpoint.pretrained import resolve_model_dir
from vfmvae.diffusion import DiffusionTransformer
from vfmvae.latents.stats import STATS_FILE, LatentStats  # LatentStats re-exported: its home before latents.stats
from vfmvae.sampling.classes import read_class_names
from vfmvae.sampling.ode import SamplerConfig, sample_ode, sample_sde  # SamplerConfig re-exported (its home before)
from vfmvae.sampling.presets import resolve_sampler_config
from vfmvae.seeding import derive_seed

__all__ = ["LatentStats", "SamplerConfig", "VFMVAEPipeline", "read_preset"]

SAMPLER_FILE = "sampler.json"  # in a diffusion export: {"preset": name or null}, written by `train diffusion`


def read_preset(diffusion_dir: str | Path) -> str | None:
    """The sampler preset recorded in a diffusion export (None if it records none)."""
    path = Path(diffusion_dir) / SAMPLER_FILE
    return json.loads(path.read_text()).get("preset") if path.is_file() else None


def check_diffusion_folder(folder: Path) -> None:
    """Refuse, in one line that says what `folder` is and which folder to pass, a folder given as the diffusion
    model that is not one: a tokenizer folder, or a training run folder instead of its export."""
    folder = Path(folder)
    config = folder / "config.json"
    if config.is_file():
        try:
            architecture = json.loads(config.read_text()).get("architecture")
        except (ValueError, AttributeError):
            return  # the loader reports an unreadable config with its own message
        if architecture == "VFMVAE":
            raise ValueError(
                f"--diffusion {folder} is a tokenizer (VFMVAE) folder, not a diffusion model: pass a diffusion "
                "model folder (a `vfmvae train diffusion` run's RUN/export, or a `vfmvae convert official-reg|"
                "official-lightningdit` output) as --diffusion, and this folder as --tokenizer"
            )
        return
    if (folder / "config.yaml").is_file() and any((folder / n).exists() for n in ("export", "checkpoints")):
        try:
            recipe = yaml.safe_load((folder / "config.yaml").read_text()) or {}
        except yaml.YAMLError:
            recipe = {}
        if isinstance(recipe, dict) and "transport" in recipe:
            raise ValueError(
                f"--diffusion {folder} is a diffusion training run folder; pass its export: "
                f"--diffusion {folder / 'export'}"
            )
        raise ValueError(
            f"--diffusion {folder} is a tokenizer training run folder: its export ({folder / 'export'}) is a "
            "tokenizer (--tokenizer); --diffusion takes a diffusion model folder (a `vfmvae train diffusion` "
            "run's RUN/export)"
        )


class VFMVAEPipeline:
    def __init__(
        self, diffusion: DiffusionTransformer, tokenizer, stats: LatentStats, preset: str | None = None
    ) -> None:
        if stats.mean.numel() != diffusion.config.in_channels:
            raise ValueError(
                f"latent statistics have {stats.mean.numel()} channels, the model {diffusion.config.in_channels}"
            )
        self.diffusion, self.tokenizer, self.stats = diffusion.eval(), tokenizer.eval(), stats
        self.tokenizer_dir: Path | None = None  # the folders they were loaded from, if any (for resume verification)
        self.diffusion_dir: Path | None = None
        self.preset = preset  # default sampler settings of __call__ (vfmvae.sampling.presets)
        self.class_names: list[str] | None = None  # label i's name, when the export records them (class_names.json)

    @classmethod
    def from_pretrained(
        cls,
        diffusion: str | Path,
        tokenizer: str | Path | None = None,
        latent_stats: str | Path | None = None,
        device: str | torch.device = "cpu",
    ) -> VFMVAEPipeline:
        """`diffusion`: an export folder or a Hub id (owner/name[@revision]); the statistics default to its
        latent_stats.json (inside the downloaded snapshot for a Hub id), the tokenizer to the one they name. The
        statistics must belong to the tokenizer (`LatentStats.check_tokenizer`)."""
        from vfmvae.tokenizer import VFMVAE

        diffusion_dir = resolve_model_dir(diffusion, what="diffusion model")  # a Hub id: its snapshot folder
        check_diffusion_folder(diffusion_dir)
        stats = LatentStats.load(latent_stats or diffusion_dir / STATS_FILE)
        if tokenizer is None:
            tokenizer_dir = stats.tokenizer_dir()
            if tokenizer_dir is None:
                raise ValueError(f"no tokenizer given and {stats.source} does not name one; pass --tokenizer DIR")
        else:
            tokenizer_dir = resolve_model_dir(tokenizer, what="tokenizer")
        stats.check_tokenizer(tokenizer_dir)
        model = DiffusionTransformer.from_pretrained(diffusion_dir, device=device)
        tok = VFMVAE.from_pretrained(tokenizer_dir, device=device)
        pipe = cls(model, tok, stats, preset=read_preset(diffusion_dir))
        pipe.diffusion_dir, pipe.tokenizer_dir = diffusion_dir, tokenizer_dir
        pipe.class_names = read_class_names(diffusion_dir)
        return pipe

    @property
    def device(self) -> torch.device:
        return next(self.diffusion.parameters()).device

    def initial_noise(
        self, indices: Sequence[int], seed: int, sample_seeds: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Generator]]:
        """Noise of each sample from its own generator, seeded `derive_seed(seed, index)` (or `sample_seeds[i]`)."""
        c = self.diffusion.config
        seeds = list(sample_seeds) if sample_seeds is not None else [derive_seed(seed, i) for i in indices]
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        noise = torch.stack([torch.randn(c.in_channels, c.input_size, c.input_size, generator=g) for g in gens])
        cls = torch.stack([torch.randn(c.class_token_dim, generator=g) for g in gens]) if c.class_token_dim else None
        return noise, cls, gens

    @torch.no_grad()
    def latents(
        self,
        labels: Sequence[int] | torch.Tensor,
        *,
        seed: int = 0,
        indices: Sequence[int] | None = None,
        config: SamplerConfig | None = None,
        sample_seeds: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Normalised latents for `labels`; sample i uses seed (seed, indices[i]) (default indices 0..B-1), or
        `sample_seeds[i]` as its generator's seed when given (one seed per sample, e.g. from a list of generators);
        `config` defaults to SamplerConfig's defaults."""
        config = config or SamplerConfig()
        labels = torch.as_tensor(labels, dtype=torch.long)
        classes = self.diffusion.config.num_classes
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            bad = labels[(labels < 0) | (labels >= classes)][0].item()
            raise ValueError(f"class label {bad} is outside this model's classes 0..{classes - 1}")
        indices = list(range(len(labels))) if indices is None else list(indices)
        if sample_seeds is not None and len(sample_seeds) != len(labels):
            raise ValueError(f"{len(sample_seeds)} sample seeds for {len(labels)} labels; pass one per label")
        if config.guide_channels is not None and config.guide_channels > self.diffusion.config.in_channels:
            raise ValueError(
                f"--guide-channels {config.guide_channels} exceeds the model's "
                f"{self.diffusion.config.in_channels} latent channels"
            )
        noise, cls, gens = self.initial_noise(indices, seed, sample_seeds)
        dev, dtype = self.device, next(self.diffusion.parameters()).dtype  # ODE states in the model's precision
        noise, cls = noise.to(dev, dtype), None if cls is None else cls.to(dev, dtype)
        y = labels.to(dev)
        if config.sampler == "sde":
            z = sample_sde(
                self.diffusion, noise, y, steps=config.steps, guidance=config.guidance, cls_noise=cls, generators=gens
            )
        else:
            z = sample_ode(
                self.diffusion,
                noise,
                y,
                steps=config.steps,
                method=config.sampler,
                guidance=config.guidance,
                shift=config.shift,
                cls_noise=cls,
            )
        return z.to(dtype)

    @torch.no_grad()
    def __call__(
        self,
        labels: Sequence[int] | torch.Tensor,
        *,
        seed: int = 0,
        indices: Sequence[int] | None = None,
        config: SamplerConfig | None = None,
        sample_seeds: Sequence[int] | None = None,
        **options,
    ) -> torch.Tensor:
        """Images in [0, 1], (B, 3, H, W). Without `config`, the pipeline's preset with `options` (SamplerConfig
        fields: sampler, steps, cfg_scale, ...) applied on top."""
        config = config or resolve_sampler_config(self.preset, **options)
        latents = self.latents(labels, seed=seed, indices=indices, config=config, sample_seeds=sample_seeds)
        z = self.stats.denormalize(latents)
        # GroupNorm refuses a group of one value (a 1x1 map of a single sample in small decoders); its statistics
        # are per sample, so decoding the sample twice and keeping one copy changes nothing
        z = z.to(next(self.tokenizer.parameters()).dtype)
        images = self.tokenizer.decode(z.repeat(2, 1, 1, 1) if len(z) == 1 else z).sample[: len(z)]
        return (images.clamp(-1, 1) + 1) / 2
