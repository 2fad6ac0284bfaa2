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
from vfmvae.data import DataStream, SkipCounter, to_float01
from vfmvae.evaluation.image_metrics import load_lpips
from vfmvae.seeding import derive_seed
from vfmvae.tokenizer import VFMVAE
from vfmvae.tokenizer_training.config import LossConfig, OptimConfig, RunConfig, TokenizerTrainConfig
from vfmvae.tokenizer_training.discriminators import MultiscalePatchGAN, ProjectedDiscriminator
from vfmvae.tokenizer_training.handoff import export_stage, load_stage
from vfmvae.tokenizer_training.objective import TokenizerObjective
from vfmvae.tokenizer_training.precision import use_official_precision
from vfmvae.tokenizer_training.spectral_norm import upgrade_spectral_norm_keys
from vfmvae.tokenizer_training.stages import select_trainable
from vfmvae.training import EMA, StepResult, fused_optimizer_supported, optimizer_step
from vfmvae.training.compile import compile_tokenizer
from vfmvae.training.online_eval import build_evaluator
from vfmvae.training.run import Evaluator, TrainingRun
from vfmvae.training.run_log import autocast_factory
from vfmvae.training.state import CheckpointState, OnDevice, restore
from vfmvae.vis import save_grid

__all__ = [
    "build_discriminators",
    "build_generator",
    "discriminator_step",
    "generator_step",
    "make_optimizers",
    "train_tokenizer",
    "training_loop",
]


def build_generator(cfg: TokenizerTrainConfig) -> VFMVAE:
    """The previous stage's export (`init`), or a new model (`model`) around its VFM (`model.vfm`) with pretrained
    weights. A VF loss needs the VF projection: a new model is created with one; an export without one (a converted
    checkpoint that had none) is rebuilt with a new one, every other weight kept."""
    needs_vf = cfg.loss.vf > 0
    if cfg.init is not None:
        model = VFMVAE.from_pretrained(cfg.init)
        if needs_vf and model.vf_proj is None:
            with_vf = VFMVAE(replace(model.config, vf_projection=True), prebuilt_vfm=model.vfm)
            _load_all_but(with_vf, model.state_dict(), new="vf_proj.")
            model = with_vf
    else:
        model = VFMVAE(replace(cfg.model, vf_projection=cfg.model.vf_projection or needs_vf))
    if needs_vf and -1 not in model.config.vfm.layers:
        where = f"the VFM taps of {cfg.init}" if cfg.init is not None else "model.vfm.layers"
        raise ValueError(f"loss.vf > 0 needs the final VFM layer (-1) among {where} ({list(model.config.vfm.layers)})")
    return model


def _load_all_but(module: nn.Module, state: dict[str, torch.Tensor], *, new: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith(new)] + list(unexpected)
    if bad:
        raise RuntimeError(f"cannot add {new.rstrip('.')} to the model: mismatched keys {bad[:8]}")


def train_tokenizer(
    cfg: TokenizerTrainConfig, resume: str = "auto", progress: bool = True, evaluator: Evaluator | None = None
) -> dict[str, Any]:
    """Run (or continue) one training stage. Returns a summary; the stage is exported to RUN/export (the EMA
    tokenizer, plus the raw generator and the discriminators that the next stage starts from, see handoff.py)."""
    with TrainingRun.open(cfg.run, cfg, kind="tokenizer", resume=resume, progress=progress, evaluator=evaluator) as run:
        return training_loop(cfg, run)


