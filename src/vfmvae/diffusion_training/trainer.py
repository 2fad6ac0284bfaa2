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

import functools
import json
import math
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from vfmvae import distributed as dist_utils
from vfmvae.checkpoint.atomic import atomic_write_text
from vfmvae.config import ConfigError, config_from_dict, config_to_dict
from vfmvae.data.sampler import ResumableSampler
from vfmvae.diffusion import DiffusionTransformer, DiTConfig, diffusion_config
from vfmvae.diffusion.transport import TransportConfig
from vfmvae.diffusion_training.config import DiffusionOptimConfig, DiffusionTrainConfig
from vfmvae.diffusion_training.draws import StepDraws, global_rows
from vfmvae.diffusion_training.objective import DiffusionObjective
from vfmvae.diffusion_training.start import load_start
from vfmvae.latents import LatentDataset
from vfmvae.latents.cache import MAX_CLASSES
from vfmvae.latents.stats import LatentStats
from vfmvae.sampling.classes import write_class_names
from vfmvae.sampling.pipeline import SAMPLER_FILE, VFMVAEPipeline
from vfmvae.tokenizer import VFMVAE
from vfmvae.training import EMA, fused_optimizer_supported, optimizer_step
from vfmvae.training.compile import compile_diffusion
from vfmvae.training.online_eval import build_evaluator
from vfmvae.training.run import Evaluator, TrainingRun
from vfmvae.training.run_log import autocast_factory, scalars_to_floats
from vfmvae.training.state import CheckpointState, restore
from vfmvae.vis import save_grid

__all__ = [
    "build_model",
    "check_cache_serves_model",
    "export_pipeline_folder",
    "learning_rate_schedule",
    "make_optimizer",
    "train_diffusion",
    "training_loop",
]


def build_model(cfg: DiffusionTrainConfig, dataset: LatentDataset) -> DiffusionTransformer:
    """The recipe's architecture, sized to the cache unless the recipe says otherwise."""
    if cfg.model.init is not None:
        return DiffusionTransformer.from_pretrained(cfg.model.init)
    channels, height, width = dataset.manifest["latent_shape"]
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
    defaults = {"in_channels": channels, "input_size": height, "num_classes": highest + 1}
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
    if (model_cfg.in_channels, model_cfg.input_size) != (channels, height):
        raise ConfigError(
            f"model.overrides: the model takes {model_cfg.in_channels}x{model_cfg.input_size}x"
            f"{model_cfg.input_size} latents but the cache {cfg.data.cache} holds {channels}x{height}x{width}"
        )
    return DiffusionTransformer(model_cfg)


def train_diffusion(
    cfg: DiffusionTrainConfig, resume: str = "auto", progress: bool = True, evaluator: Evaluator | None = None
) -> dict[str, Any]:
    """Run (or continue) a diffusion training run. Returns a summary; the EMA model is exported to RUN/export as a
    pipeline folder (DiffusionTransformer + latent_stats.json + sampler.json)."""
    with TrainingRun.open(cfg.run, cfg, kind="diffusion", resume=resume, progress=progress, evaluator=evaluator) as run:
        return training_loop(cfg, run)


