"""Diffusion training-step throughput: one full optimizer step (forward, loss, backward, clip, AdamW, EMA) of a
registered architecture on random 16x16x32 latents, through the same code as `vfmvae train diffusion` (fused AdamW,
random draws made on the device, no host synchronisation inside the step). Reports latents/s, the FLOPs of a step
(counted by torch, and from the architecture: benchmarks/flops.py, the MFU numerator), achieved TFLOP/s, MFU against
the accelerator's dense bf16 peak, peak memory on CUDA, and with --compile the compile seconds (the trainer's
regional compilation, training/compile.py; --compile-mode picks inductor's mode).

    python diffusion_train_step.py --arch lightningdit-xl/1 --batch 2 --steps 3                  # CPU
    python diffusion_train_step.py --arch reg-sit-xl/1 --batch 2 --steps 3                       # REPA + class token
    python diffusion_train_step.py --arch lightningdit-xl/1 --batch 64 --steps 20 --compile      # H100, bf16
    python diffusion_train_step.py --arch lightningdit-xl/1 --batch 64 --steps 20 --compile \
        --compile-mode max-autotune-no-cudagraphs                                               # tuned matmuls
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time

import torch
from common import count_flops, cuda_memory, emit, peak_tflops
from flops import dit_training_flops

from vfmvae.diffusion import TransportConfig, create_diffusion_model, training_loss
from vfmvae.diffusion.transport import sample_time
from vfmvae.training import EMA, fused_optimizer_supported, optimizer_step
from vfmvae.training.compile import CompileSettings, compile_diffusion, compile_watch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="lightningdit-xl/1")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps (after the warm-up steps)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 1, or 3 with --compile)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default=None, help="fp32 or bf16 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--compile", action="store_true", help="regional torch.compile of the blocks (run.compile: true)")
    p.add_argument("--compile-mode", default=None, help="inductor mode with --compile (default: inductor's default)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute block activations in backward")
    p.add_argument("--no-fused", action="store_true", help="the for-each AdamW instead of the fused kernel")
    p.add_argument(
        "--check-sync",
        action="store_true",
        help="CUDA only: raise if a timed step synchronises with the host (torch.cuda.set_sync_debug_mode)",
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="the accelerator's dense bf16 peak, for MFU")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    model = create_diffusion_model(args.arch).to(device).train()
    model.gradient_checkpointing = args.gradient_checkpointing
    c = model.config
    align = bool(c.align_dims)
    transport = TransportConfig(
        time_sampling="uniform" if align else "lognormal",
        cosine_weight=0.0 if align else 1.0,
        align_weight=0.5 if align else 0.0,
        cls_weight=0.03 if c.class_token_dim else 0.0,
    )
    fused = fused_optimizer_supported(device) and not args.no_fused
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0.0, fused=fused)
    ema = EMA(model, halflife_images=args.batch * math.log(0.5) / math.log(0.9999), rampup_ratio=None)
    if args.compile:
        compile_diffusion(model, CompileSettings(mode=args.compile_mode))  # as the trainer: blocks, fullgraph
    net = model
    watch = compile_watch()
    g = torch.Generator(device=device).manual_seed(0)
    b = args.batch
    batch = {
        "x": torch.randn(b, c.in_channels, c.input_size, c.input_size, device=device),
        "y": torch.randint(0, c.num_classes, (b,), device=device),
    }
    tokens = model.num_tokens + (1 if c.class_token_dim else 0)
    targets = [torch.randn(b, tokens, d, device=device) for d in c.align_dims] if align else None
    cls = torch.randn(b, c.class_token_dim, device=device) if c.class_token_dim else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def loss_fn(module, batch):
        # the trainer's StepDraws (diffusion_training/draws.py): every draw on the device
        t = sample_time(b, transport, g, device=device)
        noise = torch.randn(batch["x"].shape, generator=g, device=device)
        cls_noise = torch.randn(b, c.class_token_dim, generator=g, device=device) if c.class_token_dim else None
        drop = torch.rand(b, generator=g, device=device) < 0.1
        with autocast:
            return training_loss(
                module,
                batch["x"],
                batch["y"],
                transport,
                t=t,
                noise=noise,
                cls_noise=cls_noise,
                drop_labels=drop,
                align_targets=targets,
                cls_target=cls,
            ).loss.mean()

    losses = []

    def step(i: int) -> None:
        result = optimizer_step(net, opt, [batch], loss_fn, batch_size_of=lambda x: len(x["y"]), grad_clip=1.0)
        ema.update(model, (i + 1) * b, b, applied=result.applied_t)
        losses.append(result.loss_t)  # a device tensor: no host read inside the timed steps

    warmup = args.warmup if args.warmup is not None else (3 if args.compile else 1)
    for i in range(warmup):
        step(i)
    compile_s = watch.seconds
    # FLOPs of forward + backward, counted once on the eager model (the optimizer and EMA add no matmuls)
    with torch.compiler.set_stance("force_eager"):  # the compiled regions run eagerly under the counter
        counted = count_flops(lambda: loss_fn(model, batch).backward())
    flops = dit_training_flops(c).training * b  # from the architecture (benchmarks/flops.py): the MFU numerator
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    sync_check = contextlib.nullcontext()
    if args.check_sync and device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        sync_check = contextlib.ExitStack()
        sync_check.callback(torch.cuda.set_sync_debug_mode, "default")
    start = time.perf_counter()
    with sync_check:
        for i in range(args.steps):
            step(warmup + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / args.steps
    achieved = flops / per_step / 1e12
    peak = peak_tflops(device, args.peak_tflops)
    n = sum(p.numel() for p in model.parameters())
    emit(
        {
            "benchmark": "diffusion_train_step",
            "arch": args.arch,
            "params_M": round(n / 1e6, 1),
            "latent": [c.in_channels, c.input_size, c.input_size],
            "batch": b,
            "precision": precision,
            "compile": args.compile,
            "compile_mode": args.compile_mode,
            "compile_s": round(compile_s, 1) if args.compile else None,
            "gradient_checkpointing": args.gradient_checkpointing,
            "fused_adamw": fused,
            "sec_per_step": round(per_step, 4),
            "latents_per_s": round(b / per_step, 3),
            "tflops_per_step": round(flops / 1e12, 3),
            "tflops_per_latent": float(f"{flops / b / 1e12:.4g}"),
            "tflops_per_step_counted_by_torch": round(counted / 1e12, 3),
            "loss": float(losses[-1]),
            "achieved_tflops": round(achieved, 3),
            "mfu": round(achieved / peak, 4) if peak else None,
            "sync_checked": bool(args.check_sync and device.type == "cuda"),
            **cuda_memory(device),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
