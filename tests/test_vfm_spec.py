"""The frozen VFM described once: one `VFMSpec` inside `VFMVAEConfig` (`model.vfm` in a recipe),
one builder, the VF projection created with the model, `init` or `model` in a recipe, and format-1 tokenizer folders
upgraded on read."""

import json
import math
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vfmvae.checkpoint import CheckpointFormatError
from vfmvae.config import ConfigError, config_from_dict, load_config
from vfmvae.tokenizer import VFMVAE, VFMVAEConfig
from vfmvae.tokenizer_training.config import TokenizerTrainConfig
from vfmvae.vfm import VFMSpec, build_vfm

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tokenizer" / "tiny.yaml"
FORMAT1 = ROOT / "tests" / "data" / "tokenizer_format1"
TINY_VIT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16, image_size=64
)


def _tiny_config(**changes) -> VFMVAEConfig:
    """The architecture of tests/data/tokenizer_format1 (make.py), in today's shape."""
    vfm = VFMSpec(name="custom", family="siglip", arch=TINY_VIT, layers=(0, -1), scale_factor=2.0)
    cfg = VFMVAEConfig(
        vfm=vfm,
        proj_dims=(8, 8),
        image_size=32,
        z_dim=4,
        w_dim=16,
        inject_blocks=(0, 1),
        inject_dims=(16, 8),
        attn_blocks=(0,),
        attn_depths=(1,),
        num_blocks=3,
        channel_base=2048,
        channel_max=16,
        num_res_blocks=1,
        decompress_factor=4,
        legacy_noise=False,
    )
    return replace(cfg, **changes)


# ------------------------------------------------------------------------------------------------ the recipe
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["init=runs/stage0/export"], r"exactly one of init .* and model .*; this recipe sets both"),
        (["model=null"], r"exactly one of init .* and model .*; this recipe sets neither"),
    ],
)
def test_a_recipe_is_init_or_model(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TokenizerTrainConfig, TINY, [f"data.source={tmp_path}", *overrides])
    stage1 = ROOT / "configs" / "tokenizer" / "stage1.yaml"  # an init recipe that also sets a model part
    with pytest.raises(ConfigError, match="this recipe sets both"):
        load_config(TokenizerTrainConfig, stage1, [f"data.source={tmp_path}", "model.vfm.scale_factor=1.0"])


def test_the_issue_example_is_refused_with_what_to_write_instead(tmp_path):
    """`--set vfm.scale_factor=1.0 model.vfm_name=nonsense` was accepted and did nothing."""
    with pytest.raises(
        ConfigError,
        match=r"^\S+ \+ --set overrides: vfm is no longer a recipe key: .*write "
        r"model\.vfm: \{scale_factor: 1\.0\} instead",
    ):
        load_config(TokenizerTrainConfig, TINY, [f"data.source={tmp_path}", "vfm.scale_factor=1.0"])
    with pytest.raises(
        ConfigError,
        match=r"model\.vfm_name is no longer a recipe key: .*write model\.vfm\.name: "
        r"nonsense instead",
    ):
        load_config(TokenizerTrainConfig, TINY, [f"data.source={tmp_path}", "model.vfm_name=nonsense"])
    with pytest.raises(ConfigError, match=r"model\.layers is no longer .*write model\.vfm\.layers: \[0, -1\] instead"):
        load_config(TokenizerTrainConfig, TINY, [f"data.source={tmp_path}", "model.layers=[0,-1]"])
    with pytest.raises(ConfigError, match=r"model\.vfm: 'nonsense' is not a registered VFM"):
        load_config(TokenizerTrainConfig, TINY, [f"data.source={tmp_path}", "model.vfm.name=nonsense"])
    # the new key takes effect
    cfg = load_config(TokenizerTrainConfig, TINY, [f"data.source={tmp_path}", "model.vfm.scale_factor=1.0"])
    assert cfg.model.vfm.scale_factor == 1.0


