"""Diffusion training-step throughput: one full optimizer step (forward, loss, backward, clip, AdamW, EMA) of a
registered architecture on random 16x16x32 latents, through the same code as `vfmvae train diffusion`.

    python diffusion_train_step.py --arch lightningdit-xl/1 --batch 2 --steps 3
    python diffusion_train_step.py --arch reg-sit-xl/1 --batch 2 --steps 3     # with REPA + class-token losses
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from common import emit
from vfmvae.diffusion import TransportConfig, create_diffusion_model, training_loss
from vfmvae.training import EMA, optimizer_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="lightningdit-xl/1")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default=None, help="fp32 or bf16 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    torch.manual_seed(0)
    model = create_diffusion_model(args.arch).to(device).train()
    c = model.config
    align = bool(c.align_dims)
    transport = TransportConfig(time_sampling="uniform" if align else "lognormal", cosine_weight=0.0 if align else 1.0,
                                align_weight=0.5 if align else 0.0, cls_weight=0.03 if c.class_token_dim else 0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0.0)
    ema = EMA(model, halflife_images=args.batch * math.log(0.5) / math.log(0.9999), rampup_ratio=None)
    net = torch.compile(model) if args.compile else model
    g = torch.Generator().manual_seed(0)
    batch = {"x": torch.randn(args.batch, c.in_channels, c.input_size, c.input_size).to(device),
             "y": torch.randint(0, c.num_classes, (args.batch,)).to(device)}
    tokens = model.num_tokens + (1 if c.class_token_dim else 0)
    targets = [torch.randn(args.batch, tokens, d).to(device) for d in c.align_dims] if align else None
    cls = torch.randn(args.batch, c.class_token_dim).to(device) if c.class_token_dim else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def loss_fn(module, b):
        with autocast:
            return training_loss(module, b["x"], b["y"], transport, generator=g, align_targets=targets,
                                 cls_target=cls).loss.mean()

    def step(i: int) -> None:
        optimizer_step(net, opt, [batch], loss_fn, batch_size_of=lambda b: len(b["y"]), grad_clip=1.0)
        ema.update(model, (i + 1) * args.batch, args.batch)

    step(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(args.steps):
        step(i + 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / args.steps
    n = sum(p.numel() for p in model.parameters())
    emit({"benchmark": "diffusion_train_step", "arch": args.arch, "params_M": round(n / 1e6, 1),
          "latent": [c.in_channels, c.input_size, c.input_size], "batch": args.batch, "precision": precision,
          "sec_per_step": round(per_step, 3), "latents_per_s": round(args.batch / per_step, 3)}, args.json)


if __name__ == "__main__":
    main()
