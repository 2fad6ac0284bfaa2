"""Samplers (orders of accuracy on an exact flow, guidance), the pipeline and `vfmvae sample`."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import perturbed_reg_export, tiny_official_tokenizer
from torch import nn

from vfmvae.diffusion import DiTOutput
from vfmvae.sampling import Guidance, LatentStats, SamplerConfig, VFMVAEPipeline, class_labels, sample_ode, sample_sde


class GaussianFlow(nn.Module):
    """The exact velocity of the linear path from N(mu_y, sigma^2) data to N(0, 1) noise (per dimension).

    With m_t = (1 - t) mu and s_t^2 = (1 - t)^2 sigma^2 + t^2, v(x, t) = -mu + (t - (1 - t) sigma^2) / s_t^2 (x - m_t),
    and the ODE maps noise eps at t = 1 to mu + sigma * eps at t = 0 exactly.
    """

    def __init__(self, mus, sigma=0.5):
        super().__init__()
        self.register_buffer("mus", torch.tensor(mus, dtype=torch.float64))  # per class; the null class has mu = 0
        self.sigma = sigma
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.config = type("C", (), {"num_classes": len(mus) - 1, "class_token_dim": 0})()

    def forward(self, x, t, y, cls=None):
        mu = self.mus[y].view(-1, 1, 1, 1)
        t = t.double().view(-1, 1, 1, 1)
        s2 = (1 - t) ** 2 * self.sigma**2 + t**2
        return DiTOutput(-mu + (t - (1 - t) * self.sigma**2) / s2 * (x.double() - (1 - t) * mu))


def _error(method, steps):
    model = GaussianFlow([1.5, -2.0, 0.0])
    eps = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1])
    exact = model.mus[y].view(-1, 1, 1, 1) + model.sigma * eps
    out = sample_ode(model, eps, y, steps=steps, method=method)
    return float((out - exact).abs().max())


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2)])
def test_ode_errors_fall_at_the_expected_order(method, order):
    errors = [_error(method, n) for n in (8, 16, 32, 64)]
    rates = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    print(method, errors, rates)
    assert all(abs(r - order) < 0.25 for r in rates[1:]), rates
    assert errors[-1] < (0.05 if order == 1 else 1e-3)


def test_guidance_scale_one_equals_no_guidance_and_guidance_extrapolates():
    model = GaussianFlow([1.5, -2.0, 0.0])
    eps = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([0, 1])
    plain = sample_ode(model, eps, y, steps=20)
    torch.testing.assert_close(sample_ode(model, eps, y, steps=20, guidance=Guidance(scale=1.0)), plain)
    # the two-pass path with scale 1 (forced by a scale a hair above 1) agrees too
    torch.testing.assert_close(sample_ode(model, eps, y, steps=20, guidance=Guidance(scale=1.0 + 1e-12)), plain)
    guided = sample_ode(model, eps, y, steps=20, guidance=Guidance(scale=3.0))
    # conditional means 1.5 / -2 against the unconditional 0: guidance pushes further from the null class
    assert float(guided[0].mean()) > float(plain[0].mean()) and float(guided[1].mean()) < float(plain[1].mean())
    # an interval holding no evaluated time (Euler never evaluates t = 0) switches it off; channels=1 guides the
    # first channel only
    torch.testing.assert_close(
        sample_ode(model, eps, y, steps=20, guidance=Guidance(scale=3.0, interval=(0.0, 0.0))), plain
    )


def test_sde_sampler_reaches_the_data_distribution():
    model = GaussianFlow([1.5, -2.0, 0.0])
    n = 4000
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    eps = torch.stack([torch.randn(1, 1, 1, generator=g, dtype=torch.float64) for g in gens])
    y = torch.zeros(n, dtype=torch.long)
    out = sample_sde(model, eps, y, steps=100, generators=gens)
    assert abs(float(out.mean()) - 1.5) < 0.05 and abs(float(out.std()) - 0.5) < 0.05


def test_class_labels():
    assert class_labels("balanced", 7, 3) == [0, 1, 2, 0, 1, 2, 0]
    assert class_labels("2,0", 5, 3) == [2, 0, 2, 0, 2]
    rnd = class_labels("random", 50, 10, seed=1)
    assert (
        rnd == class_labels("random", 50, 10, seed=1)
        and len(set(rnd)) > 5
        and rnd[:10] == class_labels("random", 10, 10, seed=1)
    )
    with pytest.raises(ValueError, match="class ids must be in 0..2"):
        class_labels("1,7", 4, 3)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A perturbed tiny REG model on the official tiny tokenizer's 8x4x4 latents, exported like a training run."""
    root = tmp_path_factory.mktemp("sampling")
    return perturbed_reg_export(
        root / "dit", tiny_official_tokenizer(root / "tok"), {"mean": [0.1] * 8, "std": [2.0] * 8}
    )


