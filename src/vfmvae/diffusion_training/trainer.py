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
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vfmvae import distributed as dist_utils
from vfmvae.checkpoint import CheckpointManager, capture_rng_state, load_state_strict, restore_rng_state
from vfmvae.checkpoint.atomic import atomic_write_text
from vfmvae.config import ConfigError, config_from_dict, config_to_dict
from vfmvae.data.sampler import ResumableSampler
from vfmvae.diffusion import DiffusionTransformer, DiTConfig, diffusion_config, training_loss
from vfmvae.diffusion_training.config import DiffusionTrainConfig
from vfmvae.latents import LatentDataset, draw_posterior
from vfmvae.sampling.pipeline import SAMPLER_FILE
from vfmvae.training import EMA, fused_optimizer_supported, optimizer_step
from vfmvae.training.run_folder import claimed_run_folder, write_run_config
from vfmvae.training.run_log import RunLog, autocast_factory, peak_memory, scalars_to_floats

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
        raise ConfigError(f"data.cache {cfg.data.cache}: label {lowest} found; class-conditional training needs labels "
                          ">= 0 (class folders, or a .cls member per sample in tar shards)")
    if highest >= MAX_CLASSES and "num_classes" not in cfg.model.overrides:
        raise ConfigError(f"data.cache {cfg.data.cache}: label {highest:,} would make a {highest + 1:,}-class embedding; "
                          f"labels are expected below {MAX_CLASSES:,} (set model.overrides.num_classes if this is meant)")
    defaults = {"in_channels": c, "input_size": h, "num_classes": highest + 1}
    base = config_to_dict(diffusion_config(cfg.model.arch))
    try:
        model_cfg = config_from_dict(DiTConfig, {**base, **defaults, **cfg.model.overrides}, source="model.overrides")
    except ConfigError as err:
        raise ConfigError(f"{err} (the keys of model.overrides are DiTConfig fields)") from None
    if highest >= model_cfg.num_classes:
        raise ConfigError(f"data.cache {cfg.data.cache}: label {highest} is outside the model's "
                          f"{model_cfg.num_classes} classes (model.overrides.num_classes)")
    if (model_cfg.in_channels, model_cfg.input_size) != (c, h):
        raise ConfigError(f"model.overrides: the model takes {model_cfg.in_channels}x{model_cfg.input_size}x"
                          f"{model_cfg.input_size} latents but the cache {cfg.data.cache} holds {c}x{h}x{w}")
    return DiffusionTransformer(model_cfg)


