"""The diffusion training loop on a latent cache (LightningDiT / SiT / REPA / REG).

One optimizer step = `batch_size` cached latents over all ranks; the sampler hands out global positions
[step*B, (step+1)*B) in a (seed, epoch)-seeded order, so a resumed run reads exactly the items an
uninterrupted one would. The random draws of a step (times, noise, class-token noise, label drops) are made
for the whole global batch from a generator seeded by (seed, step), and each micro-batch takes the rows of its
own samples; so a run does not depend on the number of processes or on gradient accumulation (up to float
summation order), and with the full checkpoint (weights, EMA, AdamW, RNG) a resumed run reproduces the
uninterrupted one. Non-finite steps are skipped on every rank and counted; too many in a
row stop the run with its last good checkpoint intact.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vfmvae import distributed as dist_utils
from vfmvae.checkpoint import capture_rng_state, load_state_strict
from vfmvae.checkpoint.atomic import atomic_write_text
from vfmvae.config import ConfigError, config_from_dict, config_to_dict
from vfmvae.data.sampler import ResumableSampler
from vfmvae.diffusion import DiffusionTransformer, DiTConfig, diffusion_config, training_loss
from vfmvae.diffusion_training.config import DiffusionTrainConfig
from vfmvae.diffusion_training.draws import StepDraws, global_rows
from vfmvae.latents import LatentDataset, draw_posterior
from vfmvae.latents.stats import LatentStats
from vfmvae.sampling.classes import write_class_names
from vfmvae.sampling.pipeline import SAMPLER_FILE, VFMVAEPipeline
from vfmvae.training import EMA, fused_optimizer_supported, optimizer_step
from vfmvae.training.compile import compile_diffusion
from vfmvae.training.online_eval import build_evaluator
from vfmvae.training.run import Evaluator, TrainingRun
from vfmvae.training.run_log import autocast_factory, scalars_to_floats

__all__ = ["build_model", "train_diffusion", "align_targets"]

# Labels above this are taken for a damaged label file, not a class count (ImageNet-21k has 21,841 classes).
MAX_CLASSES = 100_000


def build_model(cfg: DiffusionTrainConfig, dataset: LatentDataset) -> DiffusionTransformer:
    """The recipe's architecture, sized to the cache unless the recipe says otherwise."""
    if cfg.model.init is not None:
        return DiffusionTransformer.from_pretrained(cfg.model.init)
    c, h, w = dataset.manifest["latent_shape"]
    labels = dataset.column("labels")
    lowest, highest = int(labels.min()), int(labels.max())
    if lowest < 0:
        raise ConfigError(
            f"data.cache {cfg.data.cache}: label {lowest} found; class-conditional training needs labels "
            ">= 0 (class folders, or a .cls member per sample in tar shards)"
        )
    if highest >= MAX_CLASSES and "num_classes" not in cfg.model.overrides:
        raise ConfigError(
            f"data.cache {cfg.data.cache}: label {highest:,} would make a {highest + 1:,}-class embedding; "
            f"labels are expected below {MAX_CLASSES:,} (set model.overrides.num_classes if this is meant)"
        )
    defaults = {"in_channels": c, "input_size": h, "num_classes": highest + 1}
    base = config_to_dict(diffusion_config(cfg.model.arch))
    try:
        model_cfg = config_from_dict(DiTConfig, {**base, **defaults, **cfg.model.overrides}, source="model.overrides")
    except ConfigError as err:
        raise ConfigError(f"{err} (the keys of model.overrides are DiTConfig fields)") from None
    if highest >= model_cfg.num_classes:
        raise ConfigError(
            f"data.cache {cfg.data.cache}: label {highest} is outside the model's "
            f"{model_cfg.num_classes} classes (model.overrides.num_classes)"
        )
    if (model_cfg.in_channels, model_cfg.input_size) != (c, h):
        raise ConfigError(
            f"model.overrides: the model takes {model_cfg.in_channels}x{model_cfg.input_size}x"
            f"{model_cfg.input_size} latents but the cache {cfg.data.cache} holds {c}x{h}x{w}"
        )
    return DiffusionTransformer(model_cfg)


def align_targets(
    model_cfg: DiTConfig, batch: dict[str, torch.Tensor]
) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
    """REPA/REG targets from cached VFM features: patch tokens on the model's token grid, preceded by the VFM
    class token for REG models (whose projector reads the class token too). A VFM grid that differs from the
    model's (e.g. 18x18 DINOv2 tokens for a 16x16 latent) is area-resampled to it."""
    feats, cls = batch.get("vfm_features"), batch.get("vfm_cls")
    if feats is None:
        return None, cls
    grid = model_cfg.grid
    b, n, d = feats.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"cached VFM features have {n} tokens, not a square grid")
    if side != grid:
        maps = feats.transpose(1, 2).reshape(b, d, side, side)
        feats = F.adaptive_avg_pool2d(maps, grid).flatten(2).transpose(1, 2)
    if model_cfg.class_token_dim:
        if cls is None:
            raise ValueError("REG models need the VFM class token; cache with a VFM that has one (e.g. dinov2-base)")
        feats = torch.cat([cls[:, None], feats], dim=1)
    return [feats] * len(model_cfg.align_dims), cls


