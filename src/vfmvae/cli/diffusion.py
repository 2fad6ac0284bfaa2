"""`vfmvae diffusion list`: the registered diffusion transformer architectures."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diffusion",
        help="diffusion transformers (list the registry)",
        description="Diffusion transformer architectures: DiT/SiT, LightningDiT, REPA-SiT and REG-SiT.",
    )
    dsub = p.add_subparsers(dest="diffusion_command", metavar="SUBCOMMAND", required=True)
    ls = dsub.add_parser(
        "list",
        help="names, sizes and block flavour",
        description="List the registered architectures (use a name as `model.arch` in a recipe or "
        "`--arch` of `vfmvae convert`). Sizes are for 16x16x32 latents unless overridden.",
    )
    ls.add_argument("--all", action="store_true", help="include the tiny random `*-tiny` variants used by the tests")
    ls.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    import torch

    from vfmvae.cli.common import print_table
    from vfmvae.diffusion import DIFFUSION_MODELS, DiffusionTransformer

    rows = [("name", "depth", "width", "heads", "patch", "params", "blocks", "alignment", "time")]
    for name in DIFFUSION_MODELS.names():
        if name.endswith("-tiny") and not args.all:
            continue
        c = DIFFUSION_MODELS.create(name)
        with torch.device("meta"):
            n = sum(p.numel() for p in DiffusionTransformer(c).parameters())
        blocks = f"{c.norm}/{c.mlp}" + ("/rope" if c.rope else "") + (f"/qk-{c.qk_norm}" if c.qk_norm != "none" else "")
        align = (f"REPA@{c.align_depth}" if c.align_dims else "-") + ("+cls" if c.class_token_dim else "")
        rows.append(
            (
                name,
                str(c.depth),
                str(c.hidden_size),
                str(c.num_heads),
                str(c.patch_size),
                f"{n / 1e6:.1f}M",
                blocks,
                align,
                c.time_convention,
            )
        )
    print_table(rows)
    return 0
