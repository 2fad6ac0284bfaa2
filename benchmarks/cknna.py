"""CKNNA at N = 10,000, D = 1024 on CPU (official preprocessing + topk 10).

    python cknna.py --n 10000 --dim 1024
"""

from __future__ import annotations

import argparse
import time

import torch

from common import emit
from vfmvae.alignment import cknna, preprocess


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    a = torch.randn(args.n, args.dim, generator=g)
    b = a[:, : args.dim // 2] + torch.randn(args.n, args.dim // 2, generator=g)
    start = time.perf_counter()
    value = cknna(preprocess(a), preprocess(b), args.topk)
    seconds = time.perf_counter() - start
    emit({"benchmark": "cknna", "n": args.n, "dim": args.dim, "topk": args.topk, "cknna": value,
          "seconds": round(seconds, 2)}, args.json)


if __name__ == "__main__":
    main()
