"""`vfmvae train tokenizer`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train the tokenizer (one stage of the four-stage recipe)",
                       description="Training, as one process (CPU or one GPU) or under torchrun.")
    tsub = t.add_subparsers(dest="train_command", metavar="WHAT", required=True)
    k = tsub.add_parser(
        "tokenizer", help="train a VFM-VAE tokenizer stage from a recipe",
        description="Train one stage (configs/tokenizer/stage0.yaml ... stage3.yaml, or tiny.yaml for CPU). "
        "Writes RUN/config.yaml, RUN/metrics.jsonl, RUN/snapshots/*.png (inputs beside reconstructions), "
        "RUN/checkpoints/ and, at the end, the EMA model as RUN/export (a VFMVAE folder). "
        "Multi-GPU: torchrun --nproc-per-node=8 -m vfmvae train tokenizer --recipe ...",
    )
    k.add_argument("--recipe", type=Path, required=True, help="YAML recipe (vfmvae.tokenizer_training.TokenizerTrainConfig)")
    k.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set run.total_images=1000 (repeatable)")
    k.add_argument("--resume", default="auto",
                   help="auto (default: continue from the newest complete checkpoint of RUN if any), none, or a checkpoint folder")
    k.set_defaults(func=run_tokenizer)


def run_tokenizer(args: argparse.Namespace) -> int:
    from vfmvae.config import load_config
    from vfmvae.tokenizer_training.config import TokenizerTrainConfig
    from vfmvae.tokenizer_training.trainer import train_tokenizer

    cfg = load_config(TokenizerTrainConfig, args.recipe, args.overrides)
    summary = train_tokenizer(cfg, resume=args.resume)
    from vfmvae import distributed as dist_utils

    dist_utils.print0(f"trained {summary['steps']} steps ({summary['images']} images); skipped steps: "
                      f"G {summary['skipped_g']}, D {summary['skipped_d']}; EMA model exported to {summary['export']}")
    return 0