def training_loop(cfg: DiffusionTrainConfig, run: TrainingRun) -> dict[str, Any]:
    """The run in the phases of NVlabs/edm2's training_loop; `run` owns the folder, cadences and records."""
    device, seed, batch_size = run.device, cfg.run.seed, cfg.run.batch_size

    # ---- setup: data, model, optimizer, EMA, and what a checkpoint holds
    dataset = LatentDataset(cfg.data.cache, flip=cfg.data.flip, seed=seed)
    torch.manual_seed(seed)
    model = build_model(cfg, dataset).to(device)
    check_cache_serves_model(cfg, dataset, model.config)
    model.gradient_checkpointing = cfg.run.gradient_checkpointing
    optimizer = make_optimizer(cfg.optim, model, device)
    ema = EMA(model, cfg.run.ema_halflife_images, cfg.run.ema_rampup)
    state = CheckpointState(model=model, ema=ema, shared={"opt": optimizer})

    # ---- resume (or, on a later stage's first run, start from the earlier stage: diffusion_training/start.py)
    checkpoint = run.resume()
    if checkpoint is None and cfg.start_from is not None:
        checkpoint = load_start(cfg.start_from)
        run.step, run.images = checkpoint.step, checkpoint.images_seen
        dist_utils.print0(f"starting from {checkpoint.path} (step {run.step}, {run.images:,} images)")
    restore(state, checkpoint)

    # ---- what the loop runs: the network (unused heads frozen, DDP, compiled), data, the loss, grids, evaluation
    net = _distributed(_freeze_unused_heads(model, cfg.transport), device)
    if cfg.run.compile:
        compile_diffusion(model)  # regional, in place: the blocks compile once, fullgraph (training/compile.py)
    scaler = torch.amp.GradScaler(device.type) if cfg.run.precision == "fp16" else None
    loader = _latent_loader(dataset, cfg, run)
    objective = DiffusionObjective(model.config, cfg.transport, autocast_factory(cfg.run.precision, device))
    objective.scalars = run.scalars  # the run reads them back when it reports
    generator = torch.Generator(device=device)
    stats = dataset.stats  # the cache's, with its tokenizer's digest: `sample` checks the tokenizer against it
    grids = _PipelineGrid(cfg, dataset, ema.model, stats)
    export = functools.partial(export_pipeline_folder, cfg=cfg, dataset=dataset, model=ema.model, stats=stats)
    if run.evaluator is None and cfg.eval.enabled:  # the recipe's `eval:` section (sample FID against eval.ref)
        run.evaluator = _evaluator(cfg, run, dataset, export)
    run.start(
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        dataset_size=len(dataset),
        skip_counters=("skipped_steps",),
        stop_label="non-finite steps",
    )

    # ---- loop: one optimizer step over this rank's micro-batches, with the step's draws
    while run.running:
        lr = learning_rate_schedule(cfg.optim, run.images + batch_size)
        for group in optimizer.param_groups:
            group["lr"] = lr
        draws = StepDraws.draw(
            run.step,
            seed=seed,
            batch_size=batch_size,
            transport=cfg.transport,
            model=model.config,
            posterior=cfg.data.posterior_draws,
            generator=generator,
        )
        batches = [_micro_batch(next(loader), draws, run, m, device) for m in range(run.accum)]
        # evaluate the loss and accumulate its gradients over the micro-batches, then step
        model.train()
        result = optimizer_step(
            net, optimizer, batches, objective, batch_size_of=_labels, grad_clip=cfg.optim.grad_clip, scaler=scaler
        )
        # maintain EMA: a skipped step leaves it as it is, without a host read; the ramp-up counts the images before
        # this batch (the official cur_nimg at the EMA update)
        ema.update(model, run.images_total, batch_size, applied=result.applied_t)
        run.count_step({"skipped_steps": result.applied_t})
        # report / evaluate / checkpoint, when due
        if run.report_due:
            run.report({"grad_norm": result.grad_norm_t, "lr": lr})
        if run.grid_due:
            grids.save(run.grid_path())
        run.evaluate(ema.model)
        if run.checkpoint_due:
            run.save(state)

    # ---- finish: the last checkpoint and the export
    summary = run.finish(state, export=export)
    return {**summary, "final": scalars_to_floats(run.scalars)}


def learning_rate_schedule(optim: DiffusionOptimConfig, images: int) -> float:
    """The learning rate of the step that brings the run to `images` images: a linear warm-up over
    `optim.warmup_images`, then constant (NVlabs/edm2's learning_rate_schedule without its decay)."""
    if not optim.warmup_images:
        return optim.lr
    return optim.lr * min(1.0, images / optim.warmup_images)


def make_optimizer(optim: DiffusionOptimConfig, model: nn.Module, device: torch.device) -> torch.optim.AdamW:
    """AdamW. The fused kernel where torch has it: one pass over all parameters instead of a loop of small kernels
    (5x faster on CPU too), and it can skip a non-finite step on the device (found_inf), so the step needs no host
    synchronisation."""
    return torch.optim.AdamW(
        model.parameters(),
        lr=optim.lr,
        betas=optim.betas,
        weight_decay=optim.weight_decay,
        eps=optim.eps,
        fused=fused_optimizer_supported(device),
    )


