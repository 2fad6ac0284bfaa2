"""`vfmvae convert official-tokenizer` and `vfmvae reconstruct`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("convert", help="import official checkpoints (VFM-VAE tokenizer)",
                       description="Convert official checkpoints into vfmvae model folders (config.json + "
                       "model.safetensors). Loading is strict and never executes pickled code.")
    csub = c.add_subparsers(dest="convert_command", metavar="SOURCE", required=True)
    t = csub.add_parser(
        "official-tokenizer", help="a tianciB/VFM-VAE tokenizer checkpoint",
        description="Convert an official VFM-VAE tokenizer. --config is an official training YAML (its G_kwargs "
        "section describes the architecture); --weights is a .pth training snapshot (G_ema is used), a bare state "
        "dict or a .safetensors file with official key names (.pth is read with weights_only=True); --vfm is the "
        "frozen VFM as a local transformers folder, a registry name or a hub id (the VFM weights inside the "
        "checkpoint are used when present).",
    )
    t.add_argument("--config", type=Path, required=True, help="official training config (YAML with G_kwargs)")
    t.add_argument("--weights", type=Path, required=True, help="official checkpoint (.pth or .safetensors)")
    t.add_argument("--vfm", required=True, help="VFM folder, registry name (`vfmvae vfm list`) or hub id")
    t.add_argument("--out", type=Path, required=True, help="output model folder")
    t.set_defaults(func=run_convert)

    r = sub.add_parser(
        "reconstruct", help="encode and decode a folder of images with a tokenizer",
        description="Reconstruct images (ADM centre crop to the model's resolution, or --resolution): writes "
        "OUTPUT/images/*.png, OUTPUT/comparison.png (inputs beside reconstructions) and OUTPUT/reconstruct.json "
        "with the mean per-image PSNR.",
    )
    r.add_argument("--model", type=Path, required=True, help="tokenizer folder (from convert or training)")
    r.add_argument("--input", type=Path, required=True, help="image folder (flat or with class subfolders)")
    r.add_argument("--output", type=Path, required=True, help="output folder")
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--resolution", type=int, default=None, help="default: the model's training resolution")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    r.add_argument("--sample", action="store_true", help="decode a posterior sample instead of the mean")
    r.add_argument("--seed", type=int, default=0, help="seed for --sample")
    r.add_argument("--workers", type=int, default=2, help="data-loader workers")
    r.set_defaults(func=run_reconstruct)


def run_convert(args: argparse.Namespace) -> int:
    from vfmvae.tokenizer.convert import convert_official_tokenizer

    model = convert_official_tokenizer(args.config, args.weights, args.vfm, args.out)
    n = sum(p.numel() for p in model.trainable_parameters())
    print(f"converted {args.weights} -> {args.out} ({n / 1e6:.1f}M tokenizer parameters + frozen "
          f"{model.config.vfm_name} VFM; latent {model.config.z_dim} x {model.config.image_size // model.config.downsample}"
          f"^2 at {model.config.image_size} px)")
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    import torch

    from vfmvae.tokenizer import VFMVAE
    from vfmvae.tokenizer.reconstruct import reconstruct_folder

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = VFMVAE.from_pretrained(args.model)
    summary = reconstruct_folder(model, args.input, args.output, batch_size=args.batch_size, resolution=args.resolution,
                                 device=device, sample=args.sample, seed=args.seed, num_workers=args.workers)
    skipped = sum(summary["skipped"].values())
    print(f"reconstructed {summary['num_images']} images ({skipped} skipped) -> {args.output}/images; "
          f"PSNR {summary['psnr_mean']:.2f} dB; grid: {summary['grid']}")
    return 0
