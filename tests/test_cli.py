import json
import subprocess
import sys
from pathlib import Path

import pytest

from vfmvae.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_only_working_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "data" in out and "info" in out
    for cmd in (["data", "--help"], ["data", "synthetic", "--help"], ["data", "inspect", "--help"], ["info", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(cmd)
        assert exit_info.value.code == 0
    assert "WebDataset" in capsys.readouterr().out


def test_console_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "vfmvae", "info"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "torch 2.14.1" in proc.stdout


def test_data_synthetic_and_inspect(tmp_path, capsys):
    out = tmp_path / "syn"
    assert (
        main(
            [
                "data",
                "synthetic",
                "--out",
                str(out),
                "--num",
                "24",
                "--classes",
                "3",
                "--size",
                "32",
                "--shards",
                "--shard-size",
                "10",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["num"] == 24 and len(manifest["shards"]) == 3
    assert len(list((out / "images").rglob("*.png"))) == 24 and (out / "preview.png").stat().st_size > 1000
    assert (
        main(
            [
                "data",
                "inspect",
                "--data",
                str(out / "shards"),
                "--resolution",
                "32",
                "--json",
                str(tmp_path / "r.json"),
                "--grid",
                str(tmp_path / "g.png"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_images"] == 24 and report["label_counts"] == {"0": 8, "1": 8, "2": 8}
    assert "24 images, 3 labels, 0 skipped" in capsys.readouterr().out


def test_recipe_with_set_override(tmp_path):
    assert (
        main(
            [
                "data",
                "synthetic",
                "--recipe",
                str(ROOT / "configs/data/synthetic-demo.yaml"),
                "--set",
                f"out={tmp_path}",
                "--set",
                "num=10",
                "--set",
                "shards=false",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "dataset.json").read_text())["num"] == 10


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "synthetic", "--num", "5"], "missing required key out"),
        (["data", "synthetic", "--out", "x", "--set", "colours=3"], "unknown key colours"),
        (["data", "synthetic", "--out", "x", "--set", "num=lots"], "num: expected an integer"),
        (["data", "inspect", "--data", "/no/such/dir"], "source: path does not exist: /no/such/dir"),
    ],
)
def test_bad_arguments_give_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
