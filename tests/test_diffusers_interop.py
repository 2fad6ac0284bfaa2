"""vfmvae models in diffusers form: round trips ours -> diffusers -> ours, the diffusers interface, the pipeline.

Tiny models: the official tiny tokenizer (converted) and a tiny REG model on its 8x4x4 latents.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers", reason='diffusers is not installed (pip install "vfmvae[diffusers]")')

from diffusers import DiffusionPipeline  # noqa: E402
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution  # noqa: E402
from helpers import perturbed_reg_export, tiny_official_tokenizer  # noqa: E402

from vfmvae.checkpoint.serialize import load_tensors  # noqa: E402
from vfmvae.diffusers import VFMVAEAutoencoder, VFMVAEDiffusionPipeline, VFMVAETransformer2DModel, export_pipeline  # noqa: E402
from vfmvae.diffusion import DiffusionTransformer  # noqa: E402
from vfmvae.tokenizer import VFMVAE  # noqa: E402

STATS = {"mean": [0.1, -0.2, 0.0, 0.3, 0.05, -0.1, 0.2, 0.0], "std": [2.0, 1.5, 1.0, 0.5, 2.5, 1.0, 1.2, 0.8]}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Our folders: a tokenizer, and a perturbed tiny REG model exported with latent_stats.json naming it."""
    root = tmp_path_factory.mktemp("interop")
    perturbed_reg_export(root / "dit", tiny_official_tokenizer(root / "tok"), STATS)
    return root


def _images(n=2, size=64):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _assert_same_files(a: Path, b: Path):
    x, y = load_tensors(a), load_tensors(b)
    assert sorted(x) == sorted(y)
    for key in x:
        assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), key  # max abs 0


