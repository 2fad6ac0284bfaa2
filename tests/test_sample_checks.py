"""Sampler arguments are validated in the config objects, non-finite samples are never written, a resumed
`sample` verifies the models' contents, a stored tokenizer path resolves from the model folder, and a foreign
non-empty --out is refused."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from vfmvae.cli import main
from vfmvae.diffusion import create_diffusion_model
from vfmvae.sampling import SamplerConfig
from vfmvae.sampling.ode import Guidance, time_grid
from vfmvae.sampling.pipeline import VFMVAEPipeline

DATA = Path(__file__).parent / "data" / "official_tokenizer_tiny"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from vfmvae.tokenizer.convert import convert_official_tokenizer

    root = tmp_path_factory.mktemp("samplechecks")
    convert_official_tokenizer(
        DATA / "config.yaml", DATA / "official_G.safetensors", DATA / "siglip2-tiny-patch16", root / "tok"
    )
    torch.manual_seed(0)
    create_diffusion_model("lightningdit-tiny", in_channels=8, input_size=4, num_classes=4).save_pretrained(
        root / "dit"
    )
    (root / "dit" / "latent_stats.json").write_text(
        json.dumps({"mean": [0.0] * 8, "std": [1.0] * 8, "tokenizer": "../tok"})
    )
    return root


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shift": 0.0}, r"shift \(--shift\) must be a finite number > 0"),
        ({"shift": -2.0}, r"--shift"),
        ({"interval": (0.8, 0.2)}, r"interval \(--interval\).*0 <= LOW <= HIGH <= 1.*0.8,0.2"),
        ({"interval": (0.0, 2.0)}, r"--interval"),
        ({"cfg_scale": -3.0}, r"scale \(--cfg\) must be a finite number >= 0"),
        ({"cls_cfg_scale": float("nan")}, r"--cls-cfg"),
        ({"guide_channels": 0}, r"--guide-channels"),
    ],
)
def test_sampler_config_refuses_arguments_that_give_wrong_images(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplerConfig(**kwargs)


def test_guidance_and_time_grid_validate_on_their_own():
    with pytest.raises(ValueError, match="--interval"):
        Guidance(scale=2.0, interval=(0.8, 0.2))
    with pytest.raises(ValueError, match="--shift"):
        time_grid(10, shift=0.0)


def test_guide_channels_beyond_the_model_and_cli_errors(models, tmp_path, capsys):
    pipe = VFMVAEPipeline.from_pretrained(models / "dit")
    with pytest.raises(ValueError, match="--guide-channels 99 exceeds the model's 8 latent channels"):
        pipe([0], config=SamplerConfig(steps=2, cfg_scale=2.0, guide_channels=99))
    out = tmp_path / "s"
    rc = main(
        [
            "sample",
            "--diffusion",
            str(models / "dit"),
            "--num",
            "2",
            "--out",
            str(out),
            "--shift",
            "0",
            "--device",
            "cpu",
        ]
    )
    assert rc == 2 and "--shift" in capsys.readouterr().err and not out.exists()


def test_stored_tokenizer_path_resolves_from_the_model_folder_not_the_cwd(models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok").mkdir()  # an unrelated ./tok in the working directory (and ../tok from the cwd is not it)
    pipe = VFMVAEPipeline.from_pretrained(models / "dit")
    assert pipe.tokenizer_dir.resolve() == (models / "tok").resolve()
    shutil.copytree(models / "dit", tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match=r"tokenizer \.\./tok named in .*moved/latent_stats.json .*--tokenizer"):
        VFMVAEPipeline.from_pretrained(tmp_path / "moved")


def test_non_finite_samples_are_never_written(models, tmp_path):
    from safetensors.torch import load_file, save_file

    dit = tmp_path / "nan-dit"
    shutil.copytree(models / "dit", dit)
    # NaN weights (NaN latent statistics are refused when they are read: tests/reliability/test_hostile_round3.py)
    weights = load_file(dit / "model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) for k, v in weights.items()}, str(dit / "model.safetensors"))
    rc = main(
        [
            "sample",
            "--diffusion",
            str(dit),
            "--num",
            "2",
            "--out",
            str(tmp_path / "s"),
            "--steps",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert rc == 2 and not list((tmp_path / "s" / "images").glob("*.png"))


def test_resume_after_the_model_folder_was_replaced_is_refused(models, tmp_path, capsys):
    dit = tmp_path / "dit"
    shutil.copytree(models / "dit", dit)
    (dit / "latent_stats.json").write_text(
        json.dumps({"mean": [0.0] * 8, "std": [1.0] * 8, "tokenizer": str(models / "tok")})
    )
    args = [
        "sample",
        "--diffusion",
        str(dit),
        "--num",
        "4",
        "--out",
        str(tmp_path / "s"),
        "--steps",
        "2",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    (tmp_path / "s" / "images" / "000003.png").unlink()  # interrupted
    torch.manual_seed(1)
    create_diffusion_model("lightningdit-tiny", in_channels=8, input_size=4, num_classes=4).save_pretrained(dit)
    capsys.readouterr()
    assert main(args) == 2
    assert "other settings" in (err := capsys.readouterr().err) and "diffusion_sha256" in err
    assert not (tmp_path / "s" / "images" / "000003.png").exists()


def test_sample_refuses_a_foreign_non_empty_out(models, tmp_path, capsys):
    out = tmp_path / "gen"
    (out / "images").mkdir(parents=True)
    (out / "images" / "old-run-0001.png").write_bytes(b"x")
    rc = main(
        [
            "sample",
            "--diffusion",
            str(models / "dit"),
            "--num",
            "2",
            "--out",
            str(out),
            "--steps",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert rc == 2 and "holds no settings.json" in capsys.readouterr().err
    assert os.listdir(out / "images") == ["old-run-0001.png"]
