"""Diffusion transformers: time convention and converters, model behaviour, alignment gradients."""

import pytest
import torch

from vfmvae.diffusion import DiffusionTransformer, TransportConfig, create_diffusion_model, diffusion_config
from vfmvae.diffusion.transport import (
    from_native_time,
    interpolate,
    repa_loss,
    sample_time,
    shift_time,
    to_native_time,
    training_loss,
    velocity_to_native,
)


def _draws(x, cfg, seed, cls_target=None):
    """t, noise (and class-token noise) for `training_loss`, drawn as the trainer's StepDraws orders them."""
    g = torch.Generator().manual_seed(seed)
    t = sample_time(len(x), cfg, g)
    noise = torch.randn(x.shape, generator=g)
    cls_noise = torch.randn(cls_target.shape, generator=g) if cls_target is not None else None
    return {"t": t, "noise": noise, "cls_noise": cls_noise}


def _perturbed(name, seed=0, **overrides):
    torch.manual_seed(seed)
    model = create_diffusion_model(name, **overrides)
    with torch.no_grad():  # zero-initialised branches would hide bugs
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def test_interpolant_endpoints_and_velocity_is_the_time_derivative():
    x, eps = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    x0, _ = interpolate(x, eps, torch.zeros(4))
    x1, v = interpolate(x, eps, torch.ones(4))
    torch.testing.assert_close(x0, x)
    torch.testing.assert_close(x1, eps)
    t, h = torch.full((4,), 0.3, dtype=torch.float64), 1e-6
    a, _ = interpolate(x.double(), eps.double(), t + h)
    b, _ = interpolate(x.double(), eps.double(), t - h)
    torch.testing.assert_close((a - b) / (2 * h), v.double(), rtol=1e-6, atol=1e-6)


def test_time_converters_match_lightningdit_convention():
    # LightningDiT: t' = 0 noise, t' = 1 data, x_t' = t' x + (1 - t') eps, velocity x - eps
    x, eps, t = torch.randn(5, 2), torch.randn(5, 2), torch.rand(5)
    t_native = to_native_time(t, "data_at_1")
    ldit_xt = t_native[:, None] * x + (1 - t_native[:, None]) * eps
    ours_xt, ours_v = interpolate(x, eps, t)
    torch.testing.assert_close(ours_xt, ldit_xt)
    torch.testing.assert_close(velocity_to_native(ours_v, "data_at_1"), x - eps)
    torch.testing.assert_close(from_native_time(t_native, "data_at_1"), t)
    assert torch.equal(to_native_time(t, "noise_at_1"), t) and torch.equal(
        velocity_to_native(ours_v, "noise_at_1"), ours_v
    )


def test_data_at_1_models_are_wrapped_into_the_package_convention():
    model = _perturbed("lightningdit-tiny")
    x, t, y = torch.randn(3, 8, 8, 8), torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0, 3, 10])
    ours = model(x, t, y).sample
    native = model.forward_native(x, 1 - t, y).sample
    torch.testing.assert_close(ours, -native)
    sit = _perturbed("sit-tiny")
    torch.testing.assert_close(sit(x, t, y).sample, sit.forward_native(x, t, y).sample)


def test_time_shift_and_sampling():
    t = torch.linspace(0, 1, 11)
    for s in (0.3, 1.0, 3.0):
        u = shift_time(t, s)
        assert u[0] == 0 and u[-1] == 1 and bool((u.diff() > 0).all())
    assert bool((shift_time(t[1:-1], 3.0) > t[1:-1]).all())  # shift > 1 moves towards noise
    g = torch.Generator().manual_seed(0)
    uniform = sample_time(20000, TransportConfig(), g)
    lognormal = sample_time(20000, TransportConfig(time_sampling="lognormal"), g)
    assert abs(float(uniform.mean()) - 0.5) < 0.01 and abs(float(uniform.std()) - 12**-0.5) < 0.01
    assert abs(float(lognormal.median()) - 0.5) < 0.02 and float(lognormal.std()) < 0.25  # concentrated mid-way
    shifted = sample_time(20000, TransportConfig(time_shift=3.0), g)
    assert float(shifted.mean()) > 0.6


@pytest.mark.parametrize("name", ["sit-tiny", "lightningdit-tiny", "reg-sit-tiny"])
@pytest.mark.parametrize("patch", [1, 2])
def test_shapes_save_load_and_label_dropout(tmp_path, name, patch):
    model = _perturbed(name, patch_size=patch)
    x, t, y = torch.randn(2, 8, 8, 8), torch.rand(2), torch.tensor([1, 2])
    cls = torch.randn(2, 64) if model.config.class_token_dim else None
    out = model(x, t, y, cls)
    assert out.sample.shape == x.shape
    if model.config.align_dims:
        assert out.projected[0].shape == (2, model.num_tokens + bool(cls is not None), 64)
    model.save_pretrained(tmp_path / "m")
    again = DiffusionTransformer.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(again(x, t, y, cls).sample, out.sample)
    # dropping every label is the same as asking for the null class
    model.y_embedder.dropout = 1.0
    dropped = model(x, t, y, cls, drop_labels=torch.ones(len(y), dtype=torch.bool)).sample
    torch.testing.assert_close(dropped, model(x, t, torch.full_like(y, 10), cls).sample)


