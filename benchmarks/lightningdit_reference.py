"""Side by side: our LightningDiT against the official hustvl/LightningDiT model, same weights, same inputs.

The official code is not part of this repository: clone it outside and pass its folder.

    git clone https://github.com/hustvl/LightningDiT /tmp/LightningDiT
    pip install --target /tmp/ldit-deps einops==0.8.2          # the official model's one extra dependency
    PYTHONPATH=/tmp/ldit-deps python lightningdit_reference.py --official /tmp/LightningDiT --batch 2 --steps 3

Builds the official LightningDiT-XL/1 as VFM-VAE configures it (16x16x32 latents, patch 1, q/k norm, SwiGLU, RoPE,
RMSNorm), imports its weights into ours with `vfmvae convert`'s mapping, checks that both give the same velocity,
then times two kinds of training step and reports the ratios:

* model only: forward, velocity MSE + cosine loss, backward, the same torch AdamW for both;
* the whole step as each project runs it. Official (its train.py): zero_grad, backward, clip_grad_norm_(1.0),
  torch's default AdamW (for-each kernels), an EMA update looping over the parameters (mul_ + add_ each), and
  `loss.item()` for its running loss. Ours (`vfmvae train diffusion`): `optimizer_step` (clipping by the same
  norm, fused AdamW, non-finite skip on the device) and `EMA.update` (one multi-tensor lerp).
  After the first whole step both models are compared again: weights and velocity outputs.
The official file's `@torch.compile` decorators are disabled (TORCHDYNAMO_DISABLE=1) so both run eagerly; its
`fairscale` import (unused by RMSNorm) is stubbed.

On a GPU, as each project trains (issue: ours >= 1.3x the official step, equal losses on a fixed batch):

    PYTHONPATH=/tmp/ldit-deps python lightningdit_reference.py --official /tmp/LightningDiT \
        --device cuda --precision bf16 --compile --batch 128 --steps 20

`--compile`: the official model keeps its own `@torch.compile` decorators (modulate, the timestep embedder,
the label embedder, each block's and the final layer's forward: what its train.py runs) and ours compiles its
blocks regionally as `vfmvae train diffusion` does with `run.compile: true` (training/compile.py). bf16 is autocast
around the forward and the loss for both (the official run_train.sh: `accelerate launch --mixed_precision bf16`).
TF32 matmuls are on for both. In bf16 the equality checks use bf16 tolerances (`TOLERANCES`).
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

if "--compile" not in sys.argv:  # decided before torch is imported: the official file compiles at import
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
from common import emit  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from vfmvae.diffusion import (  # noqa: E402
    DiffusionTransformer,  # noqa: E402
    TransportConfig,
    training_loss,
)
from vfmvae.diffusion.convert import official_to_model  # noqa: E402
from vfmvae.diffusion.registry import diffusion_config  # noqa: E402
from vfmvae.training.compile import compile_diffusion  # noqa: E402


def _official_class(folder: Path):
    for name in (
        "fairscale",
        "fairscale.nn",
        "fairscale.nn.model_parallel",
        "fairscale.nn.model_parallel.initialize",
        "fairscale.nn.model_parallel.layers",
    ):
        sys.modules.setdefault(name, types.ModuleType(name))
    init = sys.modules["fairscale.nn.model_parallel.initialize"]
    init.get_model_parallel_world_size = lambda: 1  # type: ignore[attr-defined]
    layers = sys.modules["fairscale.nn.model_parallel.layers"]
    for cls in ("ColumnParallelLinear", "RowParallelLinear", "ParallelEmbedding"):
        setattr(layers, cls, torch.nn.Linear)
    sys.path.insert(0, str(folder))
    from models.lightningdit import LightningDiT  # type: ignore

    return LightningDiT


# largest differences that still mean "the same computation": float32 (rounding order, fused vs for-each AdamW)
# and bf16 autocast (bf16 rounding of every matmul input; a weight moves at most about lr per Adam step, so after
# one step the two can differ by up to 2 lr where a gradient's sign differs)
TOLERANCES = {
    "fp32": {"output": 1e-5, "loss": 1e-5, "weight": 1e-6, "velocity": 1e-4},
    "bf16": {"output": 5e-2, "loss": 1e-2, "weight": 4.1e-4, "velocity": 1e-1},
}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_time(step, steps: int, device: torch.device, warmup: int = 1) -> float:
    for _ in range(warmup):  # allocations, optimizer state, and with --compile the compilation
        step()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return (time.perf_counter() - start) / steps


def _model_only_step(model, opt, x, y, loss_fn):
    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model, x, y).backward()
        opt.step()

    return step


def _official_whole_step(model, ema, x, y, loss_fn, decay=0.9999):
    """The sequence of the official train.py's loop body, written out (its code is not used here): torch's default
    AdamW (for-each kernels on CUDA too: train.py passes neither fused nor foreach)."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0)
    pairs = list(zip(ema.parameters(), model.parameters()))

    def step():
        loss = loss_fn(model, x, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for e, q in pairs:
                e.mul_(decay).add_(q.data, alpha=1 - decay)
        loss.item()

    return step


def _our_whole_step(model, x, y, loss_fn):
    from vfmvae.training import EMA, fused_optimizer_supported, optimizer_step

    opt = torch.optim.AdamW(
        model.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0, fused=fused_optimizer_supported(x.device)
    )
    ema = EMA(model, halflife_images=len(y) * math.log(0.5) / math.log(0.9999), rampup_ratio=None)
    seen = [0]

    def step():
        result = optimizer_step(
            model, opt, [(x, y)], lambda m, b: loss_fn(m, *b), batch_size_of=lambda b: len(b[1]), grad_clip=1.0
        )
        seen[0] += len(y)
        ema.update(model, seen[0], len(y), applied=result.applied_t)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", type=Path, required=True, help="a clone of hustvl/LightningDiT")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--depth", type=int, default=28, help="fewer blocks for a quick check (XL has 28)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast, as both train")
    p.add_argument("--compile", action="store_true", help="each project's torch.compile (see the docstring)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1; 3 with --compile)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    warmup = args.warmup if args.warmup is not None else (3 if args.compile else 1)
    tolerance = TOLERANCES[args.precision]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    torch.manual_seed(0)
    official_cls = _official_class(args.official)
    kwargs = dict(
        input_size=16,
        patch_size=1,
        in_channels=32,
        hidden_size=1152,
        depth=args.depth,
        num_heads=16,
        mlp_ratio=4.0,
        class_dropout_prob=0.1,
        num_classes=1000,
        learn_sigma=False,
        use_qknorm=True,
        use_swiglu=True,
        use_rope=True,
        use_rmsnorm=True,
        wo_shift=False,
    )
    theirs = official_cls(**kwargs).to(device)
    with torch.no_grad():  # zero-initialised branches would make both outputs zero
        for param in theirs.parameters():
            if param.requires_grad:
                param.add_(0.02 * torch.randn_like(param))
    ours = official_to_model(
        {k: v.cpu() for k, v in theirs.state_dict().items()},
        diffusion_config("lightningdit-xl/1", depth=args.depth),
        source="official",
    ).to(device)
    theirs.eval()
    x = torch.randn(args.batch, 32, 16, 16, device=device)
    t = torch.rand(args.batch, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    with torch.no_grad(), autocast:
        diff = float((ours.forward_native(x, t, y).sample.float() - theirs(x, t, y).float()).abs().max())
    cfg = TransportConfig(time_sampling="lognormal", cosine_weight=1.0)
    noise = torch.randn_like(x)

    def loss_ours(model, x, y):
        with autocast:
            return training_loss(model, x, y, cfg, t=t, noise=noise).loss.mean()

    def loss_theirs(model, x, y):  # the same objective in the official time convention
        tt = 1 - t
        x_t = tt.view(-1, 1, 1, 1) * x + (1 - tt.view(-1, 1, 1, 1)) * noise
        target = x - noise
        with autocast:  # accelerate's mixed precision: autocast around the model's forward
            pred = model(x_t, tt, y)
        pred = pred.float()
        mse = (pred - target).pow(2).mean((1, 2, 3))
        cos = 1 - torch.nn.functional.cosine_similarity(pred, target, dim=1).mean((1, 2))
        return (mse + cos).mean()

    with torch.no_grad():
        loss_diff = abs(float(loss_ours(ours, x, y)) - float(loss_theirs(theirs, x, y)))
    # one model (and its optimizer state) in memory at a time: XL with AdamW and EMA takes about 14 GB in float32;
    # the initial and the once-stepped weights wait on disk
    scratch = Path(tempfile.mkdtemp(prefix="ldit-reference-"))
    save_file({k: v.cpu() for k, v in ours.state_dict().items()}, str(scratch / "initial.safetensors"))
    our_config = ours.config
    del ours
    theirs.train()
    theirs.y_embedder.dropout_prob = 0.0  # no random label drops while timing
    initial = {k: v.clone() for k, v in theirs.state_dict().items()}
    opt_theirs = torch.optim.AdamW(
        [q for q in theirs.parameters() if q.requires_grad], lr=2e-4, betas=(0.9, 0.95), weight_decay=0
    )
    model_only_theirs = _step_time(_model_only_step(theirs, opt_theirs, x, y, loss_theirs), args.steps, device, warmup)
    del opt_theirs
    theirs.zero_grad(set_to_none=True)
    theirs.load_state_dict(initial)
    del initial
    gc.collect()
    whole_theirs = _official_whole_step(theirs, copy.deepcopy(theirs).requires_grad_(False), x, y, loss_theirs)
    whole_theirs()  # the first whole step, from the common initial weights, for the equality check below
    save_file(
        official_to_model(
            {k: v.cpu() for k, v in theirs.state_dict().items()}, our_config, source="official"
        ).state_dict(),
        str(scratch / "after_official.safetensors"),
    )
    with torch.no_grad(), autocast:
        theirs.eval()
        velocity_theirs = theirs(x, t, y).float().clone()
        theirs.train()
    sec_whole_theirs = _step_time(whole_theirs, args.steps, device, warmup)
    del theirs, whole_theirs
    gc.collect()

    ours = DiffusionTransformer(our_config).to(device)
    ours.load_state_dict(load_file(str(scratch / "initial.safetensors")))
    if args.compile:
        compile_diffusion(ours)  # run.compile: true (training/compile.py): the blocks, fullgraph, inductor
    ours.train()
    ours.y_embedder.dropout = 0.0
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0)
    model_only_ours = _step_time(_model_only_step(ours, opt_ours, x, y, loss_ours), args.steps, device, warmup)
    del opt_ours
    ours.zero_grad(set_to_none=True)
    ours.load_state_dict(load_file(str(scratch / "initial.safetensors")))
    whole_ours = _our_whole_step(ours, x, y, loss_ours)
    whole_ours()
    after_theirs = load_file(str(scratch / "after_official.safetensors"), device=str(device))
    weight_diff = max(float((v - after_theirs[k]).abs().max()) for k, v in ours.state_dict().items())
    del after_theirs
    shutil.rmtree(scratch)
    with torch.no_grad(), autocast:
        ours.eval()
        velocity_diff = float((ours.forward_native(x, t, y).sample.float() - velocity_theirs).abs().max())
        ours.train()
    sec_whole_ours = _step_time(whole_ours, args.steps, device, warmup)
    emit(
        {
            "benchmark": "lightningdit_reference",
            "depth": args.depth,
            "batch": args.batch,
            "device": str(device),
            "precision": args.precision,
            "compile": args.compile,
            "max_abs_output_diff": diff,
            "loss_diff": loss_diff,
            "model_only": {
                "sec_per_step_ours": round(model_only_ours, 3),
                "sec_per_step_official": round(model_only_theirs, 3),
                "speedup": round(model_only_theirs / model_only_ours, 3),
            },
            "whole_step": {
                "sec_per_step_ours": round(sec_whole_ours, 3),
                "sec_per_step_official": round(sec_whole_theirs, 3),
                "speedup": round(sec_whole_theirs / sec_whole_ours, 3),
                "max_abs_weight_diff_after_one_step": weight_diff,
                "lr": 2e-4,
                "max_abs_velocity_diff_after_one_step": velocity_diff,
            },
        },
        args.json,
    )
    # equal outputs, or the timing compares different computations (float32 rounding aside: the two compute the loss
    # in a different order, and the fused and for-each AdamW may differ in the last bits)
    measured = {"output": diff, "loss": loss_diff, "weight": weight_diff, "velocity": velocity_diff}
    if any(measured[name] > limit for name, limit in tolerance.items()):
        raise SystemExit("outputs differ from the official implementation: the timing is void")


if __name__ == "__main__":
    main()
