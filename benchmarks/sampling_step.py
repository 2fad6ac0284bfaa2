"""One guided sampling step of a diffusion transformer on 16x16x32 latents: the doubled (conditional +
unconditional) forward pass and the Euler update, as `vfmvae sample` runs it.

    python sampling_step.py --arch lightningdit-xl/1 --batch 4 --steps 3
"""

from __future__ import annotations

import argparse
import time

import torch
from common import cuda_memory, emit

from vfmvae.diffusion import create_diffusion_model
from vfmvae.sampling import Guidance, sample_ode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="lightningdit-xl/1")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="timed Euler steps")
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_diffusion_model(args.arch).to(device).eval()
    if args.bf16:
        model = model.to(torch.bfloat16)
    c = model.config
    noise = torch.randn(args.batch, c.in_channels, c.input_size, c.input_size, device=device)
    labels = torch.randint(0, c.num_classes, (args.batch,), device=device)
    cls = torch.randn(args.batch, c.class_token_dim, device=device) if c.class_token_dim else None
    run = lambda n: sample_ode(model, noise, labels, steps=n, guidance=Guidance(scale=args.cfg), cls_noise=cls)  # noqa: E731
    run(1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(args.steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / args.steps
    emit(
        {
            "benchmark": "sampling_step",
            "arch": args.arch,
            "batch": args.batch,
            "cfg": args.cfg,
            "sec_per_step": round(per_step, 3),
            "samples_step_per_s": round(args.batch / per_step, 3),
            **cuda_memory(device),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
