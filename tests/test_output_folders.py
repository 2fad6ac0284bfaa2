"""Output folders never lose what we did not write, and are created with the user's umask."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from helpers import TinyNet, TinyNetConfig

from vfmvae.cli import main


def test_save_pretrained_refuses_a_folder_that_is_not_a_model_folder(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "notes.txt").write_text("three weeks of training")
    with pytest.raises(FileExistsError, match="not a vfmvae model folder.*new or empty folder"):
        TinyNet(TinyNetConfig()).save_pretrained(run)
    assert (run / "notes.txt").read_text() == "three weeks of training" and (run / "checkpoints").is_dir()
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "notes.txt"]


def test_save_pretrained_replaces_only_its_own_files(tmp_path):
    out = tmp_path / "m"
    TinyNet(TinyNetConfig(channels=4)).save_pretrained(out)
    (out / "README.md").write_text("my model card")
    (out / "latent_stats.json").write_text("{}")
    torch.manual_seed(1)
    model = TinyNet(TinyNetConfig(channels=6))
    model.save_pretrained(out)
    assert (out / "README.md").read_text() == "my model card" and (out / "latent_stats.json").exists()
    assert json.loads((out / "config.json").read_text())["config"]["channels"] == 6
    loaded = TinyNet.from_pretrained(out)
    assert torch.equal(loaded.conv.weight, model.conv.weight)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary debris


def test_convert_refuses_a_non_empty_foreign_out_before_loading(tmp_path, capsys):
    out = tmp_path / "finished-run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    rc = main(
        [
            "convert",
            "official-reg",
            "--weights",
            str(tmp_path / "does-not-matter.pt"),
            "--arch",
            "sit-tiny",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and f"--out {out} is not empty" in err and "new or empty folder" in err
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_model_folders_and_files_respect_the_umask(tmp_path, umask_022):
    from vfmvae.checkpoint import CheckpointManager, atomic_write_text

    TinyNet(TinyNetConfig()).save_pretrained(tmp_path / "m")
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o755
    for name in ("config.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / "m" / name).stat().st_mode) == 0o644, name
    atomic_write_text(tmp_path / "report.json", "{}")
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644
    ckpt = CheckpointManager(tmp_path / "run").save(1, images_seen=1, model={"w": torch.zeros(2)})
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in ckpt.iterdir())
