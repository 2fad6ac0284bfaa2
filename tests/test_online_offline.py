"""Online equals offline: the numbers the online evaluator logs for a checkpoint are the numbers the offline commands
report on the same weights, images and seeds, for both trainers (tiny recipes).

* tokenizer: `vfmvae train tokenizer` with evaluation, the evaluated EMA kept in RUN/best, then
  `vfmvae eval recon --tokenizer RUN/best --data HELD_OUT`;
* diffusion: `vfmvae train diffusion` with evaluation, the evaluated export kept in RUN/best, then
  `vfmvae sample --diffusion RUN/best` + `vfmvae eval gen`.

Inception and LPIPS are the small stand-ins of tests/dist/online_eval.py, installed for the online and the offline
commands alike (the real networks take seconds per image on a loaded CPU).
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "dist"))
from online_eval import install_stubs  # noqa: E402

from vfmvae.training.online_eval import read_eval_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def stubs(monkeypatch):
    install_stubs(monkeypatch.setattr)


def _best_record(run_dir: Path) -> dict:
    best = json.loads((run_dir / "best" / "best.json").read_text())
    (record,) = [r for r in read_eval_records(run_dir) if r["step"] == best["step"]]
    return record


@pytest.mark.slow
def test_tokenizer_online_evaluation_equals_eval_recon(tmp_path, synthetic_dir, stubs):
    from vfmvae.cli import main
    from vfmvae.config import load_config
    from vfmvae.tokenizer_training.config import TokenizerTrainConfig
    from vfmvae.tokenizer_training.trainer import train_tokenizer

    held_out = tmp_path / "held-out"  # 10 images in class folders; the online evaluator takes all 10
    for path in sorted((synthetic_dir / "images").rglob("*.png"))[-10:]:
        target = held_out / path.relative_to(synthetic_dir / "images")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    overrides = [
        f"run.dir={tmp_path / 'run'}",
        f"data.source={synthetic_dir / 'images'}",
        "data.num_workers=0",
        "run.batch_size=4",
        "run.total_images=4",
        "run.log_every_images=4",
        "run.grid_every_images=0",
        "eval.enabled=true",
        f"eval.data={held_out}",
        "eval.num_images=10",
        "eval.batch_size=4",
        "eval.every_images=4",
        "eval.seed=3",
        "eval.inception=random-init:7",
        "eval.lpips=random-init:7",
        "eval.grid=0",
        "eval.keep_best=psnr",
    ]
    train_tokenizer(
        load_config(TokenizerTrainConfig, ROOT / "configs" / "tokenizer" / "tiny.yaml", overrides), progress=False
    )
    record = _best_record(tmp_path / "run")
    argv = ["eval", "recon", "--tokenizer", str(tmp_path / "run" / "best"), "--data", str(held_out)]
    argv += [
        "--out",
        str(tmp_path / "recon"),
        "--seed",
        "3",
        "--inception",
        "random-init:7",
        "--lpips",
        "random-init:7",
    ]
    assert main([*argv, "--batch-size", "4", "--device", "cpu", "--json", str(tmp_path / "recon.json")]) == 0
    offline = json.loads((tmp_path / "recon.json").read_text())
    for key in ("rfid", "ris", "psnr", "ssim", "lpips"):
        assert record[f"eval/{key}"] is not None, key
        assert record[f"eval/{key}"] == pytest.approx(offline[key], rel=1e-12, abs=1e-15), key


@pytest.mark.slow
def test_diffusion_online_evaluation_equals_sample_and_eval_gen(tmp_path, tiny_latent_cache, stubs):
    from vfmvae.cli import main
    from vfmvae.config import load_config
    from vfmvae.diffusion_training import DiffusionTrainConfig, train_diffusion

    rng = np.random.default_rng(0)
    ref = tmp_path / "ref.npz"
    np.savez(ref, arr_0=rng.integers(0, 256, (12, 64, 64, 3), dtype=np.uint8))
    overrides = [
        f"data.cache={tiny_latent_cache}",
        f"run.dir={tmp_path / 'run'}",
        "run.grid_every_images=0",
        "run.batch_size=8",
        "run.log_every_images=8",
        "run.total_images=16",
        "eval.enabled=true",
        "eval.every_images=16",
        f"eval.ref={ref}",
        "eval.num_samples=10",
        "eval.batch_size=4",
        "eval.seed=5",
        "eval.inception=random-init:7",
        "eval.sampler={steps: 2}",
        "eval.keep_best=fid",
    ]
    train_diffusion(
        load_config(DiffusionTrainConfig, ROOT / "configs" / "diffusion" / "tiny.yaml", overrides), progress=False
    )
    record = _best_record(tmp_path / "run")
    samples = tmp_path / "samples"
    argv = ["sample", "--diffusion", str(tmp_path / "run" / "best"), "--num-samples", "10", "--out", str(samples)]
    assert main([*argv, "--seed", "5", "--steps", "2", "--batch-size", "4", "--device", "cpu"]) == 0
    argv = ["eval", "gen", "--samples", str(samples / "samples.npz"), "--ref", str(ref), "--inception", "random-init:7"]
    assert main([*argv, "--batch-size", "4", "--device", "cpu", "--json", str(tmp_path / "gen.json")]) == 0
    offline = json.loads((tmp_path / "gen.json").read_text())
    for key, name in (
        ("fid", "fid"),
        ("sfid", "sfid"),
        ("is", "inception_score"),
        ("precision", "precision"),
        ("recall", "recall"),
    ):
        assert record[f"eval/{key}"] is not None, key
        assert record[f"eval/{key}"] == pytest.approx(offline[name], rel=1e-12, abs=1e-15), key
