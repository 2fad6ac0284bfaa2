"""Sampler presets against the official sampler settings, random labels by default, uint8 as the official decode."""

import json
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import train_argv
from safetensors.torch import load_file

from vfmvae.sampling import class_labels, sde_grid, time_grid
from vfmvae.sampling.presets import PRESETS, from_lightningdit, from_reg, resolve_sampler_config

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


# ---------------------------------------------------------------------------------------------- presets
def test_lightningdit_preset_is_the_official_sample_config():
    """train_lightningdit_xl_1_stage_*.yaml: euler, num_sampling_steps 250, timestep_shift 0.3, cfg 4.0,
    cfg_interval_start 0.125, and LightningDiT's forward_with_cfg guiding channels 0-2."""
    p = PRESETS["lightningdit"]
    assert (p.sampler, p.steps, p.cfg_scale, p.guide_channels, p.cls_cfg_scale) == ("euler", 249, 4.0, 3, None)
    # LightningDiT's grid: 250 points t = linspace(0, 1) (0 = noise), shifted t' = s t / (1 + (s - 1) t), s = 0.3
    t = torch.linspace(0, 1, 250, dtype=torch.float64)
    official = 0.3 * t / (1 + (0.3 - 1) * t)
    ours = 1 - time_grid(p.steps, p.shift)
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-12)
    # the same conversion reproduces the grid recorded from the official Sampler.sample_ode(num_steps=10, shift 0.3)
    recorded = load_file(DATA / "lightningdit_reference" / "sampler_ode.safetensors")["grid"]
    ten = from_lightningdit(num_sampling_steps=10, timestep_shift=0.3)
    torch.testing.assert_close((1 - time_grid(ten.steps, ten.shift)).float(), recorded, rtol=0, atol=1e-6)
    # guidance where LightningDiT guides: its t >= cfg_interval_start (the model is called at the grid points)
    for tau, t_official in zip(time_grid(p.steps, p.shift)[:-1].tolist(), official[:-1].tolist()):
        assert p.guidance.active(tau) == (t_official >= 0.125 - 1e-12)
    assert sum(p.guidance.active(tau) for tau in time_grid(p.steps, p.shift)[:-1].tolist()) < 249  # some steps unguided


def test_reg_sde_preset_is_the_official_sample_sh():
    """sample.sh: --mode sde --num-steps 250 --cfg-scale 4.0 --cls-cfg-scale 4.0 --guidance-high 0.8 (low 0)."""
    p = PRESETS["reg-sde"]
    assert (p.sampler, p.steps, p.cfg_scale, p.cls_cfg_scale, p.guide_channels, p.shift) == (
        "sde",
        250,
        4.0,
        4.0,
        None,
        1.0,
    )
    grid = sde_grid(p.steps)
    assert len(grid) == 251 and grid[0] == 1.0 and abs(float(grid[-2]) - 0.04) < 1e-12 and grid[-1] == 0.0
    # REG guides while guidance_low <= t_cur <= guidance_high, on the same time axis
    for t in grid[:-1].tolist():
        assert p.guidance.active(t) == (0.0 <= t <= 0.8)
    assert from_reg(num_steps=250, cfg_scale=4.0, cls_cfg_scale=4.0, guidance_high=0.8) == p


def test_each_preset_names_its_checkpoint_and_the_80_epoch_reg_setting_is_reachable():
    """reg-sde-80ep: sample.sh without guidance (the 80-epoch model is published w/o CFG only; REG's sampler guides
    only when cfg_scale > 1, the class token included); lightningdit-64ep: the yaml's cfg_scale 6.0 for 64 epochs."""
    from vfmvae.sampling.presets import PRESET_SOURCES, preset_checkpoint

    names = {"reg-sde", "reg-sde-64ep", "reg-sde-80ep", "lightningdit", "lightningdit-64ep"}
    assert set(PRESET_SOURCES) == set(PRESETS) == names
    assert "640 epochs" in preset_checkpoint("reg-sde") and "80 epochs" in preset_checkpoint("reg-sde-80ep")
    assert "560 epochs" in preset_checkpoint("lightningdit") and "64 epochs" in preset_checkpoint("lightningdit-64ep")
    eighty = PRESETS["reg-sde-80ep"]
    assert eighty == from_reg(num_steps=250, cfg_scale=1.0, guidance_high=0.8)
    assert (eighty.sampler, eighty.steps) == ("sde", 250)
    assert not any(eighty.guidance.active(t) for t in sde_grid(eighty.steps)[:-1].tolist())  # one pass per step
    # sample.sh's comment: "for 64 epochs, FID=2.03 with cfg scale=2.0" (only --cfg-scale changes)
    assert "64 epochs" in preset_checkpoint("reg-sde-64ep")
    assert PRESETS["reg-sde-64ep"] == from_reg(num_steps=250, cfg_scale=2.0, cls_cfg_scale=4.0, guidance_high=0.8)
    sixty_four = PRESETS["lightningdit-64ep"]
    assert sixty_four == resolve_sampler_config("lightningdit", cfg_scale=6.0)