def check_cache_serves_model(cfg: DiffusionTrainConfig, dataset: LatentDataset, model_cfg: DiTConfig) -> None:
    """The recipe's losses need what the cache and the model have: VFM features, posterior moments, a projector, a
    class token."""
    transport = cfg.transport
    if (transport.align_weight or model_cfg.class_token_dim) and not dataset.has_vfm_features:
        raise ConfigError(
            f"transport.align_weight / a REG model need VFM features, but {cfg.data.cache} has none; "
            "re-cache with `vfmvae cache-latents ... --vfm-features dinov2-base`"
        )
    if cfg.data.posterior_draws and not dataset.has_moments:
        raise ConfigError(
            f"data.posterior_draws needs a cache of posterior moments, but {cfg.data.cache} has none; "
            "re-cache with `vfmvae cache-latents ... --moments` or set data.posterior_draws=false"
        )
    if transport.align_weight and not model_cfg.align_dims:
        raise ConfigError(
            f"transport.align_weight > 0 but {cfg.model.arch} has no projector (model.overrides.align_dims)"
        )
    if transport.cls_weight and not model_cfg.class_token_dim:
        raise ConfigError(f"transport.cls_weight > 0 but {cfg.model.arch} has no class token (a reg-sit model)")


def _freeze_unused_heads(model: DiffusionTransformer, transport: TransportConfig) -> DiffusionTransformer:
    """A head whose loss weight is 0 (projectors without alignment loss, REG's class-token output without its loss)
    never gets a gradient. Frozen before DDP wraps the model: DDP waits for a gradient of every parameter that
    requires one, and an output that is returned but unused never delivers it (find_unused_parameters cannot see
    that). Optimizers skip such parameters anyway (their .grad stays None), so training is unchanged."""
    if model.config.align_dims and not transport.align_weight:
        model.projectors.requires_grad_(False)
    if model.config.class_token_dim and not transport.cls_weight:
        model.final_layer.linear_cls.requires_grad_(False)
    return model


def _distributed(model: nn.Module, device: torch.device) -> nn.Module:
    if not dist_utils.is_distributed():
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _latent_loader(dataset: LatentDataset, cfg: DiffusionTrainConfig, run: TrainingRun) -> Iterator[dict[str, Any]]:
    """This rank's micro-batches, in the order a run of any length and any number of processes reads them; a
    resumed run starts at its global position."""
    sampler = ResumableSampler(
        len(dataset), rank=run.rank, world=run.world, seed=cfg.run.seed, start=run.step * cfg.run.batch_size
    )
    return iter(
        DataLoader(
            dataset,
            batch_size=run.micro,
            sampler=sampler,
            num_workers=cfg.data.num_workers,
            pin_memory=run.device.type == "cuda",
            persistent_workers=cfg.data.num_workers > 0,
        )
    )


def _micro_batch(
    batch: dict[str, Any], draws: StepDraws, run: TrainingRun, index: int, device: torch.device
) -> dict[str, Any]:
    """A micro-batch on the device with its rows of the step's draws."""
    batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
    batch["draws"] = draws.rows_of(global_rows(run.rank, run.world, index, run.micro, len(batch["label"]), device))
    return batch


def _labels(batch: dict[str, Any]) -> int:
    return len(batch["label"])


def _evaluator(cfg: DiffusionTrainConfig, run: TrainingRun, dataset: LatentDataset, export) -> Evaluator:
    return build_evaluator(
        cfg.eval,
        run.dir,
        kind="diffusion",
        device=run.device,
        tokenizer=cfg.tokenizer or dataset.manifest["tokenizer"],
        latent_stats=dataset.stats,
        preset=cfg.sample_preset,
        save_best=lambda model, path: export(path, model=model),
    )


def export_pipeline_folder(
    path: Path, *, cfg: DiffusionTrainConfig, dataset: LatentDataset, model: DiffusionTransformer, stats: LatentStats
) -> None:
    """`model` as a pipeline folder: the model, latent_stats.json (with absolute paths of the tokenizer and the cache:
    `sample` reads them from any working directory) and sampler.json (the recipe's preset)."""
    model.save_pretrained(path)
    tokenizer = cfg.tokenizer or dataset.manifest["tokenizer"]
    replace(stats, tokenizer=_absolute(tokenizer), cache=_absolute(cfg.data.cache)).save(path)
    atomic_write_text(path / SAMPLER_FILE, json.dumps({"preset": cfg.sample_preset}) + "\n")
    write_class_names(path, dataset.manifest.get("class_names"))  # `vfmvae sample --classes NAME`


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
        pipe, run = self._load(), self.cfg.run
        if pipe is None:
            return
        labels = torch.arange(run.grid_count) % self.model.config.num_classes
        images = pipe(labels, seed=run.seed, steps=run.grid_steps, cfg_scale=run.grid_cfg)
        save_grid(images.float().cpu(), path, nrow=int(math.ceil(math.sqrt(run.grid_count))))