def training_loop(cfg: TokenizerTrainConfig, run: TrainingRun) -> dict[str, Any]:
    """One stage in the phases of NVlabs/edm2's training_loop; `run` owns the folder, cadences and records."""
    device, seed = run.device, cfg.run.seed

    # ---- setup: generator, discriminators, LPIPS, optimizers, EMA, and what a checkpoint holds
    torch.manual_seed(seed)
    generator = build_generator(cfg).to(device)
    if cfg.run.precision == "official":
        use_official_precision(generator)  # float32, float16 in the last synthesis blocks (precision.py)
    trainable = select_trainable(generator, cfg.stage)
    projected, patchgan = build_discriminators(cfg, generator, device)
    discriminators = _trained_parts(projected, patchgan)  # the hand-off's names; the DINO backbone stays frozen
    heads = nn.ModuleList(discriminators.values())  # what the D step trains
    lpips = _lpips(cfg.loss, device)
    if cfg.run.compile:
        compile_tokenizer(generator, projected, patchgan, lpips)  # regional: repeated blocks, fullgraph (compile.py)
    opt_g, opt_d = make_optimizers(cfg.optim, trainable, list(heads.parameters()), device)
    # every parameter but the frozen VFM is averaged, frozen ones included (official G_ema update): a part that a
    # stage freezes (stage 2's encoder) converges to the raw weights the decoder trains against
    ema = EMA(generator, cfg.run.ema_halflife_images, cfg.run.ema_rampup, exclude_prefixes=(VFMVAE.frozen_prefix,))
    objective = TokenizerObjective(
        cfg, generator, projected, patchgan, lpips, autocast_factory(cfg.run.precision, device)
    )
    objective.scalars = run.scalars  # the run reads them back when it reports
    shared = {"disc": heads, "opt_g": opt_g, "opt_d": opt_d, "safe_loss": OnDevice.wrap(objective.guard, device)}
    shared["safe_loss_d"] = OnDevice.wrap(objective.discriminator_guard, device)  # absent in older checkpoints
    state = CheckpointState(model=generator, ema=ema, shared=shared, frozen_prefix=VFMVAE.frozen_prefix)
    # images of the previous stages: the EMA ramp-up continues from there (official cur_nimg)
    run.images_before = _continue_stage(cfg.init, generator, discriminators) if cfg.init is not None else 0

    # ---- resume: weights, optimizers, safe-loss references; the data stream continues from its position
    checkpoint = run.resume()
    if checkpoint is not None and "disc" in checkpoint.state:  # torch's spectral-norm parametrization: new keys
        checkpoint.state["disc"] = upgrade_spectral_norm_keys(checkpoint.state["disc"])
    restore(state, checkpoint)
    skips = SkipCounter()
    stream = state.per_rank["data"] = _data_stream(cfg, run, checkpoint, skips)
    # fp16 needs loss scaling (bf16 and fp32 do not); the scalers' state is small and rebuilt on resume
    scaler_g, scaler_d = _grad_scaler(cfg.run, device), _grad_scaler(cfg.run, device) if opt_d is not None else None
    if run.evaluator is None and cfg.eval.enabled:  # the recipe's `eval:` section (held-out reconstructions)
        run.evaluator = build_evaluator(cfg.eval, run.dir, kind="tokenizer", device=device)
    run.start(
        trainable_parameters=sum(p.numel() for p in trainable) + sum(p.numel() for p in heads.parameters()),
        dataset_size=_dataset_size(stream),
        skip_counters=("skipped_g", "skipped_d"),
        stop_label="non-finite generator steps (or safe-loss rejections)",
        loss_key="loss/g",
    )

    # ---- loop: a discriminator step, then a generator step, per global batch
    grid = _ReconstructionGrid()  # of rank 0's first inputs
    no_d_step = torch.ones((), device=device)
    while run.running:
        objective.generator.manual_seed(derive_seed(seed, "tokenizer-step", run.step, run.rank))
        objective.images_seen = run.images
        batches = [_on_device(next(stream), device) for _ in range(run.accum)]
        grid.remember(batches[0]["x"], run.rank)
        # evaluate each loss and accumulate its gradients over the micro-batches, then step: D, then G
        applied_d = discriminator_step(generator, heads, opt_d, batches, objective, scaler_d) if opt_d else no_d_step
        result = generator_step(generator, trainable, opt_g, batches, objective, scaler_g)
        # maintain EMA: a skipped step leaves it as it is, without a host read; the ramp-up counts the images before
        # this batch (the official cur_nimg at the G_ema update)
        ema.update(generator, run.images_total, cfg.run.batch_size, applied=result.applied_t)
        run.count_step({"skipped_g": result.applied_t, "skipped_d": applied_d}, images_t=_images_in(batches, device))
        # report / evaluate / checkpoint, when due
        if run.report_due:
            run.report({"grad_norm_g": result.grad_norm_t, "skipped_images": skips.as_dict()})
        if run.grid_due:
            grid.save(ema.model, run.grid_path())
        run.evaluate(ema.model)
        if run.checkpoint_due:
            run.save(state)

    # ---- finish: the last checkpoint and the export (the EMA tokenizer, and the next stage's hand-off)
    summary = run.finish(
        state, export=lambda path: export_stage(path, generator, ema.model, discriminators, run.images_total)
    )
    return {**summary, "images_total": run.images_total, "skipped_images": skips.as_dict()}


