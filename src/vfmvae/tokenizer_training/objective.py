"""The tokenizer's two objectives: the discriminator loss and the generator loss of one micro-batch
(tianciB/VFM-VAE@b3a752a training/loss.py `TotalLoss.accumulate_gradients`, phases D and G), with the safe-loss
guard and the logged scalars.

The trainer (trainer.py) owns the loop; this module owns what one D or G pass computes. `discriminator_pass` and
`generator_pass` return every named term under the official `training_stats` names and take the pass's random
draws (`PassDraws`; whatever is not given is drawn from `generator`, which the trainer seeds per step), so that a
recorded official step can be replayed exactly. `discriminator` and `generator_loss` are the same passes in the
form `training.optimizer_step` calls (a loss tensor per micro-batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vfmvae.tokenizer import VFMVAE, DiagonalGaussian
from vfmvae.tokenizer_training.config import TokenizerTrainConfig
from vfmvae.tokenizer_training.discriminators import MultiscalePatchGAN, ProjectedDiscriminator
from vfmvae.tokenizer_training.draws import AugmentDraw, PassDraws
from vfmvae.tokenizer_training.equivariance import (
    EquivarianceDraw,
    draw_equivariance,
    transform_latent,
    transform_target,
)
from vfmvae.tokenizer_training.losses import (
    DiscriminatorGuard,
    SafeLossGuard,
    adaptive_vf_weight,
    kl_loss,
    multiscale_l1_terms,
    ssim_loss,
    vf_alignment_loss,
)

__all__ = ["PassResult", "TokenizerObjective"]


@dataclass(frozen=True)
class PassResult:
    """One D or G pass over a micro-batch."""

    total: torch.Tensor  # the loss to back-propagate (0 when the safe-loss guard dropped this micro-batch)
    terms: dict[str, torch.Tensor]  # detached 0-d tensors under the official `training_stats` names
    draws: PassDraws  # every draw the pass used (complete: replaying them repeats the pass)


@dataclass(frozen=True)
class _Generated:
    """The generator's forward pass of one micro-batch, and the target its output is compared with."""

    fake: torch.Tensor  # decoded image in [-1, 1] (float32)
    multiscale: list[torch.Tensor]  # lower-resolution outputs, largest first (float32)
    target: torch.Tensor  # the input under the same equivariance transform, in [-1, 1]
    posterior: DiagonalGaussian
    latent: torch.Tensor  # the decoded z, before the equivariance transform
    vfm_features: Any  # the VFM's features (the VF loss's target), or None
    posterior_noise: torch.Tensor | None


