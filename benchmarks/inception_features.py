"""FID Inception feature extraction (pool3 + sFID features + logits) throughput; random weights, 256 px uint8.
Side by side with torch-fidelity's `FeatureExtractorInceptionV3` called directly on the same weights and images
(our wrapper adds the sFID hook and the weight loading; the network is torch-fidelity's).

    python inception_features.py --batch 16 --iters 2
"""

from __future__ import annotations

import argparse
import time

import torch
from common import emit

from vfmvae.evaluation import InceptionV3


def _rate(fn, images: torch.Tensor, iters: int) -> float:
    fn(images)  # warm-up
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn(images)
    sync()
    return len(images) * iters / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    net = InceptionV3().to(args.device)  # default-initialised weights: throughput does not depend on them
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, device=args.device)
    ours = _rate(net, images, args.iters)
    reference = net.net  # torch-fidelity's module itself, without our wrapper
    with torch.no_grad():
        ref_rate = _rate(reference, images, args.iters)
        pool_ref, logits_ref = reference(images)
        out = net(images)
    diff = max(float((out["pool"] - pool_ref).abs().max()), float((out["logits"] - logits_ref).abs().max()))
    emit(
        {
            "benchmark": "inception_features",
            "image_size": args.size,
            "batch": args.batch,
            "images_per_s": round(ours, 2),
            "torch_fidelity_images_per_s": round(ref_rate, 2),
            "speedup": round(ours / ref_rate, 3),
            "max_abs_diff": diff,
        },
        args.json,
    )
    if diff != 0.0:
        raise SystemExit("features differ from torch-fidelity's: the timing is void")


if __name__ == "__main__":
    main()
