"""Feature-extraction throughput of a frozen VFM (random init of the real architecture; no weights needed).

python benchmarks/vfm_features.py --vfm siglip2-base-patch16-256 --size 256 --batch 8
"""

from __future__ import annotations

import argparse
import time

import torch
from common import emit

from vfmvae.vfm import VFMSpec, build_vfm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vfm", default="siglip2-base-patch16-256")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--scale-factor", type=float, default=None, help="default: the registry's value for 256 px")
    p.add_argument("--layers", default="0,6,-1")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = VFMSpec(
        args.vfm, layers=tuple(int(i) for i in args.layers.split(",")), scale_factor=args.scale_factor, random_init=True
    )
    vfm = build_vfm(spec).to(args.device)
    images = torch.rand(args.batch, 3, args.size, args.size, device=args.device)
    vfm(images)  # warm-up
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(args.iters):
        feats = vfm(images)
    sync()
    seconds = time.perf_counter() - start
    emit(
        {
            "benchmark": "vfm_features",
            "vfm": args.vfm,
            "image_size": args.size,
            "vfm_input": args.size * vfm.scale_factor,
            "grid": list(feats.grid),
            "batch": args.batch,
            "images_per_s": round(args.batch * args.iters / seconds, 2),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
