"""No command scores or lists an earlier run's files with its own, and input names never collide."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import tiny_official_tokenizer
from PIL import Image

from vfmvae.cli import main
from vfmvae.data.folder import list_image_folder
from vfmvae.tokenizer.reconstruct import output_names


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_official_tokenizer(tmp_path_factory.mktemp("stale") / "tok")


def _four(folder: Path, synthetic_dir: Path) -> Path:
    folder.mkdir(parents=True)
    for f in sorted((synthetic_dir / "images").rglob("*.png"))[:4]:
        shutil.copy(f, folder / f.name)
    return folder


def test_eval_recon_without_out_scores_only_the_given_images(tok, synthetic_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stale = _four(tmp_path / "recon" / "images", synthetic_dir)  # an earlier run's default ./recon
    shutil.copytree(stale, tmp_path / "recon" / "inputs")
    for i in range(16):
        shutil.copy(next(stale.iterdir()), stale / f"old-{i}.png")
        shutil.copy(next(stale.iterdir()), tmp_path / "recon" / "inputs" / f"old-{i}.png")
    data = _four(tmp_path / "data", synthetic_dir)
    assert (
        main(["eval", "recon", "--tokenizer", str(tok), "--data", str(data), "--json", "r.json", "--device", "cpu"])
        == 0
    )
    assert json.loads((tmp_path / "r.json").read_text())["protocol"]["num_images"] == 4


def test_recon_into_a_folder_holding_an_earlier_run_is_refused(tok, synthetic_dir, tmp_path, capsys):
    out = tmp_path / "out"
    _four(out / "images", synthetic_dir)
    data = _four(tmp_path / "data", synthetic_dir)
    rc = main(["eval", "recon", "--tokenizer", str(tok), "--data", str(data), "--out", str(out), "--device", "cpu"])
    assert rc == 2 and "already holds images/ of an earlier run" in capsys.readouterr().err


def test_reconstruct_keeps_same_stem_images_apart(tok, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for ext, colour in (("png", (255, 0, 0)), ("jpg", (0, 255, 0)), ("webp", (0, 0, 255))):
        Image.new("RGB", (32, 32), colour).save(folder / f"a.{ext}")
    Image.new("RGB", (32, 32), (9, 9, 9)).save(folder / "b.jpg")
    assert output_names(["a.png", "a.jpg", "a.webp", "b.jpg"]) == {
        "a.png": "a.png",
        "a.jpg": "a.jpg.png",
        "a.webp": "a.webp.png",
        "b.jpg": "b.png",
    }
    assert (
        main(
            [
                "reconstruct",
                "--model",
                str(tok),
                "--workers",
                "0",
                "--input",
                str(folder),
                "--output",
                str(tmp_path / "out"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert sorted(os.listdir(tmp_path / "out" / "images")) == ["a.jpg.png", "a.png", "a.webp.png", "b.png"]


def test_symlink_loop_class_folder_is_not_followed(synthetic_dir, tmp_path):
    root = tmp_path / "data"
    for d in sorted((synthetic_dir / "images").iterdir())[:2]:
        shutil.copytree(d, root / d.name)
    (root / "zz-loop").symlink_to(root, target_is_directory=True)
    with pytest.warns(UserWarning, match="links back"):
        files, labels, classes = list_image_folder(root)
    assert len(files) == 32 and classes == sorted(d.name for d in root.iterdir())[:2]


def test_data_synthetic_cleans_only_its_own_outputs_and_refuses_foreign_folders(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "synthetic", "--out", str(out), "--num", "12", "--classes", "3", "--size", "32"]) == 0
    (out / "NOTES.md").write_text("mine")
    assert main(["data", "synthetic", "--out", str(out), "--num", "4", "--classes", "2", "--size", "32"]) == 0
    assert len(list((out / "images").rglob("*.png"))) == 4 and (out / "NOTES.md").read_text() == "mine"
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    assert main(["data", "synthetic", "--out", str(foreign), "--num", "4", "--classes", "2", "--size", "32"]) == 2
    assert "not a synthetic data set of ours" in capsys.readouterr().err
    assert os.listdir(foreign) == ["holiday.jpg"]
