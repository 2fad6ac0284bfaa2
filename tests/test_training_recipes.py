"""Training recipes as the official runs: SSIM loss convention, safe-loss guard, crop augmentation, stage hand-off,
discriminator resize mode, float32 loss reductions, posterior moments in the latent cache, REG DINOv2 targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import train_argv

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tokenizer" / "tiny.yaml"


def test_ssim_loss_is_torchmetrics_ssim_on_minus_one_to_one_with_data_range_two():
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    from vfmvae.tokenizer_training.losses import ssim_loss

    # mid-grey content with a brightness shift: where the [-1, 1] and [0, 2] conventions differ most
    g = torch.Generator().manual_seed(0)
    real = (0.2 * torch.randn(2, 3, 32, 32, generator=g)).clamp(-1, 1)
    fake = (real + 0.3 + 0.05 * torch.randn(2, 3, 32, 32, generator=g)).clamp(-1, 1)
    official = 1.0 - tm_ssim(fake.clamp(-1, 1), real.clamp(-1, 1), data_range=2.0)
    torch.testing.assert_close(ssim_loss(fake, real), official.float(), rtol=0, atol=1e-5)
    shifted = 1.0 - tm_ssim(fake + 1, real + 1, data_range=2.0)
    assert abs(float(official) - float(shifted)) > 0.05  # the old convention is measurably different here


def test_safe_loss_guard_skips_a_spike_on_the_device_and_keeps_the_weights():
    """One micro-batch per step: a rejected micro-batch is the whole step, which is skipped."""
    from vfmvae.tokenizer_training.losses import SafeLossGuard
    from vfmvae.training import optimizer_step

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)
    guard = SafeLossGuard(ratio=10.0)
    guard.active = True
    x = torch.randn(8, 4)
    scale = {"value": 1.0}

    def loss_fn(m, batch):
        l1 = guard.watch("l1", (m(batch) * scale["value"]).abs().mean())
        return guard(l1)

    def step():
        return optimizer_step(model, opt, [x], loss_fn, batch_size_of=len, accepted=guard.step_accepted)

    assert not step().skipped  # first step: no reference yet
    reference = guard.prev["l1"].clone()
    before = [p.detach().clone() for p in model.parameters()]
    scale["value"] = 1000.0  # a 1000x spike of L1
    res = step()
    assert res.skipped and float(guard.rejected) == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # weights untouched
    assert torch.equal(guard.prev["l1"], reference)  # a rejected micro-batch is not the next reference
    scale["value"] = 5.0  # below 10x: accepted
    assert not step().skipped
    guard.active = False  # before the start window nothing is rejected
    scale["value"] = 1e6
    assert not step().skipped


def test_safe_loss_guard_drops_only_the_spiking_micro_batch_under_accumulation():
    """Official rule (training/loss.py): each micro-batch is compared with the previous accepted micro-batch and
    only its own gradient is zeroed; the step goes on with the others. Decided on the device."""
    from helpers import on_tensor_readback

    from vfmvae.tokenizer_training.losses import DiscriminatorGuard, SafeLossGuard
    from vfmvae.training import optimizer_step

    def setup():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        return model, torch.optim.Adam(model.parameters(), lr=0.1, fused=True)  # fused: skips on the device

    torch.manual_seed(1)
    batches = [torch.randn(4, 4) for _ in range(3)]
    spikes = [1.0, 1000.0, 2.0]  # the second micro-batch's L1 jumps 1000x over the first's
    guard = SafeLossGuard(ratio=10.0)
    guard.active = True
    model, opt = setup()
    calls = {"n": 0}

    def loss_fn(m, batch):
        factor = spikes[calls["n"] % 3]
        calls["n"] += 1
        return guard(guard.watch("l1", (m(batch) * factor).abs().mean()))

    def forbid(method):
        raise AssertionError(f"host read inside the step ({method})")

    with on_tensor_readback(forbid):
        res = optimizer_step(model, opt, batches, loss_fn, batch_size_of=len, accepted=guard.step_accepted)
    assert not res.skipped and float(guard.rejected) == 1.0
    expected_model, expected_opt = setup()
    kept = [(batches[0], 1.0), (batches[2], 2.0)]  # the spiking micro-batch contributes nothing, weights 4/12 each
    loss = sum((expected_model(b) * f).abs().mean() * (4 / 12) for b, f in kept)
    loss.backward()
    expected_opt.step()
    for got, want in zip(model.parameters(), expected_model.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    # the third micro-batch was compared with the first (the last accepted one), and is the next reference
    with torch.no_grad():
        third = (setup()[0](batches[2]) * 2.0).abs().mean()  # its L1 under the weights before the step
    torch.testing.assert_close(guard.prev["l1"], third)

    # the discriminator's rule (|term| <= 1e4, finite) drops per micro-batch too; all dropped: no step
    d_guard = DiscriminatorGuard()
    d_guard.active = True
    model, opt = setup()
    before = [p.detach().clone() for p in model.parameters()]

    def d_loss(m, batch):
        return d_guard(d_guard.watch(m(batch).abs().mean() * 1e6))

    res = optimizer_step(model, opt, batches[:2], d_loss, batch_size_of=len, accepted=d_guard.step_accepted)
    assert res.skipped and float(d_guard.rejected) == 2.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.slow
def test_safe_loss_guard_in_the_tokenizer_trainer_counts_and_skips_a_spike(tmp_path, synthetic_dir, monkeypatch):
    import vfmvae.tokenizer_training.objective as objective_module
    from vfmvae.checkpoint import CheckpointManager
    from vfmvae.cli import main
    from vfmvae.tokenizer_training.losses import ssim_loss

    calls = {"n": 0}

    def spiking_ssim(fake, real):  # the third generator step's SSIM loss jumps 1000x
        calls["n"] += 1
        return ssim_loss(fake, real) * (1000.0 if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(objective_module, "ssim_loss", spiking_ssim)
    run_dir = tmp_path / "spike"
    args = _tiny_args(
        run_dir,
        synthetic_dir / "images",
        "run.total_images=16",
        "run.checkpoint_every_images=4",  # every step
        "run.keep_checkpoints=4",
        "loss.gan=0",
        "loss.ssim=1.0",
        "loss.safe_loss_after_images=0",
    )
    assert main(args) == 0
    manager = CheckpointManager(run_dir)
    second, third = (
        manager.load(run_dir / "checkpoints" / "step-00000002"),
        manager.load(run_dir / "checkpoints" / "step-00000003"),
    )
    assert third.state["counters"]["skipped_g"] == 1
    assert float(third.state["safe_loss"]["rejected"]) == 1.0
    for key, value in second.model.items():
        if key != "mapping.w_avg":  # a running statistic of the forward pass
            assert torch.equal(third.model[key], value), key
    fourth = CheckpointManager(run_dir).load()
    assert fourth.step == 4 and fourth.state["counters"]["skipped_g"] == 1  # the step after the spike trains again
    assert any(not torch.equal(fourth.model[k], third.model[k]) for k in third.model if k != "mapping.w_avg")


def test_random_square_crop_draws_side_uniform_in_half_to_full_short_side_anywhere():
    import numpy as np

    from vfmvae.data.transforms import draw_square_crop

    rng = np.random.default_rng(0)
    draws = np.array([draw_square_crop(400, 300, rng) for _ in range(4000)])
    fractions = draws[:, 2] / 300
    assert fractions.min() >= 0.5 and fractions.max() <= 1.0
    hist, _ = np.histogram(fractions, bins=5, range=(0.5, 1.0))
    assert hist.min() > 0.8 * 800 and hist.max() < 1.2 * 800  # uniform in [0.5, 1] (800 expected per bin)
    assert (draws[:, 0] + draws[:, 2] <= 400).all() and (draws[:, 1] + draws[:, 2] <= 300).all()
    assert draws[:, 0].min() == 0 and (draws[:, 0] + draws[:, 2]).max() == 400  # positions reach both edges


def test_training_crop_is_the_official_random_square_lanczos_then_flip_and_evaluation_keeps_adm(tmp_path):
    import numpy as np
    from PIL import Image

    from vfmvae.data import DataConfig, build_dataset
    from vfmvae.data.transforms import _sample_rng, center_crop_adm, draw_square_crop, flip_decision

    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(folder / "x.png")
    img = Image.open(folder / "x.png").convert("RGB")
    train = build_dataset(DataConfig(source=tmp_path / "imgs", resolution=32, crop="random_square", hflip=True, seed=3))
    evaluation = build_dataset(DataConfig(source=tmp_path / "imgs", resolution=32, hflip=False, seed=3))
    for epoch in range(6):
        left, top, side = draw_square_crop(120, 90, _sample_rng(3, epoch, 0, "crop"))
        expected = np.asarray(img.crop((left, top, left + side, top + side)).resize((32, 32), Image.LANCZOS))
        if flip_decision(3, epoch, 0):
            expected = expected[:, ::-1]
        got = train[(epoch, 0)]["image"].permute(1, 2, 0).numpy()
        assert np.array_equal(got, expected), epoch
        assert np.array_equal(train[(epoch, 0)]["image"].numpy(), got.transpose(2, 0, 1))  # deterministic per draw
    sides = {draw_square_crop(120, 90, _sample_rng(3, e, 0, "crop"))[2] for e in range(6)}
    assert len(sides) > 1  # a new crop each epoch
    assert np.array_equal(evaluation[0]["image"].permute(1, 2, 0).numpy(), np.asarray(center_crop_adm(img, 32)))


def _tiny_args(run_dir, data, *overrides):
    """`train tokenizer` on the tiny recipe at batch 4, reporting every step."""
    return train_argv(
        "tokenizer",
        TINY,
        f"run.dir={run_dir}",
        f"data.source={data}",
        "data.num_workers=0",
        "run.batch_size=4",
        "run.log_every_images=1",  # every step, whatever the batch
        "run.checkpoint_every_images=400",
        *overrides,
    )


def _from_export(export):
    """Start from a previous stage's export: `init`, and no `model` (the tiny recipe's new-model section)."""
    return ("model=null", f"init={export}")


@pytest.mark.slow
def test_next_stage_starts_raw_g_from_raw_ema_from_ema_d_from_d_and_its_ema_averages_the_frozen_encoder(
    tmp_path, synthetic_dir, monkeypatch
):
    from safetensors.torch import load_file

    from vfmvae.checkpoint import CheckpointManager
    from vfmvae.cli import main
    from vfmvae.training import EMA

    data = synthetic_dir / "images"
    first = tmp_path / "stage-a"
    assert main(_tiny_args(first, data, "run.total_images=8")) == 0
    export = first / "export"
    raw_a, ema_a = load_file(export / "generator_raw.safetensors"), load_file(export / "model.safetensors")
    disc_a = load_file(export / "discriminators.safetensors")
    assert any(k.startswith("projected.") for k in disc_a)
    assert any(not torch.equal(raw_a[k], ema_a[k]) for k in raw_a if k != "mapping.w_avg")  # raw and EMA differ

    seen = []
    update = EMA.update
    monkeypatch.setattr(
        EMA,
        "update",
        lambda self, model, images, *a, **k: (seen.append(images), update(self, model, images, *a, **k))[1],
    )
    second = tmp_path / "stage-b"
    # no training step: the checkpoint written at the end holds what the stage started from
    assert main(_tiny_args(second, data, "run.total_images=0", *_from_export(export))) == 0
    start = CheckpointManager(second).load()
    for key, value in raw_a.items():
        assert torch.equal(start.model[key], value), key  # raw G from raw G
    for key, value in start.ema.items():
        assert torch.equal(value, ema_a[key]), key  # EMA from EMA
    heads = {k[len("projected.") :]: v for k, v in disc_a.items() if k.startswith("projected.")}
    for key, value in heads.items():
        assert torch.equal(start.state["disc"][f"0.{key}"], value), key  # D from D
    assert start.state["counters"]["images_before_stage"] == 8

    # one step of a stage that freezes the encoder (as stage 2): the EMA ramp-up counts the previous stages' images
    # before this batch (official cur_nimg), and the frozen encoder's EMA moves towards the raw encoder by the
    # official rule ema <- raw.lerp(ema, beta) (training_loop.py G_ema), instead of keeping stage a's average
    third = tmp_path / "stage-c"
    stage_c = ("run.total_images=4", "stage=decoder", "run.ema_rampup=0.5")
    assert main(_tiny_args(third, data, *stage_c, *_from_export(export))) == 0
    assert seen == [8]
    import json

    assert json.loads((third / "export" / "training.json").read_text())["images_total"] == 12
    beta = 0.5 ** (4 / min(250, 0.5 * 8))  # tiny recipe: half-life 250 images, capped at 0.5 x 8 images seen
    ema_c = load_file(third / "export" / "model.safetensors")
    encoder = [k for k in raw_a if k.startswith(("patch_projs.", "final_proj.", "vf_proj."))]
    assert encoder and any(not torch.equal(raw_a[k], ema_a[k]) for k in encoder)
    for key in encoder:
        torch.testing.assert_close(ema_c[key], raw_a[key].lerp(ema_a[key], beta), rtol=0, atol=1e-6, msg=key)
    vfm = [k for k in ema_c if k.startswith("vfm.")]
    assert vfm and all(torch.equal(ema_c[k], ema_a[k]) for k in vfm)  # the frozen VFM is not averaged


def test_projected_discriminator_resizes_with_the_vfm_mode(tmp_path, synthetic_dir, monkeypatch):
    import torch.nn.functional as F

    from vfmvae.tokenizer_training.discriminators import ProjectedDiscriminator

    kwargs = dict(
        input_size=32,
        taps=(0, 1),
        backbone_kwargs={"embed_dim": 32, "depth": 2, "num_heads": 2},
        diffaug=False,
        crop_probability=0.0,
    )
    torch.manual_seed(0)
    bicubic = ProjectedDiscriminator(resize_mode="bicubic", **kwargs)
    bilinear = ProjectedDiscriminator(**kwargs)
    bilinear.load_state_dict(bicubic.state_dict())
    x = torch.rand(2, 3, 48, 48) * 2 - 1
    resized = F.interpolate((x + 1) / 2, size=(32, 32), mode="bicubic", align_corners=False, antialias=True) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(bicubic(x), bilinear(resized), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(bilinear(x), bicubic(x), atol=1e-4)

    # the trainer builds D with the tokenizer VFM's own mode
    import vfmvae.tokenizer_training.trainer as trainer_module
    from vfmvae.cli import main

    seen = {}

    class Stop(Exception):
        pass

    def recording(*args, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(trainer_module, "ProjectedDiscriminator", recording)
    with pytest.raises(Stop):
        main(_tiny_args(tmp_path / "d", synthetic_dir / "images", "run.total_images=4"))
    assert seen["resize_mode"] == "bilinear"  # SigLIP2's (the VFM's adapter.resize_mode)


def test_vf_kl_and_multiscale_losses_are_float32_under_bf16_autocast():
    from vfmvae.tokenizer_training.losses import adaptive_vf_weight, kl_loss, multiscale_l1, vf_alignment_loss

    g = torch.Generator().manual_seed(0)
    p = torch.randn(2, 64, 8, 8, generator=g)
    f = p + 0.05 * torch.randn(2, 64, 8, 8, generator=g)  # near-aligned: cosine differences below bf16's resolution
    mean, logvar = torch.randn(2, 8, 4, 4, generator=g), 0.1 * torch.randn(2, 8, 4, 4, generator=g)
    target = torch.rand(2, 3, 16, 16, generator=g)
    outs = [torch.rand(2, 3, 8, 8, generator=g) * 2 - 1]
    reference = (vf_alignment_loss(p, f), kl_loss(mean, logvar), multiscale_l1(outs, target, [0.1]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = (vf_alignment_loss(p, f), kl_loss(mean.bfloat16().float(), logvar), multiscale_l1(outs, target, [0.1]))
        kl_bf16_inputs = kl_loss(mean.bfloat16(), logvar.bfloat16())
    for got in mixed:
        assert got.dtype == torch.float32
    torch.testing.assert_close(mixed[0], reference[0], rtol=1e-6, atol=0)  # bf16 einsum: off by ~4e-3 relative
    torch.testing.assert_close(mixed[2], reference[2], rtol=1e-6, atol=0)
    assert kl_bf16_inputs.dtype == torch.float32
    torch.testing.assert_close(
        kl_bf16_inputs, kl_loss(mean.bfloat16().float(), logvar.bfloat16().float()), rtol=1e-6, atol=0
    )

    # adaptive weight: the norm ratio in float32 even when the graph was built under autocast
    w = torch.nn.Parameter(torch.randn(16, 16, generator=g))
    x = torch.randn(4, 16, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = x @ w
        weight = adaptive_vf_weight(h.float().square().mean(), h.float().abs().mean(), w, 2.0)
    assert weight.dtype == torch.float32 and torch.isfinite(weight)


@pytest.fixture(scope="module")
def official_tokenizer(tmp_path_factory):
    from vfmvae.tokenizer.convert import convert_official_tokenizer

    data = ROOT / "tests" / "data" / "official_tokenizer_tiny"
    out = tmp_path_factory.mktemp("tok") / "tok"
    convert_official_tokenizer(
        data / "config.yaml", data / "official_G.safetensors", data / "siglip2-tiny-patch16", out
    )
    return out


def _cache(tokenizer, data, out, **kw):
    from vfmvae.latents import cache_latents

    return cache_latents(
        tokenizer,
        data,
        out,
        **{"batch_size": 16, "shard_size": 32, "num_workers": 0, "device": "cpu", "progress": False, **kw},
    )


def test_cache_keeps_posterior_moments_stats_from_posterior_samples_and_old_caches_still_load(
    tmp_path, official_tokenizer, synthetic_dir
):
    from vfmvae.data import ImageFolderDataset, ImageOptions, to_float01
    from vfmvae.latents import LatentDataset
    from vfmvae.tokenizer import VFMVAE

    info = _cache(official_tokenizer, synthetic_dir / "images", tmp_path / "m", moments=True)
    assert info["latent"] == "posterior moments"
    ds = LatentDataset(tmp_path / "m")
    assert ds.has_moments
    model = VFMVAE.from_pretrained(official_tokenizer)
    image = to_float01(ImageFolderDataset(synthetic_dir / "images", ImageOptions(64))[0]["image"])[None]
    with torch.no_grad():
        post = model.encode(image)
    torch.testing.assert_close(ds.denormalize(ds[0]["latents"]), post.mean[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ds[0]["latents_std"] * ds.std, post.std[0], rtol=1e-4, atol=1e-5)
    # statistics of posterior samples: their variance is the means' variance plus the mean posterior variance
    means = ds.column("latents").double()
    stds = ds.column("latents_std").double()
    # one seeded posterior sample per image, as the manifest's statistics were taken
    from safetensors import safe_open

    parts = []
    for index, shard in enumerate(info["shards"]):
        with safe_open(str(tmp_path / "m" / shard["file"]), framework="pt") as f:
            g = torch.Generator().manual_seed(index)
            m = f.get_tensor("latents").double()
            parts.append(
                m + f.get_tensor("latents_std").double() * torch.randn(m.shape, generator=g, dtype=torch.float64)
            )
    samples = torch.cat(parts)
    torch.testing.assert_close(
        torch.tensor(info["mean"], dtype=torch.float64), samples.mean((0, 2, 3)), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        torch.tensor(info["std"], dtype=torch.float64), samples.std((0, 2, 3), unbiased=False), rtol=1e-5, atol=1e-6
    )
    # ... whose spread includes the posterior noise: about sqrt(var(means) + mean(std^2)), above the means' own spread
    expected_var = means.var((0, 2, 3), unbiased=False) + stds.square().mean((0, 2, 3))
    torch.testing.assert_close(torch.tensor(info["std"], dtype=torch.float64).square(), expected_var, rtol=0.3, atol=0)

    # an old cache (posterior mean only) still loads, without moments
    _cache(official_tokenizer, synthetic_dir / "images", tmp_path / "old")
    old = LatentDataset(tmp_path / "old")
    assert not old.has_moments and "latents_std" not in old[0]
    torch.testing.assert_close(old.denormalize(old[0]["latents"]), post.mean[0], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_lightningdit_cache_stores_one_posterior_sample_per_image_and_per_flip(
    tmp_path, official_tokenizer, synthetic_dir
):
    from vfmvae.latents import LatentDataset

    _cache(official_tokenizer, synthetic_dir / "images", tmp_path / "moments", flip=True, moments=True)
    _cache(official_tokenizer, synthetic_dir / "images", tmp_path / "s", flip=True, sample=True)
    moments, sampled = LatentDataset(tmp_path / "moments", flip=True), LatentDataset(tmp_path / "s", flip=True)
    for key in ("latents", "latents_flip"):
        mean, std, s = moments.column(key), moments.column(key + "_std"), sampled.column(key)
        residual = (s - mean) / std  # a sample of this image's (or its flip's) posterior: standard normal
        assert abs(float(residual.mean())) < 0.1 and abs(float(residual.std()) - 1) < 0.1, key


def test_diffusion_draws_a_fresh_posterior_sample_each_step_that_averages_to_the_mean(
    tmp_path, official_tokenizer, synthetic_dir
):
    from vfmvae.config import ConfigError, load_config
    from vfmvae.diffusion import diffusion_config
    from vfmvae.diffusion_training import DiffusionTrainConfig, train_diffusion
    from vfmvae.diffusion_training.draws import StepDraws
    from vfmvae.latents import LatentDataset, draw_posterior

    _cache(official_tokenizer, synthetic_dir / "images", tmp_path / "m", moments=True)
    _cache(official_tokenizer, synthetic_dir / "images", tmp_path / "old")
    recipe = ROOT / "configs" / "diffusion" / "tiny.yaml"
    overrides = [
        f"data.cache={tmp_path / 'm'}",
        "data.flip=false",
        "data.posterior_draws=true",
        "transport.align_weight=0",
        "model.overrides={}",
        "run.grid_every_images=0",
        "run.batch_size=8",
    ]
    cfg = load_config(DiffusionTrainConfig, recipe, [*overrides, f"run.dir={tmp_path / 'run'}"])
    ds = LatentDataset(tmp_path / "m")
    mcfg = diffusion_config("lightningdit-tiny", in_channels=8, input_size=4, num_classes=4)
    generator = torch.Generator()

    def draw(step):
        return StepDraws.draw(
            step,
            seed=cfg.run.seed,
            batch_size=cfg.run.batch_size,
            transport=cfg.transport,
            model=mcfg,
            posterior=cfg.data.posterior_draws,
            generator=generator,
        )

    item = ds[5]
    samples = []
    for step in range(2000):
        draws = draw(step)
        samples.append(draw_posterior(item["latents"], item["latents_std"], draws.posterior_eps[3]))
    samples = torch.stack(samples)
    assert not torch.equal(samples[0], samples[1])  # a new draw every step
    draws = draw(7)
    again = draw_posterior(item["latents"], item["latents_std"], draws.posterior_eps[3])
    assert torch.equal(again, samples[7])  # seeded by (seed, step): resumable
    spread = item["latents_std"]
    assert ((samples.mean(0) - item["latents"]).abs() <= 4 * spread / 2000**0.5 + 1e-6).all()  # averages to the mean
    torch.testing.assert_close(samples.std(0), spread, rtol=0.1, atol=1e-6)

    summary = train_diffusion(
        load_config(DiffusionTrainConfig, recipe, [*overrides, f"run.dir={tmp_path / 'run'}", "run.total_images=16"]),
        progress=False,
    )
    assert summary["steps"] == 2
    with pytest.raises(ConfigError, match="--moments"):
        train_diffusion(
            load_config(
                DiffusionTrainConfig,
                recipe,
                [*overrides, f"data.cache={tmp_path / 'old'}", f"run.dir={tmp_path / 'bad'}"],
            ),
            progress=False,
        )


def test_reg_dinov2_targets_resize_bicubic_without_antialias_and_resample_the_table_once_like_timm():
    import copy

    import torch.nn.functional as F
    from timm.layers import resample_abs_pos_embed

    from vfmvae.latents.targets import reg_dinov2_targets
    from vfmvae.vfm import FrozenVFM
    from vfmvae.vfm.families import VFM_ADAPTERS

    # a random DINOv2 with a 10x10 table (80 px / 8) fed 64 px images resized to 48 px -> a 6x6 grid
    arch = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "patch_size": 8,
        "image_size": 80,
        "layerscale_value": 1.0,
    }
    torch.manual_seed(0)
    model = VFM_ADAPTERS["dinov2"].build(arch)
    today = FrozenVFM(model, "dinov2", scale_factor=0.75)
    reg = reg_dinov2_targets(FrozenVFM(copy.deepcopy(model), "dinov2", scale_factor=0.75), 64)
    images = torch.rand(2, 3, 64, 64)
    # the reference: REG's steps, written out with timm's resampling
    reference_model = copy.deepcopy(model)
    table = reference_model.embeddings.position_embeddings
    table.data = resample_abs_pos_embed(table.data, [6, 6], num_prefix_tokens=1)
    x = F.interpolate(images, size=(48, 48), mode="bicubic", align_corners=False)  # no antialias
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        expected = reference_model(pixel_values=x).last_hidden_state
        got = reg(images)
        old = today(images)
    torch.testing.assert_close(got.cls, expected[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.tokens[0], expected[:, 1:], rtol=1e-4, atol=1e-4)
    assert reg.model.embeddings.position_embeddings.shape[1] == 1 + 36  # resampled once, used as it is
    assert not torch.allclose(old.tokens[0], got.tokens[0], atol=1e-3)  # today's path differs


# The four official stages on the tiny recipe, shrunk: what changes per stage (configs/tokenizer/stage*.yaml)
STAGE_OVERRIDES = {
    "stage0": ["stage=all", "data.crop=random_square"],
    "stage1": ["stage=all", "data.crop=random_square", "loss.multiscale_until_images=0"],
    "stage2": [
        "stage=decoder",
        "data.crop=random_square",
        "loss.multiscale_until_images=0",
        "loss.kl=0",
        "loss.vf=0",
        "loss.ssim=1.0",
        "optim.lr=2.5e-4",
        "optim.d_lr=2.5e-4",
    ],
    "stage3": [
        "stage=late_decoder",
        "data.crop=random_square",
        "loss.multiscale_until_images=0",
        "loss.kl=0",
        "loss.vf=0",
        "loss.l1=0",
        "loss.patchgan=1.0",
        "loss.feature_matching=10.0",
        "loss.equivariance=false",
        "optim.lr=2.5e-4",
        "optim.d_lr=2.5e-4",
    ],
}


@pytest.mark.slow
def test_four_stages_chain_each_from_the_previous_export_with_held_out_psnr(tmp_path, synthetic_dir):
    from safetensors.torch import load_file

    from vfmvae.cli import main
    from vfmvae.data.synthetic import SyntheticConfig, write_synthetic_dataset
    from vfmvae.tokenizer import VFMVAE
    from vfmvae.tokenizer.reconstruct import reconstruct_folder

    held_out = tmp_path / "held-out"
    write_synthetic_dataset(SyntheticConfig(out=held_out, num=4, classes=2, size=32, seed=99), progress=False)
    previous, psnr = None, {}
    for name, overrides in STAGE_OVERRIDES.items():
        run_dir = tmp_path / name
        stage = [*overrides, *(_from_export(previous) if previous else ())]
        args = _tiny_args(run_dir, synthetic_dir / "images", "run.batch_size=2", "run.total_images=2", *stage)
        assert main(args) == 0  # one step per stage
        export = run_dir / "export"
        if previous is not None:  # the export records the cumulative images, the raw generator and the discriminators
            assert json.loads((export / "training.json").read_text())["images_total"] == 2 * (len(psnr) + 1)
        disc = load_file(export / "discriminators.safetensors")
        assert any(k.startswith("projected.") for k in disc)
        assert any(k.startswith("patchgan.") for k in disc) == (name == "stage3")
        report = reconstruct_folder(
            VFMVAE.from_pretrained(export),
            held_out / "images",
            tmp_path / f"recon-{name}",
            num_workers=0,
            progress=False,
        )
        psnr[name] = report["psnr_mean"]
        print(f"{name}: held-out PSNR {psnr[name]:.2f} dB")
        previous = export
    assert all(p is not None and 0 < p < 100 for p in psnr.values())


@pytest.mark.slow
def test_resume_with_a_hand_off_and_an_active_safe_loss_guard_gives_the_same_weights(tmp_path, synthetic_dir):
    from safetensors.torch import load_file

    from vfmvae.cli import main

    data = synthetic_dir / "images"
    assert main(_tiny_args(tmp_path / "a", data, "run.batch_size=2", "run.total_images=2")) == 0
    common = (
        "run.batch_size=2",
        *_from_export(tmp_path / "a" / "export"),
        "loss.ssim=1.0",
        "loss.safe_loss_after_images=0",
        "run.checkpoint_every_images=2",  # every step
    )
    assert main(_tiny_args(tmp_path / "straight", data, "run.total_images=6", *common)) == 0
    assert main(_tiny_args(tmp_path / "split", data, "run.total_images=2", *common)) == 0  # stops after 1 step
    assert main(_tiny_args(tmp_path / "split", data, "run.total_images=6", *common)) == 0  # resumes at step 1
    straight, split = (load_file(tmp_path / n / "export" / "generator_raw.safetensors") for n in ("straight", "split"))
    assert straight.keys() == split.keys()
    for key in straight:
        torch.testing.assert_close(split[key], straight[key], rtol=0, atol=0, msg=key)
    for name in ("model.safetensors", "discriminators.safetensors"):
        a, b = (load_file(tmp_path / n / "export" / name) for n in ("straight", "split"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert json.loads((tmp_path / "split" / "export" / "training.json").read_text())["images_total"] == 8
