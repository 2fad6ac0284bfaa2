"""The tokenizer objective's discriminator side: spectral norm in the official power-iteration order (and old state
dicts upgraded on read), the order of the discriminator's calls, DiffAugment's draws, and passes that return every
named term and replay given draws. The full comparison with the official training code is
tests/test_tokenizer_steps_parity.py."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from vfmvae.data.loader import DataConfig
from vfmvae.tokenizer import VFMVAE, VFMVAEConfig
from vfmvae.tokenizer_training.config import LossConfig, TokenizerTrainConfig
from vfmvae.tokenizer_training.discriminators import MultiscalePatchGAN, ProjectedDiscriminator, diff_augment
from vfmvae.tokenizer_training.draws import AugmentDraw, PassDraws
from vfmvae.tokenizer_training.equivariance import EquivarianceDraw
from vfmvae.tokenizer_training.handoff import DISCRIMINATORS, load_stage
from vfmvae.tokenizer_training.objective import TokenizerObjective
from vfmvae.tokenizer_training.spectral_norm import SpectralNormConv1d, upgrade_spectral_norm_keys
from vfmvae.vfm import VFMSpec


def test_spectral_norm_updates_v_then_u_like_the_official_hook():
    """The official heads use torch's hook-based `spectral_norm` (v = W^T u, then u = W v); the newer
    parametrization (u first) gives another weight from the same vectors."""
    torch.manual_seed(0)
    ours = SpectralNormConv1d(6, 4, 3, padding=1, padding_mode="circular")
    official = nn.Conv1d(6, 4, 3, padding=1, padding_mode="circular")
    with torch.no_grad():
        official.weight.copy_(ours.weight_orig)
        official.bias.copy_(ours.bias)
    official = torch.nn.utils.spectral_norm(official, eps=1e-12)
    with torch.no_grad():
        official.weight_u.copy_(ours.weight_u)
        official.weight_v.copy_(ours.weight_v)
    x = torch.randn(2, 6, 5)
    for _ in range(3):  # each training-mode call runs one power iteration
        torch.testing.assert_close(ours(x), official(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.weight_u, official.weight_u, rtol=0, atol=1e-7)
        torch.testing.assert_close(ours.weight_v, official.weight_v, rtol=0, atol=1e-7)
    ours.eval(), official.eval()
    u = ours.weight_u.clone()
    torch.testing.assert_close(ours(x), official(x), rtol=0, atol=1e-6)
    assert torch.equal(ours.weight_u, u)  # no update in eval mode

    # torch's parametrization, from the same stored vectors, runs u first: another sigma, another weight
    parametrized = torch.nn.utils.parametrizations.spectral_norm(nn.Conv1d(6, 4, 3), eps=1e-12)
    with torch.no_grad():
        parametrized.parametrizations.weight.original.copy_(ours.weight_orig)
        parametrized.parametrizations.weight[0]._u.copy_(ours.weight_u)
        parametrized.parametrizations.weight[0]._v.copy_(ours.weight_v)
    ours.train()
    ours(x)
    sigma_ours = (ours.weight_orig / ours.normalized_weight()).mean()
    sigma_parametrized = (ours.weight_orig / parametrized.weight).mean()  # the weight access iterates once
    assert abs(float(sigma_ours / sigma_parametrized) - 1) > 1e-3


def _tiny_projected(**kwargs) -> ProjectedDiscriminator:
    torch.manual_seed(1)
    return ProjectedDiscriminator(
        input_size=32, taps=(0, 1), backbone_kwargs={"embed_dim": 16, "depth": 2, "num_heads": 2}, **kwargs
    )


def _old_format(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our heads' state dict under the key names torch's spectral-norm parametrization gave them."""
    names = {"weight_orig": "parametrizations.weight.original", "weight_u": "parametrizations.weight.0._u"}
    names["weight_v"] = "parametrizations.weight.0._v"
    renamed = {}
    for key, value in state.items():
        head, _, leaf = key.rpartition(".")
        renamed[f"{head}.{names[leaf]}" if leaf in names else key] = value
    return renamed


def test_state_dicts_of_the_parametrization_era_load_directly_and_through_the_stage_hand_off(tmp_path):
    from safetensors.torch import save_file

    source = _tiny_projected()
    old = _old_format(source.heads.state_dict())
    assert any(".parametrizations.weight.0._u" in k for k in old) and not any("weight_orig" in k for k in old)
    assert upgrade_spectral_norm_keys(old).keys() == source.heads.state_dict().keys()

    direct = _tiny_projected()
    direct.heads.load_state_dict(old)  # a direct load upgrades the keys too
    for key, value in source.heads.state_dict().items():
        assert torch.equal(direct.heads.state_dict()[key], value), key

    # a stage export written before: its discriminators file holds the old keys
    save_file({f"projected.{k}": v.contiguous() for k, v in old.items()}, tmp_path / DISCRIMINATORS)
    handed = _tiny_projected()
    _, notes = load_stage(tmp_path, _objective().tokenizer, {"projected": handed.heads})
    assert not any("discriminator" in n for n in notes)
    for key, value in source.heads.state_dict().items():
        assert torch.equal(handed.heads.state_dict()[key], value), key


