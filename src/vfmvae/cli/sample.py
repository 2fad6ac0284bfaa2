"""`vfmvae sample`: class-conditional samples from a trained diffusion model, decoded by the tokenizer."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from vfmvae.cli.common import bounded_int, positive_int
from vfmvae.cli.parser import add_option
from vfmvae.limits import MAX_SAMPLER_STEPS, MAX_SAMPLES
from vfmvae.sampling.presets import PRESETS

PRESET_NAMES = tuple(PRESETS)


def _interval(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--interval {text!r}: expected LOW,HIGH, e.g. 0,0.8") from None
    return low, high


def _channels(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--guide-channels {text!r}: expected a positive channel count or all")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "sample",
        help="generate samples (PNGs, ADM .npz, grid) from a diffusion model",
        description="Sample N images: OUT/images/*.png, OUT/samples.npz (arr_0 uint8 NHWC, arr_1 labels: the ADM "
        "evaluator's layout, ready for `vfmvae eval gen`), OUT/grid.png and OUT/settings.json. Sample i uses seed "
        "(--seed, i), so images do not depend on --batch-size or the number of processes; re-running the same command "
        "keeps finished samples. Time runs from t=1 (noise) to t=0 (data). "
        "Sampler settings come from --preset (default: the preset recorded in the model's export by its recipe, "
        "DIFFUSION/sampler.json); any sampler option given explicitly overrides the preset's value. Presets (the "
        "official settings, one per released checkpoint): reg-sde (REG-SiT-XL/1, 640 epochs) = --sampler sde "
        "--steps 250 --cfg 4 --cls-cfg 4 --interval 0,0.8; reg-sde-64ep (64 epochs) = the same with --cfg 2; "
        "reg-sde-80ep (80 epochs, published without guidance) "
        "= the same with --cfg 1; lightningdit (LightningDiT-XL/1, 560 epochs) = --sampler euler --steps 249 "
        "--shift 3.333 (1/0.3) --cfg 4 --interval 0,0.875 --guide-channels 3; lightningdit-64ep = the same with "
        "--cfg 6; none = euler, 50 steps, no guidance. Without guidance (the paper's w/o-CFG figures): add --cfg 1. "
        "Labels are uniformly random (seeded) by default, as the official sample.py files draw them. PNGs are "
        "written as the official decode tool does (torchvision to_pil_image: uint8 = trunc(255 x)). "
        "Multi-GPU: torchrun --nproc-per-node=8 -m vfmvae sample --num-samples 50000 ...",
    )
    s.add_argument(
        "--diffusion", type=Path, required=True, help="DiffusionTransformer folder (a training export) or Hub id"
    )
    s.add_argument(
        "--tokenizer", type=Path, default=None, help="tokenizer folder (default: the one named in latent_stats.json)"
    )
    s.add_argument(
        "--latent-stats",
        type=Path,
        default=None,
        help="latent mean/std (default: DIFFUSION/latent_stats.json; also cache.json or official latents_stats.pt)",
    )
    # --num: the old spelling, which torchrun itself takes as its --numa-binding
    add_option(
        s,
        "--num-samples",
        deprecated=("--num",),
        dest="num",
        type=bounded_int(1, MAX_SAMPLES),
        required=True,
        metavar="N",
        help="number of samples, over all processes",
    )
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument(
        "--preset",
        choices=("none", *PRESET_NAMES),
        default=None,
        help="official sampler settings (default: the model's recorded preset, else none)",
    )
    s.add_argument(
        "--sampler",
        choices=("euler", "heun", "sde"),
        default=None,
        help="ODE (euler, heun) or SDE (Euler-Maruyama) solver (default: the preset's, euler for none)",
    )
    s.add_argument(
        "--steps",
        type=bounded_int(1, MAX_SAMPLER_STEPS),
        default=None,
        help="sampler steps (default: the preset's, 50 for none)",
    )
    s.add_argument(
        "--cfg", type=float, default=None, help="classifier-free guidance scale (1 = none; default: the preset's)"
    )
    s.add_argument(
        "--interval",
        type=_interval,
        default=None,
        help="guide while LOW <= t <= HIGH (default: the preset's, else 0,1)",
    )
    s.add_argument(
        "--guide-channels",
        type=_channels,
        default=None,
        help="guide only the first K latent channels (3 = official LightningDiT behaviour), or all; "
        "default: the preset's, else all",
    )
    s.add_argument(
        "--cls-cfg", type=float, default=None, help="REG class-token guidance scale (default: the preset's, else --cfg)"
    )
    s.add_argument(
        "--shift",
        type=float,
        default=None,
        help="ODE time-grid shift (>1 spends more steps near noise; default: the preset's, else 1)",
    )
    s.add_argument(
        "--classes",
        default="random",
        help="random (seeded, uniform), balanced, or a list cycled over the samples: class ids like 1,5,9, or the "
        "class names the model records (DIFFUSION/class_names.json, from an image-folder cache) like cats,dogs",
    )
    s.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help="images per forward pass PER PROCESS (does not change the images)",
    )
    s.add_argument("--seed", type=int, default=0, help="base seed: sample i uses seed (SEED, i)")
    s.add_argument("--device", default=None, help="default: cuda if available (the local rank's GPU under torchrun)")
    s.set_defaults(func=run)


def sampler_settings(args: argparse.Namespace, diffusion_dir: Path | None = None):
    """(preset name or None, SamplerConfig): the preset (--preset, else the export's), explicit options on top.
    `diffusion_dir`: the folder --diffusion resolved to (a Hub id's snapshot); default --diffusion itself."""
    from vfmvae.sampling.pipeline import read_preset
    from vfmvae.sampling.presets import resolve_sampler_config

    preset = args.preset if args.preset is not None else read_preset(diffusion_dir or args.diffusion)
    channels = args.guide_channels if args.guide_channels != "all" else None
    config = resolve_sampler_config(
        preset,
        sampler=args.sampler,
        steps=args.steps,
        cfg_scale=args.cfg,
        interval=args.interval,
        guide_channels=channels,
        cls_cfg_scale=args.cls_cfg,
        shift=args.shift,
    )
    if args.guide_channels == "all":  # explicit: every channel, whatever the preset says
        config = dataclasses.replace(config, guide_channels=None)
    return preset, config


def run(args: argparse.Namespace) -> int:
    from vfmvae import distributed as dist_utils
    from vfmvae.checkpoint.digest import model_folder_digest
    from vfmvae.checkpoint.pretrained import resolve_model_dir
    from vfmvae.sampling.generate import generate_samples
    from vfmvae.sampling.pipeline import VFMVAEPipeline

    sampler_settings(args)  # bad sampler options fail before a Hub download
    diffusion_dir = resolve_model_dir(args.diffusion, what="--diffusion")  # a Hub id: its snapshot folder
    preset, config = sampler_settings(args, diffusion_dir)
    device = dist_utils.init_distributed(device=args.device)
    pipe = VFMVAEPipeline.from_pretrained(diffusion_dir, args.tokenizer, args.latent_stats, device=device)
    sources = {
        "diffusion": str(args.diffusion),
        "tokenizer": str(args.tokenizer) if args.tokenizer else None,
        "preset": preset or "none",
    }
    # a resume checks the models' contents too, not just their paths (a folder replaced at the same path)
    sources.update(
        diffusion_sha256=model_folder_digest(diffusion_dir),
        tokenizer_sha256=model_folder_digest(pipe.tokenizer_dir) if pipe.tokenizer_dir else None,
    )
    result = generate_samples(
        pipe,
        args.out,
        args.num,
        config=config,
        classes=args.classes,
        seed=args.seed,
        batch_size=args.batch_size,
        sources=sources,
    )
    dist_utils.print0(
        f"{args.num} samples in {args.out}/images ({result['images_per_s']:.2f} images/s on rank 0); "
        f"ADM batch: {result.get('npz')}; grid: {result.get('grid')}"
    )
    return 0
