"""SIGKILL at a random moment of diffusion training, latent caching and sampling, then the same command again.

Training must end with the weights of an uninterrupted run; caching and sampling must end complete, with no
duplicates and no gaps, equal to an uninterrupted run. (Tokenizer training: tests/test_tokenizer_training_loop.py;
checkpoint writes under SIGKILL: tests/test_checkpoint.py.)
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "official_tokenizer_tiny"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
pytestmark = pytest.mark.slow


def _vfmvae(*args):
    return [sys.executable, "-m", "vfmvae", *map(str, args)]


def _kill_when(cmd, ready, rng, max_delay, timeout=300):
    """Start `cmd`, wait until `ready()` holds, sleep a random moment, SIGKILL. True if it was killed mid-run."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and not ready() and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, max_delay))
    alive = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return alive


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from vfmvae.tokenizer.convert import convert_official_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tok"
    convert_official_tokenizer(DATA / "config.yaml", DATA / "official_G.safetensors", DATA / "siglip2-tiny-patch16", out)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from vfmvae.data.synthetic import SyntheticConfig, write_synthetic_dataset

    out = tmp_path_factory.mktemp("syn")
    write_synthetic_dataset(SyntheticConfig(out=out, num=192, classes=4, size=32), progress=False)
    return out / "images"


def _cache_cmd(tokenizer, images, out):
    return _vfmvae("cache-latents", "--tokenizer", tokenizer, "--data", images, "--out", out, "--flip",
                   "--batch-size", "8", "--shard-size", "16", "--workers", "0", "--device", "cpu")


def test_latent_caching_killed_then_rerun_is_complete_and_equal(tmp_path, tokenizer, images):
    from vfmvae.latents import LatentDataset

    subprocess.run(_cache_cmd(tokenizer, images, tmp_path / "straight"), env=ENV, check=True, capture_output=True)
    rng = random.Random(1)
    killed = tmp_path / "killed"
    mid_run = 0
    for _ in range(3):  # kill it up to three times at random moments, then let it finish
        mid_run += _kill_when(_cache_cmd(tokenizer, images, killed), lambda: (killed / "progress-r00.json").is_file(),
                              rng, 0.8)
    subprocess.run(_cache_cmd(tokenizer, images, killed), env=ENV, check=True, capture_output=True)
    assert mid_run >= 1
    a, b = LatentDataset(tmp_path / "straight"), LatentDataset(killed)
    assert len(b) == len(a) == 192  # no duplicates, no gaps
    for key in ("latents", "latents_flip", "labels"):
        assert torch.equal(a.column(key), b.column(key)), key
    assert a.manifest["mean"] == b.manifest["mean"]


def _train_cmd(cache, run_dir, steps):
    return _vfmvae("train", "diffusion", "--recipe", ROOT / "configs/diffusion/tiny.yaml", "--set", f"data.cache={cache}",
                   "--set", f"run.dir={run_dir}", "--set", f"run.total_steps={steps}", "--set", "run.batch_size=8",
                   "--set", "run.checkpoint_every=10", "--set", "run.sample_every=0", "--set", "run.log_every=10",
                   "--set", "model.overrides.align_dims=[]", "--set", "transport.align_weight=0")


def test_diffusion_training_killed_then_resumed_equals_an_uninterrupted_run(tmp_path, tokenizer, images):
    cache = tmp_path / "cache"
    subprocess.run(_cache_cmd(tokenizer, images, cache), env=ENV, check=True, capture_output=True)
    steps = 300
    subprocess.run(_train_cmd(cache, tmp_path / "straight", steps), env=ENV, check=True, capture_output=True, timeout=600)
    rng = random.Random(2)
    killed = tmp_path / "killed"
    ckpts = lambda: sorted((killed / "checkpoints").glob("step-*")) if (killed / "checkpoints").is_dir() else []  # noqa: E731
    mid_run = 0
    for _ in range(2):
        mid_run += _kill_when(_train_cmd(cache, killed, steps), lambda: len(ckpts()) > 0, rng, 3.0)
        assert not (killed / "export").exists() or mid_run == 0
    subprocess.run(_train_cmd(cache, killed, steps), env=ENV, check=True, capture_output=True, timeout=600)
    assert mid_run >= 1
    last = lambda run: sorted((run / "checkpoints").glob("step-*"))[-1]  # noqa: E731
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(last(tmp_path / "straight") / name), load_file(last(killed) / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a, b = load_file(tmp_path / "straight" / "export" / "model.safetensors"), load_file(killed / "export" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sampling_killed_then_rerun_is_complete_and_equal(tmp_path, tokenizer):
    from vfmvae.diffusion import create_diffusion_model

    torch.manual_seed(0)
    model = create_diffusion_model("lightningdit-tiny", in_channels=8, input_size=4, num_classes=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "dit")
    (tmp_path / "dit" / "latent_stats.json").write_text(json.dumps({"mean": [0.0] * 8, "std": [1.0] * 8,
                                                                     "tokenizer": str(tokenizer)}))
    cmd = lambda out: _vfmvae("sample", "--diffusion", tmp_path / "dit", "--num-samples", "96", "--out", out,  # noqa: E731
                              "--steps", "30", "--batch-size", "4", "--cfg", "1.5", "--device", "cpu")
    subprocess.run(cmd(tmp_path / "straight"), env=ENV, check=True, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    rng = random.Random(3)
    mid_run = 0
    for _ in range(3):
        mid_run += _kill_when(cmd(killed), lambda: any((killed / "images").glob("*.png")) if (killed / "images").is_dir() else False,
                              rng, 1.5)
    subprocess.run(cmd(killed), env=ENV, check=True, capture_output=True, timeout=600)
    assert not list((killed / "images").glob(".*tmp*"))  # torn temporary files are cleaned up, never taken as samples
    assert mid_run >= 1
    a, b = np.load(tmp_path / "straight" / "samples.npz"), np.load(killed / "samples.npz")
    assert len(list((killed / "images").glob("*.png"))) == 96
    assert np.array_equal(a["arr_1"], b["arr_1"])
    # float32 kernels may reduce in another order for a resumed run's other batch composition (see test_sampling)
    diff = np.abs(a["arr_0"].astype(int) - b["arr_0"].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