def _official_translate_cutout(x, shift, cutout_offset, cutout_size):
    """The official `rand_translation` / `rand_cutout` rule, written out per pixel (training/diffaug.py): output
    (i, j) is input (i + t_rows, j + t_cols) or 0; the zeroed rows are clamp(offset - c // 2 + k, 0, H - 1)."""
    b, _, h, w = x.shape
    out = torch.zeros_like(x)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                si, sj = i + int(shift[n, 0]), j + int(shift[n, 1])
                if 0 <= si < h and 0 <= sj < w:
                    out[n, :, i, j] = x[n, :, si, sj]
        rows = {min(max(int(cutout_offset[n, 0]) - cutout_size[0] // 2 + k, 0), h - 1) for k in range(cutout_size[0])}
        cols = {min(max(int(cutout_offset[n, 1]) - cutout_size[1] // 2 + k, 0), w - 1) for k in range(cutout_size[1])}
        for i in rows:
            for j in cols:
                out[n, :, i, j] = 0
    return out


@pytest.mark.parametrize("size", [(12, 12), (10, 14)])
def test_diff_augment_applies_each_samples_integers_as_the_official_rule(size):
    h, w = size
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, h, w, generator=g) * 2 - 1
    span = (int(h * 0.125 + 0.5), int(w * 0.125 + 0.5))
    cut = (int(h * 0.2 + 0.5), int(w * 0.2 + 0.5))
    shift = torch.tensor([[-span[0], span[1]], [span[0], 0], [1, -span[1]]])  # the extremes of the official range
    offset = torch.tensor([[0, 0], [h - cut[0] % 2, w - cut[1] % 2], [h // 2, 1]])  # and of the cutout's
    colour = [torch.rand(3, generator=g) for _ in range(3)]
    draw = AugmentDraw.from_integers(*colour, shift, offset, size=size)
    mapped = draw.mapped(size, crop_size=64, crop_probability=0.5)
    assert torch.equal(mapped.shift, shift) and mapped.crop is None
    expected = x + (colour[0] - 0.5).view(3, 1, 1, 1)
    mean = expected.mean(dim=1, keepdim=True)
    expected = (expected - mean) * (colour[1] * 2).view(3, 1, 1, 1) + mean
    mean = expected.mean(dim=(1, 2, 3), keepdim=True)
    expected = (expected - mean) * (colour[2] + 0.5).view(3, 1, 1, 1) + mean
    expected = _official_translate_cutout(expected, shift, offset, cut)
    torch.testing.assert_close(diff_augment(x, mapped), expected, rtol=0, atol=1e-6)


def test_augment_draws_map_onto_the_official_integer_ranges_and_crop_larger_images_only():
    g = torch.Generator().manual_seed(0)
    shifts, offsets, crops = set(), set(), set()
    for _ in range(300):
        draw = AugmentDraw.draw(g, 4)
        mapped = draw.mapped((24, 24), crop_size=16, crop_probability=0.5)
        shifts |= set(mapped.shift.flatten().tolist())
        offsets |= set((mapped.cutout_start + mapped.cutout_size[0] // 2).flatten().tolist())
        crops.add(mapped.crop)
        assert draw.mapped((16, 16), crop_size=16, crop_probability=1.0).crop is None  # not larger: no crop
    assert shifts == set(range(-3, 4))  # randint(-s, s + 1), s = int(24 * 0.125 + 0.5)
    assert offsets == set(range(0, 24))  # randint(0, 24 + 1 - 5 % 2), cutout side int(24 * 0.2 + 0.5) = 5
    tops = {c[0] for c in crops if c is not None}
    assert None in crops and tops == set(range(0, 9))  # RandomCrop(16) of 24 px, half the time


def _tiny_vfmvae() -> VFMVAE:
    vit = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16, image_size=64
    )
    vfm = VFMSpec(name="custom", family="siglip", arch=vit, layers=(0, -1), scale_factor=2.0)
    cfg = VFMVAEConfig(
        vfm=vfm,
        proj_dims=(8, 8),
        image_size=32,
        z_dim=4,
        w_dim=16,
        num_blocks=3,
        inject_dims=(8, 8, 8),
        inject_blocks=(0, 1, 2),
        attn_blocks=(),
        attn_depths=(),
        channel_base=1024,
        channel_max=32,
        vf_projection=True,
    )
    torch.manual_seed(0)
    return VFMVAE(cfg)


_MODEL: list[VFMVAE] = []


def _objective(**loss) -> TokenizerObjective:
    """An objective around one shared tiny tokenizer (the passes do not change its weights) and a new
    discriminator."""
    if not _MODEL:
        _MODEL.append(_tiny_vfmvae().train())
    model = _MODEL[0]
    settings = dict(lpips=0.0, vf=0.1, vf_adaptive=False, gan=0.5, multiscale=(0.1, 0.1))
    cfg = TokenizerTrainConfig(
        data=DataConfig(source="unused"), model=model.config, loss=LossConfig(**{**settings, **loss})
    )
    patchgan = MultiscalePatchGAN(4).train() if loss.get("patchgan") or loss.get("feature_matching") else None
    return TokenizerObjective(cfg, model, _tiny_projected().train(), patchgan, None, contextlib.nullcontext)


def test_the_discriminator_scores_generated_images_before_real_ones():
    """Official phase D: D(fake), then D(real), each the whole discriminator (training/loss.py). Every training-mode
    call advances the projected discriminator's spectral norm, so the order is part of the result."""
    objective = _objective(patchgan=1.0)
    calls = []
    for name, module in (("projected", objective.projected), ("patchgan", objective.patchgan)):
        module.register_forward_pre_hook(lambda _m, args, name=name: calls.append((name, args[0].detach().clone())))
    images = torch.rand(2, 3, 32, 32)
    result = objective.discriminator_pass(images, PassDraws(equivariance=EquivarianceDraw()))
    real = images * 2 - 1
    assert [name for name, _ in calls] == ["projected", "patchgan", "projected", "patchgan"]
    assert not torch.equal(calls[0][1], real) and torch.equal(calls[2][1], real)  # fake first, then real
    assert torch.equal(calls[0][1], calls[1][1]) and torch.equal(calls[3][1], real)
    assert {"Loss/D/stylegan_t/gen_loss", "Loss/D/patchgan/real_loss", "Loss/D/total"} <= set(result.terms)


def test_feature_matching_advances_the_projected_spectral_norm_as_the_officials_extra_real_call():
    """With feature matching the official G phase scores the real images with the whole discriminator once more;
    of that call only the PatchGAN features are used, but it also moves the projected heads' power iteration."""
    objective = _objective(patchgan=1.0, feature_matching=10.0)
    twin = _tiny_projected().train()
    twin.load_state_dict(objective.projected.state_dict())
    images = torch.rand(2, 3, 32, 32)
    draws = PassDraws(equivariance=EquivarianceDraw())
    objective.generator_pass(images, draws)
    augment = AugmentDraw.draw(torch.Generator().manual_seed(0), 2)
    with torch.no_grad():
        twin(images * 2 - 1, augment), twin(images * 2 - 1, augment)  # two calls: fake, then the unused real one
    for key, value in twin.state_dict().items():
        if key.endswith(("weight_u", "weight_v")):
            torch.testing.assert_close(objective.projected.state_dict()[key], value, rtol=0, atol=1e-7, msg=key)


def test_passes_return_every_named_term_and_replay_their_draws():
    # equivariance off: this tiny decoder cannot decode a downscaled 2 x 2 latent; the other draws are random
    first = _objective(equivariance=False)
    first.generator.manual_seed(3)
    images = torch.rand(2, 3, 32, 32)
    drawn = first.generator_pass(images)  # everything drawn from the objective's generator
    assert drawn.draws.equivariance is not None and drawn.draws.posterior_noise is not None
    assert drawn.draws.fake_augment is not None
    names = {
        "Loss/G/l1_pixel_loss",
        "Loss/G/multiscale_pixel_loss",
        "Loss/G/multiscale_pixel_loss_block0",
        "Loss/G/multiscale_pixel_loss_block1",
        "Loss/G/kl_loss",
        "Loss/G/vf_loss",
        "Loss/G/vf_weight",
        "Loss/G/stylegan_t/loss",
        "Loss/G/stylegan_t/fake_scores",
        "Loss/G/stylegan_t/fake_signs",
        "Loss/G/rec_loss",
        "Loss/G/total",
    }
    assert names <= set(drawn.terms), names - set(drawn.terms)
    assert all(t.dim() == 0 and not t.requires_grad for t in drawn.terms.values())

    replay = _objective(equivariance=False)  # same weights, another generator state: the given draws decide
    replay.generator.manual_seed(99)
    again = replay.generator_pass(images, drawn.draws)
    assert torch.equal(again.total, drawn.total)
    for name, value in drawn.terms.items():
        assert torch.equal(again.terms[name], value), name
    other = _objective(equivariance=False)
    other.generator.manual_seed(99)
    assert not torch.equal(other.generator_pass(images).total, drawn.total)  # the draws matter

    d_first = _objective(equivariance=False)
    d_first.generator.manual_seed(5)
    d_drawn = d_first.discriminator_pass(images)
    d_replay = _objective(equivariance=False).discriminator_pass(images, d_drawn.draws)
    assert d_drawn.draws.real_augment is not None
    assert torch.equal(d_replay.total, d_drawn.total)