# gradients averaged over micro-batches by their images and over ranks by hand (no DDP: the adaptive VF weight
# needs torch.autograd.grad inside the loss)
_per_image = {"batch_size_of": lambda batch: batch["n"], "all_reduce_grads": True}


def generator_step(
    generator: VFMVAE,
    trainable: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    batches: list[dict[str, Any]],
    objective: TokenizerObjective,
    scaler: torch.amp.GradScaler | None,
) -> StepResult:
    """One G step over the micro-batches. The safe-loss guard zeroes each micro-batch it drops and vetoes the step
    when it dropped all of them."""
    guard = objective.guard
    return optimizer_step(
        generator,
        optimizer,
        batches,
        objective.generator_loss,
        **_per_image,
        params=trainable,
        scaler=scaler,
        accepted=guard.step_accepted if guard is not None else None,
    )


def discriminator_step(
    generator: VFMVAE,
    heads: nn.ModuleList,
    optimizer: torch.optim.Optimizer,
    batches: list[dict[str, Any]],
    objective: TokenizerObjective,
    scaler: torch.amp.GradScaler | None,
) -> torch.Tensor:
    """One D step over the micro-batches (the fakes made without gradients; micro-batches dropped and the step vetoed
    by the discriminator's safe-loss guard as in `generator_step`); its `applied_t`."""
    generator.train()
    heads.requires_grad_(True)
    params = list(heads.parameters())
    guard = objective.discriminator_guard
    result = optimizer_step(
        heads,
        optimizer,
        batches,
        objective.discriminator,
        **_per_image,
        params=params,
        scaler=scaler,
        accepted=guard.step_accepted if guard is not None else None,
    )
    heads.requires_grad_(False)
    return result.applied_t


def build_discriminators(
    cfg: TokenizerTrainConfig, generator: VFMVAE, device: torch.device
) -> tuple[ProjectedDiscriminator | None, MultiscalePatchGAN | None]:
    """The projected DINO discriminator (loss.gan) and the multiscale PatchGAN (loss.patchgan or
    loss.feature_matching), each None when its loss is off."""
    disc = cfg.disc
    projected = patchgan = None
    if cfg.loss.gan:
        projected = ProjectedDiscriminator(
            disc.backbone,
            disc.weights,
            disc.input_size,
            disc.taps,
            disc.backbone_kwargs,
            disc.diffaug,
            resize_mode=generator.vfm.adapter.resize_mode,  # the VFM's mode, as the official
        ).to(device)
    if cfg.loss.patchgan or cfg.loss.feature_matching:
        patchgan = MultiscalePatchGAN(disc.patchgan_ndf).to(device)
    return projected, patchgan


