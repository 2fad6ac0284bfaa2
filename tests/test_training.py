import math

import pytest
import torch
from helpers import TinyNet, TinyNetConfig, classification_loss, on_tensor_readback
from torch import nn

from vfmvae.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from vfmvae.data import DataConfig, DataStream
from vfmvae.training import EMA, optimizer_step


def _batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8),
        "label": torch.randint(0, 4, (n,), generator=g),
    }


def _size(b):
    return len(b["label"])


def _model_and_opt(fused=False):
    torch.manual_seed(0)
    model = TinyNet(TinyNetConfig())
    return model, torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.0, 0.99), fused=fused)


def test_accumulating_k_micro_batches_equals_one_k_times_batch():
    big = _batch(12)
    a, opt_a = _model_and_opt()
    b, opt_b = _model_and_opt()
    optimizer_step(a, opt_a, [big], classification_loss, batch_size_of=_size)
    # uneven micro-batches (5 + 4 + 3) are weighted by their sample counts
    micro = [{k: v[s] for k, v in big.items()} for s in (slice(0, 5), slice(5, 9), slice(9, 12))]
    res = optimizer_step(b, opt_b, micro, classification_loss, batch_size_of=_size)
    assert res.num_samples == 12 and not res.skipped
    for (k, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_step_is_skipped_and_weights_untouched(where, fused):
    """Fused optimizers skip on the device (found_inf), the others after reading the flag back: same outcome."""
    model, opt = _model_and_opt(fused)
    optimizer_step(model, opt, [_batch(4)], classification_loss, batch_size_of=_size)  # build Adam state
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state_before = {k: v.clone() for k, v in opt.state[model.head.weight].items()}

    hooks = []

    def poisoned(m, b):
        loss = classification_loss(m, b)
        if where == "loss":
            return loss * float("nan")
        hooks.append(m.conv.weight.register_hook(lambda g: g * float("inf")))
        return loss

    res = optimizer_step(model, opt, [_batch(4, 1)], poisoned, batch_size_of=_size)
    for h in hooks:
        h.remove()
    assert res.skipped and math.isnan(res.grad_norm)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in opt.state[model.head.weight].items():
        assert torch.equal(v, state_before[k]), k
    assert all(p.grad is None for p in model.parameters())
    res = optimizer_step(model, opt, [_batch(4, 2)], classification_loss, batch_size_of=_size)
    assert not res.skipped  # training continues


def _forbid(method: str) -> None:
    raise AssertionError(f"host synchronisation inside the step ({method})")


def test_fused_step_reads_nothing_back_and_defers_its_results():
    model, opt = _model_and_opt(fused=True)
    ema = EMA(model, halflife_images=8)
    reference, ref_opt = _model_and_opt(fused=True)
    optimizer_step(reference, ref_opt, [_batch(4)], classification_loss, batch_size_of=_size, grad_clip=0.5)

    def poisoned(m, b):
        return classification_loss(m, b) * float("nan")

    with on_tensor_readback(_forbid):
        good = optimizer_step(model, opt, [_batch(4)], classification_loss, batch_size_of=_size, grad_clip=0.5)
        ema.update(model, 4, 4, applied=good.applied_t)
        ema_after_good = [p.clone() for p in ema.model.parameters()]
        bad = optimizer_step(model, opt, [_batch(4, 1)], poisoned, batch_size_of=_size, grad_clip=0.5)
        ema.update(model, 8, 4, applied=bad.applied_t)
    assert not good.skipped and bad.skipped and math.isnan(bad.grad_norm) and good.grad_norm > 0
    for p, q in zip(model.parameters(), reference.parameters()):  # the bad step changed nothing
        assert torch.equal(p, q)
    assert all(torch.equal(a, b) for a, b in zip(ema.model.parameters(), ema_after_good))  # nor the EMA
    assert opt.state[model.head.weight]["step"].item() == 1


def test_grad_clipping_bounds_the_update():
    model, _ = _model_and_opt()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.clone() for p in model.parameters()]
    res = optimizer_step(
        model, opt, [_batch(4)], lambda m, b: 1e3 * classification_loss(m, b), batch_size_of=_size, grad_clip=0.5
    )
    step = torch.cat([(p - q).flatten() for p, q in zip(model.parameters(), before)])
    assert res.grad_norm > 0.5 and step.norm().item() == pytest.approx(0.5, rel=1e-4)


