"""The tokenizer training loop: a discriminator step, then a generator step, per global batch
(tianciB/VFM-VAE@b3a752a training/training_loop.py).

Randomness that matters (equivariance draws, posterior noise, DiffAugment) comes from a generator seeded by
(seed, rank, step), and the data stream is resumable to the sample, so a resumed run continues exactly.
Gradients are averaged over micro-batches and over ranks (no DDP wrapper: the adaptive VF weight needs
`torch.autograd.grad` inside the loss). A non-finite loss or gradient skips the step on every rank and is
counted; too many in a row stop the run with its last good checkpoint intact.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vfmvae import distributed as dist_utils
from vfmvae.checkpoint import CheckpointManager, capture_rng_state, load_state_strict, restore_rng_state
from vfmvae.config import config_to_dict
from vfmvae.data import DataStream, SkipCounter, to_float01
from vfmvae.tokenizer import VFMVAE, DiagonalGaussian
from vfmvae.tokenizer.model import vfm_arch_of
from vfmvae.tokenizer_training.config import TokenizerTrainConfig
from vfmvae.tokenizer_training.discriminators import MultiscalePatchGAN, ProjectedDiscriminator
from vfmvae.tokenizer_training.equivariance import EquivarianceDraw, draw_equivariance, transform_latent, transform_target
from vfmvae.tokenizer_training.handoff import export_stage, load_stage
from vfmvae.tokenizer_training.losses import (
    SafeLossGuard,
    adaptive_vf_weight,
    discriminator_term_guard,
    kl_loss,
    multiscale_l1,
    ssim_loss,
    vf_alignment_loss,
)
from vfmvae.tokenizer_training.stages import select_trainable
from vfmvae.training import EMA, fused_optimizer_supported, optimizer_step
from vfmvae.training.run_folder import claimed_run_folder, write_run_config
from vfmvae.training.run_log import RunLog, autocast_factory, peak_memory, scalars_to_floats
from vfmvae.vfm import vfm_from_config

__all__ = ["build_generator", "train_tokenizer"]


def build_generator(cfg: TokenizerTrainConfig) -> VFMVAE:
    """The previous stage's export (`init`), or a new model around the configured VFM."""
    if cfg.init is not None:
        model = VFMVAE.from_pretrained(cfg.init)
    else:
        vfm = vfm_from_config(cfg.vfm)
        arch = replace(cfg.model, vfm_name=cfg.vfm.name, vfm_family=vfm.family, vfm_arch=vfm_arch_of(vfm),
                       layer_dims=(vfm.width,) * len(cfg.model.layers))
        model = VFMVAE(arch, vfm=vfm)
    if cfg.loss.vf > 0:
        if -1 not in model.config.layers:
            raise ValueError("loss.vf > 0 needs the final VFM layer (-1) among model.layers")
        if model.vf_proj is None:  # a new 1x1 projection z -> VFM width, initialised as the official
            model.config = replace(model.config, vf_projection=True)
            model.vf_proj = nn.Conv2d(model.config.latent_channels, model.vfm.width, 1, bias=False)
            nn.init.xavier_normal_(model.vf_proj.weight, gain=0.5)
    return model


def _without_vfm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # The frozen VFM is rebuilt from `init`/`vfm` on resume; checkpoints need not repeat ~300M parameters.
    return {k: v for k, v in state.items() if not k.startswith("vfm.")}


def _load_without_vfm(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("vfm.")] + list(unexpected)
    if bad:
        raise RuntimeError(f"checkpoint does not match the model: {bad[:8]}")


