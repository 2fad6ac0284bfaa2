"""A training run folder belongs to one run (recipe, kind, fresh start, lock, incomplete or corrupted
checkpoints), and nothing is written into it before the checks pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vfmvae.checkpoint import CheckpointFormatError
from vfmvae.config import load_config
from vfmvae.diffusion_training import DiffusionTrainConfig, train_diffusion
from vfmvae.training.run_folder import RunFolderError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tiny_latent_cache):
    return tiny_latent_cache


def _cfg(cache, run_dir, *overrides):
    return load_config(
        DiffusionTrainConfig,
        ROOT / "configs" / "diffusion" / "tiny.yaml",
        [
            f"data.cache={cache}",
            f"run.dir={run_dir}",
            "run.grid_every_images=0",
            "data.flip=false",
            "run.batch_size=8",
            "run.total_images=16",
            "run.checkpoint_every_images=8",  # every step
            "run.log_every_images=8",
            *overrides,
        ],
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture(scope="module")
def finished_run(cache, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    train_diffusion(_cfg(cache, run), progress=False)
    return run


def test_changed_recipe_is_refused_and_nothing_is_written(cache, finished_run):
    before = _snapshot(finished_run)
    with pytest.raises(RunFolderError, match=r"run\.batch_size: 8 -> 16.*--resume fresh"):
        train_diffusion(_cfg(cache, finished_run, "run.batch_size=16"), progress=False)
    with pytest.raises(RunFolderError, match=r"optim\.lr"):
        train_diffusion(_cfg(cache, finished_run, "optim.lr=0.5"), progress=False)
    assert _snapshot(finished_run) == before


def test_another_kind_of_run_is_refused_before_writing(finished_run, synthetic_dir):
    from vfmvae.tokenizer_training.config import TokenizerTrainConfig
    from vfmvae.tokenizer_training.trainer import train_tokenizer

    before = _snapshot(finished_run)
    cfg = load_config(
        TokenizerTrainConfig,
        ROOT / "configs" / "tokenizer" / "tiny.yaml",
        [f"run.dir={finished_run}", f"data.source={synthetic_dir / 'images'}"],
    )
    with pytest.raises(RunFolderError, match="another kind of run"):
        train_tokenizer(cfg, progress=False)
    assert _snapshot(finished_run) == before


def test_resume_none_is_refused_and_fresh_starts_over(cache, tmp_path):
    run = tmp_path / "run"
    train_diffusion(_cfg(cache, run), progress=False)
    before = _snapshot(run)
    with pytest.raises(RunFolderError, match="--resume none.*checkpoints.*--resume fresh"):
        train_diffusion(_cfg(cache, run, "run.total_images=8"), resume="none", progress=False)
    assert _snapshot(run) == before
    (run / "my-notes.txt").write_text("keep me")
    train_diffusion(_cfg(cache, run, "run.total_images=4", "run.batch_size=4"), resume="fresh", progress=False)
    assert (run / "my-notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001"]  # the old run's are gone
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert "batch_size: 4" in (run / "config.yaml").read_text()


def test_a_second_process_on_the_same_run_folder_is_refused(cache, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from vfmvae.training.run_folder import "
            f"RunFolderLock; Path({str(run)!r}).mkdir(); lock = RunFolderLock(Path({str(run)!r})); print('locked', "
            "flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"  # an observed event, not a clock
        with pytest.raises(RunFolderError, match=f"in use by process {holder.pid}"):
            train_diffusion(_cfg(cache, run), progress=False)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        holder.communicate("", timeout=60)
    train_diffusion(_cfg(cache, run), progress=False)  # the lock went with its process
    assert (run / "export" / "model.safetensors").is_file()


def test_checkpoints_without_meta_are_refused_not_restarted(cache, tmp_path):
    run = tmp_path / "run"
    train_diffusion(_cfg(cache, run), progress=False)
    for ckpt in (run / "checkpoints").iterdir():
        (ckpt / "meta.json").unlink()
    before = _snapshot(run)
    with pytest.raises(RunFolderError, match=r"2 checkpoint folder\(s\).*none is complete.*--resume PATH"):
        train_diffusion(_cfg(cache, run, "run.total_images=32"), progress=False)
    assert _snapshot(run) == before


def test_a_same_size_corruption_of_checkpoint_weights_is_detected(cache, tmp_path):
    run = tmp_path / "run"
    train_diffusion(_cfg(cache, run), progress=False)
    weights = run / "checkpoints" / "step-00000002" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # one bit of one weight; the size stays the same
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointFormatError, match="model.safetensors: sha256 differs.*corrupted"):
        train_diffusion(_cfg(cache, run, "run.total_images=32"), progress=False)