def test_ema_halflife_rampup_and_buffers():
    lin = nn.BatchNorm1d(2)
    ema = EMA(lin, halflife_images=1000, rampup_ratio=0.05)
    assert ema.beta(images_seen=10**9, batch_images=1000) == pytest.approx(0.5)
    assert ema.beta(images_seen=2000, batch_images=100) == pytest.approx(0.5)  # half-life capped at 100 images
    with torch.no_grad():
        lin.weight.fill_(3.0)
        lin.running_mean.fill_(7.0)
    ema.update(lin, images_seen=10**9, batch_images=1000)
    assert torch.allclose(ema.model.weight, torch.full((2,), 2.0))  # 0.5*1 + 0.5*3
    assert torch.equal(ema.model.running_mean, torch.full((2,), 7.0))  # buffers copied
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_ema_averages_frozen_parameters_as_the_official_update_and_skips_only_named_prefixes():
    """Official G_ema (tianciB/VFM-VAE training_loop.py) and LightningDiT/REG `update_ema` lerp every parameter,
    frozen ones included: a part frozen after the EMA fell behind (stage 2's encoder) converges to the raw
    weights. Only what the trainer names (the tokenizer's VFM) is left alone."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    ema = EMA(model, halflife_images=4, rampup_ratio=None, exclude_prefixes=("1.",))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model[0].requires_grad_(False)  # frozen, but behind the raw weights in the average
    before = [p.clone() for p in ema.model.parameters()]
    beta = ema.update(model, images_seen=100, batch_images=4, applied=torch.ones(()))
    assert beta == pytest.approx(0.5)
    for (name, p_ema), old, p in zip(ema.model.named_parameters(), before, model.parameters()):
        if name.startswith("1."):
            assert torch.equal(p_ema, old), name  # excluded
        else:
            torch.testing.assert_close(p_ema, p.detach().lerp(old, beta), rtol=0, atol=1e-7, msg=name)  # official


def _train(run_dir, synthetic_dir, steps, resume=False, save_every=None):
    """A deterministic run with noise in the loss (so the RNG state matters) and a shuffled, flipped stream."""
    model, opt = _model_and_opt()
    ema = EMA(model, halflife_images=64)
    manager = CheckpointManager(run_dir, keep=1)
    cfg = DataConfig(source=synthetic_dir / "shards", resolution=32, num_workers=1, seed=5)
    step, seen, data_state = 0, 0, None
    if resume:
        ckpt = manager.load()
        model.load_state_dict(ckpt.model)
        ema.load_state_dict(ckpt.ema)
        opt.load_state_dict(ckpt.state["optimizer"])
        restore_rng_state(ckpt.rank_state["rng"])
        step, seen, data_state = ckpt.step, ckpt.images_seen, ckpt.rank_state["data"]
    stream = DataStream(cfg, batch_size=6, state=data_state)

    def noisy_loss(m, b):
        return classification_loss(m, b) + 0.1 * (m.head.bias * torch.randn(4)).sum()

    while step < steps:
        batch = next(stream)
        optimizer_step(model, opt, [batch], noisy_loss, batch_size_of=_size)
        step, seen = step + 1, seen + len(batch["label"])
        ema.update(model, seen, len(batch["label"]))
        if save_every and step % save_every == 0:
            manager.save(
                step,
                images_seen=seen,
                model=model.state_dict(),
                ema=ema.state_dict(),
                state={"optimizer": opt.state_dict()},
                rank_state={"rng": capture_rng_state(), "data": stream.state_dict()},
            )
    return model.state_dict(), ema.state_dict()


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path, synthetic_dir):
    straight, straight_ema = _train(tmp_path / "a", synthetic_dir, steps=8)
    _train(tmp_path / "b", synthetic_dir, steps=5, save_every=5)  # "crashes" after step 5
    resumed, resumed_ema = _train(tmp_path / "b", synthetic_dir, steps=8, resume=True)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
        assert torch.equal(straight_ema[k], resumed_ema[k]), k