class _Losses:
    """Computes the D and G objectives; keeps the last scalars for logging."""

    def __init__(self, cfg: TokenizerTrainConfig, g: VFMVAE, d: ProjectedDiscriminator | None,
                 p: MultiscalePatchGAN | None, lpips: nn.Module | None, autocast) -> None:
        self.cfg, self.g, self.d, self.p, self.lpips, self.autocast = cfg, g, d, p, lpips, autocast
        self.mode = g.vfm.adapter.resize_mode
        self.generator = torch.Generator()
        self.images_seen = 0
        self.guard = SafeLossGuard(cfg.loss.safe_loss_ratio) if cfg.loss.safe_loss else None
        self.scalars: dict[str, torch.Tensor] = {}  # detached device tensors, read back when logged

    def _draw(self) -> EquivarianceDraw:
        c = self.cfg.loss
        return draw_equivariance(self.generator, c.eq_p_latent, c.eq_p_prior_scale) if c.equivariance else EquivarianceDraw()

    def _fake(self, x: torch.Tensor, draw: EquivarianceDraw, with_vfm: bool):
        moments, feats = self.g.encode_moments(x, extra_scale=draw.input_scale, return_vfm=True)
        post = DiagonalGaussian(moments.float())
        if self.cfg.loss.sample_posterior:
            eps = torch.randn(post.mean.shape, generator=self.generator).to(post.mean.device)
            z = post.mean + post.std * eps
        else:
            z = post.mean
        fake, multiscale = self.g.decode(transform_latent(z, draw), return_multiscale=True)
        target = transform_target(x, draw, self.mode) * 2 - 1
        return fake.float(), [m.float() for m in multiscale], target, post, z, (feats if with_vfm else None)

    def discriminator(self, _module: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        c = self.cfg.loss
        x = batch["x"]
        with torch.no_grad(), self.autocast():
            fake, _, real, *_ = self._fake(x, self._draw(), with_vfm=False)
        loss = x.new_zeros(())
        with self.autocast():
            if c.gan and self.d is not None:
                loss = loss + c.gan * self._d_guard(F.relu(1 - self.d(real, self.generator)).float().mean()
                                                    + F.relu(1 + self.d(fake, self.generator)).float().mean())
            if c.patchgan and self.p is not None:
                pr, pf = self.p(real), self.p(fake)
                loss = loss + c.patchgan * self._d_guard(sum(
                    F.mse_loss(r[-1].float(), torch.ones_like(r[-1], dtype=torch.float32))
                    + F.mse_loss(f[-1].float(), torch.zeros_like(f[-1], dtype=torch.float32)) for r, f in zip(pr, pf)) / len(pr))
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
                vf = vf_alignment_loss(projected, feats.maps()[feats.layers.index(-1)].float(),
                                       c.vf_distmat_margin, c.vf_cos_margin)
                last = self.g.final_proj.blocks[-1].mlp.w2.weight
                weight = (adaptive_vf_weight(rec, vf, last, c.vf) if c.vf_adaptive and last.requires_grad
                          else torch.tensor(c.vf))
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


def train_tokenizer(cfg: TokenizerTrainConfig, resume: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Run (or continue) one training stage. Returns a summary; the stage is exported to RUN/export (the EMA
    tokenizer, plus the raw generator and the discriminators that the next stage starts from, see handoff.py)."""
    dist_utils.init_distributed()
    # a run folder belongs to one run: locked and checked before anything is written into it
    with claimed_run_folder(cfg.run.dir, cfg, resume):
        return _train_tokenizer(cfg, resume, progress)


def _train_tokenizer(cfg: TokenizerTrainConfig, resume: str, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    device = dist_utils.init_distributed(device=cfg.run.device)  # the backend follows the device (NCCL / gloo)
    rank, world = dist_utils.rank(), dist_utils.world_size()
    run = cfg.run
    micro = run.micro_batch or run.batch_size // world
    if run.batch_size % (world * micro):
        raise ValueError(f"run.batch_size {run.batch_size} is not a multiple of processes ({world}) x run.micro_batch ({micro})")
    accum = run.batch_size // (world * micro)
    run_dir = Path(run.dir)

    torch.manual_seed(run.seed)
    g = build_generator(cfg).to(device)
    trainable = select_trainable(g, cfg.stage)
    d = p = None
    if cfg.loss.gan:
        dc = cfg.disc
        d = ProjectedDiscriminator(dc.backbone, dc.weights, dc.input_size, dc.taps, dc.backbone_kwargs, dc.diffaug,
                                   resize_mode=g.vfm.adapter.resize_mode).to(device)  # the VFM's mode, as the official
    if cfg.loss.patchgan or cfg.loss.feature_matching:
        p = MultiscalePatchGAN(cfg.disc.patchgan_ndf).to(device)
    d_modules = nn.ModuleList([m for m in (d.heads if d is not None else None, p) if m is not None])
    discriminators = {name: m for name, m in (("projected", d.heads if d is not None else None), ("patchgan", p)) if m is not None}
    d_params = list(d_modules.parameters())
    lpips = None
    if cfg.loss.lpips:
        if cfg.loss.lpips_weights is None:
            raise ValueError("loss.lpips > 0 needs loss.lpips_weights (vgg16-397923af.pth); or set loss.lpips=0")
        from vfmvae.evaluation.image_metrics import load_lpips

        lpips = load_lpips(cfg.loss.lpips_weights, device)[0].net  # differentiable lpips.LPIPS on [-1, 1]
    if run.compile:
        _compile_forwards(g, d, p, lpips)
    opt = cfg.optim
    fused = fused_optimizer_supported(device)  # one kernel over all parameters; skips non-finite steps on the device
    opt_g = torch.optim.Adam(trainable, lr=opt.lr, betas=opt.betas, eps=opt.eps, fused=fused)
    opt_d = torch.optim.Adam(d_params, lr=opt.d_lr, betas=opt.betas, eps=opt.eps, fused=fused) if d_params else None
    ema = EMA(g, run.ema_halflife_images, run.ema_rampup)  # the EMA starts from the previous stage's EMA
    images_before = 0  # images of the previous stages: the EMA ramp-up continues from there (official cur_nimg)
    if cfg.init is not None:  # official resume_*: raw G from raw G, D from D
        images_before, notes = load_stage(cfg.init, g, discriminators)
        for note in notes:
            dist_utils.print0(f"note: {note}")
    manager = CheckpointManager(run_dir, keep=run.keep_checkpoints)
    step, images, data_state, counters = 0, 0, None, {"skipped_g": 0, "skipped_d": 0}
    guard_state: dict[str, torch.Tensor] = {}
    if resume not in ("none", "fresh") and (resume != "auto" or manager.latest() is not None):
        ckpt = manager.load(None if resume == "auto" else resume)
        load_state_strict(g, ckpt.model, ckpt.path / "model.safetensors", optional_prefixes=("vfm.",))
        _load_without_vfm(ema.model, ckpt.ema)
        load_state_strict(d_modules, ckpt.state["disc"], ckpt.path / "state.safetensors")
        opt_g.load_state_dict(ckpt.state["opt_g"])
        if opt_d is not None:
            opt_d.load_state_dict(ckpt.state["opt_d"])
        counters = dict(ckpt.state["counters"])
        images_before = int(counters.pop("images_before_stage", images_before))
        guard_state = ckpt.state.get("safe_loss", {})
        step, images, data_state = ckpt.step, ckpt.images_seen, ckpt.rank_state["data"]
        restore_rng_state(ckpt.rank_state["rng"])  # the loop draws from per-step generators; this covers the rest
        dist_utils.print0(f"resumed from {ckpt.path} (step {step}, {images} images)")
    if rank == 0:
        write_run_config(run_dir, cfg)

    # fp16 needs loss scaling (bf16 and fp32 do not); the scalers' state is small and rebuilt on resume
    scaler_g = torch.amp.GradScaler(device.type) if run.precision == "fp16" else None
    scaler_d = torch.amp.GradScaler(device.type) if run.precision == "fp16" and opt_d is not None else None
    log = RunLog(run_dir, tensorboard=run.tensorboard, x_key="images") if rank == 0 else None
    skips = SkipCounter()
    stream = DataStream(cfg.data, micro, rank=rank, world=world, state=data_state, skips=skips)
    losses = _Losses(cfg, g, d, p, lpips, autocast_factory(run.precision, device))
    if losses.guard is not None:
        losses.guard.load_state_dict(guard_state, device)
    fixed = None

    def save() -> None:
        manager.save(step, images_seen=images, model=_without_vfm(g.state_dict()), ema=_without_vfm(ema.state_dict()),
                     state={"disc": d_modules.state_dict(), "opt_g": opt_g.state_dict(),
                            "opt_d": opt_d.state_dict() if opt_d is not None else {},
                            "counters": {**counters, "images_before_stage": images_before},
                            "safe_loss": losses.guard.state_dict() if losses.guard is not None else {}},
                     rank_state={"data": stream.state_dict(), "rng": capture_rng_state()},
                     meta={"config": config_to_dict(cfg)})

    total_steps = -(-run.total_images // run.batch_size)
    bar = tqdm(total=total_steps, initial=step, desc="tokenizer", unit="step", disable=not (progress and rank == 0))
    started = time.perf_counter()
    # No host read between sync points (logging, checkpoints, the end), as in diffusion training: the exact image
    # count (summed over ranks; a batch is short by any skipped files) and the skip counters stay on the device.
    # In between, the host plans with the nominal count (batch_size per step), which never undercounts; the run
    # ends only when a read-back count says so.
    images_t = torch.full((), images, dtype=torch.int64, device=device)
    skipped_d_t = torch.zeros((), dtype=torch.int64, device=device)  # skipped D steps since the last sync point
    skipped_g_t = torch.zeros((), dtype=torch.int64, device=device)  # skipped G steps since the last sync point
    run_t = torch.zeros((), dtype=torch.int64, device=device)        # current run of consecutive skipped G steps
    longest_t = torch.zeros((), dtype=torch.int64, device=device)    # longest such run since the last sync point
    while images < run.total_images:
        losses.generator.manual_seed(run.seed * 1_000_003 + step * 1_009 + rank)
        losses.images_seen = images
        batches = []
        for _ in range(accum):
            batch = next(stream)
            batches.append({"x": to_float01(batch["image"]).to(device), "n": len(batch["label"])})
        if fixed is None and rank == 0:
            fixed = batches[0]["x"][:8].clone()
        size = lambda b: b["n"]  # noqa: E731
        if opt_d is not None:
            g.train()
            d_modules.requires_grad_(True)
            res_d = optimizer_step(d_modules, opt_d, batches, losses.discriminator, batch_size_of=size, params=d_params,
                                   sync_gradients=True, scaler=scaler_d)
            skipped_d_t += (res_d.applied_t < 1).long()
            d_modules.requires_grad_(False)
        res_g = optimizer_step(g, opt_g, batches, losses.generator_loss, batch_size_of=size, params=trainable,
                               sync_gradients=True, scaler=scaler_g)
        if losses.guard is not None:
            losses.guard.commit(res_g.applied_t)  # an accepted step's terms become the next reference
        skipped_g = (res_g.applied_t < 1).long()
        skipped_g_t += skipped_g
        run_t = (run_t + 1) * skipped_g
        longest_t = torch.maximum(longest_t, run_t)
        # a fill kernel, not a copy from the host: the count joins the device queue without a synchronisation
        images_t += dist_utils.all_reduce_sum(torch.full((), sum(b["n"] for b in batches), dtype=torch.int64, device=device))
        images += run.batch_size
        ema.update(g, images_before + images, run.batch_size, applied=res_g.applied_t)  # a skipped step leaves the EMA
        step += 1
        bar.update(1)
        log_now = step % run.log_every == 0 or images >= run.total_images
        if log_now or step % run.checkpoint_every == 0:
            # the one host synchronisation of the loop (every rank, so that every rank stops together)
            images, new_d, new_g, longest = torch.stack([images_t, skipped_d_t, skipped_g_t, longest_t]).tolist()
            counters["skipped_d"] += new_d
            counters["skipped_g"] += new_g
            skipped_d_t.zero_()
            skipped_g_t.zero_()
            longest_t.copy_(run_t)
            if longest >= run.max_consecutive_nonfinite:
                raise RuntimeError(f"{longest} consecutive non-finite generator steps (or safe-loss rejections) by step "
                                   f"{step}; stopping. "
                                   f"The last good checkpoint is {manager.latest()}")
        if rank == 0 and log_now:
            values = scalars_to_floats(losses.scalars)  # logged values stay on the device until here
            record = {"step": step, "images": images, "grad_norm_g": res_g.grad_norm, **values, **counters,
                      "skipped_images": skips.as_dict(), "sec_per_step": (time.perf_counter() - started) / max(1, step),
                      **peak_memory(device)}
            log.write(record)
            bar.set_postfix(loss=f"{values.get('loss/g', float('nan')):.3f}")
        if rank == 0 and fixed is not None and (step % run.snapshot_every == 0 or images >= run.total_images):
            _snapshot(ema.model, fixed, run_dir / "snapshots" / f"step-{step:08d}.png")
        if step % run.checkpoint_every == 0 and images < run.total_images:
            save()
    bar.close()
    if log is not None:
        log.close()
    save()
    export = run_dir / "export"
    if rank == 0:
        export_stage(export, g, ema.model, discriminators, images_before + images)
    dist_utils.barrier()
    return {"steps": step, "images": images, "images_total": images_before + images, "export": str(export), **counters, "skipped_images": skips.as_dict(),
            "config": asdict(cfg.run) | {"dir": str(run.dir)}}


def _compile_forwards(g: VFMVAE, d: ProjectedDiscriminator | None, p: MultiscalePatchGAN | None,
                      lpips: nn.Module | None) -> None:
    """torch.compile the heavy forward passes in place (`nn.Module.compile`: parameter names, checkpoints and
    exports are unchanged). The encoder/decoder wrappers and the discriminator's DiffAugment draw host random
    numbers per call, so they stay eager; the networks they call are compiled. The frozen VFM stays eager too:
    its wrappers return feature objects and take a per-draw input scale, which would recompile per draw."""
    modules: list[nn.Module] = [g.mapping, g.synthesis]
    modules += [m for m in (g.final_proj, g.post_proj) if isinstance(m, nn.Module)]
    if d is not None:
        modules += [*d.dino.blocks, *d.heads]
    modules += [m for m in (p, lpips) if m is not None]
    for module in modules:
        module.compile()


@torch.no_grad()
def _snapshot(model: VFMVAE, images01: torch.Tensor, path: Path) -> None:
    """Inputs beside reconstructions (posterior mean) of a fixed batch."""
    from vfmvae.vis import save_grid

    model.eval()
    recon = (model(images01) * 0.5 + 0.5).clamp(0, 1).cpu()
    pairs = torch.stack([t for pair in zip(images01.cpu(), recon) for t in pair])
    save_grid(pairs, path, nrow=min(8, len(pairs)))