@pytest.mark.parametrize("sampler", ["euler", "sde"])
def test_images_do_not_depend_on_batch_size(export, sampler):
    """Per-sample seeds: batch 6 = six batches of 1. Exact in float64; in float32 kernels reduce in another order
    for another batch size (~1e-6), which may move a handful of uint8 values by one level."""
    pipe = VFMVAEPipeline.from_pretrained(export)
    cfg = SamplerConfig(sampler=sampler, steps=6, cfg_scale=2.0)
    labels = [0, 1, 2, 3, 0, 1]
    to8 = lambda x: (x * 255 + 0.5).floor().to(torch.uint8)  # noqa: E731

    def both(p):
        together = p(labels, seed=3, config=cfg)
        apart = torch.cat([p([lab], seed=3, indices=[i], config=cfg) for i, lab in enumerate(labels)])
        return together, apart

    together, apart = both(pipe)  # float32
    assert together.shape == (6, 3, 64, 64)
    torch.testing.assert_close(
        pipe.latents(labels, seed=3, config=cfg),
        torch.cat([pipe.latents([y], seed=3, indices=[i], config=cfg) for i, y in enumerate(labels)]),
        rtol=0,
        atol=1e-5,
    )
    flips = (to8(together).int() - to8(apart).int()).abs()
    assert int(flips.max()) <= 1 and int((flips > 0).sum()) <= together.numel() // 1000
    assert not torch.equal(to8(together[0]), to8(together[4]))  # same label, other seed
    exact = VFMVAEPipeline(pipe.diffusion.double(), pipe.tokenizer.double(), pipe.stats)
    together, apart = both(exact)
    assert torch.equal(to8(together), to8(apart))


def test_sample_command_resume_npz_layout_and_settings_check(export, tmp_path, capsys):
    from vfmvae.cli import main
    from vfmvae.evaluation.images import open_image_set

    args = [
        "sample",
        "--classes",
        "balanced",
        "--diffusion",
        str(export),
        "--num",
        "6",
        "--out",
        str(tmp_path / "s"),
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--cfg",
        "1.5",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert "6 samples" in capsys.readouterr().out
    npz = np.load(tmp_path / "s" / "samples.npz")
    assert (
        npz["arr_0"].shape == (6, 64, 64, 3)
        and npz["arr_0"].dtype == np.uint8
        and npz["arr_1"].tolist() == [0, 1, 2, 3, 0, 1]
    )
    image_set = open_image_set(tmp_path / "s" / "samples.npz")  # our ADM-protocol evaluator reads it
    assert len(image_set) == 6 and sum(len(b) for b in image_set.batches(4)) == 6
    before = {p.name: p.read_bytes() for p in (tmp_path / "s" / "images").glob("*.png")}
    for name in ("000001.png", "000004.png"):  # an interrupted run
        (tmp_path / "s" / "images" / name).unlink()
    (tmp_path / "s" / "samples.npz").unlink()
    assert main(args) == 0  # resumes: draws only the missing samples, identically
    after = {p.name: p.read_bytes() for p in (tmp_path / "s" / "images").glob("*.png")}
    assert after == before and (tmp_path / "s" / "grid.png").is_file()
    assert main(args[:-6] + ["--steps", "5", "--batch-size", "4", "--cfg", "1.5", "--device", "cpu"]) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_give_the_same_images_as_one(export, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [
        "-m",
        "vfmvae",
        "sample",
        "--diffusion",
        str(export),
        "--num-samples",
        "5",
        "--steps",
        "4",
        "--sampler",
        "sde",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]
    one = subprocess.run(
        [sys.executable, *common, "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = np.load(tmp_path / "one" / "samples.npz"), np.load(tmp_path / "two" / "samples.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])


def test_latent_stats_from_official_file(tmp_path):
    torch.save(
        {"mean": torch.full((1, 8, 1, 1), 0.5), "std": torch.full((1, 8, 1, 1), 2.0)}, tmp_path / "latents_stats.pt"
    )
    stats = LatentStats.load(tmp_path / "latents_stats.pt")
    torch.testing.assert_close(stats.denormalize(torch.ones(1, 8, 2, 2)), torch.full((1, 8, 2, 2), 2.5))
    with pytest.raises(FileNotFoundError, match="--latent-stats"):
        LatentStats.load(tmp_path / "missing.json")
