"""`vfmvae reconstruct`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vfmvae.cli.common import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "reconstruct", help="encode and decode a folder of images with a tokenizer",
        description="Reconstruct images (posterior sample; Resize + CenterCrop to the model's resolution, as the "
        "official tools/reconstruct/reconstruct.py, or --resolution): writes "
        "OUTPUT/images/*.png, OUTPUT/comparison.png (inputs beside reconstructions) and OUTPUT/reconstruct.json "
        "with the mean per-image PSNR.",
    )
    r.add_argument("--model", type=Path, required=True, help="tokenizer folder (from convert or training)")
    r.add_argument("--input", type=Path, required=True, help="image folder (flat or with class subfolders)")
    r.add_argument("--output", type=Path, required=True, help="output folder")
    r.add_argument("--batch-size", type=positive_int, default=8)
    r.add_argument("--resolution", type=int, default=None, help="default: the model's training resolution")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    r.add_argument("--mode", action="store_true", help="decode the posterior mean instead of a posterior sample "
                   "(the default samples z, as the official tools/reconstruct/reconstruct.py)")
    r.add_argument("--sample", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    r.add_argument("--seed", type=int, default=0, help="seed of the posterior samples")
    r.add_argument("--crop", choices=("resize_center", "adm_center"), default="resize_center",
                   help="resize_center = torchvision Resize + CenterCrop as the official reconstruct.py (default), "
                   "or the ADM centre crop")
    r.add_argument("--workers", type=int, default=2, help="data-loader workers")
    r.set_defaults(func=run_reconstruct)


def run_reconstruct(args: argparse.Namespace) -> int:
    import torch

    from vfmvae.tokenizer import VFMVAE
    from vfmvae.tokenizer.reconstruct import reconstruct_folder

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = VFMVAE.from_pretrained(args.model)
    summary = reconstruct_folder(model, args.input, args.output, batch_size=args.batch_size, resolution=args.resolution,
                                 device=device, sample=not args.mode, seed=args.seed, num_workers=args.workers,
                                 crop=args.crop)
    skipped = sum(summary["skipped"].values())
    print(f"reconstructed {summary['num_images']} images ({skipped} skipped) -> {args.output}/images; "
          f"PSNR {summary['psnr_mean']:.2f} dB; grid: {summary['grid']}")
    return 0