def test_model_errors_are_clear():
    model = create_diffusion_model("reg-sit-tiny")
    with pytest.raises(ValueError, match="needs the noisy class token"):
        model(torch.randn(1, 8, 8, 8), torch.rand(1), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"expected latents \(B, 8, 8, 8\)"):
        model(torch.randn(1, 4, 8, 8), torch.rand(1), torch.tensor([0]), torch.randn(1, 64))
    with pytest.raises(KeyError, match="unknown diffusion model"):
        diffusion_config("lightningdit-xxl/1")


def _grads(model):
    return {n: (p.grad is not None and bool(p.grad.abs().sum() > 0)) for n, p in model.named_parameters()}


def test_repa_gradients_reach_only_the_projector_and_the_blocks_below_it():
    model = _perturbed("repa-sit-tiny", depth=3, align_depth=2).train()
    x, y = torch.randn(4, 8, 8, 8), torch.tensor([0, 1, 2, 3])
    targets = [torch.randn(4, model.num_tokens, 64)]
    cfg = TransportConfig(align_weight=1.0)
    terms = training_loss(model, x, y, cfg, **_draws(x, cfg, 0), align_targets=targets)
    model.zero_grad()
    terms.align.mean().backward()
    got = _grads(model)
    assert all(
        got[n] for n in got if n.startswith(("projectors.", "blocks.0.", "blocks.1.", "x_embedder.", "t_embedder."))
    )
    assert not any(got[n] for n in got if n.startswith(("blocks.2.", "final_layer.")))
    # the denoising loss, in turn, never trains the projector
    model.zero_grad()
    terms = training_loss(model, x, y, cfg, **_draws(x, cfg, 0), align_targets=targets)
    terms.mse.mean().backward()
    got = _grads(model)
    assert not any(got[n] for n in got if n.startswith("projectors.")) and got["final_layer.linear.weight"]


def test_reg_class_token_loss_trains_its_path_and_not_the_projector():
    model = _perturbed("reg-sit-tiny", depth=3, align_depth=1).train()
    x, y = torch.randn(4, 8, 8, 8), torch.tensor([0, 1, 2, 3])
    cls = torch.randn(4, 64)
    cfg = TransportConfig(align_weight=0.5, cls_weight=0.03)
    terms = training_loss(
        model,
        x,
        y,
        cfg,
        **_draws(x, cfg, 0, cls),
        cls_target=cls,
        align_targets=[torch.randn(4, 1 + model.num_tokens, 64)],
    )
    model.zero_grad()
    terms.cls.mean().backward()
    got = _grads(model)
    assert got["cls_projectors2.weight"] and got["final_layer.linear_cls.weight"]
    assert all(got[n] for n in got if n.startswith("blocks.2."))
    assert not any(got[n] for n in got if n.startswith(("projectors.", "final_layer.linear.")))
    # the total combines the terms with their weights
    torch.testing.assert_close(terms.loss, terms.mse + 0.5 * terms.align + 0.03 * terms.cls)


def test_repa_loss_is_negative_cosine():
    z = torch.randn(2, 5, 7)
    torch.testing.assert_close(repa_loss([z * 3.0], [z]), torch.full((2,), -1.0))
    torch.testing.assert_close(repa_loss([z], [-z]), torch.full((2,), 1.0))
    with pytest.raises(ValueError, match="differ in tokens"):
        repa_loss([z], [torch.randn(2, 6, 7)])


def test_loss_replays_given_draws():
    model = _perturbed("lightningdit-tiny")
    x, y = torch.randn(3, 8, 8, 8), torch.tensor([0, 1, 2])
    cfg = TransportConfig(time_sampling="lognormal", cosine_weight=1.0)
    g = torch.Generator().manual_seed(5)
    t = sample_time(3, cfg, g)
    noise = torch.randn(x.shape, generator=g)
    b = training_loss(model, x, y, cfg, t=t, noise=noise)
    x_t, v = interpolate(x, noise, t)
    pred = model(x_t, t, y).sample
    torch.testing.assert_close(b.mse, (pred - v).pow(2).mean((1, 2, 3)))
    cos = torch.nn.functional.cosine_similarity(pred, v, dim=1).mean((1, 2))
    torch.testing.assert_close(b.cosine, 1 - cos)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = _perturbed("reg-sit-tiny", depth=3).train()
    x, y, cls = torch.randn(2, 8, 8, 8), torch.tensor([1, 2]), torch.randn(2, 64)
    cfg = TransportConfig(align_weight=0.5, cls_weight=0.03)
    grads = []
    for flag in (False, True):
        model.gradient_checkpointing = flag
        model.zero_grad()
        terms = training_loss(
            model,
            x,
            y,
            cfg,
            **_draws(x, cfg, 0, cls),
            align_targets=[torch.randn(2, 1 + model.num_tokens, 64, generator=torch.Generator().manual_seed(1))],
            cls_target=cls,
        )
        terms.loss.mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6, msg=n)
