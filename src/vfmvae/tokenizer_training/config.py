"""The tokenizer-training recipe: one frozen dataclass per component (YAML under configs/tokenizer/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vfmvae.config import yaml_flow
from vfmvae.data.loader import DataConfig
from vfmvae.tokenizer.model import VFMVAEConfig
from vfmvae.training.config import RunConfig, retired_step_cadences  # the shared `run:` section
from vfmvae.training.eval_config import EvalConfig

__all__ = ["LossConfig", "DiscConfig", "OptimConfig", "RunConfig", "TokenizerTrainConfig"]


@dataclass(frozen=True)
class LossConfig:
    l1: float = 1.0
    l2: float = 0.0
    lpips: float = 10.0
    lpips_weights: str | None = None  # VGG16 trunk file (vgg16-397923af.pth); required when lpips > 0
    ssim: float = 0.0
    multiscale: tuple[float, ...] = (0.1, 0.1, 0.1, 0.1, 0.1)  # per lower-resolution output, largest first
    multiscale_until_images: int = 5_000_000  # multi-scale L1 only while images seen (this run) < this
    kl: float = 1e-6
    sample_posterior: bool = True  # decode z = mean + std * eps (official); False: the mean
    vf: float = 5.0  # VF alignment weight (base of the adaptive weight)
    vf_adaptive: bool = True
    vf_distmat_margin: float = 0.0
    vf_cos_margin: float = 0.0
    gan: float = 1.0  # projected DINO discriminator, hinge loss
    patchgan: float = 0.0  # multiscale PatchGAN, LSGAN (stage 3)
    feature_matching: float = 0.0  # PatchGAN feature matching (stage 3)
    equivariance: bool = True
    eq_p_latent: float = 0.5
    eq_p_prior_scale: float = 0.25
    # official safe-loss guard: skip a step whose L1/L2/LPIPS/SSIM/multi-scale loss is non-finite or jumps above
    # safe_loss_ratio x its previous accepted value (and a D step with a non-finite or |term| > 1e4 loss),
    # once more than safe_loss_after_images images of this stage were seen
    safe_loss: bool = True
    safe_loss_ratio: float = 10.0
    safe_loss_after_images: int = 50_000


@dataclass(frozen=True)
class DiscConfig:
    backbone: str = "vit_small_patch16_224.dino"
    weights: str | None = None  # local timm weights for the DINO ViT-S/16; None = random (tests only)
    input_size: int = 224
    taps: tuple[int, ...] = (2, 5, 8, 11)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. a tiny ViT for CPU runs
    diffaug: bool = True
    patchgan_ndf: int = 64


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    d_lr: float = 1e-4
    betas: tuple[float, float] = (0.0, 0.99)
    eps: float = 1e-8


@dataclass(frozen=True)
class TokenizerTrainConfig:
    data: DataConfig
    stage: Literal["all", "decoder", "late_decoder"] = "all"
    # exactly one of: `init`, the previous stage's exported tokenizer folder (its config.json fixes the architecture
    # and the VFM), or `model`, a new model's architecture with its frozen VFM as `model.vfm`
    init: str | None = None
    model: VFMVAEConfig | None = None
    loss: LossConfig = field(default_factory=LossConfig)
    disc: DiscConfig = field(default_factory=DiscConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # evaluation while training (off by default)

    def __post_init__(self) -> None:
        if (self.init is None) == (self.model is None):
            raise ValueError(
                "set exactly one of init (a previous stage's export, which fixes the architecture and its "
                "VFM) and model (a new model, its VFM as model.vfm); this recipe sets "
                + ("both" if self.init is not None else "neither")
            )
        if self.model is not None and self.loss.vf > 0 and -1 not in self.model.vfm.layers:
            raise ValueError(
                f"loss.vf > 0 needs the final VFM layer (-1) among model.vfm.layers ({list(self.model.vfm.layers)})"
            )

    @staticmethod
    def retired_keys(data: dict[str, Any], prefix: str) -> dict[str, str]:
        """The top-level `vfm:` section of format 1 and the step-counted keys (`run.*_every`, `eval.every`, ...),
        refused with what to write instead."""
        advice = retired_step_cadences(data, prefix, RunConfig)
        if "vfm" in data:
            advice["vfm"] = (
                f"the VFM is described once, inside the model; write {prefix}model.vfm: "
                f"{yaml_flow(data['vfm'])} instead (with init, the export's VFM is used: delete it)"
            )
        return advice