def test_explicit_settings_override_the_preset_and_names_are_checked():
    from vfmvae.diffusion_training.config import DiffusionTrainConfig

    cfg = resolve_sampler_config("lightningdit", steps=9, cfg_scale=None)
    assert cfg.steps == 9 and cfg.cfg_scale == 4.0 and cfg.guide_channels == 3
    assert resolve_sampler_config(None).steps == 50 and resolve_sampler_config("none").cfg_scale == 1.0
    with pytest.raises(ValueError, match="unknown sampler preset 'reg'"):
        resolve_sampler_config("reg")
    hint = typing.get_type_hints(DiffusionTrainConfig)["sample_preset"]
    assert set(typing.get_args(typing.get_args(hint)[0])) == set(PRESETS)  # the recipe key accepts exactly these


def test_paper_recipes_record_their_preset(tmp_path):
    from vfmvae.config import ConfigError, load_config
    from vfmvae.diffusion_training.config import DiffusionTrainConfig

    expected = {"lightningdit-xl1.yaml": "lightningdit", "reg-sit-xl1.yaml": "reg-sde"}
    for name, preset in expected.items():
        cfg = load_config(DiffusionTrainConfig, ROOT / "configs" / "diffusion" / name, [f"data.cache={tmp_path}"])
        assert cfg.sample_preset == preset
    with pytest.raises(ConfigError, match="sample_preset"):
        load_config(
            DiffusionTrainConfig,
            ROOT / "configs" / "diffusion" / "tiny.yaml",
            [f"data.cache={tmp_path}", "sample_preset=reg"],
        )


# ---------------------------------------------------------------------------------------------- labels, uint8
def test_random_labels_are_uniform_seeded_and_the_default():
    import inspect

    from vfmvae.sampling.generate import generate_samples

    labels = class_labels("random", 20000, 10, seed=0)
    counts = np.bincount(labels, minlength=10)
    chi2 = float(((counts - 2000) ** 2 / 2000).sum())
    assert chi2 < 27.9  # chi-square with 9 degrees of freedom: p = 0.001
    assert labels[:20] != [i % 10 for i in range(20)]  # not the balanced cycle
    assert class_labels("random", 100, 10, seed=0) == labels[:100]  # per-index seeds: a prefix stays the same
    assert class_labels("random", 100, 10, seed=1) != labels[:100]
    assert inspect.signature(generate_samples).parameters["classes"].default == "random"
    assert class_labels("balanced", 12, 10) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_uint8_conversion_is_to_pil_image_truncation():
    from torchvision.transforms.functional import to_pil_image

    from vfmvae.sampling.generate import images_to_uint8

    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 8, generator=g) * 1.2 - 0.1  # some values outside [0, 1]
    images[0, 0, 0, :4] = torch.tensor([0.5, 1.0, 0.999, 127.9 / 255])
    ours = images_to_uint8(((images * 2 - 1).clamp(-1, 1) + 1) / 2)  # what VFMVAEPipeline returns
    for i in range(2):  # official decode: to_pil_image(((x + 1) / 2).clamp(0, 1))
        official = np.asarray(to_pil_image(((images[i] * 2 - 1 + 1) / 2).clamp(0, 1)))
        assert np.array_equal(ours[i], official)
    assert ours[0, 0, :4, 0].tolist() == [127, 255, 254, 127]  # truncation, not rounding