def train_diffusion(
    cfg: DiffusionTrainConfig, resume: str = "auto", progress: bool = True, evaluator: Evaluator | None = None
) -> dict[str, Any]:
    """Run (or continue) a diffusion training run. Returns a summary; the EMA model is exported to RUN/export as a
    pipeline folder (DiffusionTransformer + latent_stats.json + sampler.json)."""
    with TrainingRun.open(cfg.run, cfg, kind="diffusion", resume=resume, progress=progress, evaluator=evaluator) as run:
        return _train_diffusion(cfg, run)


def _train_diffusion(cfg: DiffusionTrainConfig, run: TrainingRun) -> dict[str, Any]:
    device, rc, tc = run.device, cfg.run, cfg.transport

    # ---- build: data, model, optimizer, EMA
    dataset = LatentDataset(cfg.data.cache, flip=cfg.data.flip, seed=rc.seed)
    torch.manual_seed(rc.seed)
    model = build_model(cfg, dataset).to(device)
    mcfg = model.config
    if (tc.align_weight or mcfg.class_token_dim) and not dataset.has_vfm_features:
        raise ConfigError(
            f"transport.align_weight / a REG model need VFM features, but {cfg.data.cache} has none; "
            "re-cache with `vfmvae cache-latents ... --vfm-features dinov2-base`"
        )
    if cfg.data.posterior_draws and not dataset.has_moments:
        raise ConfigError(
            f"data.posterior_draws needs a cache of posterior moments, but {cfg.data.cache} has none; "
            "re-cache with `vfmvae cache-latents ... --moments` or set data.posterior_draws=false"
        )
    if tc.align_weight and not mcfg.align_dims:
        raise ConfigError(
            f"transport.align_weight > 0 but {cfg.model.arch} has no projector (model.overrides.align_dims)"
        )
    if tc.cls_weight and not mcfg.class_token_dim:
        raise ConfigError(f"transport.cls_weight > 0 but {cfg.model.arch} has no class token (a reg-sit model)")
    model.gradient_checkpointing = rc.gradient_checkpointing
    # the fused kernel: one pass over all parameters instead of a loop of small kernels (5x faster on CPU too),
    # and it can skip a non-finite step on the device (found_inf), so the step needs no host synchronisation
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        weight_decay=cfg.optim.weight_decay,
        eps=cfg.optim.eps,
        fused=fused_optimizer_supported(device),
    )
    ema = EMA(model, rc.ema_halflife_images, rc.ema_rampup)

    # ---- resume
    ckpt = run.resume()
    if ckpt is not None:
        load_state_strict(model, ckpt.model, ckpt.path / "model.safetensors")  # another architecture: one line
        ema.load_state_dict(ckpt.ema)
        opt.load_state_dict(ckpt.state["opt"])

    # A head whose loss weight is 0 (projectors without alignment loss, REG's class-token output without its loss)
    # never gets a gradient. Freeze it before DDP wraps the model: DDP waits for a gradient of every parameter that
    # requires one, and an output that is returned but unused never delivers it (find_unused_parameters cannot see
    # that). Optimizers skip such parameters anyway (their .grad stays None), so training is unchanged.
    if mcfg.align_dims and not tc.align_weight:
        model.projectors.requires_grad_(False)
    if mcfg.class_token_dim and not tc.cls_weight:
        model.final_layer.linear_cls.requires_grad_(False)
    net: nn.Module = model
    if dist_utils.is_distributed():
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if rc.compile:
        compile_diffusion(model)  # regional: the blocks compile once, fullgraph (training/compile.py)
    scaler = torch.amp.GradScaler(device.type) if rc.precision == "fp16" else None
    autocast = autocast_factory(rc.precision, device)
    sampler = ResumableSampler(
        len(dataset), rank=run.rank, world=run.world, seed=rc.seed, start=run.step * rc.batch_size
    )
    loader = iter(
        DataLoader(
            dataset,
            batch_size=run.micro,
            sampler=sampler,
            num_workers=cfg.data.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=cfg.data.num_workers > 0,
        )
    )
    generator = torch.Generator(device=device)
    stats = dataset.stats  # the cache's, with its tokenizer's digest: `sample` checks the tokenizer against it
    grids = _PipelineGrid(cfg, dataset, ema.model, stats)

    def save() -> None:
        run.manager.save(
            run.step,
            images_seen=run.images,
            model=model.state_dict(),
            ema=ema.state_dict(),
            state={"opt": opt.state_dict(), "counters": run.counters},
            rank_state={"rng": capture_rng_state()},
            meta={"config": config_to_dict(cfg)},
        )

    def export(path: Path) -> None:
        ema.model.save_pretrained(path)
        # absolute paths: `sample` reads them from any working directory
        replace(
            stats, tokenizer=_absolute(cfg.tokenizer or dataset.manifest["tokenizer"]), cache=_absolute(cfg.data.cache)
        ).save(path)
        atomic_write_text(path / SAMPLER_FILE, json.dumps({"preset": cfg.sample_preset}) + "\n")
        write_class_names(path, dataset.manifest.get("class_names"))  # `vfmvae sample --classes NAME`

    if run.evaluator is None and cfg.eval.enabled:  # the recipe's `eval:` section (sample FID against eval.ref)
        run.evaluator = build_evaluator(
            cfg.eval,
            run.dir,
            kind="diffusion",
            device=device,
            tokenizer=cfg.tokenizer or dataset.manifest["tokenizer"],
            latent_stats=stats,
            preset=cfg.sample_preset,
            save_best=lambda _model, path: export(path),
        )
    run.begin(
        model=model,
        ema=ema,
        dataset_size=len(dataset),
        save=save,
        grid=grids.save,
        loss_key="loss",
        skip_keys=("skipped_steps",),
        stop_label="non-finite steps",
    )

    # ---- the step body: one optimizer step over the micro-batches of this rank, with the step's draws
    def loss_fn(module: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        targets, cls = align_targets(mcfg, batch)
        d = batch["draws"]
        latents = batch["latents"]
        if d.posterior_eps is not None:  # a fresh posterior sample per step (REG's sample_posterior)
            latents = draw_posterior(latents, batch["latents_std"], d.posterior_eps)
        with autocast():
            terms = training_loss(
                module,
                latents,
                batch["label"],
                tc,
                t=d.t,
                noise=d.noise,
                cls_noise=d.cls_noise,
                drop_labels=d.drop,
                align_targets=targets if tc.align_weight else None,
                cls_target=cls if mcfg.class_token_dim else None,
            )
        for name in ("loss", "mse", "cosine", "align", "cls"):
            value = getattr(terms, name)
            if value is not None:
                run.scalars[f"loss/{name}" if name != "loss" else "loss"] = value.detach().mean()
        return terms.loss.mean()

    while run.running:
        draws = StepDraws.draw(
            run.step,
            seed=rc.seed,
            batch_size=rc.batch_size,
            transport=tc,
            model=mcfg,
            posterior=cfg.data.posterior_draws,
            generator=generator,
        )
        warmup = cfg.optim.warmup_steps
        lr = cfg.optim.lr * min(1.0, (run.step + 1) / warmup) if warmup else cfg.optim.lr
        for group in opt.param_groups:
            group["lr"] = lr
        batches = []
        for m in range(run.accum):
            batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in next(loader).items()}
            batch["draws"] = draws.rows_of(global_rows(run.rank, run.world, m, run.micro, len(batch["label"]), device))
            batches.append(batch)
        model.train()
        result = optimizer_step(
            net,
            opt,
            batches,
            loss_fn,
            batch_size_of=lambda b: len(b["label"]),
            grad_clip=cfg.optim.grad_clip,
            scaler=scaler,
        )
        # `record` is called inside end_step, before the next step rebinds `result` and `lr`
        run.end_step(
            skips={"skipped_steps": result.applied_t},
            record=lambda result=result, lr=lr: {"grad_norm": result.grad_norm, "lr": lr},
        )
    summary = run.finish(export=export)
    return {**summary, "final": scalars_to_floats(run.scalars)}


