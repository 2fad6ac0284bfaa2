"""Regenerate tests/data/official_tokenizer_tiny with the official VFM-VAE code.

Procedure (tests/data/official_tokenizer_tiny/README.md): a tiny random SigLIP vision tower, the official
``networks.generator.Generator`` built from the tiny ``config.yaml``, a seeded perturbation of every parameter,
then encode / decode / forward on seeded inputs. Run in the reference environment (see README.md here):

    python scripts/parity/make_official_tokenizer_tiny.py --official /tmp/vfmvae-parity/src/VFM-VAE --out DIR
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import _common

REPO_DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "official_tokenizer_tiny"
SIGLIP_FOLDER = "siglip2-tiny-patch16"  # the official dispatcher needs "siglip2" and "patch16" in the name
SIGLIP_CONFIG = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, image_size=128, patch_size=16
)
OUTPUT_NAMES = ["config.yaml", SIGLIP_FOLDER, "official_G.safetensors", "reference_outputs.safetensors"]


def build_siglip(folder: Path) -> None:
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(**SIGLIP_CONFIG)).save_pretrained(folder)


def generator_kwargs(config_path: Path) -> dict:
    import yaml

    kwargs = dict(yaml.safe_load(config_path.read_text())["G_kwargs"])
    class_name = kwargs.pop("class_name")
    if class_name != "networks.generator.Generator":
        raise SystemExit(f"--config {config_path}: G_kwargs.class_name must be networks.generator.Generator")
    return kwargs


def decode_with_multiscale(G, z):
    """The path ``Generator.forward`` takes after encoding, keeping the multi-scale list that ``decode`` drops
    (unconditional: no text tokens)."""
    import torch.nn.functional as F

    h = G.ldm_adapter.decode(z)
    pooled = F.adaptive_avg_pool2d(h, (G.z_pooled_resolution, G.z_pooled_resolution)).flatten(1)
    ws = G.mapping(pooled, None, truncation_psi=1.0)
    return G.synthesis(h, ws, None, None)


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0], "checkout of tianciB/VFM-VAE at b3a752a")
    p.add_argument("--config", type=Path, default=REPO_DATA / "config.yaml", help="tiny G_kwargs (YAML)")
    args = p.parse_args()
    official = _common.check_folder(args.official, "networks/generator.py", "--official")
    if not args.config.is_file():
        raise SystemExit(f"--config {args.config}: no such file")
    out = _common.prepare_out(args.out, OUTPUT_NAMES)
    _common.pin_runtime()
    import torch

    shutil.copyfile(args.config, out / "config.yaml")
    build_siglip(out / SIGLIP_FOLDER)

    kwargs = generator_kwargs(args.config)
    generator_module = _common.import_from(official, "networks.generator")
    kl_utils = _common.import_from(official, "networks.utils.kl_utils")
    cwd = os.getcwd()
    os.chdir(out)  # vfm_name is the SigLIP folder, resolved relative to the working directory
    try:
        torch.manual_seed(0)
        G = generator_module.Generator(**kwargs)
    finally:
        os.chdir(cwd)
    G.requires_grad_(False).eval()
    _common.perturb_parameters(G, seed=1, only_trainable=False)

    ref: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        torch.manual_seed(2)
        images = torch.rand(2, 3, 64, 64)
        ref["images"] = images
        moments = G.encode(images, return_z_before_quantize=True)
        ref["moments"] = moments
        posterior = kl_utils.DiagonalGaussianDistribution(moments)
        ref["posterior_mean"], ref["posterior_logvar"] = posterior.mean, posterior.logvar
        torch.manual_seed(5)
        ref["sample_seed5"] = G.encode(images)

        torch.manual_seed(3)
        z = torch.randn(2, 8, 4, 4)
        ref["z"] = z
        ref["decoded"] = G.decode(z)
        main_img, multiscale = decode_with_multiscale(G, z)
        if not torch.equal(main_img, ref["decoded"]):
            raise SystemExit("the multi-scale path no longer reproduces Generator.decode; check the official code")
        for i, img in enumerate(multiscale):
            ref[f"multiscale_{i}"] = img

        torch.manual_seed(4)
        ref["z_large"] = torch.randn(1, 8, 8, 8)
        ref["decoded_large"] = G.decode(ref["z_large"])

        torch.manual_seed(6)
        fwd = G(images, None, validation=True)
        ref["forward_seed6_gen_img"] = fwd.gen_img
        for i, img in enumerate(fwd.gen_multiscale_imgs):
            ref[f"forward_seed6_multiscale_{i}"] = img

    _common.save_tensors(out / "official_G.safetensors", G.state_dict())
    _common.save_tensors(out / "reference_outputs.safetensors", ref)
    print(f"wrote {out} ({_common.versions('torch', 'transformers', 'timm')})")


if __name__ == "__main__":
    main()
