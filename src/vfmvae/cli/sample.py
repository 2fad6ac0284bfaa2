"""`vfmvae sample`: class-conditional samples from a trained diffusion model, decoded by the tokenizer."""

from __future__ import annotations

import argparse
from pathlib import Path

from vfmvae.cli.common import positive_int


def _interval(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--interval {text!r}: expected LOW,HIGH, e.g. 0,0.8") from None
    return low, high


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "sample", help="generate samples (PNGs, ADM .npz, grid) from a diffusion model",
        description="Sample N images: OUT/images/*.png, OUT/samples.npz (arr_0 uint8 NHWC, arr_1 labels: the ADM "
        "evaluator's layout, ready for `vfmvae eval gen`), OUT/grid.png and OUT/settings.json. Sample i uses seed "
        "(--seed, i), so images do not depend on --batch-size or the number of processes; re-running the same command "
        "keeps finished samples. Time runs from t=1 (noise) to t=0 (data). "
        "Paper settings: LightningDiT --sampler euler --steps 249 --shift 3.333 --cfg 4 --interval 0,0.875 "
        "--guide-channels 3; REG --sampler sde --steps 250 --cfg 4 --interval 0,0.8. "
        "Multi-GPU: torchrun --nproc-per-node=8 -m vfmvae sample --num-samples 50000 ...",
    )
    s.add_argument("--diffusion", type=Path, required=True, help="DiffusionTransformer folder (a training export)")
    s.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder (default: the one named in latent_stats.json)")
    s.add_argument("--latent-stats", type=Path, default=None,
                   help="latent mean/std (default: DIFFUSION/latent_stats.json; also cache.json or official latents_stats.pt)")
    s.add_argument("--num-samples", "--num", dest="num", type=positive_int, required=True,
                   help="number of samples (under torchrun write --num-samples: torchrun reads --num as its --numa-binding)")
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument("--sampler", choices=("euler", "heun", "sde"), default="euler")
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")
    s.add_argument("--interval", type=_interval, default=(0.0, 1.0), help="guide while LOW <= t <= HIGH (default 0,1)")
    s.add_argument("--guide-channels", type=int, default=None,
                   help="guide only the first K latent channels (3 = official LightningDiT behaviour); default all")
    s.add_argument("--cls-cfg", type=float, default=None, help="REG class-token guidance scale (default: --cfg)")
    s.add_argument("--shift", type=float, default=1.0, help="ODE time-grid shift (>1 spends more steps near noise)")
    s.add_argument("--classes", default="balanced", help="balanced (default), random, or a list like 1,5,9")
    s.add_argument("--batch-size", type=positive_int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=None, help="default: cuda if available (the local rank's GPU under torchrun)")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vfmvae import distributed as dist_utils
    from vfmvae.checkpoint.digest import model_folder_digest
    from vfmvae.sampling.generate import generate_samples
    from vfmvae.sampling.pipeline import SamplerConfig, VFMVAEPipeline

    device = dist_utils.init_distributed(device=args.device)
    config = SamplerConfig(sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg, interval=args.interval,
                           guide_channels=args.guide_channels, cls_cfg_scale=args.cls_cfg, shift=args.shift)
    pipe = VFMVAEPipeline.from_pretrained(args.diffusion, args.tokenizer, args.latent_stats, device=device)
    sources = {"diffusion": str(args.diffusion), "tokenizer": str(args.tokenizer) if args.tokenizer else None}
    # a resume checks the models' contents too, not just their paths (a folder replaced at the same path)
    sources.update(diffusion_sha256=model_folder_digest(args.diffusion),
                   tokenizer_sha256=model_folder_digest(pipe.tokenizer_dir) if pipe.tokenizer_dir else None)
    result = generate_samples(pipe, args.out, args.num, config=config, classes=args.classes, seed=args.seed,
                              batch_size=args.batch_size, sources=sources)
    dist_utils.print0(f"{args.num} samples in {args.out}/images ({result['images_per_s']:.2f} images/s on rank 0); "
                      f"ADM batch: {result.get('npz')}; grid: {result.get('grid')}")
    return 0
