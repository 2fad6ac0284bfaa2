"""Side by side: our LightningDiT against the official hustvl/LightningDiT model, same weights, same inputs.

The official code is not part of this repository: clone it outside and pass its folder.

    git clone https://github.com/hustvl/LightningDiT /tmp/LightningDiT
    pip install --target /tmp/ldit-deps einops==0.8.2          # the official model's one extra dependency
    PYTHONPATH=/tmp/ldit-deps python lightningdit_reference.py --official /tmp/LightningDiT --batch 2 --steps 3

Builds the official LightningDiT-XL/1 as VFM-VAE configures it (16x16x32 latents, patch 1, q/k norm, SwiGLU, RoPE,
RMSNorm), imports its weights into ours with `vfmvae convert`'s mapping, checks that both give the same velocity,
then times one training step each (forward, velocity MSE + cosine loss, backward, AdamW) and reports the ratio.
The official file's `@torch.compile` decorators are disabled (TORCHDYNAMO_DISABLE=1) so both run eagerly; its
`fairscale` import (unused by RMSNorm) is stubbed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402

from common import emit  # noqa: E402
from vfmvae.diffusion import TransportConfig, training_loss  # noqa: E402
from vfmvae.diffusion.convert import official_to_model  # noqa: E402
from vfmvae.diffusion.registry import diffusion_config  # noqa: E402


def _official_class(folder: Path):
    for name in ("fairscale", "fairscale.nn", "fairscale.nn.model_parallel", "fairscale.nn.model_parallel.initialize",
                 "fairscale.nn.model_parallel.layers"):
        sys.modules.setdefault(name, types.ModuleType(name))
    init = sys.modules["fairscale.nn.model_parallel.initialize"]
    init.get_model_parallel_world_size = lambda: 1  # type: ignore[attr-defined]
    layers = sys.modules["fairscale.nn.model_parallel.layers"]
    for cls in ("ColumnParallelLinear", "RowParallelLinear", "ParallelEmbedding"):
        setattr(layers, cls, torch.nn.Linear)
    sys.path.insert(0, str(folder))
    from models.lightningdit import LightningDiT  # type: ignore

    return LightningDiT


def _step_time(model, opt, x, y, loss_fn, steps: int) -> float:
    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model, x, y).backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", type=Path, required=True, help="a clone of hustvl/LightningDiT")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--depth", type=int, default=28, help="fewer blocks for a quick check (XL has 28)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    official_cls = _official_class(args.official)
    kwargs = dict(input_size=16, patch_size=1, in_channels=32, hidden_size=1152, depth=args.depth, num_heads=16,
                  mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=False, use_qknorm=True,
                  use_swiglu=True, use_rope=True, use_rmsnorm=True, wo_shift=False)
    theirs = official_cls(**kwargs)
    with torch.no_grad():  # zero-initialised branches would make both outputs zero
        for param in theirs.parameters():
            if param.requires_grad:
                param.add_(0.02 * torch.randn_like(param))
    ours = official_to_model(theirs.state_dict(), diffusion_config("lightningdit-xl/1", depth=args.depth), source="official")
    theirs.eval()
    x = torch.randn(args.batch, 32, 16, 16)
    t = torch.rand(args.batch)
    y = torch.randint(0, 1000, (args.batch,))
    with torch.no_grad():
        diff = float((ours.forward_native(x, t, y).sample - theirs(x, t, y)).abs().max())
    cfg = TransportConfig(time_sampling="lognormal", cosine_weight=1.0)
    noise = torch.randn_like(x)

    def loss_ours(model, x, y):
        return training_loss(model, x, y, cfg, t=t, noise=noise, drop_labels=False).loss.mean()

    def loss_theirs(model, x, y):  # the same objective in the official time convention
        tt = 1 - t
        x_t = tt.view(-1, 1, 1, 1) * x + (1 - tt.view(-1, 1, 1, 1)) * noise
        target = x - noise
        pred = model(x_t, tt, y)
        mse = (pred - target).pow(2).mean((1, 2, 3))
        cos = 1 - torch.nn.functional.cosine_similarity(pred, target, dim=1).mean((1, 2))
        return (mse + cos).mean()

    with torch.no_grad():
        loss_diff = abs(float(loss_ours(ours, x, y)) - float(loss_theirs(theirs, x, y)))
    ours.train()
    theirs.train()
    ours.y_embedder.dropout = theirs.y_embedder.dropout_prob = 0.0  # no random label drops while timing
    # one model (and its optimizer state) in memory at a time: XL with AdamW takes about 11 GB in float32
    import gc

    opt_theirs = torch.optim.AdamW([q for q in theirs.parameters() if q.requires_grad], lr=2e-4, betas=(0.9, 0.95), weight_decay=0)
    sec_theirs = _step_time(theirs, opt_theirs, x, y, loss_theirs, args.steps)
    del theirs, opt_theirs
    gc.collect()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0)
    sec_ours = _step_time(ours, opt_ours, x, y, loss_ours, args.steps)
    emit({"benchmark": "lightningdit_reference", "depth": args.depth, "batch": args.batch, "max_abs_output_diff": diff,
          "loss_diff": loss_diff, "sec_per_step_ours": round(sec_ours, 3), "sec_per_step_official": round(sec_theirs, 3),
          "speedup": round(sec_theirs / sec_ours, 3)}, args.json)


if __name__ == "__main__":
    main()
