"""`vfmvae export diffusers`: our model folders as diffusers folders (needs the `diffusers` extra)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "export",
        help="write models in other libraries' formats (diffusers)",
        description="Export vfmvae model folders for use in other libraries.",
    )
    esub = e.add_subparsers(dest="export_command", metavar="FORMAT", required=True)
    d = esub.add_parser(
        "diffusers",
        help="a diffusers pipeline (or a lone tokenizer) folder",
        description="With --diffusion: a VFMVAEDiffusionPipeline folder (model_index.json, transformer/, vae/) that "
        "`import vfmvae.diffusers; DiffusionPipeline.from_pretrained(OUT)` loads; the latent statistics go into the "
        "vae config. With --tokenizer alone: a VFMVAEAutoencoder folder (config.json + "
        'diffusion_pytorch_model.safetensors). Needs `pip install "vfmvae[diffusers]"`.',
    )
    d.add_argument(
        "--diffusion",
        type=Path,
        default=None,
        help="DiffusionTransformer folder (a training export); default: none, export --tokenizer alone",
    )
    d.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="tokenizer folder (default with --diffusion: the one named in its latent_stats.json)",
    )
    d.add_argument(
        "--latent-stats",
        type=Path,
        default=None,
        help="latent mean/std file (default with --diffusion: DIFFUSION/latent_stats.json)",
    )
    d.add_argument("--out", type=Path, required=True, help="output folder (must not exist)")
    d.set_defaults(func=run_diffusers)


def run_diffusers(args: argparse.Namespace) -> int:
    if args.diffusion is None and args.tokenizer is None:
        raise ValueError("pass --diffusion DIR (a pipeline) or --tokenizer DIR (an autoencoder)")
    if args.out.exists():
        raise ValueError(f"--out {args.out} exists; choose a new folder (nothing is overwritten)")
    try:
        from vfmvae.diffusers import VFMVAEAutoencoder, export_pipeline
    except ImportError as err:
        raise ValueError(str(err)) from None
    if args.diffusion is not None:
        export_pipeline(args.diffusion, args.out, tokenizer=args.tokenizer, latent_stats=args.latent_stats)
        print(
            f"diffusers pipeline: {args.out} "
            f"(import vfmvae.diffusers; DiffusionPipeline.from_pretrained({str(args.out)!r}))"
        )
    else:
        VFMVAEAutoencoder.from_vfmvae(args.tokenizer, latent_stats=args.latent_stats).save_pretrained(args.out)
        print(f"diffusers autoencoder: {args.out} (VFMVAEAutoencoder.from_pretrained({str(args.out)!r}))")
    return 0
