"""Online evaluation of a tiny tokenizer and a tiny REG model, as one process or under torchrun.

    python online_eval.py --tokenizer TOK --dit DIT --data DIR --ref REF.npz --root RUN --out metrics.json
    torchrun --nproc-per-node=2 online_eval.py ...

Inception and LPIPS are replaced by the small stand-ins below (the real networks take seconds per image on a
loaded CPU); everything else is the evaluator as a run uses it.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vfmvae import distributed as dist_utils  # noqa: E402


class StubInception(nn.Module):
    """InceptionV3's interface (uint8 in; pool, spatial, logits out) on a fixed random projection of 4x4 means."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.randn(48, 8 + 7 + 10, generator=torch.Generator().manual_seed(0)))
        self.calls = 0

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        assert images.dtype == torch.uint8
        self.calls += len(images)
        f = F.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1) @ self.w
        return {"pool": f[:, :8], "spatial": f[:, 8:15], "logits": 4 * f[:, 15:]}


class StubLPIPS(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a.float() - b.float()).abs().mean(dim=(1, 2, 3)) / 255


def small_tokenizer():
    """A VFMVAE of the real architecture at 32 px around a 2-layer random ViT (4x2x2 latents): seconds per batch."""
    from vfmvae.tokenizer import VFMVAE
    from vfmvae.tokenizer.model import VFMVAEConfig
    from vfmvae.vfm.spec import VFMSpec

    vit = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
               image_size=64)
    vfm = VFMSpec(name="custom", family="siglip", arch=vit, layers=(0, -1), scale_factor=2.0)
    cfg = VFMVAEConfig(vfm=vfm, proj_dims=(8, 8), image_size=32, z_dim=4, w_dim=32, num_blocks=3,
                       inject_blocks=(0, 1, 2), inject_dims=(16, 16, 16),
                       attn_blocks=(0,), attn_depths=(1,), attn_heads=2, channel_base=4096, channel_max=32,
                       extra_convnext=False, legacy_noise=False, decompress_factor=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return VFMVAE(cfg).eval()


def install_stubs(assign=setattr) -> None:
    """The stand-ins wherever a metric network is loaded: the online evaluator's two tasks and the offline `eval
    recon` and `eval gen` (pass `monkeypatch.setattr` as `assign` to undo it after a test)."""
    from vfmvae.evaluation import generation, reconstruction
    from vfmvae.training import eval_generation, eval_reconstruction

    def inception(spec, device):
        return StubInception().to(device), {"inception_sha256": f"stub-{spec}"}

    def lpips(spec, device):
        return StubLPIPS().to(device), {"lpips_sha256": f"stub-{spec}"}

    for module, name, stub in (
        (eval_reconstruction, "load_inception", inception),
        (eval_reconstruction, "load_lpips", lpips),
        (eval_generation, "load_inception", inception),
        (reconstruction, "load_inception", inception),
        (reconstruction, "load_lpips", lpips),
        (generation, "load_inception", inception),
    ):
        assign(module, name, stub)


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("tokenizer", "dit", "data", "ref", "root", "out"):
        p.add_argument(f"--{name}", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    install_stubs()
    from vfmvae.diffusion import DiffusionTransformer
    from vfmvae.training.eval_config import EvalConfig
    from vfmvae.training.online_eval import build_evaluator
    from vfmvae.sampling.pipeline import LatentStats
    from vfmvae.tokenizer import VFMVAE

    dist_utils.init_distributed(device="cpu")
    tok = VFMVAE.from_pretrained(args.tokenizer)  # decodes the REG model's 8x4x4 latents
    common = dict(enabled=True, every_images=8, batch_size=4, inception="random-init:7", seed=3)
    recon = build_evaluator(EvalConfig(**common, data=str(args.data), num_images=11, lpips="random-init:7", grid=3),
                            args.root / "tok", kind="tokenizer")
    stats = LatentStats(torch.full((8,), 0.1), torch.full((8,), 2.0))
    gen = build_evaluator(EvalConfig(**common, ref=str(args.ref), num_samples=10, sampler={"steps": 3}),
                          args.root / "dit", kind="diffusion", tokenizer=tok, latent_stats=stats, preset="reg-sde")
    dit = DiffusionTransformer.from_pretrained(args.dit)
    records = [recon.maybe_run(model=small_tokenizer(), step=1, images=8), gen.maybe_run(model=dit, step=1, images=8)]
    if dist_utils.is_main_process():
        args.out.write_text(json.dumps(records))
    dist_utils.destroy_distributed()


if __name__ == "__main__":
    main()