def test_the_cli_refuses_the_issue_example_in_one_line(tmp_path, capsys):
    from vfmvae.cli import main

    code = main(
        [
            "train",
            "tokenizer",
            "--recipe",
            str(TINY),
            "--set",
            f"data.source={tmp_path}",
            "--set",
            f"run.dir={tmp_path / 'run'}",
            "--set",
            "vfm.scale_factor=1.0",
            "--set",
            "model.vfm_name=nonsense",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "model.vfm:" in err, err
    assert not (tmp_path / "run").exists()


def test_loss_vf_needs_the_final_tap_at_recipe_load(tmp_path):
    with pytest.raises(ConfigError, match=r"loss.vf > 0 needs the final VFM layer \(-1\) among model.vfm.layers"):
        load_config(TokenizerTrainConfig, TINY, [f"data.source={tmp_path}", "model.vfm.layers=[0,1,2]"])


# ------------------------------------------------------------------------------------------------ the model
def test_the_vf_projection_is_created_with_the_model_from_its_config(tmp_path):
    from vfmvae.tokenizer_training.trainer import build_generator

    torch.manual_seed(0)
    model = VFMVAE(_tiny_config(vf_projection=True))
    w = model.vf_proj.weight  # (VFM width, z_dim, 1, 1), the official xavier_normal_(gain=0.5)
    assert w.shape == (32, 4, 1, 1)
    assert abs(w.std().item() / (0.5 * math.sqrt(2 / (4 + 32))) - 1) < 0.35
    assert VFMVAE(_tiny_config()).vf_proj is None
    # a training recipe with a VF loss builds its new model with one, recorded in the config
    cfg = load_config(TokenizerTrainConfig, TINY, [f"data.source={tmp_path}"])
    g = build_generator(cfg)
    assert cfg.loss.vf > 0 and not cfg.model.vf_projection and g.config.vf_projection and g.vf_proj is not None
    assert g.config.vfm.family == "siglip" and g.config.vfm.arch and g.config.vfm.random_init  # the VFM as built


def test_an_init_without_vf_projection_gets_a_new_one_and_keeps_every_other_weight(tmp_path):
    from vfmvae.tokenizer_training.trainer import build_generator

    torch.manual_seed(0)
    VFMVAE(_tiny_config()).save_pretrained(tmp_path / "export")
    cfg = load_config(
        TokenizerTrainConfig, TINY, [f"data.source={tmp_path}", "model=null", f"init={tmp_path / 'export'}"]
    )
    g = build_generator(cfg)
    assert g.config.vf_projection and g.vf_proj is not None
    saved = load_file(tmp_path / "export" / "model.safetensors")
    state = g.state_dict()
    assert set(state) - set(saved) == {"vf_proj.weight"}
    assert all(torch.equal(state[k], v) for k, v in saved.items())


def test_a_vfm_that_does_not_match_the_config_is_refused():
    cfg = _tiny_config()
    other = build_vfm(replace(cfg.vfm, layers=(0, 1), random_init=True))
    with pytest.raises(ValueError, match=r"does not match config.vfm: layers \(0, 1\)"):
        VFMVAE(cfg, prebuilt_vfm=other)


def test_a_saved_tokenizer_records_its_vfm_once(tmp_path):
    torch.manual_seed(0)
    VFMVAE(_tiny_config()).save_pretrained(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert meta["format_version"] == 2
    assert meta["config"]["vfm"] == {
        "name": "custom",
        "path": None,
        "family": "siglip",
        "arch": TINY_VIT,
        "layers": [0, -1],
        "scale_factor": 2.0,
        "random_init": False,
    }
    assert not {"vfm_name", "vfm_family", "vfm_arch", "layers", "scale_factor", "layer_dims"} & set(meta["config"])


# ------------------------------------------------------------------------------------------------ old folders
def test_a_format_1_folder_is_upgraded_on_read_and_gives_the_same_outputs(tmp_path):
    """tests/data/tokenizer_format1 was written by vfmvae at 48e8096 (make.py), with its outputs."""
    folder = tmp_path / "old"
    shutil.copytree(FORMAT1 / "model", folder)
    before = (folder / "config.json").read_bytes()
    assert json.loads(before)["format_version"] == 1 and "vfm_name" in json.loads(before)["config"]
    model = VFMVAE.from_pretrained(folder)
    assert model.config == _tiny_config(vf_projection=True)
    ref = load_file(FORMAT1 / "reference.safetensors")
    with torch.no_grad():
        moments = model.encode_moments(ref["images"]).moments
        recon = model.decode(moments[:, :4]).sample
    torch.testing.assert_close(moments, ref["moments"], rtol=0, atol=1e-5)
    torch.testing.assert_close(recon, ref["reconstruction"], rtol=0, atol=1e-5)
    assert (folder / "config.json").read_bytes() == before  # read, never rewritten

    from vfmvae.checkpoint import load_pretrained

    assert isinstance(load_pretrained(folder), VFMVAE)  # the dispatching loader upgrades too
    model.save_pretrained(tmp_path / "new")  # written again: today's format, same weights
    again = VFMVAE.from_pretrained(tmp_path / "new")
    assert again.config == model.config
    assert json.loads((tmp_path / "new" / "config.json").read_text())["format_version"] == 2


def test_a_folder_of_a_newer_format_is_refused(tmp_path):
    folder = tmp_path / "future"
    shutil.copytree(FORMAT1 / "model", folder)
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**meta, "format_version": 3}))
    with pytest.raises(CheckpointFormatError, match=r"format_version 3 is newer than this vfmvae supports \(2\)"):
        VFMVAE.from_pretrained(folder)


def test_a_diffusers_autoencoder_config_of_format_1_is_upgraded():
    from vfmvae.tokenizer.model import upgrade_flat_vfm_keys

    old = json.loads((FORMAT1 / "model" / "config.json").read_text())["config"]
    assert config_from_dict(VFMVAEConfig, upgrade_flat_vfm_keys(old)) == _tiny_config(vf_projection=True)
    with pytest.raises(ConfigError, match=r"vfm_name is no longer a recipe key"):  # never silently half-read
        config_from_dict(VFMVAEConfig, old)


# ------------------------------------------------------------------------------------------------ one builder
def test_there_is_one_vfm_builder():
    import vfmvae.tokenizer.model
    import vfmvae.vfm

    for name in ("create_vfm", "load_vfm", "vfm_by_name", "vfm_from_config", "VFMConfig", "FAMILIES"):
        assert not hasattr(vfmvae.vfm, name), name
    assert not hasattr(vfmvae.tokenizer.model, "build_vfm") or vfmvae.tokenizer.model.build_vfm is vfmvae.vfm.build_vfm
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    found = subprocess.run(
        [
            "git",
            "grep",
            "-nE",
            r"def (build_vfm|create_vfm|load_vfm|vfm_by_name|vfm_from_config)\b",
            "--",
            "src",
            "benchmarks",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert [re.sub(r":\d+:", ":", line).split("(")[0] for line in found] == ["src/vfmvae/vfm/encoder.py:def build_vfm"]
