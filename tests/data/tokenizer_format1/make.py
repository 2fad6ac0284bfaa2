"""Regenerate this folder: a tokenizer folder of format version 1 (the VFM as flat `vfm_name`/`vfm_family`/
`vfm_arch`/`layers`/`scale_factor`/`layer_dims` keys), written by vfmvae before the VFM became one `VFMSpec`,
with the reconstruction it gave. Run it with that version's sources (commit 48e8096), e.g.

    git archive 48e8096 src | tar -x -C /tmp/vfmvae-48e8096
    PYTHONPATH=/tmp/vfmvae-48e8096/src python tests/data/tokenizer_format1/make.py

tests/test_vfm_spec.py loads the folder with today's code and checks the same outputs.
"""

from pathlib import Path

import torch
from safetensors.torch import save_file

from vfmvae.tokenizer import VFMVAE, VFMVAEConfig

HERE = Path(__file__).parent
TINY_VIT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16, image_size=64
)


def main() -> None:
    cfg = VFMVAEConfig(
        vfm_name="custom",
        vfm_family="siglip",
        vfm_arch=TINY_VIT,
        scale_factor=2.0,
        layers=(0, -1),
        layer_dims=(32, 32),
        proj_dims=(8, 8),
        image_size=32,
        z_dim=4,
        w_dim=16,
        inject_blocks=(0, 1),
        inject_dims=(16, 8),
        attn_blocks=(0,),
        attn_depths=(1,),
        num_blocks=3,
        channel_base=2048,
        channel_max=16,
        num_res_blocks=1,
        decompress_factor=4,
        vf_projection=True,
        legacy_noise=False,
    )
    torch.manual_seed(0)
    model = VFMVAE(cfg).eval()
    with torch.no_grad():  # zero-initialised branches would hide a wrong weight: perturb every parameter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(HERE / "model")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        moments = model.encode_moments(images).moments
        recon = model.decode(moments[:, : cfg.z_dim]).sample
    save_file(
        {"images": images, "moments": moments.contiguous(), "reconstruction": recon.contiguous()},
        HERE / "reference.safetensors",
    )


if __name__ == "__main__":
    main()
