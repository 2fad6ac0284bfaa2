"""`vfmvae train tokenizer` and `vfmvae train diffusion`."""

from __future__ import annotations

import argparse

from vfmvae.cli.common import add_recipe_args
from vfmvae.training.run_folder import FRESH_HELP

TRAINING_BATCH_SIZES = (
    "Batch sizes are recipe keys: run.batch_size is the GLOBAL batch of one optimizer step (all processes "
    "together, in images); run.micro_batch is the PER-PROCESS batch of one forward/backward (default: "
    "run.batch_size / number of processes; smaller values accumulate gradients). Under torchrun the same recipe "
    "takes the same optimizer steps on any number of GPUs."
)


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="train a tokenizer stage or a diffusion transformer",
        description="Training, as one process (CPU or one GPU) or under torchrun.",
    )
    tsub = t.add_subparsers(dest="train_command", metavar="WHAT", required=True)
    k = tsub.add_parser(
        "tokenizer",
        help="train a VFM-VAE tokenizer stage from a recipe",
        description="Train one stage (configs/tokenizer/stage0.yaml ... stage3.yaml, or tiny.yaml for CPU). "
        "Writes RUN/config.yaml, RUN/metrics.jsonl, RUN/grids/*.png (inputs beside reconstructions), "
        "RUN/checkpoints/ and, at the end, the EMA model as RUN/export (a VFMVAE folder). "
        "Multi-GPU: torchrun --nproc-per-node=8 -m vfmvae train tokenizer --recipe ...",
    )
    add_recipe_args(
        k,
        "tokenizer stage",
        required=True,
        recipe_help="YAML recipe (vfmvae.tokenizer_training.TokenizerTrainConfig)",
        set_help="override a recipe key, e.g. --set run.total_images=1000 (repeatable)",
    )
    _add_resume(k)
    k.epilog = TRAINING_BATCH_SIZES
    k.set_defaults(func=run_tokenizer)

    d = tsub.add_parser(
        "diffusion",
        help="train a diffusion transformer on a latent cache",
        description="Train LightningDiT / SiT / REPA / REG on a `vfmvae cache-latents` folder (configs/diffusion/"
        "lightningdit-xl1.yaml, reg-sit-xl1.yaml, or tiny.yaml for CPU). Writes RUN/config.yaml, RUN/metrics.jsonl, "
        "RUN/grids/*.png (EMA samples decoded by the tokenizer), RUN/checkpoints/ and, at the end, the EMA model "
        "as RUN/export (a DiffusionTransformer folder with latent_stats.json). "
        "Multi-GPU: torchrun --nproc-per-node=8 -m vfmvae train diffusion --recipe ...",
    )
    add_recipe_args(
        d,
        "diffusion run",
        required=True,
        recipe_help="YAML recipe (vfmvae.diffusion_training.DiffusionTrainConfig)",
        set_help="override a recipe key, e.g. --set data.cache=runs/latents --set run.total_images=1024000 "
        "(repeatable)",
    )
    _add_resume(d)
    d.epilog = TRAINING_BATCH_SIZES
    d.set_defaults(func=run_diffusion)


def _add_resume(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resume",
        default="auto",
        help="auto (default: continue from the newest complete checkpoint of RUN if any), none (start at step 0; "
        f"refused if RUN holds this run's outputs), {FRESH_HELP}, or a checkpoint folder",
    )


def run_tokenizer(args: argparse.Namespace) -> int:
    from vfmvae.config import load_config
    from vfmvae.tokenizer_training.config import TokenizerTrainConfig
    from vfmvae.tokenizer_training.trainer import train_tokenizer

    cfg = load_config(TokenizerTrainConfig, args.recipe, args.overrides)
    summary = train_tokenizer(cfg, resume=args.resume)
    from vfmvae import distributed as dist_utils

    dist_utils.print0(
        f"trained {summary['steps']} steps ({summary['images']} images); skipped steps: "
        f"G {summary['skipped_g']}, D {summary['skipped_d']}; EMA model exported to {summary['export']}"
    )
    return 0


def run_diffusion(args: argparse.Namespace) -> int:
    from vfmvae import distributed as dist_utils
    from vfmvae.config import load_config
    from vfmvae.diffusion_training import DiffusionTrainConfig, train_diffusion

    cfg = load_config(DiffusionTrainConfig, args.recipe, args.overrides)
    summary = train_diffusion(cfg, resume=args.resume)
    final = summary["final"]
    dist_utils.print0(
        f"trained {summary['steps']} steps (last loss {final.get('loss', float('nan')):.4f}, "
        f"{summary['skipped_steps']} skipped); EMA model exported to {summary['export']}"
    )
    return 0
