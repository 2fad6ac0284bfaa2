"""Tokenizer training-step throughput, full-size architecture (random SigLIP2-L, f16d32 decoder, random
DINO ViT-S/16 discriminator, LPIPS with a random VGG16 trunk), stage-0 losses (adaptive VF weight included).

    python tokenizer_train_step.py --batch 2 --steps 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from common import emit

from vfmvae.config import load_config
from vfmvae.data.synthetic import SyntheticConfig, write_synthetic_dataset
from vfmvae.tokenizer_training.config import TokenizerTrainConfig
from vfmvae.tokenizer_training.trainer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--precision", default="fp32" if not torch.cuda.is_available() else "bf16")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic_dataset(
            SyntheticConfig(out=tmp / "data", num=max(8, args.batch * args.steps), size=256), progress=False
        )
        import torchvision
        from safetensors.torch import save_file

        vgg = {f"features.{k}": v for k, v in torchvision.models.vgg16().features.state_dict().items()}
        save_file(vgg, tmp / "vgg16-random.safetensors")
        overrides = [
            f"data.source={tmp / 'data' / 'images'}",
            "data.num_workers=0",
            "model.vfm.random_init=true",
            f"loss.lpips_weights={tmp / 'vgg16-random.safetensors'}",
            "disc.weights=null",
            f"run.dir={tmp / 'run'}",
            f"run.batch_size={args.batch}",
            f"run.total_images={args.batch * args.steps}",
            f"run.precision={args.precision}",
            f"run.log_every_images={args.batch}",
            f"run.grid_every_images={args.batch * 100_000}",
            f"run.checkpoint_every_images={args.batch * 100_000}",
        ]
        cfg = load_config(TokenizerTrainConfig, ROOT / "configs" / "tokenizer" / "stage0.yaml", overrides)
        train_tokenizer(cfg, resume="none", progress=False)
        records = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    # sec_per_step is cumulative; the steady-state rate excludes the first (warm-up) step
    t1, tn = records[0]["sec_per_step"] * 1, records[-1]["sec_per_step"] * len(records)
    per_step = (tn - t1) / max(1, len(records) - 1)
    emit(
        {
            "benchmark": "tokenizer_train_step",
            "batch": args.batch,
            "precision": args.precision,
            "sec_per_step": round(per_step, 2),
            "images_per_s": round(args.batch / per_step, 3),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