def align_targets(model_cfg: DiTConfig, batch: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
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


def _batches(loader_iter, accum: int, micro: int, rank: int, world: int, device: torch.device) -> list[dict[str, Any]]:
    out = []
    for m in range(accum):
        batch = next(loader_iter)
        batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        # rank r holds global-batch rows r, r + W, r + 2W, ... (the sampler's order)
        batch["rows"] = rank + world * (m * micro + torch.arange(len(batch["label"]), device=device))
        out.append(batch)
    return out


class StepDraws:
    """All random draws of one optimizer step, for the whole global batch, from a (seed, step) generator."""

    def __init__(self, cfg: DiffusionTrainConfig, model_cfg: DiTConfig, device: torch.device) -> None:
        self.cfg, self.model_cfg, self.device = cfg, model_cfg, device
        self.generator = torch.Generator(device=device)

    def draw(self, step: int) -> None:
        from vfmvae.diffusion.transport import sample_time

        g, b, c = self.generator, self.cfg.run.batch_size, self.model_cfg
        g.manual_seed(self.cfg.run.seed * 1_000_003 + step)
        self.t = sample_time(b, self.cfg.transport, g, device=self.device)
        self.noise = torch.randn(b, c.in_channels, c.input_size, c.input_size, generator=g, device=self.device)
        self.cls_noise = torch.randn(b, c.class_token_dim, generator=g, device=self.device) if c.class_token_dim else None
        self.drop = torch.rand(b, generator=g, device=self.device) < c.class_dropout
        # drawn last, so that the other draws are the same with or without posterior moments
        self.posterior_eps = (torch.randn(b, c.in_channels, c.input_size, c.input_size, generator=g, device=self.device)
                              if self.cfg.data.posterior_draws else None)


def train_diffusion(cfg: DiffusionTrainConfig, resume: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Run (or continue) a diffusion training run. Returns a summary; the EMA model is exported to RUN/export."""
    dist_utils.init_distributed()
    # a run folder belongs to one run: locked and checked before anything is written into it
    with claimed_run_folder(cfg.run.dir, cfg, resume):
        return _train_diffusion(cfg, resume, progress)


def _train_diffusion(cfg: DiffusionTrainConfig, resume: str, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    device = dist_utils.init_distributed(device=cfg.run.device)  # the backend follows the device (NCCL / gloo)
    rank, world = dist_utils.rank(), dist_utils.world_size()
    run, tc = cfg.run, cfg.transport
    micro = run.micro_batch or run.batch_size // world
    if run.batch_size % (world * micro):
        raise ConfigError(f"run.batch_size {run.batch_size} is not a multiple of processes ({world}) x run.micro_batch ({micro})")
    accum = run.batch_size // (world * micro)
    run_dir = Path(run.dir)

    dataset = LatentDataset(cfg.data.cache, flip=cfg.data.flip, seed=run.seed)
    torch.manual_seed(run.seed)
    model = build_model(cfg, dataset).to(device)
    mcfg = model.config
    if (tc.align_weight or mcfg.class_token_dim) and not dataset.has_vfm_features:
        raise ConfigError(f"transport.align_weight / a REG model need VFM features, but {cfg.data.cache} has none; "
                          "re-cache with `vfmvae cache-latents ... --vfm-features dinov2-base`")
    if cfg.data.posterior_draws and not dataset.has_moments:
        raise ConfigError(f"data.posterior_draws needs a cache of posterior moments, but {cfg.data.cache} has none; "
                          "re-cache with `vfmvae cache-latents ... --moments` or set data.posterior_draws=false")
    if tc.align_weight and not mcfg.align_dims:
        raise ConfigError(f"transport.align_weight > 0 but {cfg.model.arch} has no projector (model.overrides.align_dims)")
    if tc.cls_weight and not mcfg.class_token_dim:
        raise ConfigError(f"transport.cls_weight > 0 but {cfg.model.arch} has no class token (a reg-sit model)")

    model.gradient_checkpointing = run.gradient_checkpointing
    # the fused kernel: one pass over all parameters instead of a loop of small kernels (5x faster on CPU too),
    # and it can skip a non-finite step on the device (found_inf), so the step needs no host synchronisation
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay,
                            eps=cfg.optim.eps, fused=fused_optimizer_supported(device))
    ema = EMA(model, halflife_images=run.batch_size * math.log(0.5) / math.log(run.ema_decay), rampup_ratio=None)
    manager = CheckpointManager(run_dir, keep=run.keep_checkpoints)
    step, counters = 0, {"skipped_steps": 0}
    if resume not in ("none", "fresh") and (resume != "auto" or manager.latest() is not None):
        ckpt = manager.load(None if resume == "auto" else resume)
        load_state_strict(model, ckpt.model, ckpt.path / "model.safetensors")  # another architecture: one line
        ema.load_state_dict(ckpt.ema)
        opt.load_state_dict(ckpt.state["opt"])
        counters = dict(ckpt.state["counters"])
        step = ckpt.step
        restore_rng_state(ckpt.rank_state["rng"])
        dist_utils.print0(f"resumed from {ckpt.path} (step {step})")
    if rank == 0:
        write_run_config(run_dir, cfg)

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
    if run.compile:
        net = torch.compile(net)
    scaler = torch.amp.GradScaler(device.type) if run.precision == "fp16" else None
    autocast = autocast_factory(run.precision, device)
    sampler = ResumableSampler(len(dataset), rank=rank, world=world, seed=run.seed, start=step * run.batch_size)
    loader = DataLoader(dataset, batch_size=micro, sampler=sampler, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=cfg.data.num_workers > 0)
    loader_iter = iter(loader)
    log = RunLog(run_dir, tensorboard=run.tensorboard, x_key="step") if rank == 0 else None
    draws = StepDraws(cfg, mcfg, device)
    grids = SampleGrid(cfg, dataset)
    scalars: dict[str, torch.Tensor] = {}  # device tensors, read back only at the logging interval

    def loss_fn(module: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        targets, cls = align_targets(mcfg, batch)
        rows = batch["rows"]
        labels = torch.where(draws.drop[rows], torch.full_like(batch["label"], mcfg.num_classes), batch["label"])
        latents = batch["latents"]
        if draws.posterior_eps is not None:  # a fresh posterior sample per step (REG's sample_posterior)
            latents = draw_posterior(latents, batch["latents_std"], draws.posterior_eps[rows])
        with autocast():
            terms = training_loss(module, latents, labels, tc, t=draws.t[rows], noise=draws.noise[rows],
                                  cls_noise=draws.cls_noise[rows] if draws.cls_noise is not None else None,
                                  align_targets=targets if tc.align_weight else None,
                                  cls_target=cls if mcfg.class_token_dim else None, drop_labels=False)
        for name in ("loss", "mse", "cosine", "align", "cls"):
            value = getattr(terms, name)
            if value is not None:
                scalars[f"loss/{name}" if name != "loss" else "loss"] = value.detach().mean()
        return terms.loss.mean()

    def save() -> None:
        manager.save(step, images_seen=step * run.batch_size, model=model.state_dict(), ema=ema.state_dict(),
                     state={"opt": opt.state_dict(), "counters": counters},
                     rank_state={"rng": capture_rng_state()}, meta={"config": config_to_dict(cfg)})

    bar = tqdm(total=run.total_steps, initial=step, desc="diffusion", unit="step", disable=not (progress and rank == 0))
    started, first_step = time.perf_counter(), step
    # skip counters live on the device and are read back at the sync points (logging, checkpoints, the end)
    skipped_t = torch.zeros((), device=device)      # skipped steps since the last sync point
    run_t = torch.zeros((), device=device)          # current run of consecutive skipped steps
    longest_t = torch.zeros((), device=device)      # longest such run since the last sync point
    while step < run.total_steps:
        draws.draw(step)
        lr = cfg.optim.lr * min(1.0, (step + 1) / cfg.optim.warmup_steps) if cfg.optim.warmup_steps else cfg.optim.lr
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        result = optimizer_step(net, opt, _batches(loader_iter, accum, micro, rank, world, device), loss_fn,
                                batch_size_of=lambda b: len(b["label"]), grad_clip=cfg.optim.grad_clip, scaler=scaler)
        skipped = 1.0 - result.applied_t
        skipped_t += skipped
        run_t = (run_t + 1.0) * skipped
        longest_t = torch.maximum(longest_t, run_t)
        step += 1
        ema.update(model, step * run.batch_size, run.batch_size, applied=result.applied_t)
        bar.update(1)
        log_now = step % run.log_every == 0 or step == run.total_steps
        if log_now or step % run.checkpoint_every == 0:
            # the one host synchronisation of the loop (every rank, so that every rank stops together)
            new_skips, longest = (int(v) for v in torch.stack([skipped_t, longest_t]).tolist())
            counters["skipped_steps"] += new_skips
            skipped_t.zero_()
            longest_t.copy_(run_t)
            if longest >= run.max_consecutive_nonfinite:
                raise RuntimeError(f"{longest} consecutive non-finite steps by step {step}; stopping. "
                                   f"The last good checkpoint is {manager.latest()}")
        if rank == 0 and log_now:
            elapsed = time.perf_counter() - started
            values = scalars_to_floats(scalars)
            record = {"step": step, **values, "grad_norm": result.grad_norm, "lr": lr, **counters,
                      "sec_per_step": elapsed / max(1, step - first_step), **peak_memory(device)}
            log.write(record)
            bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}")
        if rank == 0 and run.sample_every and (step % run.sample_every == 0 or step == run.total_steps):
            grids.save(ema.model, run_dir / "samples" / f"step-{step:08d}.png")
        if step % run.checkpoint_every == 0 and step < run.total_steps:
            save()
    bar.close()
    if log is not None:
        log.close()
    save()
    export = run_dir / "export"
    if rank == 0:
        ema.model.save_pretrained(export)
        stats = {"mean": dataset.manifest["mean"], "std": dataset.manifest["std"],
                 "tokenizer": _absolute(cfg.tokenizer or dataset.manifest["tokenizer"]),
                 "cache": _absolute(cfg.data.cache)}  # absolute: `sample` reads them from any working directory
        atomic_write_text(export / "latent_stats.json", json.dumps(stats, indent=2) + "\n")
        atomic_write_text(export / SAMPLER_FILE, json.dumps({"preset": cfg.sample_preset}) + "\n")
    dist_utils.barrier()
    return {"steps": step, "export": str(export), **counters, "final": scalars_to_floats(scalars)}


def _absolute(path: str | Path) -> str:
    return str(Path(path).resolve())


class SampleGrid:
    """Fixed-seed samples of the EMA model, decoded by the tokenizer. The tokenizer is loaded once, on first use;
    if it cannot be loaded, grids are switched off for the run with one warning (a grid never stops training)."""

    def __init__(self, cfg: DiffusionTrainConfig, dataset: LatentDataset) -> None:
        self.cfg, self.dataset = cfg, dataset
        self.tokenizer = None
        self.disabled = False

    def _load(self, device: torch.device):
        from vfmvae.tokenizer import VFMVAE

        if self.tokenizer is None and not self.disabled:
            try:
                self.tokenizer = VFMVAE.from_pretrained(self.cfg.tokenizer or self.dataset.manifest["tokenizer"],
                                                        device=device)
            except Exception as err:
                warnings.warn(f"sample grids disabled: cannot load the tokenizer ({err}); set `tokenizer:` in the recipe")
                self.disabled = True
        return self.tokenizer

    @torch.no_grad()
    def save(self, model: DiffusionTransformer, path: Path) -> None:
        from vfmvae.sampling import euler_ode
        from vfmvae.vis import save_grid

        run = self.cfg.run
        device = next(model.parameters()).device
        tokenizer = self._load(device)
        if tokenizer is None:
            return
        g = torch.Generator().manual_seed(run.seed)
        mcfg = model.config
        noise = torch.randn(run.sample_count, mcfg.in_channels, mcfg.input_size, mcfg.input_size, generator=g).to(device)
        labels = (torch.arange(run.sample_count) % mcfg.num_classes).to(device)
        cls_noise = torch.randn(run.sample_count, mcfg.class_token_dim, generator=g).to(device) if mcfg.class_token_dim else None
        model.eval()
        z = euler_ode(model, noise, labels, steps=run.sample_steps, cfg_scale=run.sample_cfg, cls_noise=cls_noise)
        images = tokenizer.decode(self.dataset.denormalize(z)).float().clamp(-1, 1) * 0.5 + 0.5
        save_grid(images.cpu(), path, nrow=int(math.ceil(math.sqrt(run.sample_count))))
