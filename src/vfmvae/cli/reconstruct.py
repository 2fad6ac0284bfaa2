"""`vfmvae reconstruct`: encode and decode an image folder with a tokenizer."""

from __future__ import annotations

import argparse
from pathlib import Path

from vfmvae.cli.common import image_side, positive_int
from vfmvae.cli.parser import DeprecatedFlag, add_option


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "reconstruct",
        help="encode and decode a folder of images with a tokenizer",
        description="Reconstruct images (posterior sample; Resize + CenterCrop to the model's resolution, as the "
        "official tools/reconstruct/reconstruct.py, or --resolution): writes "
        "OUT/images/*.png, OUT/comparison.png (inputs beside reconstructions) and OUT/reconstruct.json "
        "with the mean per-image PSNR. Runs as one process.",
    )
    # --model/--input/--output: the spellings before the options were named as in every other command
    add_option(
        r,
        "--tokenizer",
        deprecated=("--model",),
        type=Path,
        required=True,
        metavar="DIR",
        help="tokenizer folder (from convert or training) or Hub id",
    )
    add_option(
        r,
        "--data",
        deprecated=("--input",),
        type=Path,
        required=True,
        metavar="DIR",
        help="image folder (flat or with class subfolders)",
    )
    add_option(r, "--out", deprecated=("--output",), type=Path, required=True, metavar="DIR", help="output folder")
    r.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass (one process)")
    r.add_argument(
        "--resolution",
        type=image_side,
        default=None,
        help="input size in pixels (default: the model's training resolution)",
    )
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    r.add_argument(
        "--mode",
        action="store_true",
        help="decode the posterior mean instead of a posterior sample "
        "(default: off, i.e. sample z, as the official tools/reconstruct/reconstruct.py)",
    )
    r.add_argument("--sample", action=DeprecatedFlag, note="decoding a posterior sample is the default; drop the flag")
    r.add_argument("--seed", type=int, default=0, help="seed of the posterior samples")
    r.add_argument(
        "--crop",
        choices=("resize_center", "adm_center"),
        default="resize_center",
        help="resize_center = torchvision Resize + CenterCrop as the official reconstruct.py, or the ADM centre crop",
    )
    r.add_argument("--workers", type=int, default=2, help="data-loader worker processes (0: load in this process)")
    r.set_defaults(func=run_reconstruct)


def run_reconstruct(args: argparse.Namespace) -> int:
    import torch

    from vfmvae.tokenizer import VFMVAE
    from vfmvae.tokenizer.reconstruct import reconstruct_folder

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = VFMVAE.from_pretrained(args.tokenizer)
    summary = reconstruct_folder(
        model,
        args.data,
        args.out,
        batch_size=args.batch_size,
        resolution=args.resolution,
        device=device,
        sample=not args.mode,
        seed=args.seed,
        num_workers=args.workers,
        crop=args.crop,
    )
    skipped = sum(summary["skipped"].values())
    print(
        f"reconstructed {summary['num_images']} images ({skipped} skipped) -> {args.out}/images; "
        f"PSNR {summary['psnr_mean']:.2f} dB; grid: {summary['grid']}"
    )
    return 0
