"""`vfmvae cache-latents`: encode a dataset into a latent cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from vfmvae.cli.common import image_side, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "cache-latents",
        help="encode a dataset into a latent cache for diffusion training",
        description="Encode images (a folder or tar shards) with a tokenizer into sharded safetensors: latents "
        "(posterior mean, or --sample), labels, optional horizontally flipped copies (--flip) and optional frozen-VFM "
        "patch features (--vfm-features NAME, for REPA/REG). OUT/cache.json holds the shard list and the per-channel "
        "mean/std that every loader applies. Resumable (re-run the same command); split across torchrun ranks.",
    )
    c.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder or Hub id")
    c.add_argument("--data", type=Path, required=True, help="image folder or tar shards")
    c.add_argument("--out", type=Path, required=True, help="cache folder (re-run the same command to resume)")
    c.add_argument("--flip", action="store_true", help="also cache the latents of the flipped images")
    c.add_argument(
        "--vfm-features",
        default=None,
        help="VFM registry name or folder (e.g. dinov2-base) whose tokens to cache as REPA/REG targets (default: none)",
    )
    c.add_argument(
        "--vfm-resolution",
        type=image_side,
        default=None,
        help="feed the VFM at this size in pixels (REPA/REG: 224 for DINOv2-B/14 -> 16x16 tokens); "
        "default: its registry scale",
    )
    c.add_argument(
        "--sample",
        action="store_true",
        help="store one posterior sample per image (and per flip) instead of the mean (LightningDiT's prefetch)",
    )
    c.add_argument(
        "--moments",
        action="store_true",
        help="store the posterior mean and std, so that diffusion training draws a fresh sample every step "
        "(REG's prefetch; recipe key data.posterior_draws)",
    )
    c.add_argument(
        "--resolution",
        type=image_side,
        default=None,
        help="image size in pixels (default: the tokenizer's training resolution)",
    )
    c.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass PER PROCESS")
    c.add_argument("--shard-size", type=int, default=1024, help="images per cache shard")
    c.add_argument("--workers", type=int, default=2, help="data-loader worker processes per process")
    c.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1 ... (default: cuda if available, the local rank's GPU under torchrun)",
    )
    c.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        help="labels must lie in 0..N-1 (checked as images are read); default: any label below 100,000",
    )
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vfmvae import distributed as dist_utils
    from vfmvae.latents import cache_latents

    info = cache_latents(
        args.tokenizer,
        args.data,
        args.out,
        resolution=args.resolution,
        flip=args.flip,
        vfm_features=args.vfm_features,
        vfm_resolution=args.vfm_resolution,
        sample=args.sample,
        moments=args.moments,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        num_workers=args.workers,
        device=args.device,
        num_classes=args.num_classes,
    )
    skipped = sum(info["skipped"].values())
    dist_utils.print0(
        f"cached {info['num_items']} latents of shape {info['latent_shape']} in {len(info['shards'])} "
        f"shards to {args.out} ({skipped} images skipped on this rank)"
    )
    return 0