def _absolute(path: str | Path) -> str:
    return str(Path(path).resolve())


class _PipelineGrid:
    """Fixed-seed samples of the EMA model through `VFMVAEPipeline` (the sampler `vfmvae sample` uses, with the
    recipe's preset and the run's grid steps and guidance). The tokenizer is loaded once, on first use; if it
    cannot be loaded, grids are switched off for the run with one warning (a grid never stops training)."""

    def __init__(
        self, cfg: DiffusionTrainConfig, dataset: LatentDataset, model: DiffusionTransformer, stats: LatentStats
    ) -> None:
        self.cfg, self.dataset, self.model, self.stats = cfg, dataset, model, stats
        self.pipeline: VFMVAEPipeline | None = None
        self.disabled = False

    def _load(self) -> VFMVAEPipeline | None:
        from vfmvae.tokenizer import VFMVAE

        if self.pipeline is None and not self.disabled:
            try:
                tokenizer = VFMVAE.from_pretrained(
                    self.cfg.tokenizer or self.dataset.manifest["tokenizer"],
                    device=next(self.model.parameters()).device,
                )
            except Exception as err:
                warnings.warn(
                    f"sample grids disabled: cannot load the tokenizer ({err}); set `tokenizer:` in the recipe",
                    stacklevel=2,
                )
                self.disabled = True
                return None
            self.pipeline = VFMVAEPipeline(self.model, tokenizer, self.stats, preset=self.cfg.sample_preset)
        return self.pipeline

    @torch.no_grad()
    def save(self, path: Path) -> None:
        from vfmvae.vis import save_grid

        pipe, run = self._load(), self.cfg.run
        if pipe is None:
            return
        labels = torch.arange(run.grid_count) % self.model.config.num_classes
        images = pipe(labels, seed=run.seed, steps=run.grid_steps, cfg_scale=run.grid_cfg)
        save_grid(images.float().cpu(), path, nrow=int(math.ceil(math.sqrt(run.grid_count))))
