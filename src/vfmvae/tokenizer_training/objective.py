"""The tokenizer's two objectives: the discriminator loss and the generator loss of one micro-batch
(tianciB/VFM-VAE@b3a752a training/loss.py), with the safe-loss guard and the logged scalars.

The trainer (trainer.py) owns the loop; this module owns what one D or G pass computes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vfmvae.tokenizer import VFMVAE, DiagonalGaussian
from vfmvae.tokenizer_training.config import TokenizerTrainConfig
from vfmvae.tokenizer_training.discriminators import MultiscalePatchGAN, ProjectedDiscriminator
from vfmvae.tokenizer_training.equivariance import (
    EquivarianceDraw,
    draw_equivariance,
    transform_latent,
    transform_target,
)
from vfmvae.tokenizer_training.losses import (
    SafeLossGuard,
    adaptive_vf_weight,
    discriminator_term_guard,
    kl_loss,
    multiscale_l1,
    ssim_loss,
    vf_alignment_loss,
)

__all__ = ["TokenizerObjective"]


class TokenizerObjective:
    """Computes the D and G objectives; keeps the last scalars for logging."""

    def __init__(
        self,
        cfg: TokenizerTrainConfig,
        g: VFMVAE,
        d: ProjectedDiscriminator | None,
        p: MultiscalePatchGAN | None,
        lpips: nn.Module | None,
        autocast,
    ) -> None:
        self.cfg, self.g, self.d, self.p, self.lpips, self.autocast = cfg, g, d, p, lpips, autocast
        self.mode = g.vfm.adapter.resize_mode
        self.generator = torch.Generator()
        self.images_seen = 0
        self.guard = SafeLossGuard(cfg.loss.safe_loss_ratio) if cfg.loss.safe_loss else None
        self.scalars: dict[str, torch.Tensor] = {}  # detached device tensors, read back when logged

    def _draw(self) -> EquivarianceDraw:
        c = self.cfg.loss
        return (
            draw_equivariance(self.generator, c.eq_p_latent, c.eq_p_prior_scale)
            if c.equivariance
            else EquivarianceDraw()
        )

    def _fake(self, x: torch.Tensor, draw: EquivarianceDraw, with_vfm: bool):
        encoded = self.g.encode_moments(x, extra_scale=draw.input_scale)
        post = DiagonalGaussian(encoded.moments.float())
        if self.cfg.loss.sample_posterior:
            eps = torch.randn(post.mean.shape, generator=self.generator).to(post.mean.device)
            z = post.mean + post.std * eps
        else:
            z = post.mean
        decoded = self.g.decode(transform_latent(z, draw))
        target = transform_target(x, draw, self.mode) * 2 - 1
        multiscale = [m.float() for m in decoded.multiscale]
        return decoded.sample.float(), multiscale, target, post, z, (encoded.vfm_features if with_vfm else None)

    def discriminator(self, _module: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        c = self.cfg.loss
        x = batch["x"]
        with torch.no_grad(), self.autocast():
            fake, _, real, *_ = self._fake(x, self._draw(), with_vfm=False)
        loss = x.new_zeros(())
        with self.autocast():
            if c.gan and self.d is not None:
                loss = loss + c.gan * self._d_guard(
                    F.relu(1 - self.d(real, self.generator)).float().mean()
                    + F.relu(1 + self.d(fake, self.generator)).float().mean()
                )
            if c.patchgan and self.p is not None:
                pr, pf = self.p(real), self.p(fake)
                loss = loss + c.patchgan * self._d_guard(
                    sum(
                        F.mse_loss(r[-1].float(), torch.ones_like(r[-1], dtype=torch.float32))
                        + F.mse_loss(f[-1].float(), torch.zeros_like(f[-1], dtype=torch.float32))
                        for r, f in zip(pr, pf)
                    )
                    / len(pr)
                )
        self.scalars["loss/d"] = loss.detach()
        return loss.float()

    def _guard_active(self) -> bool:
        return self.images_seen > self.cfg.loss.safe_loss_after_images  # official: 50k images after the stage start

    def _d_guard(self, term: torch.Tensor) -> torch.Tensor:
        return discriminator_term_guard(term) if self.guard is not None and self._guard_active() else term

    def _watch(self, name: str, value: torch.Tensor) -> torch.Tensor:
        return self.guard.watch(name, value) if self.guard is not None else value

    def generator_loss(self, _module: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        c, s, w = self.cfg.loss, self.scalars, self._watch
        x = batch["x"]
        with self.autocast():
            fake, multiscale, real, post, z, feats = self._fake(x, self._draw(), with_vfm=c.vf > 0)
            rec = real.new_zeros(())
            if c.l1:
                rec = rec + c.l1 * w("l1", (real - fake).abs().mean())
            if c.l2:
                rec = rec + c.l2 * w("l2", (real - fake).square().mean())
            if c.lpips:
                rec = rec + c.lpips * w("lpips", self.lpips(fake, real).float().mean())
            if c.ssim:
                rec = rec + c.ssim * w("ssim", ssim_loss(fake, real))
            if any(c.multiscale) and self.images_seen < c.multiscale_until_images:
                rec = rec + w("multiscale", multiscale_l1(multiscale, (real + 1) / 2, list(c.multiscale), self.mode))
            total = rec
            s["loss/rec"] = rec.detach()
            if c.kl:
                kl = kl_loss(post.mean, post.logvar)
                total = total + c.kl * kl
                s["loss/kl"] = kl.detach()
            if c.vf:
                with torch.autocast(x.device.type, enabled=False):  # the 1x1 projection in float32, as the official
                    projected = self.g.vf_proj(z.float())
                vf = vf_alignment_loss(
                    projected, feats.maps()[feats.layers.index(-1)].float(), c.vf_distmat_margin, c.vf_cos_margin
                )
                last = self.g.final_proj.blocks[-1].mlp.w2.weight
                weight = (
                    adaptive_vf_weight(rec, vf, last, c.vf)
                    if c.vf_adaptive and last.requires_grad
                    else torch.tensor(c.vf)
                )
                total = total + weight * vf
                s["loss/vf"], s["vf_weight"] = vf.detach(), weight.detach()
            if c.gan and self.d is not None:
                gan = -self.d(fake, self.generator).mean()
                total = total + c.gan * gan
                s["loss/gan"] = gan.detach()
            if (c.patchgan or c.feature_matching) and self.p is not None:
                pf = self.p(fake)
                if c.patchgan:
                    total = total + c.patchgan * sum(F.mse_loss(f[-1], torch.ones_like(f[-1])) for f in pf) / len(pf)
                if c.feature_matching:
                    with torch.no_grad():
                        pr = self.p(real)
                    fm = sum(F.l1_loss(ff, rf.detach()) for fs, rs in zip(pf, pr) for ff, rf in zip(fs[:-1], rs[:-1]))
                    total = total + c.feature_matching * fm / len(pf)
        s["loss/g"] = total.detach()
        if self.guard is not None:
            self.guard.active = self._guard_active()
            total = self.guard(total.float())
            if self.guard.rejected is not None:
                s["safe_loss_rejected"] = self.guard.rejected
        return total.float()