# ---------------------------------------------------------------------------------------------- sample command
@pytest.fixture(scope="module")
def export_with_preset(tmp_path_factory):
    """A tiny LightningDiT export on the official tiny tokenizer, recording the `lightningdit` preset."""
    from vfmvae.diffusion import create_diffusion_model
    from vfmvae.tokenizer.convert import convert_official_tokenizer

    tiny = DATA / "official_tokenizer_tiny"
    root = tmp_path_factory.mktemp("presets")
    convert_official_tokenizer(
        tiny / "config.yaml", tiny / "official_G.safetensors", tiny / "siglip2-tiny-patch16", root / "tok"
    )
    torch.manual_seed(0)
    model = create_diffusion_model("lightningdit-tiny", in_channels=8, input_size=4, num_classes=4)
    model.save_pretrained(root / "dit")
    (root / "dit" / "latent_stats.json").write_text(
        json.dumps({"mean": [0.0] * 8, "std": [1.0] * 8, "tokenizer": str(root / "tok")})
    )
    (root / "dit" / "sampler.json").write_text(json.dumps({"preset": "lightningdit"}))
    return root / "dit"


def test_sample_uses_the_exported_preset_and_explicit_flags_win(export_with_preset, tmp_path, capsys):
    from vfmvae.cli import main
    from vfmvae.sampling import VFMVAEPipeline

    out = tmp_path / "s"
    assert (
        main(
            [
                "sample",
                "--diffusion",
                str(export_with_preset),
                "--num-samples",
                "4",
                "--out",
                str(out),
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    settings = json.loads((out / "settings.json").read_text())
    assert settings["preset"] == "lightningdit" and settings["classes"] == "random"
    s = settings["sampler"]
    assert s["steps"] == 2  # explicit
    assert (s["sampler"], s["cfg_scale"], s["guide_channels"], s["interval"]) == ("euler", 4.0, 3, [0.0, 0.875])
    assert s["shift"] == pytest.approx(1 / 0.3) and "to_pil_image" in settings["uint8"]
    labels = np.load(out / "samples.npz")["arr_1"].tolist()
    assert labels == class_labels("random", 4, 4, seed=0)
    # --preset none: the package defaults, whatever the export records (rejected here before any sampling)
    assert (
        main(
            [
                "sample",
                "--diffusion",
                str(export_with_preset),
                "--num-samples",
                "2",
                "--out",
                str(out),
                "--preset",
                "none",
                "--steps",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "sampler" in capsys.readouterr().err  # settings differ from the run in `out`: cfg 1, all channels
    # the option parsing alone: --guide-channels all overrides the preset's 3; --preset wins over the export's
    import argparse

    from vfmvae.cli.sample import register, sampler_settings

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    base = ["sample", "--diffusion", str(export_with_preset), "--num-samples", "1", "--out", "o"]
    preset, cfg = sampler_settings(parser.parse_args(base + ["--guide-channels", "all", "--cfg", "6"]))
    assert preset == "lightningdit" and cfg.guide_channels is None and cfg.cfg_scale == 6.0 and cfg.steps == 249
    preset, cfg = sampler_settings(parser.parse_args(base + ["--preset", "reg-sde"]))
    assert preset == "reg-sde" and cfg == PRESETS["reg-sde"]
    # the Python pipeline defaults to the recorded preset too
    pipe = VFMVAEPipeline.from_pretrained(export_with_preset)
    assert pipe.preset == "lightningdit"


@pytest.mark.slow
def test_train_diffusion_export_records_the_recipe_preset(tmp_path, synthetic_dir):
    from vfmvae.cli import main
    from vfmvae.latents import cache_latents
    from vfmvae.tokenizer.convert import convert_official_tokenizer

    tiny = DATA / "official_tokenizer_tiny"
    convert_official_tokenizer(
        tiny / "config.yaml", tiny / "official_G.safetensors", tiny / "siglip2-tiny-patch16", tmp_path / "tok"
    )
    cache_latents(
        tmp_path / "tok",
        synthetic_dir / "images",
        tmp_path / "cache",
        flip=True,
        vfm_features="dinov2-test",
        batch_size=32,
        shard_size=64,
        num_workers=0,
        device="cpu",
        progress=False,
    )
    base = (f"data.cache={tmp_path / 'cache'}", "run.total_images=32", "run.grid_every_images=0")
    recipe = ROOT / "configs/diffusion/tiny.yaml"
    assert main(train_argv("diffusion", recipe, *base, f"run.dir={tmp_path / 'a'}", "sample_preset=reg-sde")) == 0
    assert json.loads((tmp_path / "a" / "export" / "sampler.json").read_text()) == {"preset": "reg-sde"}
    assert main(train_argv("diffusion", recipe, *base, f"run.dir={tmp_path / 'b'}")) == 0
    assert json.loads((tmp_path / "b" / "export" / "sampler.json").read_text()) == {"preset": None}
