"""`vfmvae eval gen | ref-stats | recon`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vfmvae.cli.common import positive_int, write_json
from vfmvae.cli.parser import add_option

_INCEPTION_HELP = (
    "FID Inception weights: local weights-inception-2015-12-05-6726825d.pth (torch-fidelity's), its URL when online, "
    "or random-init:SEED (seeded random weights, as recipes accept: the pipeline runs, the values compare with nothing)"
)


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "eval",
        help="evaluate samples (ADM protocol) and reconstructions",
        description="Evaluation by the ADM protocol (openai/guided-diffusion evaluator conventions) "
        "with the torch-fidelity Inception port; reconstruction metrics for tokenizers.",
    )
    esub = e.add_subparsers(dest="eval_command", metavar="SUBCOMMAND", required=True)

    g = esub.add_parser(
        "gen",
        help="FID, sFID, Inception Score, precision, recall of generated samples",
        description="Compare samples (ADM .npz with arr_0 uint8 NHWC, or a folder of PNGs) with an "
        "ADM reference batch (e.g. VIRTUAL_imagenet256_labeled.npz: mu, sigma, mu_s, sigma_s, arr_0).",
    )
    g.add_argument("--samples", type=Path, required=True, help="sample .npz or image folder")
    g.add_argument("--ref", type=Path, required=True, help="reference batch .npz (ADM layout)")
    g.add_argument("--inception", required=True, help=_INCEPTION_HELP)
    _common(g)
    g.set_defaults(func=run_gen)

    r = esub.add_parser(
        "ref-stats",
        help="build an ADM-layout reference batch from any image set (e.g. a recipe's eval.ref)",
        description="Write mu/sigma (pool3), mu_s/sigma_s (sFID features) and arr_0 (up to "
        "--max-images images, used for precision/recall) in the layout of the ADM reference batches. Without "
        "--inception, only arr_0: a reference batch of images for a recipe's eval.ref, whose statistics the "
        "evaluator computes with its own Inception (eval.inception), e.g. "
        "`vfmvae eval ref-stats --data heldout/images --out ref.npz --max-images 1000`.",
    )
    add_option(r, "--data", deprecated=("--images",), type=Path, required=True, help="image folder or .npz (arr_0)")
    r.add_argument("--out", type=Path, required=True, help="output .npz")
    r.add_argument(
        "--inception",
        default=None,
        help=_INCEPTION_HELP + " (default: none, the batch holds the images only, for a recipe's eval.ref)",
    )
    r.add_argument("--max-images", type=int, default=10000, help="images kept in arr_0 (10000 as ADM)")
    _common(r)
    r.set_defaults(func=run_ref_stats)

    c = esub.add_parser(
        "recon",
        help="rFID, rIS, PSNR, SSIM, LPIPS of reconstructions",
        description="Either compare --reference and --reconstructions folders (paired by relative "
        "path), or reconstruct --data with --tokenizer first (written to --out). rFID/rIS need "
        "--inception and LPIPS needs --lpips (VGG16 weights vgg16-397923af.pth); without them those "
        "metrics are reported as skipped.",
    )
    c.add_argument(
        "--reference",
        type=Path,
        help="folder of original (centre-cropped) images (default: none; with --reconstructions)",
    )
    c.add_argument(
        "--reconstructions",
        type=Path,
        help="folder of reconstructions with the same relative names (default: none; with --reference)",
    )
    c.add_argument(
        "--tokenizer",
        type=Path,
        help="tokenizer folder or Hub id: reconstruct --data first "
        "(default: none; instead of --reference/--reconstructions)",
    )
    c.add_argument("--data", type=Path, help="image folder to reconstruct with --tokenizer (default: none)")
    c.add_argument(
        "--out",
        type=Path,
        help="where --tokenizer writes inputs/ and images/ (a new or empty folder; default: a temporary folder, "
        "removed after scoring)",
    )
    c.add_argument(
        "--mode",
        action="store_true",
        help="with --tokenizer: decode the posterior mean instead of a "
        "posterior sample (default: off; the official tools/reconstruct/reconstruct.py samples z)",
    )
    c.add_argument("--seed", type=int, default=0, help="with --tokenizer: seed of the posterior samples")
    c.add_argument(
        "--crop",
        choices=("resize_center", "adm_center"),
        default="resize_center",
        help="with --tokenizer: how inputs are cut to the tokenizer's size: resize_center = torchvision "
        "Resize + CenterCrop as the official reconstruct.py, or the ADM centre crop",
    )
    c.add_argument("--inception", default=None, help=_INCEPTION_HELP + " (default: none, rFID and rIS skipped)")
    c.add_argument(
        "--lpips", default=None, help="VGG16 trunk weights for LPIPS (vgg16-397923af.pth; default: none, LPIPS skipped)"
    )
    _common(c)
    c.set_defaults(func=run_recon)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here (default: not written)")
    p.add_argument(
        "--batch-size", type=positive_int, default=64, help="images per Inception/metric forward pass (one process)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def _device(args: argparse.Namespace) -> str:
    import torch

    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _fmt(value) -> str:
    return "skipped" if value is None else f"{value:.4f}"


def run_gen(args: argparse.Namespace) -> int:
    from vfmvae.evaluation import evaluate_generation

    res = evaluate_generation(args.samples, args.ref, args.inception, device=_device(args), batch_size=args.batch_size)
    print(
        f"FID {_fmt(res['fid'])} | sFID {_fmt(res['sfid'])} | IS {_fmt(res['inception_score'])} | "
        f"precision {_fmt(res['precision'])} | recall {_fmt(res['recall'])} | {res['protocol']['num_samples']} samples"
    )
    write_json(args.json, res)
    return 0


def run_ref_stats(args: argparse.Namespace) -> int:
    from vfmvae.evaluation import build_reference
    from vfmvae.evaluation.generation import write_reference_images

    if args.inception is None:
        info = write_reference_images(args.data, args.out, max_images=args.max_images)
        print(
            f"wrote {args.out}: {info['num_kept_images']} of {info['num_images']} images in arr_0, no statistics "
            "(the evaluator computes them with its Inception); use it as eval.ref"
        )
        write_json(args.json, info)
        return 0
    info = build_reference(
        args.data,
        args.out,
        args.inception,
        device=_device(args),
        batch_size=args.batch_size,
        max_images=args.max_images,
    )
    print(f"wrote {args.out}: statistics of {info['num_images']} images, {info['num_kept_images']} kept in arr_0")
    write_json(args.json, info)
    return 0


def run_recon(args: argparse.Namespace) -> int:
    import contextlib

    with contextlib.ExitStack() as stack:
        return _run_recon(args, stack)


def _run_recon(args: argparse.Namespace, stack) -> int:
    from vfmvae.evaluation import evaluate_reconstruction

    if args.tokenizer is not None:
        if args.data is None:
            raise ValueError("--tokenizer needs --data (the images to reconstruct)")
        from vfmvae.checkpoint.atomic import locked_temporary_directory
        from vfmvae.tokenizer import VFMVAE
        from vfmvae.tokenizer.reconstruct import reconstruct_folder

        # without --out, a fresh temporary folder: a fixed default (./recon) would score an earlier run's files too;
        # one left by a killed run (SIGKILL skips the clean-up) is removed by the next run
        out = args.out or stack.enter_context(locked_temporary_directory("vfmvae-recon-"))
        model = VFMVAE.from_pretrained(args.tokenizer)
        info = reconstruct_folder(
            model,
            args.data,
            out,
            batch_size=min(args.batch_size, 16),
            device=_device(args),
            save_inputs=True,
            sample=not args.mode,
            seed=args.seed,
            crop=args.crop,
        )
        reference, reconstructions = out / "inputs", out / "images"
    else:
        if args.reference is None or args.reconstructions is None:
            raise ValueError("pass --reference and --reconstructions, or --tokenizer and --data")
        reference, reconstructions = args.reference, args.reconstructions
    res = evaluate_reconstruction(
        reference,
        reconstructions,
        inception=args.inception,
        lpips_weights=args.lpips,
        device=_device(args),
        batch_size=args.batch_size,
    )
    if args.tokenizer is not None:
        res["protocol"]["latent"] = info["latent"] + ("" if args.mode else f" (seed {args.seed})")
        res["protocol"]["inputs"] = (
            "torchvision Resize + CenterCrop to the tokenizer's size, as the official reconstruct.py"
            if args.crop == "resize_center"
            else "ADM centre crop to the tokenizer's size (--crop adm_center)"
        )
        res["protocol"]["uint8"] = info["uint8"]
    print(
        f"rFID {_fmt(res['rfid'])} | PSNR {_fmt(res['psnr'])} dB | SSIM {_fmt(res['ssim'])} | "
        f"LPIPS {_fmt(res['lpips'])} | rIS {_fmt(res['ris'])} | {res['protocol']['num_images']} images"
    )
    write_json(args.json, res)
    return 0