@pytest.mark.slow  # three decodes of the tiny official decoder: ~10 s each on a busy 2-core CPU
def test_tokenizer_round_trip_ours_diffusers_ours(models, tmp_path):
    ours = VFMVAE.from_pretrained(models / "tok")
    vae = VFMVAEAutoencoder.from_vfmvae(models / "tok", latent_stats=models / "dit" / "latent_stats.json")
    vae.save_pretrained(tmp_path / "vae")
    assert {p.name for p in (tmp_path / "vae").iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors"}
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert config["_class_name"] == "VFMVAEAutoencoder"
    assert config["latents_mean"] == pytest.approx(STATS["mean"]) and config["latents_std"] == pytest.approx(
        STATS["std"]
    )

    loaded = VFMVAEAutoencoder.from_pretrained(tmp_path / "vae")
    loaded.to_vfmvae().save_pretrained(tmp_path / "back")
    _assert_same_files(models / "tok" / "model.safetensors", tmp_path / "back" / "model.safetensors")
    back = VFMVAE.from_pretrained(tmp_path / "back")
    assert back.config == ours.config

    x01 = _images()
    with torch.no_grad():
        mine = ours.encode(x01)
        theirs = loaded.encode(x01 * 2 - 1).latent_dist  # diffusers images are in [-1, 1]
        assert isinstance(theirs, DiagonalGaussianDistribution)
        torch.testing.assert_close(theirs.mode(), mine.mode(), rtol=0, atol=1e-5)
        torch.testing.assert_close(theirs.std, mine.std, rtol=0, atol=1e-5)
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        torch.testing.assert_close(theirs.sample(generator=g1), mine.sample(g2), rtol=0, atol=1e-5)
        z = mine.mode()
        reference = ours.decode(z).sample  # decoding is the slow part on CPU: once per path
        (image,) = loaded.decode(z, return_dict=False)
        torch.testing.assert_close(image, reference, rtol=0, atol=1e-5)
        (posterior,) = loaded.encode(x01 * 2 - 1, return_dict=False)
        torch.testing.assert_close(posterior.mean, mine.mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(loaded(x01 * 2 - 1).sample, reference, rtol=0, atol=1e-5)  # forward: mode, decode
    assert loaded.latent_stats.mean.tolist() == pytest.approx(STATS["mean"])


def test_transformer_round_trip_ours_diffusers_ours(models, tmp_path):
    ours = DiffusionTransformer.from_pretrained(models / "dit")
    VFMVAETransformer2DModel.from_vfmvae(models / "dit").save_pretrained(tmp_path / "transformer")
    loaded = VFMVAETransformer2DModel.from_pretrained(tmp_path / "transformer")
    loaded.to_vfmvae().save_pretrained(tmp_path / "back")
    _assert_same_files(models / "dit" / "model.safetensors", tmp_path / "back" / "model.safetensors")
    assert DiffusionTransformer.from_pretrained(tmp_path / "back").config == ours.config

    g = torch.Generator().manual_seed(2)
    x, cls = torch.randn(3, 8, 4, 4, generator=g), torch.randn(3, ours.config.class_token_dim, generator=g)
    t, y = torch.tensor([0.9, 0.5, 0.1]), torch.tensor([0, 3, 4])  # 4 = the null label
    with torch.no_grad():
        mine = ours(x, t, y, cls)
        out = loaded(x, t, y, class_token=cls)
        torch.testing.assert_close(out.sample, mine.sample, rtol=0, atol=1e-5)
        torch.testing.assert_close(out.class_token_velocity, mine.cls, rtol=0, atol=1e-5)
        sample, _ = loaded(x, 0.5, y, class_token=cls, return_dict=False)  # a scalar timestep is broadcast
        torch.testing.assert_close(sample, ours(x, torch.full((3,), 0.5), y, cls).sample, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def pipeline_dir(models):
    return export_pipeline(models / "dit", models / "pipeline")


@pytest.mark.slow
@pytest.mark.parametrize("sampler,cfg", [("euler", 2.0), ("sde", 1.5)])
def test_diffusers_pipeline_gives_the_images_of_vfmvae_sample(models, pipeline_dir, tmp_path, sampler, cfg):
    from vfmvae.cli import main

    index = json.loads((pipeline_dir / "model_index.json").read_text())
    assert index["_class_name"] == "VFMVAEDiffusionPipeline"
    assert index["vae"] == ["vfmvae.diffusers.autoencoder", "VFMVAEAutoencoder"]
    pipe = DiffusionPipeline.from_pretrained(pipeline_dir)
    assert isinstance(pipe, VFMVAEDiffusionPipeline)
    labels = [2, 0]
    out = pipe(
        class_labels=labels,
        num_inference_steps=2,
        guidance_scale=cfg,
        sampler=sampler,
        guidance_interval=(0.0, 0.8),
        generator=torch.Generator().manual_seed(7),
    )
    assert len(out.images) == 2 and all(isinstance(im, Image.Image) and im.size == (64, 64) for im in out.images)

    assert (
        main(
            [
                "sample",
                "--diffusion",
                str(models / "dit"),
                "--num-samples",
                "2",
                "--out",
                str(tmp_path / "s"),
                "--steps",
                "2",
                "--sampler",
                sampler,
                "--cfg",
                str(cfg),
                "--interval",
                "0,0.8",
                "--classes",
                "2,0",
                "--seed",
                "7",
                "--batch-size",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    npz = np.load(tmp_path / "s" / "samples.npz")
    assert npz["arr_1"].tolist() == labels
    for i, image in enumerate(out.images):
        assert np.array_equal(np.asarray(image), npz["arr_0"][i]), f"image {i} differs from vfmvae sample's"


def test_pipeline_rejects_bad_arguments(pipeline_dir):
    pipe = VFMVAEDiffusionPipeline.from_pretrained(pipeline_dir)
    with pytest.raises(ValueError, match="class_labels must be .* 0..3"):
        pipe(class_labels=[1, 9], num_inference_steps=2)
    with pytest.raises(ValueError, match="output_type"):
        pipe(class_labels=[1], num_inference_steps=2, output_type="jpeg")
    with pytest.raises(ValueError, match="2 generators for 1 images"):
        pipe(class_labels=[1], num_inference_steps=2, generator=[torch.Generator(), torch.Generator()])
    (latents,) = pipe(class_labels=3, num_inference_steps=1, output_type="latent", return_dict=False)
    assert latents.shape == (1, 8, 4, 4)


def test_export_command_writes_loadable_folders_and_refuses_to_overwrite(models, tmp_path, capsys):
    from vfmvae.cli import main

    assert (
        main(
            [
                "export",
                "diffusers",
                "--tokenizer",
                str(models / "tok"),
                "--latent-stats",
                str(models / "dit" / "latent_stats.json"),
                "--out",
                str(tmp_path / "vae"),
            ]
        )
        == 0
    )
    vae = VFMVAEAutoencoder.from_pretrained(tmp_path / "vae")
    assert vae.config.latents_std == pytest.approx(STATS["std"])
    assert main(["export", "diffusers", "--diffusion", str(models / "dit"), "--out", str(tmp_path / "pipe")]) == 0
    assert sorted(p.name for p in (tmp_path / "pipe").iterdir()) == ["model_index.json", "transformer", "vae"]
    assert isinstance(DiffusionPipeline.from_pretrained(tmp_path / "pipe"), VFMVAEDiffusionPipeline)
    before = (tmp_path / "vae" / "config.json").read_bytes()
    assert main(["export", "diffusers", "--tokenizer", str(models / "tok"), "--out", str(tmp_path / "vae")]) == 2
    assert "exists" in capsys.readouterr().err and (tmp_path / "vae" / "config.json").read_bytes() == before
