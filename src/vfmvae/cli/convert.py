"""`vfmvae convert official-tokenizer | official-lightningdit | official-reg`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vfmvae.cli.common import add_recipe_args


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "convert",
        help="import official checkpoints (VFM-VAE tokenizer, LightningDiT, REG)",
        description="Convert official checkpoints into vfmvae model folders (config.json + "
        "model.safetensors). Loading is strict and never executes pickled code.",
    )
    csub = c.add_subparsers(dest="convert_command", metavar="SOURCE", required=True)
    t = csub.add_parser(
        "official-tokenizer",
        help="a tianciB/VFM-VAE tokenizer checkpoint",
        description="Convert an official VFM-VAE tokenizer. --config is an official training YAML (its G_kwargs "
        "section describes the architecture); --weights is a .pth training snapshot (G_ema is used), a bare state "
        "dict or a .safetensors file with official key names (.pth is read with weights_only=True); --vfm is the "
        "frozen VFM as a local transformers folder, a registry name or a hub id (the VFM weights inside the "
        "checkpoint are used when present).",
    )
    # --config, not --recipe: this is the official repository's training config, not a vfmvae recipe
    t.add_argument("--config", type=Path, required=True, help="official training config (YAML with G_kwargs)")
    t.add_argument("--weights", type=Path, required=True, help="official checkpoint (.pth or .safetensors)")
    t.add_argument("--vfm", required=True, help="VFM folder, registry name (`vfmvae vfm list`) or hub id")
    t.add_argument("--out", type=Path, required=True, help="output model folder")
    t.set_defaults(func=run_tokenizer)

    for source, family, what in (
        ("official-lightningdit", "lightningdit", "hustvl/LightningDiT (or VFM-VAE's copy)"),
        ("official-reg", "reg", "Martinser/REG (SiT with REPA/REG heads)"),
    ):
        d = csub.add_parser(
            source,
            help=f"a {what} checkpoint",
            description=f"Convert a {what} checkpoint (.pt/.pth read with weights_only=True, or .safetensors) into a "
            "DiffusionTransformer folder. The architecture is a registry name (`vfmvae diffusion list`) plus optional "
            "DiTConfig overrides; every key is mapped strictly (missing, unexpected or mis-shaped keys are errors). "
            "--which picks the EMA weights (default) or the raw model of a training checkpoint.",
        )
        d.add_argument("--weights", type=Path, required=True, help="official checkpoint file")
        d.add_argument(
            "--arch",
            required=True,
            help=f"registry name, e.g. {'lightningdit-xl/1' if family == 'lightningdit' else 'reg-sit-xl/1'}",
        )
        add_recipe_args(
            d, "architecture", recipe=False, set_help="DiTConfig override, e.g. --set num_classes=1000 (repeatable)"
        )
        d.add_argument(
            "--which",
            choices=("ema", "model"),
            default="ema",
            help="weights inside a training checkpoint: the EMA or the raw model",
        )
        d.add_argument("--out", type=Path, required=True, help="output model folder")
        d.set_defaults(func=run_diffusion, family=family)


def run_tokenizer(args: argparse.Namespace) -> int:
    from vfmvae.checkpoint.pretrained import check_model_output_dir
    from vfmvae.tokenizer.convert import convert_official_tokenizer

    check_model_output_dir(args.out, option="--out")  # before loading anything

    model = convert_official_tokenizer(args.config, args.weights, args.vfm, args.out)
    n = sum(p.numel() for p in model.trainable_parameters())
    print(
        f"converted {args.weights} -> {args.out} ({n / 1e6:.1f}M tokenizer parameters + frozen "
        f"{model.config.vfm.name} VFM; latent {model.config.z_dim} x "
        f"{model.config.image_size // model.config.downsample}"
        f"^2 at {model.config.image_size} px)"
    )
    return 0


def run_diffusion(args: argparse.Namespace) -> int:
    from vfmvae.checkpoint.pretrained import check_model_output_dir
    from vfmvae.config import parse_override
    from vfmvae.diffusion.convert import convert_official_diffusion

    check_model_output_dir(args.out, option="--out")  # before loading anything

    overrides = {}
    for text in args.overrides:
        keys, value = parse_override(text)
        overrides[".".join(keys)] = value
    model = convert_official_diffusion(args.weights, args.family, args.arch, args.out, which=args.which, **overrides)
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {args.weights} -> {args.out} ({args.arch}, {n / 1e6:.1f}M parameters)")
    return 0
