"""What only the CPU demo needs, as commands its pipeline runs (`make demo` = `vfmvae pipeline run
configs/pipeline/demo.yaml`):

    python -m vfmvae.demo dirty-copy --data IMAGES --out DIR          # two classes plus three broken files
    python -m vfmvae.demo random-inception --out FILE.safetensors     # a seeded RANDOM-INIT FID Inception

The demo cannot download the FID Inception, so its generation metrics (`eval ref-stats`, `eval gen` and the
evaluation while training) use seeded random weights in torch-fidelity's layout: every step of the protocol runs,
and the values compare with nothing (each command warns that the file is not the FID Inception).
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main", "make_dirty_copy", "write_random_inception"]


def make_dirty_copy(images: Path, dirty: Path) -> Path:
    """Two classes of good images plus three broken files, to show that bad inputs never stop a run."""
    if dirty.exists() and any(dirty.iterdir()):
        raise FileExistsError(f"--out {dirty} is not empty; pass a new or empty folder")
    classes = sorted(p for p in images.iterdir() if p.is_dir())[:2]
    if not classes:
        raise FileNotFoundError(f"--data {images}: no class folders")
    for class_dir in classes:
        shutil.copytree(class_dir, dirty / class_dir.name)
    target = dirty / classes[0].name
    good = sorted(target.glob("*.png"))[0].read_bytes()
    (target / "truncated.png").write_bytes(good[: len(good) // 2])
    (target / "empty.png").write_bytes(b"")
    (target / "notes.txt").write_text("not an image")
    return dirty


def write_random_inception(out: Path, seed: int = 0) -> Path:
    """Seeded random weights for the FID Inception (torch-fidelity's keys), as safetensors. He-normal weights keep
    the activations' scale through the ~20 layers, so different images get different features (the same init as
    `eval.inception: random-init:SEED` of evaluation while training)."""
    import torch
    from torch import nn

    from vfmvae.checkpoint.serialize import save_tensors
    from vfmvae.evaluation.inception import InceptionV3
    from vfmvae.seeding import derive_seed

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "inception"))
        net = InceptionV3(None)
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(out, {k: v.contiguous() for k, v in net.net.state_dict().items()})
    return out


def build_parser() -> argparse.ArgumentParser:
    from vfmvae.cli.parser import CLIParser

    parser = CLIParser(prog="python -m vfmvae.demo", description="Helpers of the CPU demo's pipeline.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    dirty = sub.add_parser(
        "dirty-copy", help="two classes of an image folder plus a truncated, an empty and a text file"
    )
    dirty.add_argument("--data", type=Path, required=True, help="class-folder image tree")
    dirty.add_argument("--out", type=Path, required=True, help="new or empty folder")
    inception = sub.add_parser("random-inception", help="seeded RANDOM-INIT FID Inception weights (demo only)")
    inception.add_argument("--out", type=Path, required=True, help="output .safetensors")
    inception.add_argument("--seed", type=int, default=0, help="seed of the weights")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "dirty-copy":
        make_dirty_copy(args.data, args.out)
        print(f"copied two classes of {args.data} to {args.out}, plus a truncated, an empty and a text file")
    else:
        write_random_inception(args.out, args.seed)
        print(f"wrote RANDOM-INIT Inception weights (seed {args.seed}) to {args.out}: not the FID Inception")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