class _Terms:
    """The named terms of one pass, detached for the record, and the safe-loss guard's view of them."""

    def __init__(self, guard: SafeLossGuard | None) -> None:
        self.values: dict[str, torch.Tensor] = {}
        self.guard = guard

    def record(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """Keep `value` under its official `training_stats` name; returns it unchanged."""
        self.values[name] = value.detach()
        return value

    def watch(self, name: str, value: torch.Tensor, relative: bool = True) -> torch.Tensor:
        """Hand an unweighted term to the safe-loss guard (if any); returns it unchanged."""
        return self.guard.watch(name, value, relative) if self.guard is not None else value


def _scores(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean logit and mean sign, as `training_stats.report(..._scores/_signs, logits)` logs them."""
    return logits.detach().mean(), logits.detach().sign().mean()


def _patch_scores(logit_maps: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per PatchGAN scale: the mean over the batch of each sample's mean logit, and the mean sign of those
    per-sample means (official `TotalLoss._agg_patchgan_per_scale`)."""
    per_sample = [logits.detach().flatten(1).mean(1) for logits in logit_maps]
    return [(scores.mean(), scores.sign().mean()) for scores in per_sample]


class TokenizerObjective:
    """Computes the D and G objectives; keeps the last scalars for logging."""

    def __init__(
        self,
        cfg: TokenizerTrainConfig,
        tokenizer: VFMVAE,
        projected: ProjectedDiscriminator | None,
        patchgan: MultiscalePatchGAN | None,
        lpips: nn.Module | None,
        autocast,
    ) -> None:
        self.cfg, self.tokenizer, self.projected, self.patchgan = cfg, tokenizer, projected, patchgan
        self.lpips, self.autocast = lpips, autocast
        self.resize_mode = tokenizer.vfm.adapter.resize_mode
        self.generator = torch.Generator()  # the draws not given to a pass; the trainer seeds it per step
        self.images_seen = 0
        safe_loss = cfg.loss.safe_loss
        self.guard = SafeLossGuard(cfg.loss.safe_loss_ratio) if safe_loss else None
        self.discriminator_guard = DiscriminatorGuard() if safe_loss else None
        self.scalars: dict[str, torch.Tensor] = {}  # detached device tensors, read back when logged

    # ---- draws ------------------------------------------------------------------------------------------
    def _equivariance(self, draws: PassDraws) -> EquivarianceDraw:
        if draws.equivariance is not None:
            return draws.equivariance
        loss = self.cfg.loss
        if not loss.equivariance:
            return EquivarianceDraw()
        return draw_equivariance(self.generator, loss.eq_p_latent, loss.eq_p_prior_scale)

    def _augment(self, given: AugmentDraw | None, batch_size: int) -> AugmentDraw | None:
        if self.projected is None:
            return None
        return given if given is not None else AugmentDraw.draw(self.generator, batch_size)

    def _generate(
        self, images01: torch.Tensor, equivariance: EquivarianceDraw, noise: torch.Tensor | None, with_vfm: bool
    ) -> _Generated:
        encoded = self.tokenizer.encode_moments(images01, extra_scale=equivariance.input_scale)
        posterior = DiagonalGaussian(encoded.moments.float())
        if self.cfg.loss.sample_posterior:
            if noise is None:
                noise = torch.randn(posterior.mean.shape, generator=self.generator)
            latent = posterior.mean + posterior.std * noise.to(posterior.mean.device)
        else:
            latent, noise = posterior.mean, None
        decoded = self.tokenizer.decode(transform_latent(latent, equivariance))
        target = transform_target(images01, equivariance, self.resize_mode) * 2 - 1
        return _Generated(
            decoded.sample.float(),
            [image.float() for image in decoded.multiscale],
            target,
            posterior,
            latent,
            encoded.vfm_features if with_vfm else None,
            noise,
        )

    def _guard_active(self) -> bool:
        return self.images_seen > self.cfg.loss.safe_loss_after_images  # official: 50k images after the stage start

    # ---- the discriminator's pass -------------------------------------------------------------------------
    def discriminator_pass(self, images01: torch.Tensor, draws: PassDraws | None = None) -> PassResult:
        """The D loss of one micro-batch (images in [0, 1]): hinge loss of the projected discriminator, LSGAN
        loss of the PatchGAN, on the generator's output and on the equally transformed input."""
        loss = self.cfg.loss
        draws = draws or PassDraws()
        equivariance = self._equivariance(draws)
        with torch.no_grad(), self.autocast():
            generated = self._generate(images01, equivariance, draws.posterior_noise, with_vfm=False)
        fake, real = generated.fake, generated.target
        fake_augment = self._augment(draws.fake_augment, len(fake))
        real_augment = self._augment(draws.real_augment, len(real))
        use_projected = bool(loss.gan) and self.projected is not None
        use_patchgan = bool(loss.patchgan) and self.patchgan is not None
        guard = self.discriminator_guard
        if guard is not None:
            guard.active = self._guard_active()
        watch = guard.watch if guard is not None else (lambda value: value)
        terms: dict[str, torch.Tensor] = {}
        total = real.new_zeros((), dtype=torch.float32)
        with self.autocast():
            # The official order: fake images first, then real ones (one discriminator call each). Every call of
            # the projected discriminator in training mode advances its spectral-norm power iteration, so the
            # order changes the result.
            fake_logits = self.projected(fake, fake_augment).float() if use_projected else None
            fake_maps = self.patchgan(fake) if use_patchgan else None
            real_logits = self.projected(real, real_augment).float() if use_projected else None
            real_maps = self.patchgan(real) if use_patchgan else None
            if use_projected:
                fake_loss = watch(F.relu(1 + fake_logits).mean())
                real_loss = watch(F.relu(1 - real_logits).mean())
                projected_loss = watch(fake_loss + real_loss)
                total = total + loss.gan * projected_loss
                name = "Loss/D/stylegan_t/"
                terms[name + "fake_scores"], terms[name + "fake_signs"] = _scores(fake_logits)
                terms[name + "real_scores"], terms[name + "real_signs"] = _scores(real_logits)
                terms[name + "gen_loss"], terms[name + "real_loss"] = fake_loss.detach(), real_loss.detach()
                terms[name + "loss"] = projected_loss.detach()
            if use_patchgan:
                fake_logit_maps = [layers[-1].float() for layers in fake_maps]  # the last layer is the logit map
                real_logit_maps = [layers[-1].float() for layers in real_maps]
                scales = len(fake_logit_maps)
                fake_loss = watch(sum(F.mse_loss(m, torch.zeros_like(m)) for m in fake_logit_maps) / scales)
                real_loss = watch(sum(F.mse_loss(m, torch.ones_like(m)) for m in real_logit_maps) / scales)
                patchgan_loss = watch(fake_loss + real_loss)
                total = total + loss.patchgan * patchgan_loss
                name = "Loss/D/patchgan/"
                terms[name + "gen_loss"], terms[name + "real_loss"] = fake_loss.detach(), real_loss.detach()
                terms[name + "loss"] = patchgan_loss.detach()
                for kind, maps in (("fake", fake_logit_maps), ("real", real_logit_maps)):
                    for scale, (score, sign) in enumerate(_patch_scores(maps)):
                        terms[f"{name}{kind}/scale{scale}/{kind}_scores"] = score
                        terms[f"{name}{kind}/scale{scale}/{kind}_signs"] = sign
        terms["Loss/D/total"] = total.detach()
        if guard is not None:
            total = guard(total)
        used = PassDraws(equivariance, generated.posterior_noise, fake_augment, real_augment)
        return PassResult(total.float(), terms, used)

    def discriminator(self, _module: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """`discriminator_pass` as `optimizer_step`'s loss function (batch: {"x", "n"[, "draws"]})."""
        result = self.discriminator_pass(batch["x"], batch.get("draws"))
        self.scalars["loss/d"] = result.terms["Loss/D/total"]
        if self.discriminator_guard is not None and self.discriminator_guard.rejected is not None:
            self.scalars["safe_loss_rejected_d"] = self.discriminator_guard.rejected
        return result.total

    # ---- the generator's pass -----------------------------------------------------------------------------
    def generator_pass(self, images01: torch.Tensor, draws: PassDraws | None = None) -> PassResult:
        """The G loss of one micro-batch (images in [0, 1]): reconstruction, KL, VF alignment and the adversarial
        terms, weighted and summed in the order of the official `TotalLoss` (phase G)."""
        loss = self.cfg.loss
        draws = draws or PassDraws()
        equivariance = self._equivariance(draws)
        if self.guard is not None:
            self.guard.active = self._guard_active()
        terms = _Terms(self.guard)
        with self.autocast():
            generated = self._generate(images01, equivariance, draws.posterior_noise, with_vfm=loss.vf > 0)
            fake_augment = self._augment(draws.fake_augment, len(generated.fake))
            reconstruction = self._reconstruction(generated, terms)
            total = terms.record("Loss/G/rec_loss", reconstruction)
            if loss.kl:  # keeps the posterior near N(0, I), so that the latent scale stays usable for diffusion
                posterior = generated.posterior
                total = total + loss.kl * terms.record("Loss/G/kl_loss", kl_loss(posterior.mean, posterior.logvar))
            if loss.vf:
                total = total + self._vf_alignment(generated, reconstruction, images01.device.type, terms)
            total = self._add_adversarial(total, generated, fake_augment, terms)
        terms.record("Loss/G/total", total)
        if self.guard is not None:
            total = self.guard(total.float())
        used = PassDraws(equivariance, generated.posterior_noise, fake_augment, None)
        return PassResult(total.float(), terms.values, used)

    def _reconstruction(self, generated: _Generated, terms: _Terms) -> torch.Tensor:
        """The official "main_rec_loss": the weighted pixel, perceptual, SSIM and multi-scale terms. Each term goes
        to the safe-loss guard unweighted, because its rule compares a term with the same term of the previous
        micro-batch, whatever its weight."""
        loss, fake, target = self.cfg.loss, generated.fake, generated.target
        reconstruction = target.new_zeros((), dtype=torch.float32)
        if loss.l1:
            l1 = terms.record("Loss/G/l1_pixel_loss", terms.watch("l1", (target - fake).abs().mean()))
            reconstruction = reconstruction + loss.l1 * l1
        if loss.l2:
            l2 = terms.record("Loss/G/l2_pixel_loss", terms.watch("l2", (target - fake).square().mean()))
            reconstruction = reconstruction + loss.l2 * l2
        if loss.lpips:
            perceptual = self.lpips(fake, target).float().mean()
            reconstruction = reconstruction + loss.lpips * terms.record(
                "Loss/G/perceptual_loss", terms.watch("lpips", perceptual)
            )
        if loss.ssim:
            reconstruction = reconstruction + loss.ssim * terms.record(
                "Loss/G/ssim_loss", terms.watch("ssim", ssim_loss(fake, target))
            )
        # the multi-scale L1 trains the low-resolution outputs only early in stage 0 (`multiscale_until_images`,
        # official multiscale_pixel_loss_end_kimg); its weights sit inside the term, as in the official sum
        if any(loss.multiscale) and self.images_seen < loss.multiscale_until_images:
            per_output = multiscale_l1_terms(generated.multiscale, (target + 1) / 2, self.resize_mode)
            multiscale = target.new_zeros((), dtype=torch.float32)
            for block, (weight, term) in enumerate(zip(loss.multiscale, per_output)):
                terms.record(f"Loss/G/multiscale_pixel_loss_block{block}", term)
                multiscale = multiscale + weight * term
            reconstruction = reconstruction + terms.record(
                "Loss/G/multiscale_pixel_loss", terms.watch("multiscale", multiscale)
            )
        return reconstruction

    def _vf_alignment(
        self, generated: _Generated, reconstruction: torch.Tensor, device_type: str, terms: _Terms
    ) -> torch.Tensor:
        """The weighted VF loss: the latent (through a 1x1 projection, in float32 as the official) aligned with the
        frozen VFM's last-layer features pooled to the latent grid."""
        loss = self.cfg.loss
        with torch.autocast(device_type, enabled=False):
            projection = self.tokenizer.vf_proj(generated.latent.float())
        features = generated.vfm_features
        target_features = features.maps()[features.layers.index(-1)].float()
        vf = terms.record(
            "Loss/G/vf_loss",
            vf_alignment_loss(projection, target_features, loss.vf_distmat_margin, loss.vf_cos_margin),
        )
        # The adaptive weight scales VF to the reconstruction's gradient at the encoder's last layer
        # (|grad rec| / |grad vf|, official `calculate_cur_vf_loss_weight`), so that alignment never
        # overwhelms reconstruction. It needs the reconstruction sum complete, hence this order, and the
        # layer trainable: with a frozen encoder the base weight applies.
        last_layer = self.tokenizer.final_proj.blocks[-1].mlp.w2.weight
        if loss.vf_adaptive and last_layer.requires_grad:
            vf_weight = adaptive_vf_weight(reconstruction, vf, last_layer, loss.vf)
        else:
            vf_weight = torch.full((), float(loss.vf), device=vf.device)
        return terms.record("Loss/G/vf_weight", vf_weight) * vf

    def _add_adversarial(
        self, total: torch.Tensor, generated: _Generated, fake_augment: AugmentDraw | None, terms: _Terms
    ) -> torch.Tensor:
        """`total` plus the weighted adversarial terms, added one by one in the official order: the generator
        maximises the projected discriminator's logits (hinge), pulls the PatchGAN's logit maps towards "real"
        (LSGAN) and matches the PatchGAN's features of the real images."""
        loss, fake = self.cfg.loss, generated.fake
        if loss.gan and self.projected is not None:
            fake_logits = self.projected(fake, fake_augment).float()
            name = "Loss/G/stylegan_t/"
            adversarial = terms.record(name + "loss", terms.watch("gan", -fake_logits.mean(), relative=False))
            terms.values[name + "fake_scores"], terms.values[name + "fake_signs"] = _scores(fake_logits)
            total = total + loss.gan * adversarial
        if not ((loss.patchgan or loss.feature_matching) and self.patchgan is not None):
            return total
        fake_maps = self.patchgan(fake)
        if loss.patchgan:
            logit_maps = [layers[-1].float() for layers in fake_maps]
            patch_loss = sum(F.mse_loss(m, torch.ones_like(m)) for m in logit_maps) / len(logit_maps)
            name = "Loss/G/patchgan/"
            terms.record(name + "loss", terms.watch("patchgan", patch_loss, relative=False))
            for scale, (score, sign) in enumerate(_patch_scores(logit_maps)):
                terms.values[f"{name}fake/scale{scale}/fake_scores"] = score
                terms.values[f"{name}fake/scale{scale}/fake_signs"] = sign
            total = total + loss.patchgan * patch_loss
        if loss.feature_matching:
            # The official pass scores the real images with the whole discriminator for this; only the
            # PatchGAN features are used, but that call also advances the projected discriminator's
            # spectral-norm state, which is all it changes: done here without the forward pass.
            if self.projected is not None:
                self.projected.advance_spectral_norm()
            with torch.no_grad():
                real_maps = self.patchgan(generated.target)
            matching = fake.new_zeros((), dtype=torch.float32)
            for fake_layers, real_layers in zip(fake_maps, real_maps):
                # pix2pixHD's weights: 1 / scales, and 4 / (layers - 1) over the layers before the logits
                layer_weight = 4.0 / max(len(real_layers) - 1, 1) / len(real_maps)
                for fake_layer, real_layer in zip(fake_layers[:-1], real_layers[:-1]):
                    matching = matching + layer_weight * F.l1_loss(fake_layer.float(), real_layer.float())
            watched = terms.watch("feature_matching", matching, relative=False)
            terms.record("Loss/G/patchgan/feature_matching_loss", watched)
            total = total + loss.feature_matching * matching
        return total

    def generator_loss(self, _module: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """`generator_pass` as `optimizer_step`'s loss function (batch: {"x", "n"[, "draws"]})."""
        result = self.generator_pass(batch["x"], batch.get("draws"))
        logged = {
            "loss/g": "Loss/G/total",
            "loss/rec": "Loss/G/rec_loss",
            "loss/kl": "Loss/G/kl_loss",
            "loss/vf": "Loss/G/vf_loss",
            "vf_weight": "Loss/G/vf_weight",
            "loss/gan": "Loss/G/stylegan_t/loss",
        }
        for key, name in logged.items():
            if name in result.terms:
                self.scalars[key] = result.terms[name]
        if self.guard is not None and self.guard.rejected is not None:
            self.scalars["safe_loss_rejected"] = self.guard.rejected
        return result.total
