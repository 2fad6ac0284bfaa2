"""`vfmvae data ...`: make the synthetic set, inspect any image set."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from vfmvae.cli.common import add_recipe_args, image_side, positive_int, resolve_config, write_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="create and inspect image datasets",
        description="Create the synthetic dataset and inspect image folders or tar shards.",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    s = dsub.add_parser(
        "synthetic",
        help="write the deterministic class-conditional synthetic image set",
        description="Write a deterministic, class-conditional image set (shapes, textures and colours whose class "
        "is visible): OUT/images/<class>/*.png, optionally OUT/shards/*.tar (WebDataset layout), OUT/dataset.json "
        "and OUT/preview.png with one row per class. The same arguments always give identical files.",
    )
    s.add_argument("--out", type=Path, help="output folder (required unless the recipe sets it; default: none)")
    s.add_argument("--num", type=positive_int, help="number of images (default: 512, or the recipe's)")
    s.add_argument("--classes", type=int, help="number of classes, at most 128 (default: 8, or the recipe's)")
    s.add_argument("--size", type=image_side, help="image side in pixels (default: 64, or the recipe's)")
    s.add_argument("--seed", type=int, help="seed (default: 0, or the recipe's)")
    s.add_argument(
        "--shards",
        action="store_true",
        default=None,
        help="also write WebDataset tar shards (default: off, or the recipe's)",
    )
    s.add_argument("--shard-size", type=int, help="images per tar shard (default: 128, or the recipe's)")
    add_recipe_args(s, "synthetic set")
    s.set_defaults(func=run_synthetic)

    i = dsub.add_parser(
        "inspect",
        help="read an image folder or tar shards once: counts, skipped files, a preview grid",
        description="Read every image through the training pipeline (ADM centre crop), count images per class "
        "and skipped files per reason (corrupt, truncated, zero-byte, non-image, too small, too large), and "
        "write a preview grid.",
    )
    i.add_argument(
        "--data",
        type=Path,
        help="image folder, folder of .tar shards, or one .tar (required unless the "
        "recipe sets `source`; default: none)",
    )
    i.add_argument("--resolution", type=image_side, help="centre-crop size in pixels (default: 256, or the recipe's)")
    i.add_argument("--grid", type=Path, help="write a preview grid PNG here, one row per class (default: no grid)")
    i.add_argument("--per-class", type=int, default=8, help="images per grid row")
    i.add_argument("--json", type=Path, help="write the report as JSON here (default: not written)")
    add_recipe_args(i, "data config (vfmvae.DataConfig)")
    i.set_defaults(func=run_inspect)


def run_synthetic(args: argparse.Namespace) -> int:
    from vfmvae.data.inspect import inspect_dataset
    from vfmvae.data.loader import DataConfig
    from vfmvae.data.synthetic import SyntheticConfig, write_synthetic_dataset

    flags = {
        "out": "out",
        "num": "num",
        "classes": "classes",
        "size": "size",
        "seed": "seed",
        "shards": "shards",
        "shard_size": "shard_size",
    }
    cfg = resolve_config(SyntheticConfig, args, flags)
    manifest = write_synthetic_dataset(cfg)
    out = Path(cfg.out)
    report = inspect_dataset(
        DataConfig(source=out / "images", resolution=cfg.size, hflip=False, num_workers=0),
        grid_path=out / "preview.png",
        per_class=8,
        progress=False,
    )
    print(f"wrote {manifest['num']} images of {manifest['classes']} classes ({cfg.size} px) to {out / 'images'}")
    if manifest["shards"]:
        print(f"wrote {len(manifest['shards'])} tar shards to {out / 'shards'}")
    print(f"preview grid: {report.grid}")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from vfmvae.data.inspect import inspect_dataset
    from vfmvae.data.loader import DataConfig

    cfg = resolve_config(DataConfig, args, {"data": "source", "resolution": "resolution"})
    report = inspect_dataset(cfg, grid_path=args.grid, per_class=args.per_class)
    print(report.summary())
    if report.grid:
        print(f"preview grid: {report.grid}")
    write_json(args.json, dataclasses.asdict(report))
    return 0