def _trained_parts(
    projected: ProjectedDiscriminator | None, patchgan: MultiscalePatchGAN | None
) -> dict[str, nn.Module]:
    """The discriminator parts the D step trains, by the names the stage hand-off stores them under."""
    parts = {"projected": projected.heads if projected is not None else None, "patchgan": patchgan}
    return {name: module for name, module in parts.items() if module is not None}


def make_optimizers(
    optim: OptimConfig, generator_params: list[nn.Parameter], discriminator_params: list[nn.Parameter], device
) -> tuple[torch.optim.Adam, torch.optim.Adam | None]:
    """Adam for G and (when there is a discriminator) for D. Fused where torch has the kernel: one kernel over all
    parameters, and a non-finite step is skipped on the device."""
    fused = fused_optimizer_supported(device)
    opt_g = torch.optim.Adam(generator_params, lr=optim.lr, betas=optim.betas, eps=optim.eps, fused=fused)
    opt_d = (
        torch.optim.Adam(discriminator_params, lr=optim.d_lr, betas=optim.betas, eps=optim.eps, fused=fused)
        if discriminator_params
        else None
    )
    return opt_g, opt_d


def _lpips(loss: LossConfig, device: torch.device) -> nn.Module | None:
    """The differentiable LPIPS network (lpips.LPIPS on [-1, 1]) when loss.lpips > 0."""
    if not loss.lpips:
        return None
    if loss.lpips_weights is None:
        raise ValueError("loss.lpips > 0 needs loss.lpips_weights (vgg16-397923af.pth); or set loss.lpips=0")
    return load_lpips(loss.lpips_weights, device)[0].net


def _continue_stage(init: str, generator: VFMVAE, discriminators: dict[str, nn.Module]) -> int:
    """The official resume_*: raw G from raw G, D from D (the EMA came with `init`); the images seen so far."""
    images_before, notes = load_stage(init, generator, discriminators)
    for note in notes:
        dist_utils.print0(f"note: {note}")
    return images_before


def _data_stream(cfg: TokenizerTrainConfig, run: TrainingRun, checkpoint, skips: SkipCounter) -> DataStream:
    """This rank's stream of micro-batches, continuing from the checkpoint's data position."""
    position = checkpoint.rank_state["data"] if checkpoint is not None else None
    return DataStream(cfg.data, run.micro, rank=run.rank, world=run.world, state=position, skips=skips)


def _grad_scaler(run: RunConfig, device: torch.device) -> torch.amp.GradScaler | None:
    return torch.amp.GradScaler(device.type) if run.precision == "fp16" else None


def _on_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {"x": to_float01(batch["image"]).to(device), "n": len(batch["label"])}


def _images_in(batches: list[dict[str, Any]], device: torch.device) -> torch.Tensor:
    """This rank's images of the step (a batch can be short by skipped files), as a device tensor: a fill kernel,
    not a copy from the host, so the count joins the device queue without a synchronisation."""
    return torch.full((), sum(b["n"] for b in batches), dtype=torch.int64, device=device)


def _dataset_size(stream: DataStream) -> int | None:
    try:
        return len(stream.dataset)
    except TypeError:  # an iterable of shards has no length
        return None


class _ReconstructionGrid:
    """Inputs beside reconstructions (posterior mean) of the EMA model, for a fixed batch: rank 0's first inputs."""

    def __init__(self) -> None:
        self.images01: torch.Tensor | None = None

    def remember(self, images01: torch.Tensor, rank: int) -> None:
        if self.images01 is None and rank == 0:
            self.images01 = images01[:8].clone()

    @torch.no_grad()
    def save(self, model: VFMVAE, path: Path) -> None:
        if self.images01 is None:
            return
        model.eval()
        recon = (model(self.images01) * 0.5 + 0.5).clamp(0, 1).cpu()
        pairs = torch.stack([t for pair in zip(self.images01.cpu(), recon) for t in pair])
        save_grid(pairs, path, nrow=min(8, len(pairs)))
