"""Run by `tokenizer_reference.py` with the *official* VFM-VAE environment's Python (transformers 4.50.1,
setuptools < 81): builds the official Generator at full size from the released stage-1 config, with a random
SigLIP2-L/16-512 vision tower, and times its encode and decode. Nothing of the official code is stored in this
repository; it is imported from the clone given with --official.

Writes into --work: the official weights and config (for our converter), the inputs, the outputs and the timings.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

STAGE_1 = "configs/vfm_vae_f16d32_siglip2_stage_1_weak_alignment.yaml"


def siglip2_large(folder: Path) -> None:
    """A randomly initialised SigLIP2-L/16 vision tower at 512 px (the released model's VFM), saved once."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    if (folder / "config.json").exists():
        return
    cfg = SiglipVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=512,
        patch_size=16,
    )
    torch.manual_seed(0)
    SiglipVisionModel(cfg).save_pretrained(folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--official", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    vfm_dir = work / "siglip2-large-patch16-512"  # the official dispatcher reads 'siglip2' and 'patch16' in the name
    siglip2_large(vfm_dir)

    sys.path.insert(0, str(args.official.resolve()))
    os.chdir(args.official)
    import dnnlib  # the official package

    full = yaml.safe_load(Path(STAGE_1).read_text())
    kwargs = copy.deepcopy(full["G_kwargs"])
    loss = full["loss_kwargs"]
    kwargs.update(
        vfm_name=str(vfm_dir),
        num_fp16_res=0,
        img_resolution=args.size,
        label_dim=1000,
        conditional=full["training_set_kwargs"]["conditional"],
        label_type=full["training_set_kwargs"]["label_type"],
        use_kl_loss=loss["kl_loss_weight"] > 0,
        use_vf_loss=loss["vf_loss_weight"] > 0,
        use_adaptive_vf_loss=loss["use_adaptive_vf_loss"],
        use_equivariance_regularization=loss["use_equivariance_regularization"],
        use_multiscale_output=len(loss["multiscale_block_indices"]) > 0,
    )
    torch.manual_seed(0)
    G = dnnlib.util.construct_class_by_name(**kwargs).eval().requires_grad_(False)
    torch.manual_seed(1)
    with torch.no_grad():  # zero-initialised branches (noise strengths, layer scales) must matter
        for param in G.parameters():
            if param.is_floating_point():
                param.add_(0.02 * torch.randn_like(param))
    save_file({k: v.contiguous() for k, v in G.state_dict().items()}, str(work / "official_G.safetensors"))
    config = {
        "training_set_kwargs": {
            "resolution": args.size,
            **{k: full["training_set_kwargs"][k] for k in ("conditional", "label_type")},
        },
        "G_kwargs": {**full["G_kwargs"], "vfm_name": str(vfm_dir), "num_fp16_res": 0},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))

    torch.manual_seed(2)
    images = torch.rand(args.batch, 3, args.size, args.size)
    torch.manual_seed(3)
    side = args.size // kwargs["resolution_compression_factor"]
    z = torch.randn(args.batch, kwargs["z_dimension"], side, side)
    timings, outputs = {}, {"images": images, "z": z}
    with torch.no_grad():
        for name, fn in (
            ("encode", lambda: G.encode(images, return_z_before_quantize=True)),
            ("decode", lambda: G.decode(z)),
        ):
            outputs[name] = fn()  # warm-up, and the output compared with ours
            start = time.perf_counter()
            for _ in range(args.iters):
                fn()
            timings[f"{name}_images_per_s"] = args.batch * args.iters / (time.perf_counter() - start)
    save_file({k: v.contiguous() for k, v in outputs.items()}, str(work / "official_outputs.safetensors"))
    trainable = sum(p.numel() for n, p in G.named_parameters() if not n.startswith("vfm_encoder.encoder"))
    (work / "official_timings.json").write_text(
        json.dumps(
            {**timings, "threads": torch.get_num_threads(), "torch": torch.__version__, "params_outside_vfm": trainable}
        )
    )
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
