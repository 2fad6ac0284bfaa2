"""Side by side: our VFM-VAE tokenizer against the official tianciB/VFM-VAE Generator, same weights, same inputs.

The official code runs from a clone outside the repository, in its own environment (it pins transformers 4.50.1
and needs setuptools < 81 for pkg_resources; run it with the official environment's Python):

    git clone https://github.com/tianciB/VFM-VAE /tmp/VFM-VAE
    python -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        transformers==4.50.1 timm==1.0.31 "setuptools<81" pyyaml safetensors einops scipy
    python tokenizer_reference.py --official /tmp/VFM-VAE --official-python /tmp/refenv/bin/python --batch 2 --iters 2

First `reference/vfmvae_official_worker.py` (with the official Python) builds the Generator from the released
stage-1 config at 256 px (random SigLIP2-L/16-512 tower, num_fp16_res 0, float32), times `encode` (posterior
moments) and `decode`, and writes its weights, inputs and outputs. Then this process imports those weights with
`vfmvae convert official-tokenizer`'s code, checks that our moments and images equal the official ones, and
times the same calls. The two never run at the same time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch
from common import emit
from safetensors.torch import load_file

from vfmvae.tokenizer.convert import convert_official_tokenizer

HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-4  # absolute, as the tokenizer parity tests


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", type=Path, required=True, help="a clone of tianciB/VFM-VAE")
    p.add_argument("--official-python", type=Path, required=True, help="the Python of the official environment")
    p.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/vfmvae-tokenizer-reference"),
        help="scratch folder (about 2 GB: a random SigLIP2-L and the official weights)",
    )
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    subprocess.run(
        [
            str(args.official_python),
            str(HERE / "reference" / "vfmvae_official_worker.py"),
            "--official",
            str(args.official),
            "--work",
            str(args.work),
            "--batch",
            str(args.batch),
            "--iters",
            str(args.iters),
            "--size",
            str(args.size),
        ],
        check=True,
    )
    official = json.loads((args.work / "official_timings.json").read_text())
    ref = load_file(args.work / "official_outputs.safetensors")

    model = convert_official_tokenizer(
        args.work / "config.yaml", args.work / "official_G.safetensors", args.work / "siglip2-large-patch16-512"
    ).eval()
    images, z = ref["images"], ref["z"]
    ours, outputs = {}, {}
    with torch.no_grad():
        for name, fn in (
            ("encode", lambda: model.encode_moments(images).moments),
            ("decode", lambda: model.decode(z).sample),
        ):
            outputs[name] = fn()
            start = time.perf_counter()
            for _ in range(args.iters):
                fn()
            ours[f"{name}_images_per_s"] = args.batch * args.iters / (time.perf_counter() - start)
    rows = {}
    for name in ("encode", "decode"):
        key = f"{name}_images_per_s"
        rows[name] = {
            "ours_images_per_s": round(ours[key], 4),
            "official_images_per_s": round(official[key], 4),
            "speedup": round(ours[key] / official[key], 3),
            "max_abs_diff": float((outputs[name] - ref[name]).abs().max()),
            "output_scale": float(ref[name].abs().max()),
        }
        rows[name]["outputs_match"] = rows[name]["max_abs_diff"] <= TOLERANCE
    emit(
        {
            "benchmark": "tokenizer_reference",
            "image_size": args.size,
            "batch": args.batch,
            "iters": args.iters,
            "official_torch": official["torch"],
            "tolerance": TOLERANCE,
            **rows,
        },
        args.json,
    )
    if not all(row["outputs_match"] for row in rows.values()):
        raise SystemExit("outputs differ from the official implementation beyond the tolerance: the timing is void")


if __name__ == "__main__":
    main()
