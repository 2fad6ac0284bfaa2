"""Tokenizer encode / decode throughput for the full-size architecture (random SigLIP2-L + f16d32 decoder).

python tokenizer.py --batch 4 --iters 2
"""

from __future__ import annotations

import argparse
import time

import torch
from common import cuda_memory, emit

from vfmvae.tokenizer import VFMVAE, VFMVAEConfig
from vfmvae.vfm import VFMSpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--channels-last", action="store_true", help="decoder convolutions in channels-last memory format")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    model = VFMVAE(VFMVAEConfig(vfm=VFMSpec(random_init=True))).to(args.device).eval()  # no weights needed
    if args.channels_last:
        model.synthesis.to(memory_format=torch.channels_last)
    images = torch.rand(args.batch, 3, args.size, args.size, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    results = {}
    with torch.no_grad(), torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16):
        z = model.encode(images).mode()  # warm-up
        model.decode(z)
        for name, fn in (("encode", lambda: model.encode(images).mode()), ("decode", lambda: model.decode(z))):
            sync()
            start = time.perf_counter()
            for _ in range(args.iters):
                fn()
            sync()
            results[f"{name}_images_per_s"] = round(args.batch * args.iters / (time.perf_counter() - start), 3)
    emit(
        {
            "benchmark": "tokenizer",
            "image_size": args.size,
            "batch": args.batch,
            "latent": list(z.shape[1:]),
            "bf16": args.bf16,
            "channels_last": args.channels_last,
            **results,
            **cuda_memory(torch.device(args.device)),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
