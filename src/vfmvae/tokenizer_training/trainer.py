"""The tokenizer training loop: a discriminator step, then a generator step, per global batch
(tianciB/VFM-VAE@b3a752a training/training_loop.py).

Randomness that matters (equivariance draws, posterior noise, DiffAugment) comes from a generator seeded by
(seed, rank, step), and the data stream is resumable to the sample, so a resumed run continues exactly.
Gradients are averaged over micro-batches and over ranks (no DDP wrapper: the adaptive VF weight needs
`torch.autograd.grad` inside the loss). A non-finite loss or gradient skips the step on every rank and is
counted; too many in a row stop the run with its last good checkpoint intact.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfmvae import distributed as dist_utils
from vfmvae.checkpoint import capture_rng_state, load_state_strict
from vfmvae.config import config_to_dict
from vfmvae.data import DataStream, SkipCounter, to_float01
from vfmvae.seeding import derive_seed
from vfmvae.tokenizer import VFMVAE
from vfmvae.tokenizer_training.config import TokenizerTrainConfig
from vfmvae.tokenizer_training.discriminators import MultiscalePatchGAN, ProjectedDiscriminator
from vfmvae.tokenizer_training.handoff import export_stage, load_stage
from vfmvae.tokenizer_training.objective import TokenizerObjective
from vfmvae.tokenizer_training.precision import use_official_precision
from vfmvae.tokenizer_training.spectral_norm import upgrade_spectral_norm_keys
from vfmvae.tokenizer_training.stages import select_trainable
from vfmvae.training import EMA, fused_optimizer_supported, optimizer_step
from vfmvae.training.compile import compile_tokenizer
from vfmvae.training.online_eval import build_evaluator
from vfmvae.training.run import Evaluator, TrainingRun
from vfmvae.training.run_log import autocast_factory
from vfmvae.vfm import build_vfm

__all__ = ["build_generator", "train_tokenizer"]


def build_generator(cfg: TokenizerTrainConfig) -> VFMVAE:
    """The previous stage's export (`init`), or a new model (`model`) around its VFM (`model.vfm`) with pretrained
    weights. A VF loss needs the VF projection: a new model is created with one; an export without one (a converted
    checkpoint that had none) is rebuilt with a new one, every other weight kept."""
    needs_vf = cfg.loss.vf > 0
    if cfg.init is not None:
        model = VFMVAE.from_pretrained(cfg.init)
        if needs_vf and model.vf_proj is None:
            with_vf = VFMVAE(replace(model.config, vf_projection=True), vfm=model.vfm)
            _load_all_but(with_vf, model.state_dict(), new="vf_proj.")
            model = with_vf
    else:
        vfm = build_vfm(cfg.model.vfm)
        # the config records the VFM as built (family, architecture, scale): the export rebuilds it offline
        model = VFMVAE(replace(cfg.model, vfm=vfm.spec, vf_projection=cfg.model.vf_projection or needs_vf), vfm=vfm)
    if needs_vf and -1 not in model.config.vfm.layers:
        where = f"the VFM taps of {cfg.init}" if cfg.init is not None else "model.vfm.layers"
        raise ValueError(f"loss.vf > 0 needs the final VFM layer (-1) among {where} ({list(model.config.vfm.layers)})")
    return model


def _load_all_but(module: nn.Module, state: dict[str, torch.Tensor], *, new: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith(new)] + list(unexpected)
    if bad:
        raise RuntimeError(f"cannot add {new.rstrip('.')} to the model: mismatched keys {bad[:8]}")


def _without_vfm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # The frozen VFM is rebuilt from `init`/`vfm` on resume; checkpoints need not repeat ~300M parameters.
    return {k: v for k, v in state.items() if not k.startswith("vfm.")}


def train_tokenizer(
    cfg: TokenizerTrainConfig, resume: str = "auto", progress: bool = True, evaluator: Evaluator | None = None
) -> dict[str, Any]:
    """Run (or continue) one training stage. Returns a summary; the stage is exported to RUN/export (the EMA
    tokenizer, plus the raw generator and the discriminators that the next stage starts from, see handoff.py)."""
    with TrainingRun.open(cfg.run, cfg, kind="tokenizer", resume=resume, progress=progress, evaluator=evaluator) as run:
        return _train_tokenizer(cfg, run)


def _train_tokenizer(cfg: TokenizerTrainConfig, run: TrainingRun) -> dict[str, Any]:
    device, rc = run.device, cfg.run

    # ---- build: generator, discriminators, LPIPS, optimizers, EMA
    torch.manual_seed(rc.seed)
    g = build_generator(cfg).to(device)
    if rc.precision == "official":
        use_official_precision(g)  # float32, float16 in the last synthesis blocks (tokenizer_training/precision.py)
    trainable = select_trainable(g, cfg.stage)
    d = p = None
    if cfg.loss.gan:
        dc = cfg.disc
        d = ProjectedDiscriminator(
            dc.backbone,
            dc.weights,
            dc.input_size,
            dc.taps,
            dc.backbone_kwargs,
            dc.diffaug,
            resize_mode=g.vfm.adapter.resize_mode,
        ).to(device)  # the VFM's mode, as the official
    if cfg.loss.patchgan or cfg.loss.feature_matching:
        p = MultiscalePatchGAN(cfg.disc.patchgan_ndf).to(device)
    d_modules = nn.ModuleList([m for m in (d.heads if d is not None else None, p) if m is not None])
    discriminators = {
        name: m for name, m in (("projected", d.heads if d is not None else None), ("patchgan", p)) if m is not None
    }
    d_params = list(d_modules.parameters())
    lpips = None
    if cfg.loss.lpips:
        if cfg.loss.lpips_weights is None:
            raise ValueError("loss.lpips > 0 needs loss.lpips_weights (vgg16-397923af.pth); or set loss.lpips=0")
        from vfmvae.evaluation.image_metrics import load_lpips

        lpips = load_lpips(cfg.loss.lpips_weights, device)[0].net  # differentiable lpips.LPIPS on [-1, 1]
    if rc.compile:
        compile_tokenizer(g, d, p, lpips)  # regional: the repeated blocks, fullgraph (training/compile.py)
    opt = cfg.optim
    fused = fused_optimizer_supported(device)  # one kernel over all parameters; skips non-finite steps on the device
    opt_g = torch.optim.Adam(trainable, lr=opt.lr, betas=opt.betas, eps=opt.eps, fused=fused)
    opt_d = torch.optim.Adam(d_params, lr=opt.d_lr, betas=opt.betas, eps=opt.eps, fused=fused) if d_params else None
    # every parameter but the frozen VFM is averaged, frozen ones included (official G_ema update): a part that a
    # stage freezes (stage 2's encoder) converges to the raw weights the decoder trains against
    ema = EMA(g, rc.ema_halflife_images, rc.ema_rampup, exclude_prefixes=("vfm.",))  # starts from the previous EMA
    images_before = 0  # images of the previous stages: the EMA ramp-up continues from there (official cur_nimg)
    if cfg.init is not None:  # official resume_*: raw G from raw G, D from D
        images_before, notes = load_stage(cfg.init, g, discriminators)
        for note in notes:
            dist_utils.print0(f"note: {note}")

    # ---- resume
    data_state, guard_state, discriminator_guard_state = None, {}, {}
    ckpt = run.resume()
    if ckpt is not None:
        load_state_strict(g, ckpt.model, ckpt.path / "model.safetensors", optional_prefixes=("vfm.",))
        load_state_strict(ema.model, ckpt.ema, ckpt.path / "ema.safetensors", optional_prefixes=("vfm.",))
        disc_state = upgrade_spectral_norm_keys(ckpt.state["disc"])  # checkpoints of the parametrization era
        load_state_strict(d_modules, disc_state, ckpt.path / "state.safetensors")
        opt_g.load_state_dict(ckpt.state["opt_g"])
        if opt_d is not None:
            opt_d.load_state_dict(ckpt.state["opt_d"])
        images_before = int(run.counters.pop("images_before_stage", images_before))
        guard_state = ckpt.state.get("safe_loss", {})
        discriminator_guard_state = ckpt.state.get("safe_loss_d", {})  # absent in older checkpoints
        data_state = ckpt.rank_state["data"]

    # fp16 needs loss scaling (bf16 and fp32 do not); the scalers' state is small and rebuilt on resume
    scaler_g = torch.amp.GradScaler(device.type) if rc.precision == "fp16" else None
    scaler_d = torch.amp.GradScaler(device.type) if rc.precision == "fp16" and opt_d is not None else None
    skips = SkipCounter()
    stream = DataStream(cfg.data, run.micro, rank=run.rank, world=run.world, state=data_state, skips=skips)
    losses = TokenizerObjective(cfg, g, d, p, lpips, autocast_factory(rc.precision, device))
    losses.scalars = run.scalars  # the run reads them back when it logs
    if losses.guard is not None:
        losses.guard.load_state_dict(guard_state, device)
        losses.discriminator_guard.load_state_dict(discriminator_guard_state, device)
    fixed: list[torch.Tensor] = []  # rank 0's first inputs: the grid's reconstructions

    def save() -> None:
        run.manager.save(
            run.step,
            images_seen=run.images,
            model=_without_vfm(g.state_dict()),
            ema=_without_vfm(ema.state_dict()),
            state={
                "disc": d_modules.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict() if opt_d is not None else {},
                "counters": {**run.counters, "images_before_stage": images_before},
                "safe_loss": losses.guard.state_dict() if losses.guard is not None else {},
                "safe_loss_d": losses.discriminator_guard.state_dict() if losses.guard is not None else {},
            },
            rank_state={"data": stream.state_dict(), "rng": capture_rng_state()},
            meta={"config": config_to_dict(cfg)},
        )

    def grid(path: Path) -> None:
        if fixed:
            _reconstruction_grid(ema.model, fixed[0], path)

    if run.evaluator is None and cfg.eval.enabled:  # the recipe's `eval:` section (held-out reconstructions)
        run.evaluator = build_evaluator(cfg.eval, run.dir, kind="tokenizer", device=device)
    run.begin(
        model=g,
        ema=ema,
        dataset_size=_dataset_size(stream),
        save=save,
        grid=grid,
        loss_key="loss/g",
        skip_keys=("skipped_g", "skipped_d"),
        stop_label="non-finite generator steps (or safe-loss rejections)",
        images_before=images_before,
        trainable_parameters=sum(t.numel() for t in trainable) + sum(t.numel() for t in d_params),
    )

    # ---- the step body: a discriminator step, then a generator step
    size = lambda b: b["n"]  # noqa: E731
    no_d_step = torch.ones((), device=device)
    while run.running:
        losses.generator.manual_seed(derive_seed(rc.seed, "tokenizer-step", run.step, run.rank))
        losses.images_seen = run.images
        batches = []
        for _ in range(run.accum):
            batch = next(stream)
            batches.append({"x": to_float01(batch["image"]).to(device), "n": len(batch["label"])})
        if not fixed and run.rank == 0:
            fixed.append(batches[0]["x"][:8].clone())
        res_d = None
        if opt_d is not None:
            g.train()
            d_modules.requires_grad_(True)
            res_d = optimizer_step(
                d_modules,
                opt_d,
                batches,
                losses.discriminator,
                batch_size_of=size,
                params=d_params,
                all_reduce_grads=True,
                scaler=scaler_d,
                accepted=losses.discriminator_guard.step_accepted if losses.discriminator_guard else None,
            )
            d_modules.requires_grad_(False)
        res_g = optimizer_step(
            g,
            opt_g,
            batches,
            losses.generator_loss,
            batch_size_of=size,
            params=trainable,
            all_reduce_grads=True,
            scaler=scaler_g,
            accepted=losses.guard.step_accepted if losses.guard is not None else None,  # all dropped: no step
        )
        # a fill kernel, not a copy from the host: the count joins the device queue without a synchronisation
        counted = torch.full((), sum(b["n"] for b in batches), dtype=torch.int64, device=device)
        run.end_step(
            skips={"skipped_g": res_g.applied_t, "skipped_d": res_d.applied_t if res_d else no_d_step},
            images_t=counted,
            record=lambda res_g=res_g: {"grad_norm_g": res_g.grad_norm, "skipped_images": skips.as_dict()},
        )
    summary = run.finish(
        export=lambda path: export_stage(path, g, ema.model, discriminators, images_before + run.images)
    )
    return {**summary, "images_total": images_before + run.images, "skipped_images": skips.as_dict()}


def _dataset_size(stream: DataStream) -> int | None:
    try:
        return len(stream.dataset)
    except TypeError:  # an iterable of shards has no length
        return None


@torch.no_grad()
def _reconstruction_grid(model: VFMVAE, images01: torch.Tensor, path: Path) -> None:
    """Inputs beside reconstructions (posterior mean) of a fixed batch."""
    from vfmvae.vis import save_grid

    model.eval()
    recon = (model(images01) * 0.5 + 0.5).clamp(0, 1).cpu()
    pairs = torch.stack([t for pair in zip(images01.cpu(), recon) for t in pair])
    save_grid(pairs, path, nrow=min(8, len(pairs)))
