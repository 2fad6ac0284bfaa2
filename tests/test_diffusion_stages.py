"""LightningDiT's second stage as one command: a run that starts from another run's checkpoint (`start_from`)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vfmvae.config import ConfigError, load_config
from vfmvae.diffusion_training import DiffusionTrainConfig, train_diffusion

ROOT = Path(__file__).parent.parent
COMMON = ("run.batch_size=8", "run.checkpoint_every_images=16", "run.log_every_images=8", "run.grid_every_images=0")


def _cfg(cache, run_dir, *overrides, recipe="tiny.yaml"):
    return load_config(
        DiffusionTrainConfig,
        ROOT / "configs" / "diffusion" / recipe,
        [f"data.cache={cache}", f"run.dir={run_dir}", *COMMON, *overrides],
    )


def _final(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step-*"))[-1]


def test_a_stage_started_from_a_checkpoint_continues_it_exactly(tiny_latent_cache, tmp_path):
    """Stage 0 (2 steps) then stage 1 from its run folder (to 4 steps, same settings) gives the weights, EMA and
    optimizer state of one uninterrupted 4-step run: the model, EMA, AdamW moments, step count, draws and data
    order all carry over. A stage 1 with uniform t (the official stage-1 change) starts from the same state."""
    train_diffusion(_cfg(tiny_latent_cache, tmp_path / "whole", "run.total_images=32"), progress=False)
    train_diffusion(_cfg(tiny_latent_cache, tmp_path / "stage0", "run.total_images=16"), progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "stage0").rglob("*") if p.is_file()}
    summary = train_diffusion(
        _cfg(tiny_latent_cache, tmp_path / "stage1", "run.total_images=32", f"start_from={tmp_path / 'stage0'}"),
        progress=False,
    )
    assert summary["steps"] == 4 and _final(tmp_path / "stage1").name == _final(tmp_path / "whole").name
    for name in ("model.safetensors", "ema.safetensors", "state.safetensors"):
        whole, staged = load_file(_final(tmp_path / "whole") / name), load_file(_final(tmp_path / "stage1") / name)
        assert whole.keys() == staged.keys() and all(torch.equal(whole[k], staged[k]) for k in whole), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 4]  # the step count continues from stage 0's
    # stage 0's folder is read, never written
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "stage0").rglob("*") if p.is_file()}

    # the shipped stage-1 recipe: uniform t, its own folder, started from stage 0's run folder (here at tiny size)
    uniform = _cfg(
        tiny_latent_cache,
        tmp_path / "uniform",
        "run.total_images=24",
        f"start_from={tmp_path / 'stage0'}",
        "model.arch=lightningdit-tiny",
        "model.overrides={align_depth: 1, align_dims: [64], projector_dim: 128}",
        "transport.align_weight=0.5",
        "optim.lr=1e-3",
        "optim.grad_clip=1.0",
        "run.ema_halflife_images=2207",
        "run.precision=fp32",
        "data.num_workers=0",
        "sample_preset=null",
        recipe="lightningdit-xl1-stage1.yaml",
    )
    assert uniform.transport.time_sampling == "uniform"
    train_diffusion(uniform, progress=False)
    assert _final(tmp_path / "uniform").name == "step-00000003"
    # a restarted stage 1 continues from its own checkpoint, not from stage 0 again
    longer = _cfg(tiny_latent_cache, tmp_path / "stage1", "run.total_images=48", f"start_from={tmp_path / 'stage0'}")
    assert train_diffusion(longer, progress=False)["steps"] == 6
    steps = [json.loads(line)["step"] for line in (tmp_path / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 4, 5, 6]


def test_start_from_is_checked(tiny_latent_cache, tmp_path):
    with pytest.raises(ConfigError, match="at most one of start_from"):
        _cfg(tiny_latent_cache, tmp_path / "run", "start_from=x", f"model.init={tmp_path}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        train_diffusion(_cfg(tiny_latent_cache, tmp_path / "run", f"start_from={tmp_path / 'empty'}"), progress=False)
