"""FID Inception feature extraction (pool3 + sFID features + logits) throughput; random weights, 256 px uint8.

    python inception_features.py --batch 16 --iters 2
"""

from __future__ import annotations

import argparse
import time

import torch

from common import emit
from vfmvae.evaluation import InceptionV3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    net = InceptionV3().to(args.device)  # default-initialised weights: throughput does not depend on them
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, device=args.device)
    net(images)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(args.iters):
        net(images)
    sync()
    emit({"benchmark": "inception_features", "image_size": args.size, "batch": args.batch,
          "images_per_s": round(args.batch * args.iters / (time.perf_counter() - start), 2)}, args.json)


if __name__ == "__main__":
    main()
