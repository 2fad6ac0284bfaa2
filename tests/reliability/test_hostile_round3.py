"""Hostile inputs, round 3 (issue 34): sizes bounded before building, the diffusers loader checked, a full disk in
one line, YAML depth, metadata not trusted, latent statistics checked, sample folders verified and locked, and
Ctrl-C / kills / huge options / Unicode labels / damaged report inputs.

Every case runs in this process (or a child that only imports the CLI module), bounded by small sizes and, where
old code would build something huge, by `build_guard`: a model construction that registers more than 20,000
modules or a real (not meta) parameter of more than 50 M values fails the test at once instead of eating the
machine.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import train_argv
from PIL import Image
from torch.nn.modules.module import (
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)

from vfmvae.checkpoint import CheckpointFormatError, CheckpointManager
from vfmvae.cli import main
from vfmvae.config import ConfigError, read_yaml
from vfmvae.tokenizer import DecoderOutput

ROOT = Path(__file__).resolve().parents[2]


class BuildTooLarge(AssertionError):
    """What old code would have done: build a model of a hostile size."""


@pytest.fixture
def build_guard():
    owner, counts = threading.get_ident(), {"modules": 0}

    def on_module(*_):
        if threading.get_ident() == owner:
            counts["modules"] += 1
            if counts["modules"] > 20_000:
                raise BuildTooLarge("a model build registered more than 20,000 modules")

    def on_parameter(module, name, param):
        if threading.get_ident() == owner and param is not None and param.device.type != "meta":
            if param.numel() > 50_000_000:
                raise BuildTooLarge(f"a model build allocated a parameter {name} of {tuple(param.shape)}")

    handles = [
        register_module_module_registration_hook(on_module),
        register_module_parameter_registration_hook(on_parameter),
    ]
    yield
    for handle in handles:
        handle.remove()


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("vfmvae")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from helpers import tiny_official_tokenizer

    return tiny_official_tokenizer(tmp_path_factory.mktemp("round3-tok") / "tok")


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    from vfmvae.diffusion import create_diffusion_model

    folder = tmp_path_factory.mktemp("round3-dit") / "dit"
    create_diffusion_model("sit-tiny").save_pretrained(folder)
    return folder


# --- 1. every size of a model folder's config checked against the weights' header, the rest bounded -------------


DIT_CASES = {  # config key, value, expected message
    "depth 1024 (a count beyond the weights)": ("depth", 1024, "declares a larger DiffusionTransformer than"),
    "depth 1e6": ("depth", 10**6, "depth must be <= 1,024"),
    "input_size 1e6 (in no weight)": ("input_size", 10**6, "input_size must be <= 256"),
    "num_classes 1e12": ("num_classes", 10**12, "embedding_table.weight: file (11, 64) vs model (1000000000001, 64)"),
    "num_heads 0": ("num_heads", 0, "num_heads must be > 0"),
    "patch_size 0": ("patch_size", 0, "patch_size must be > 0"),
}


@pytest.mark.parametrize("case", list(DIT_CASES))
def test_diffusion_folder_sizes_are_checked_against_the_header(case, dit, tmp_path, build_guard):
    from vfmvae.diffusion import DiffusionTransformer

    key, value, expected = DIT_CASES[case]
    folder = shutil.copytree(dit, tmp_path / "dit")
    _edit_json(folder / "config.json", lambda c: c["config"].update({key: value}))
    with pytest.raises(CheckpointFormatError) as err:
        DiffusionTransformer.from_pretrained(folder)
    message = " ".join(str(err.value).split())
    assert expected in message and "config.json" in message, message


def _vfm_layers(config, value):
    config["config"]["vfm"]["arch"]["num_hidden_layers"] = value


TOKENIZER_CASES = {
    "attn_depths (1000, ...)": (lambda c: c["config"]["attn_depths"].__setitem__(0, 1000), "declares a larger VFMVAE"),
    "VFM num_hidden_layers 1000": (lambda c: _vfm_layers(c, 1000), "declares a larger VFMVAE than"),
    "VFM num_hidden_layers 1e6": (lambda c: _vfm_layers(c, 10**6), "arch.num_hidden_layers must be in 0..1,024"),
    "image_size 1e9 (in no weight)": (lambda c: c["config"].update(image_size=2**30), "image_size must be <= 4,096"),
    "downsample 0": (lambda c: c["config"].update(downsample=0), "downsample must be > 0"),
    "num_blocks below the injected blocks": (lambda c: c["config"].update(num_blocks=1), "must name distinct blocks"),
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES))
def test_tokenizer_folder_sizes_are_checked_against_the_header(case, tok, tmp_path, build_guard):
    from vfmvae.tokenizer import VFMVAE

    edit, expected = TOKENIZER_CASES[case]
    folder = shutil.copytree(tok, tmp_path / "tok")
    _edit_json(folder / "config.json", edit)
    with pytest.raises(CheckpointFormatError) as err:
        VFMVAE.from_pretrained(folder)
    message = " ".join(str(err.value).split())
    assert expected in message and "config.json" in message, message


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.downsample=0", "downsample must be > 0"),
        ("model.attn_heads=0", "attn_heads must be > 0"),
        ("model.num_blocks=2", "must name distinct blocks in 0..1"),
    ],
)
def test_zero_sizes_and_a_block_count_mismatch_in_a_recipe_are_one_line(override, expected, tmp_path, capsys):
    argv = [
        "train",
        "tokenizer",
        "--recipe",
        str(ROOT / "configs/tokenizer/tiny.yaml"),
        "--set",
        f"data.source={tmp_path}",
        "--set",
        f"run.dir={tmp_path / 'run'}",
        "--set",
        override,
    ]
    assert main(argv) == 2
    assert expected in _one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_zero_sizes_of_a_diffusion_config_are_one_error():
    from vfmvae.config import config_from_dict
    from vfmvae.diffusion import DiTConfig

    for key in ("patch_size", "num_heads", "depth"):
        with pytest.raises(ConfigError, match=f"{key} must be > 0"):
            config_from_dict(DiTConfig, {key: 0})


# --- 2. the diffusers loading path -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers_export(tok, tmp_path_factory):
    pytest.importorskip("diffusers")
    from helpers import perturbed_reg_export

    from vfmvae.diffusers import export_pipeline

    root = tmp_path_factory.mktemp("round3-diffusers")
    dit = perturbed_reg_export(root / "dit", tok, {"mean": [0.0] * 8, "std": [1.0] * 8})
    return export_pipeline(dit, root / "pipe")


DIFFUSERS_CASES = {  # component, key in its config, value, expected
    "num_classes 1e12": ("transformer", "num_classes", 10**12, "(1000000000001,"),
    "hidden 65536 x depth 64": ("transformer", "hidden_size", 65536, "declares a larger VFMVAETransformer2DModel"),
    "depth 1000": ("transformer", "depth", 1000, "declares a larger VFMVAETransformer2DModel than"),
    "channel_max 2^20": ("vae", "channel_max", 2**20, "VFMVAEAutoencoder"),  # refused as unbuildable (GroupNorm)
    "attn_depths (1000, ...)": ("vae", "attn_depths", 1000, "declares a larger VFMVAEAutoencoder than"),
}


@pytest.mark.parametrize("case", list(DIFFUSERS_CASES))
def test_diffusers_pipeline_from_pretrained_checks_sizes_against_the_header(
    case, diffusers_export, tmp_path, build_guard
):
    from diffusers import DiffusionPipeline

    from vfmvae.diffusers import VFMVAEAutoencoder, VFMVAETransformer2DModel

    component, key, value, expected = DIFFUSERS_CASES[case]
    pipe = shutil.copytree(diffusers_export, tmp_path / "pipe")
    section = "transformer_config" if component == "transformer" else "tokenizer_config"

    def edit(config):
        if key == "attn_depths":
            config[section][key][0] = value
        else:
            config[section][key] = value
        if key == "hidden_size":
            config[section]["depth"] = 64

    _edit_json(pipe / component / "config.json", edit)
    cls = VFMVAETransformer2DModel if component == "transformer" else VFMVAEAutoencoder
    for load in (lambda: DiffusionPipeline.from_pretrained(pipe), lambda: cls.from_pretrained(pipe / component)):
        with pytest.raises(CheckpointFormatError) as err:
            load()
        message = " ".join(str(err.value).split())
        assert expected in message and f"{component}/" in message and "config.json" in message, message


def test_an_intact_diffusers_export_still_loads(diffusers_export):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(diffusers_export)
    assert pipe.transformer.config.transformer_config["num_classes"] == 4


# --- 3. a full disk during a checkpoint or a cache shard: one line naming the folder and the space needed ----------


def _enospc_for(monkeypatch, names: tuple[str, ...]):
    """safetensors raising what it raises on a full disk, for files whose name starts with one of `names`."""
    import vfmvae.checkpoint.serialize as serialize

    real = serialize.save_file

    def save_file(tensors, path, metadata=None):
        target = Path(path).name.lstrip(".")
        if target.startswith(names):
            Path(path).write_bytes(b"partial")
            raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(serialize, "save_file", save_file)


def test_a_full_disk_during_a_checkpoint_names_the_folder_and_the_size(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    weights = {"w": torch.zeros(250_000)}  # 1 MB
    manager.save(1, images_seen=8, model=weights)
    _enospc_for(monkeypatch, ("ema",))
    with pytest.raises(OSError) as err:  # checkpoint.atomic.DiskFullError, not safetensors' bare Exception
        manager.save(2, images_seen=16, model=weights, ema=weights)
    message = str(err.value)
    assert message.startswith(f"No space left on device in {manager.root}: checkpoint step-00000002"), message
    assert "the last good checkpoint step-00000001 is intact" in message and "needs about 2.0 MB" in message, message
    assert sorted(p.name for p in manager.root.iterdir()) == ["step-00000001"]  # no debris
    assert manager.load().step == 1


def test_a_full_disk_while_caching_is_one_line(tok, synthetic_dir, tmp_path, monkeypatch, capsys):
    _enospc_for(monkeypatch, ("shard-",))
    out = tmp_path / "cache"
    argv = ["cache-latents", "--tokenizer", str(tok), "--data", str(synthetic_dir / "images"), "--out", str(out)]
    assert main([*argv, "--workers", "0", "--device", "cpu", "--batch-size", "16"]) == 2
    line = _one_line(capsys)
    assert f"No space left on device in {out}: writing shard-r00-00000.safetensors needs about" in line, line
    assert not list(out.glob("shard-*")) and not list(out.glob(".shard-*")) and not (out / "progress-r00.json").exists()


def _diffusion_argv(cache: Path, run: Path, *overrides: str) -> list[str]:
    return train_argv(
        "diffusion",
        ROOT / "configs/diffusion/tiny.yaml",
        f"data.cache={cache}",
        f"run.dir={run}",
        "run.device=cpu",
        "run.batch_size=8",
        "run.grid_every_images=0",
        "run.log_every_images=8",
        "model.overrides.align_dims=[]",
        "transport.align_weight=0",
        *overrides,
    )


def _tokenizer_argv(data: Path, run: Path) -> list[str]:
    return train_argv(
        "tokenizer",
        ROOT / "configs/tokenizer/tiny.yaml",
        f"data.source={data}",
        f"run.dir={run}",
        "run.device=cpu",
        "data.num_workers=0",
        "run.batch_size=4",
        "run.total_images=8",
        "run.checkpoint_every_images=4",
        "run.grid_every_images=0",
        "loss.gan=0",
    )


@pytest.mark.parametrize("trainer", ["diffusion", "tokenizer"])
def test_a_full_disk_during_a_training_checkpoint_is_one_line(
    trainer, tiny_latent_cache, synthetic_dir, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    _enospc_for(monkeypatch, ("model",))
    if trainer == "diffusion":
        argv = _diffusion_argv(tiny_latent_cache, run, "run.total_images=16", "run.checkpoint_every_images=8")
    else:
        argv = _tokenizer_argv(synthetic_dir / "images", run)
    assert main(argv) == 2
    line = _one_line(capsys)
    assert f"No space left on device in {run / 'checkpoints'}: checkpoint step-00000001 (no earlier" in line, line
    assert "needs about" in line and not (run / "export").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == []  # nothing half-written


# --- 4. deeply nested YAML ------------------------------------------------------------------------------------

DEEP = "a: " + "[" * 20_000 + "]" * 20_000 + "\n"  # 40 kB
ALIAS_CHAIN = "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 200))  # depth 200, 20k values


def _deep_recipe(tmp: Path) -> list[str]:
    (tmp / "deep.yaml").write_text(DEEP)
    return ["train", "diffusion", "--recipe", str(tmp / "deep.yaml")]


def _deep_override(tmp: Path) -> list[str]:
    return ["data", "synthetic", "--out", str(tmp / "o"), "--set", "seed=" + "[" * 5000 + "]" * 5000]


def _deep_official_config(tmp: Path) -> list[str]:
    (tmp / "official.yaml").write_text(DEEP)
    argv = ["convert", "official-tokenizer", "--config", str(tmp / "official.yaml"), "--weights", str(tmp / "w")]
    return [*argv, "--vfm", str(tmp / "vfm"), "--out", str(tmp / "out")]


def _deep_run_config(tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "config.yaml").write_text(ALIAS_CHAIN)
    return _diffusion_argv(tmp, tmp / "run")


def _deep_report(tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "config.yaml").write_text(DEEP)
    (tmp / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    return ["report", str(tmp)]


YAML_CASES = {
    "recipe": (_deep_recipe, "nested more than 32 levels deep"),
    "--set value": (_deep_override, "override seed: nested more than 32 levels deep"),
    "official convert config": (_deep_official_config, "nested more than 32 levels deep"),
    "a run's config.yaml on resume (aliases)": (_deep_run_config, "nested more than 32 levels deep (with its aliases"),
    "vfmvae report": (_deep_report, "nested more than 32 levels deep"),
}


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_deeply_nested_yaml_is_one_line(case, tmp_path, capsys):
    build, expected = YAML_CASES[case]
    assert main(build(tmp_path)) == 2
    assert expected in _one_line(capsys)


def test_yaml_within_the_depth_bound_still_loads():
    text = "a: " + "[" * 30 + "1" + "]" * 30 + "\nb: &x {c: [1, 2]}\nd: *x\n"
    assert read_yaml(text, "t")["d"] == {"c": [1, 2]}


# --- 5. metadata not trusted ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit, expected",
    [
        ({"step": 10**12}, "step 1000000000000 is not a count in 0..10,000,000,000"),
        ({"images_seen": -5}, "images_seen -5 is not a count"),
        ({"step": 7}, "step 7 is not the step of its folder step-00000003"),
        ({"world_size": 0}, "world_size 0 is not a count in 1.."),
        ({"step": "3"}, "step '3' is not a count"),
    ],
)
def test_checkpoint_meta_out_of_range_is_refused(edit, expected, tmp_path):
    manager = CheckpointManager(tmp_path)
    path = manager.save(3, images_seen=24, model={"w": torch.zeros(4)})
    _edit_json(path / "meta.json", lambda meta: meta.update(edit))
    with pytest.raises(CheckpointFormatError, match=re.escape(expected)):
        manager.load(path)


def test_a_run_whose_every_step_is_skipped_fails_without_an_export(tiny_latent_cache, tmp_path, capsys):
    """Weights replaced by NaNs together with their sha256 in meta.json load fine; every step is then skipped, so the
    run must fail (before the consecutive-skip stop, which needs 20 steps) and write no export."""
    from safetensors.torch import load_file, save_file

    from vfmvae.checkpoint.digest import file_sha256

    run = tmp_path / "run"
    assert main(_diffusion_argv(tiny_latent_cache, run, "run.total_images=16", "run.checkpoint_every_images=16")) == 0
    (run / "export").unlink()  # the link to the newest versioned export
    shutil.rmtree(run / "exports")
    ckpt = CheckpointManager(run).latest()
    for name in ("model.safetensors", "ema.safetensors"):
        weights = {k: torch.full_like(v, float("nan")) for k, v in load_file(ckpt / name).items()}
        save_file(weights, str(ckpt / name))

    def swap(meta):
        for name in ("model.safetensors", "ema.safetensors"):
            meta["sha256"][name] = file_sha256(ckpt / name)
            meta["files"][name] = (ckpt / name).stat().st_size

    _edit_json(ckpt / "meta.json", swap)
    capsys.readouterr()
    assert main(_diffusion_argv(tiny_latent_cache, run, "run.total_images=48", "run.checkpoint_every_images=16")) == 2
    line = _one_line(capsys)
    assert "every one of the 4 steps of this run was skipped" in line and "no checkpoint or export" in line, line
    assert not (run / "export").exists() and not list((run / "exports").glob("*"))


def _fake_cache(path: Path, shard_file: str = "shard-r00-00000.safetensors") -> Path:
    from vfmvae.checkpoint.serialize import save_tensors

    path.mkdir(parents=True)
    save_tensors(path / "shard-r00-00000.safetensors", {"latents": torch.randn(4, 2, 2, 2), "labels": torch.zeros(4)})
    manifest = {
        "latent_shape": [2, 2, 2],
        "num_items": 4,
        "shards": [{"file": shard_file, "count": 4}],
        "mean": [0.0, 0.0],
        "std": [1.0, 1.0],
    }
    (path / "cache.json").write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize("shard", ["../other/shard-r00-00000.safetensors", "/etc/passwd", "sub/x.safetensors"])
def test_cache_shard_paths_must_stay_inside_the_cache(shard, tmp_path):
    from vfmvae.latents import LatentDataset
    from vfmvae.latents.cache import CacheError

    _fake_cache(tmp_path / "other")  # a real shard that `../other/...` would read silently
    cache = _fake_cache(tmp_path / "cache", shard_file=shard)
    with pytest.raises(CacheError, match="is not a shard file name of this cache"):
        LatentDataset(cache)


def test_a_linked_shard_is_refused(tmp_path):
    from vfmvae.latents import LatentDataset
    from vfmvae.latents.cache import CacheError

    other = _fake_cache(tmp_path / "other")
    cache = _fake_cache(tmp_path / "cache")
    (cache / "shard-r00-00000.safetensors").unlink()
    (cache / "shard-r00-00000.safetensors").symlink_to(other / "shard-r00-00000.safetensors")
    with pytest.raises(CacheError, match="is a symbolic link"):
        LatentDataset(cache)


# --- 6. latent statistics checked where they are read -----------------------------------------------------------

STATS_CASES = {
    "zero std": ({"mean": [0.0, 0.0], "std": [1.0, 0.0]}, "std of channel 1 is 0"),
    "NaN std": ({"mean": [0.0, 0.0], "std": [float("nan"), 1.0]}, "std of channel 0 is nan"),
    "tiny std": ({"mean": [0.0, 0.0], "std": [1.0, 1e-30]}, "std of channel 1 is 1e-30"),
    "negative std": ({"mean": [0.0, 0.0], "std": [-1.0, -2.0]}, "std of channel 0 is -1 (and 1 more channel(s))"),
    "infinite mean": ({"mean": [float("inf"), 0.0], "std": [1.0, 1.0]}, "mean of channel 0 is inf"),
}


@pytest.mark.parametrize("case", list(STATS_CASES))
def test_bad_latent_statistics_are_refused_where_they_are_read(case, tmp_path):
    from vfmvae.latents import LatentDataset
    from vfmvae.latents.stats import LatentStats

    stats, expected = STATS_CASES[case]
    (tmp_path / "latent_stats.json").write_text(json.dumps(stats))
    with pytest.raises(ValueError) as err:
        LatentStats.load(tmp_path / "latent_stats.json")
    assert expected in str(err.value) and "latent_stats.json" in str(err.value) and "\n" not in str(err.value)
    cache = _fake_cache(tmp_path / "cache")
    _edit_json(cache / "cache.json", lambda manifest: manifest.update(stats))
    with pytest.raises(ValueError, match=re.escape(expected)):
        LatentDataset(cache)


# --- 7. sample folders verified, extra files left out, output folders locked ------------------------------------


class _ConvDecoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.to_rgb = torch.nn.Conv2d(8, 3, 1)

    def decode(self, z: torch.Tensor) -> DecoderOutput:
        return DecoderOutput(torch.nn.functional.interpolate(torch.tanh(self.to_rgb(z)), scale_factor=2), [])


@pytest.fixture
def sample_pipe():
    from vfmvae.diffusion import create_diffusion_model
    from vfmvae.sampling.pipeline import LatentStats, VFMVAEPipeline

    torch.manual_seed(0)
    model = create_diffusion_model("lightningdit-tiny", in_channels=8, input_size=4, num_classes=4)
    return VFMVAEPipeline(model, _ConvDecoder(), LatentStats(torch.zeros(8), torch.ones(8)))


def _sample(pipe, out: Path, num: int = 4):
    from vfmvae.sampling import SamplerConfig
    from vfmvae.sampling.generate import generate_samples

    return generate_samples(pipe, out, num, config=SamplerConfig(steps=1), batch_size=4, progress=False)


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_a_foreign_png_under_a_sample_name_is_not_packed(sample_pipe, tmp_path):
    out = tmp_path / "s"
    _sample(sample_pipe, out)
    (out / "images" / "000001.png").write_bytes(_png(1))  # a whole PNG, not ours
    with pytest.raises(ValueError, match=r"000001.png is not the image `vfmvae sample` wrote there"):
        _sample(sample_pipe, out)
    (out / "images" / "000001.png").unlink()  # as the message says: the re-run regenerates it and packs
    _sample(sample_pipe, out)
    assert np.load(out / "samples.npz")["arr_0"].shape[0] == 4


def test_scoring_a_sample_folder_uses_its_recorded_samples_and_warns_on_extra_files(
    sample_pipe, tmp_path, monkeypatch, caplog
):
    import vfmvae.evaluation.generation as generation

    out = tmp_path / "s"
    _sample(sample_pipe, out)
    for name in ("extra-a.png", "sub/extra-b.png"):
        (out / "images" / name).parent.mkdir(exist_ok=True)
        (out / "images" / name).write_bytes(_png(2))
    scored = {}

    class Scored(Exception):
        pass

    def features(net, image_set, **kwargs):
        scored["n"] = len(image_set)
        raise Scored

    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(4), sigma=np.eye(4), mu_s=np.zeros(4), sigma_s=np.eye(4))
    monkeypatch.setattr(generation, "load_inception", lambda *a, **k: (None, {}))
    monkeypatch.setattr(generation, "extract_features", features)
    with caplog.at_level(logging.WARNING), pytest.raises(Scored):
        generation.evaluate_generation(out / "images", ref, "unused")
    assert scored["n"] == 4
    assert "left out 2 other file(s) in images/" in caplog.text
    (out / "images" / "000002.png").write_bytes(_png(3))
    with pytest.raises(ValueError, match="000002.png is not the image"):
        generation.evaluate_generation(out / "images", ref, "unused")
    _edit_json(out / "settings.json", lambda settings: settings.update(num=10**12))  # not trusted either
    with pytest.raises(ValueError, match=r"'num' 1000000000000 is not a number of samples in 0..1,000,000"):
        generation.evaluate_generation(out / "images", ref, "unused")


def test_a_second_sample_or_cache_run_on_one_folder_is_refused(sample_pipe, tok, synthetic_dir, tmp_path):
    """A finished folder re-run with the same settings is a resume (accepted); while another process writes into it
    (holds its lock), the same command is refused and nothing in the folder changes."""
    from vfmvae.latents import cache_latents
    from vfmvae.training.run_folder import RunFolderError, RunFolderLock

    def cache():
        cache_latents(tok, synthetic_dir / "images", tmp_path / "c", num_workers=0, device="cpu", progress=False)

    _sample(sample_pipe, tmp_path / "s")
    cache()

    def listing():
        return {p: p.stat().st_mtime_ns for folder in ("s", "c") for p in (tmp_path / folder).rglob("*")}

    held = [RunFolderLock(tmp_path / folder) for folder in ("s", "c")]  # another process is writing into both
    before = listing()
    try:
        with pytest.raises(RunFolderError, match=r"in use by process \d+ .*use another --out"):
            _sample(sample_pipe, tmp_path / "s")
        with pytest.raises(RunFolderError, match=r"in use by process \d+ .*use another --out"):
            cache()
    finally:
        for lock in held:
            lock.release()
    assert listing() == before


def test_nothing_is_written_into_a_refused_foreign_folder(sample_pipe, tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a sample folder of ours"):
        _sample(sample_pipe, tmp_path / "s")
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["notes.txt"]  # not even a lock file


# --- 8. Ctrl-C, kills, huge options, Unicode labels, a damaged commands.json -------------------------------------


def _without_escape(call):
    """A KeyboardInterrupt escaping `main` would stop the whole pytest session: turn it into this test's failure."""
    try:
        return call()
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped vfmvae's main (a traceback for the user)")


