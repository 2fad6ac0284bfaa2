"""`vfmvae align metric | transforms | extract | report`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vfmvae.cli.common import image_side, resolve_config, write_json
from vfmvae.cli.parser import add_option


def register(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser(
        "align",
        help="representation alignment: CKNNA and SE-CKNNA",
        description="CKNNA exactly as the official VFM-VAE code computes it (adapted from "
        "platonic-rep), the semantic-equivariant image set, feature extraction and SE-CKNNA reports.",
    )
    asub = a.add_subparsers(dest="align_command", metavar="SUBCOMMAND", required=True)

    m = asub.add_parser(
        "metric",
        help="CKNNA (and mutual k-NN, CKA, unbiased CKA) between two feature files",
        description="Feature files: .safetensors with a tensor `features` (N x D, rows paired), or "
        "the official .pt layout ({'features': ...}) read with weights_only=True.",
    )
    m.add_argument("--a", type=Path, required=True, help="first feature file (.safetensors or official .pt)")
    m.add_argument("--b", type=Path, required=True, help="second feature file, rows paired with --a's")
    m.add_argument("--topk", type=int, default=10, help="k: nearest neighbours per row")
    m.add_argument(
        "--preprocess",
        choices=("official", "none"),
        default="official",
        help="official: 95th-percentile clipping per file + row L2 normalisation; none: raw features",
    )
    m.add_argument("--json", type=Path, default=None, help="also write the results as JSON here (default: not written)")
    m.set_defaults(func=run_metric)

    t = asub.add_parser(
        "transforms",
        help="write the semantic-equivariant image set with a JSON manifest",
        description="clean/ (ADM centre crop), noise_0.050 ... noise_0.200/ (per-image seeds) and "
        "manifest.json with each image's rotation (multiple of 90) and scale (0.25-1.0).",
    )
    add_option(
        t,
        "--data",
        deprecated=("--images",),
        type=Path,
        required=True,
        help="image folder (flat or with class subfolders)",
    )
    t.add_argument("--out", type=Path, required=True, help="output folder (clean/, noise_*/, manifest.json)")
    t.add_argument("--size", type=image_side, default=256, help="image side in pixels (ADM centre crop)")
    t.set_defaults(func=run_transforms)

    e = asub.add_parser(
        "extract",
        help="one feature vector per image (mean over patch tokens)",
        description="--source vfm:NAME | tokenizer:DIR | diffusion:DIR@BLOCK (BLOCK: 0 = embedding, "
        "1..depth, or proj; t = 0.5, null label). DINOv2 references get the official DINOv2 input "
        "(224 px bicubic; equivariance: bilinear to int(224 s) and reflect padding to a multiple of 14).",
    )
    e.add_argument("--source", required=True, help="vfm:NAME, tokenizer:DIR or diffusion:DIR@BLOCK")
    add_option(
        e,
        "--data",
        deprecated=("--images",),
        type=Path,
        required=True,
        help="image folder or an `align transforms` output",
    )
    e.add_argument("--out", type=Path, required=True, help="output .safetensors (a tensor `features`, N x D)")
    e.add_argument(
        "--transform", default="clean", help="clean, equivariance, noise_0.050, ... (with an `align transforms` output)"
    )
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    e.add_argument(
        "--posterior",
        choices=("sample", "mean"),
        default="sample",
        help="tokenizer sources: a posterior sample per image (as the official extractor) or the mean",
    )
    e.set_defaults(func=run_extract)

    r = asub.add_parser(
        "report",
        help="SE-CKNNA table, plot and JSON for several models",
        description="Keys of the config (vfmvae.alignment.AlignReportConfig): images, out, "
        "reference, models, transformations, topk, device, pairing (same: reference and model on the "
        "same T(x), the paper's definition, default; clean-reference: reference on clean x), "
        "posterior (sample | mean). SE-CKNNA = mean of CKNNA over the transformations except clean.",
    )
    # --config: the spelling before every config-taking command used --recipe
    add_option(
        r,
        "--recipe",
        deprecated=("--config",),
        type=Path,
        default=None,
        help="report config YAML (keys above; default: none, every key from --set)",
    )
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable), e.g. --set topk=20",
    )
    r.set_defaults(func=run_report_cmd)


def _load(path: Path):
    import torch
    from safetensors.torch import load_file

    from vfmvae.checkpoint.torch_files import load_weights_only

    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    if path.suffix == ".safetensors":
        tensors = load_file(str(path))
        if "features" not in tensors:
            raise ValueError(f"{path}: no tensor named 'features'")
        return tensors["features"]
    data = load_weights_only(path, "features file")
    if not isinstance(data, dict) or "features" not in data:
        raise ValueError(f"{path}: expected a dict with 'features' (the official .pt layout)")
    return torch.as_tensor(data["features"])


def run_metric(args: argparse.Namespace) -> int:
    from vfmvae.alignment import all_metrics

    res = all_metrics(_load(args.a), _load(args.b), topk=args.topk, preprocess_mode=args.preprocess)
    res.update({"topk": args.topk, "preprocess": args.preprocess, "a": str(args.a), "b": str(args.b)})
    print(
        f"CKNNA {res['cknna']:.6f} | mutual-kNN {res['mutual_knn']:.4f} | CKA {res['cka']:.4f} | "
        f"unbiased CKA {res['unbiased_cka']:.4f}"
    )
    write_json(args.json, res)
    return 0


def run_transforms(args: argparse.Namespace) -> int:
    from vfmvae.alignment import make_transformed_set

    manifest = make_transformed_set(args.data, args.out, args.size)
    print(
        f"wrote {manifest['num_images']} images x {len(manifest['transformations']) - 1} stored variants "
        f"to {args.out} (manifest.json holds the equivariance records)"
    )
    return 0


def run_extract(args: argparse.Namespace) -> int:
    from vfmvae.alignment.extract import extract_features

    info = extract_features(
        args.source, args.data, args.out, transform=args.transform, device=args.device, posterior=args.posterior
    )
    print(f"wrote {info['num']} x {info['dim']} features of {info['source']} [{info['transform']}] to {info['out']}")
    return 0


def run_report_cmd(args: argparse.Namespace) -> int:
    from vfmvae.alignment import AlignReportConfig, run_report

    cfg = resolve_config(AlignReportConfig, args, {})
    res = run_report(cfg)
    print(res["markdown"])
    print(f"pairing: {cfg.pairing}; SE-CKNNA = mean over {', '.join(res['protocol']['se_cknna_over']) or 'none'}")
    print(f"plot: {res['plot']}; JSON: {Path(cfg.out) / 'se_cknna.json'}")
    return 0
