"""Tokenizer-training building blocks: stage parameter selection, equivariance, losses."""

import pytest
import torch

from vfmvae.tokenizer import VFMVAE, VFMVAEConfig
from vfmvae.tokenizer_training import (
    adaptive_vf_weight,
    draw_equivariance,
    kl_loss,
    multiscale_l1,
    select_trainable,
    ssim_loss,
    transform_target,
    vf_alignment_loss,
)
from vfmvae.tokenizer_training.equivariance import EquivarianceDraw, transform_latent
from vfmvae.vfm import VFMSpec


def _tiny(vf: bool = True) -> VFMVAE:
    vit = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, patch_size=16, image_size=128
    )
    vfm = VFMSpec(name="custom", family="siglip", arch=vit, layers=(0, -1), scale_factor=2.0)
    cfg = VFMVAEConfig(
        vfm=vfm,
        proj_dims=(16, 16),
        image_size=64,
        z_dim=8,
        w_dim=64,
        inject_dims=(32, 16, 16, 16),
        channel_base=2048,
        channel_max=64,
        vf_projection=vf,
    )
    torch.manual_seed(0)
    model = VFMVAE(cfg)
    with torch.no_grad():  # perturb zero-initialised branches so that every parameter is on a gradient path
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


@pytest.mark.parametrize("stage", ["all", "decoder", "late_decoder"])
def test_exactly_the_intended_parameters_receive_gradients(stage):
    model = _tiny()
    trainable = {id(p) for p in select_trainable(model, stage)}
    x = torch.rand(2, 3, 64, 64)
    post = model.encode(x)
    decoded = model.decode(post.sample())
    image, multiscale = decoded.sample, decoded.multiscale
    feats = model.vfm(x).tokens[-1]
    loss = image.abs().mean() + sum(m.abs().mean() for m in multiscale) + kl_loss(post.mean, post.logvar)
    if model.vf_proj.weight.requires_grad:
        maps = feats.transpose(1, 2).reshape(2, 64, 8, 8)
        loss = loss + vf_alignment_loss(model.vf_proj(post.mean), maps)
    loss.backward()
    got = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    expected = {name for name, p in model.named_parameters() if id(p) in trainable}
    # every intended parameter gets a gradient, nothing else does
    assert got == expected, (sorted(expected - got)[:5], sorted(got - expected)[:5])
    assert not any(n.startswith("vfm.") for n in got)
    if stage == "decoder":
        assert not any(n.startswith(("patch_projs", "final_proj", "vf_proj")) for n in expected)
    if stage == "late_decoder":
        assert {n.split(".")[2] for n in expected if n.startswith("synthesis.blocks.")} == {"3", "4", "5"}
        assert {n.split(".")[2] for n in expected if n.startswith("synthesis.latent_convs.")} == {"3"}
        assert not any(n.startswith(("mapping", "post_proj")) for n in expected)


def test_equivariance_draws_are_seeded_and_cover_both_branches():
    draws = [draw_equivariance(torch.Generator().manual_seed(s)) for s in range(200)]
    again = [draw_equivariance(torch.Generator().manual_seed(s)) for s in range(200)]
    assert draws == again
    latent = [d for d in draws if d.on_latent]
    prior = [d for d in draws if not d.on_latent]
    assert 60 < len(latent) < 140 and {d.rotation for d in latent} == {0, 1, 2, 3}
    assert {d.scale for d in latent} == {0.25, 0.5, 0.75, 1.0} and all(d.rotation == 0 for d in prior)
    assert 0.1 < sum(d.scale < 1 for d in prior) / len(prior) < 0.45


def test_latent_and_target_transforms_agree():
    z = torch.randn(1, 8, 16, 16)
    img = torch.rand(1, 3, 256, 256)
    draw = EquivarianceDraw(scale=0.5, rotation=1, on_latent=True)
    assert transform_latent(z, draw).shape == (1, 8, 8, 8) and transform_target(img, draw).shape == (1, 3, 128, 128)
    turn = EquivarianceDraw(scale=1.0, rotation=3, on_latent=True)
    assert torch.equal(transform_latent(z, turn), torch.rot90(z, 3, dims=(-1, -2)))
    assert torch.equal(transform_target(img, turn), torch.rot90(img, 3, dims=(-1, -2)))
    prior = EquivarianceDraw(scale=0.25, rotation=0, on_latent=False)
    assert prior.input_scale == 0.25 and torch.equal(transform_latent(z, prior), z)


def test_loss_terms():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g) * 0.1
    from vfmvae.tokenizer import DiagonalGaussian

    assert float(kl_loss(mean, logvar)) == pytest.approx(
        float(DiagonalGaussian(torch.cat([mean, logvar], 1)).kl().mean())
    )
    f = torch.randn(2, 16, 8, 8, generator=g)
    assert float(vf_alignment_loss(f, f)) == pytest.approx(0.0, abs=1e-6)
    assert float(vf_alignment_loss(torch.randn(2, 16, 8, 8, generator=g), f)) > 0.5
    pooled = torch.nn.functional.adaptive_avg_pool2d(f, 4)
    assert float(vf_alignment_loss(pooled, f)) == pytest.approx(0.0, abs=1e-6)  # VFM map pooled to the latent grid
    target = torch.rand(1, 3, 32, 32, generator=g)
    outs = [torch.nn.functional.interpolate(target, size=s, mode="bilinear", antialias=True) * 2 - 1 for s in (16, 8)]
    assert float(multiscale_l1(outs, target, [0.1, 0.1])) == pytest.approx(0.0, abs=1e-6)
    assert float(multiscale_l1([o + 0.5 for o in outs], target, [0.1, 0.0])) == pytest.approx(0.05, rel=1e-5)
    x = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    other = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1  # independent noise: SSIM near 0 (x vs -x is not: on
    # [-1, 1] its negative luminance and structure terms multiply to a positive SSIM)
    assert float(ssim_loss(x, x)) == pytest.approx(0.0, abs=1e-6) and float(ssim_loss(x, other)) > 0.5


def test_adaptive_vf_weight_is_the_gradient_norm_ratio():
    w = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(8, 4)
    rec = (x @ w).square().mean()
    vf = (x @ w).abs().mean() * 0.1
    lam = adaptive_vf_weight(rec, vf, w, base=5.0)
    g_rec = torch.autograd.grad(rec, w, retain_graph=True)[0]
    g_vf = torch.autograd.grad(vf, w, retain_graph=True)[0]
    assert float(lam) == pytest.approx(5.0 * float(g_rec.norm() / (g_vf.norm() + 1e-4)), rel=1e-6)
    assert not lam.requires_grad