def test_ctrl_c_while_the_command_starts_is_one_line(monkeypatch, capsys):
    import vfmvae.cli as cli

    def interrupted():
        raise KeyboardInterrupt  # what Ctrl-C raises while torch is being imported

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert _without_escape(lambda: cli.main(["info"])) == 2
    assert capsys.readouterr().err.strip() == "vfmvae: interrupted; re-run the same command to resume"


def test_the_command_module_starts_without_torch():
    """A Ctrl-C during start-up reaches `main` only if importing the command does not load torch first."""
    code = "import sys, vfmvae.cli; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    import vfmvae

    env = dict(os.environ, PYTHONPATH=str(Path(vfmvae.__file__).resolve().parents[1]))  # the vfmvae under test
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_a_second_ctrl_c_after_the_first_exits_quietly(monkeypatch, capsys):
    import argparse

    import vfmvae.cli as cli

    def interrupted(args):
        try:
            raise KeyboardInterrupt
        finally:
            raise KeyboardInterrupt  # pressed again during the clean-up

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(command="sample", verbose=False, func=interrupted)

    monkeypatch.setattr(cli, "build_parser", Parser)
    monkeypatch.setattr(sys, "argv", ["vfmvae", "sample"])
    previous = signal.getsignal(signal.SIGINT)
    try:
        assert _without_escape(cli.main) == 2  # the console command: argv None
        assert signal.getsignal(signal.SIGINT) is cli._exit_now  # a third press exits at once, with no traceback
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err.strip() == "vfmvae sample: interrupted; re-run the same command to resume"


def test_a_killed_builds_temporary_folder_is_removed_by_the_next_run_but_a_living_one_kept(tmp_path):
    from vfmvae.checkpoint.atomic import atomic_directory

    out = tmp_path / "out"
    killed = Path(tempfile.mkdtemp(prefix=".out.", suffix=".tmp", dir=tmp_path))  # what SIGKILL leaves: no lock
    (killed / "model.safetensors").write_bytes(b"half")
    with atomic_directory(out) as living:  # a build in progress (holds its lock)
        (living / "a").write_text("1")
        with atomic_directory(tmp_path / "other"):
            pass
        with atomic_directory(out.with_name("out2")):
            pass
        assert living.exists() and not killed.exists()
    assert (out / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "out", "out2"]


def test_convert_removes_what_a_killed_convert_left(tmp_path, capsys):
    from vfmvae.diffusion import create_diffusion_model

    torch.save({"ema": create_diffusion_model("sit-tiny").state_dict()}, tmp_path / "ok.pt")
    debris = Path(tempfile.mkdtemp(prefix=".out.", suffix=".tmp", dir=tmp_path))
    argv = ["convert", "official-reg", "--weights", str(tmp_path / "ok.pt"), "--arch", "sit-tiny"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert not debris.exists() and (tmp_path / "out" / "model.safetensors").is_file()


def test_eval_recon_removes_the_temporary_folder_of_a_killed_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    killed = Path(tempfile.mkdtemp(prefix="vfmvae-recon-", dir=tmp_path))
    (killed / "images").mkdir()
    (tmp_path / "vfmvae-recon-notes.txt").write_text("a file, not a folder of ours")
    argv = ["eval", "recon", "--tokenizer", str(tmp_path / "missing"), "--data", str(tmp_path)]
    assert main(argv) == 2  # the tokenizer is missing, after the sweep
    _one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vfmvae-recon-notes.txt"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["sample", "--diffusion", "d", "--out", "o", "--num-samples", str(10**12)], "must be <= 1,000,000, got"),
        (["sample", "--diffusion", "d", "--out", "o", "--num-samples", "4", "--steps", str(10**9)], "<= 10,000"),
        (["cache-latents", "--tokenizer", "t", "--data", "d", "--out", "o", "--resolution", str(10**6)], "<= 4,096"),
        (["reconstruct", "--tokenizer", "t", "--data", "d", "--out", "o", "--resolution", str(10**6)], "<= 4,096"),
        (["data", "inspect", "--data", "d", "--resolution", str(10**6)], "must be <= 4,096 pixels"),
        (["data", "synthetic", "--out", "o", "--size", str(10**6)], "must be <= 4,096 pixels"),
    ],
)
def test_huge_counts_and_sizes_are_refused_by_the_parser(argv, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert expected in capsys.readouterr().err


def test_huge_sampler_settings_are_refused_by_the_library():
    from vfmvae.sampling import SamplerConfig
    from vfmvae.sampling.generate import generate_samples

    with pytest.raises(ValueError, match="steps must be in 1..10,000"):
        SamplerConfig(steps=10**9)
    with pytest.raises(ValueError, match="--num-samples must be in 1..1,000,000"):
        generate_samples(None, "unused", 10**12)


def test_a_unicode_digit_label_is_not_class_3(tmp_path):
    from vfmvae.data import ImageOptions
    from vfmvae.data.shards import TarShardDataset
    from vfmvae.sampling.generate import class_labels

    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(buf, format="PNG")
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for name, data in (("000.png", buf.getvalue()), ("000.cls", "٣".encode()), ("001.png", buf.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("001.cls")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"3\n"))
    items = {it["name"]: it for it in TarShardDataset(tmp_path, ImageOptions(32), loop=False)}
    assert items["000"]["bad"] and items["000"]["reason"] == "bad-label"
    assert items["001"]["label"] == 3
    with pytest.raises(ValueError, match="--classes"):
        class_labels("1,٣", 4, 10)


@pytest.mark.parametrize(
    "text",
    ["{not json", '{"title": "x"}', "[1, 2]", '[{"title": 3, "command": "x"}]', "[" * 100_000 + "]" * 100_000],
)
def test_a_damaged_commands_json_does_not_stop_the_report(text, tmp_path, caplog):
    from vfmvae.report import build_report

    (tmp_path / "recon-a.json").write_text(json.dumps({"psnr": 20.0}))
    (tmp_path / "commands.json").write_text(text)
    good = {"title": "ok", "command": "vfmvae info"}
    with caplog.at_level(logging.WARNING, logger="vfmvae.report"):
        page = build_report(tmp_path)
    assert "psnr" in page.read_text() and "commands.json" in caplog.text
    (tmp_path / "commands.json").write_text(json.dumps([good, {"title": None}]))
    assert "vfmvae info" in build_report(tmp_path).read_text()
