"""Inputs and messages a new user meets: one data-source rule, errors that keep the
useful part, folders passed to the wrong option, class names, offline evaluation from the CLI, evaluation settings
of an existing run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vfmvae.cli import main, one_line
from vfmvae.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def few_images(synthetic_dir, tmp_path_factory) -> Path:
    """Six of the synthetic images (Inception passes on CPU cost seconds per image)."""
    import shutil

    folder = tmp_path_factory.mktemp("few") / "images"
    folder.mkdir()
    for path in sorted((synthetic_dir / "images").rglob("*.png"))[:6]:
        shutil.copy(path, folder / path.name)
    return folder


def _shards(synthetic_dir: Path) -> list[Path]:
    shards = sorted((synthetic_dir / "shards").glob("*.tar"))
    assert len(shards) == 4
    return shards


def test_brace_patterns_and_globs_are_one_rule_for_every_command_that_reads_data(synthetic_dir, tmp_path, capsys):
    from vfmvae.data.shards import list_shards
    from vfmvae.tokenizer_training.config import TokenizerTrainConfig

    shards = _shards(synthetic_dir)
    first, last = shards[0].stem, shards[-1].stem
    prefix = first.rstrip("0123456789")
    width = len(first) - len(prefix)
    brace = str(synthetic_dir / "shards" / f"{prefix}{{{first[len(prefix) :]}..{last[len(prefix) :]}}}.tar")
    glob = str(synthetic_dir / "shards" / "*.tar")
    assert width > 0 and list_shards(brace) == shards and list_shards(glob) == shards  # cache-latents' loader
    for source in (brace, glob):
        # train tokenizer: the recipe's data.source is checked when the recipe loads
        cfg = load_config(TokenizerTrainConfig, ROOT / "configs" / "tokenizer" / "tiny.yaml", [f"data.source={source}"])
        assert str(cfg.data.source) == source
        assert main(["data", "inspect", "--data", source, "--resolution", "32", "--set", "num_workers=0"]) == 0
        assert "64 images" in capsys.readouterr().out.replace(",", "")
    missing = str(synthetic_dir / "shards" / f"{prefix}{{{first[len(prefix) :]}..{'9' * width}}}.tar")
    with pytest.raises(ConfigError, match=r"data\.source: shard pattern .* files missing"):
        load_config(TokenizerTrainConfig, ROOT / "configs" / "tokenizer" / "tiny.yaml", [f"data.source={missing}"])
    assert main(["data", "inspect", "--data", str(tmp_path / "none-*.tar")]) == 2
    assert "no regular file matches" in capsys.readouterr().err


def test_a_set_typo_says_did_you_mean_and_the_line_keeps_every_valid_key(tmp_path, capsys):
    argv = ["train", "diffusion", "--recipe", str(ROOT / "configs" / "diffusion" / "tiny.yaml")]
    assert main([*argv, "--set", f"data.cache={tmp_path}", "--set", "run.totl_images=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown key run.totl_images (did you mean run.total_images? valid keys in run: batch_size" in err
    assert err.endswith("tensorboard, total_images)")  # the list is whole: nothing cut from its end
    long = ValueError("start of the message " + "x" * 5000 + " end of the message")
    text = one_line(long)
    assert text.startswith("start of the message") and text.endswith("end of the message") and len(text) < 1300


def test_diffusion_option_says_what_a_tokenizer_or_run_folder_is(tmp_path, capsys):
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "config.json").write_text(json.dumps({"architecture": "VFMVAE", "config": {}}))
    runs = {}
    for kind, recipe in (("diffusion", "transport: {}\nrun: {}\n"), ("tokenizer", "loss: {}\nrun: {}\n")):
        runs[kind] = tmp_path / f"{kind}-run"
        (runs[kind] / "checkpoints").mkdir(parents=True)
        (runs[kind] / "config.yaml").write_text(recipe)
    expected = {
        tokenizer: "is a tokenizer (VFMVAE) folder, not a diffusion model: pass a diffusion model folder",
        runs[
            "diffusion"
        ]: f"is a diffusion training run folder; pass its export: --diffusion {runs['diffusion']}/export",
        runs["tokenizer"]: "is a tokenizer training run folder: its export",
    }
    for folder, message in expected.items():
        argv = ["sample", "--diffusion", str(folder), "--num-samples", "1", "--out", str(tmp_path / "s")]
        assert main([*argv, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert message in err and "--latent-stats" not in err, err


def test_class_names_are_recorded_in_the_cache_and_taken_by_classes(tiny_latent_cache, synthetic_dir):
    from vfmvae.sampling.generate import class_labels

    manifest = json.loads((tiny_latent_cache / "cache.json").read_text())
    folders = sorted(p.name for p in (synthetic_dir / "images").iterdir() if p.is_dir())
    assert manifest["class_names"] == folders
    names = ["birds", "cats", "dogs"]
    assert class_labels("cats,dogs", 4, 3, class_names=names) == [1, 2, 1, 2]
    assert class_labels("dogs,0", 2, 3, class_names=names) == [2, 0]
    with pytest.raises(ValueError, match="unknown class name 'cat' \\(did you mean 'cats'\\?"):
        class_labels("cat", 1, 3, class_names=names)
    with pytest.raises(ValueError, match="class names only for models that record them"):
        class_labels("cats", 1, 3)


def test_eval_from_the_cli_with_random_init_and_a_reference_of_images(few_images, tmp_path, capsys):
    ref = tmp_path / "ref.npz"
    assert main(["eval", "ref-stats", "--data", str(few_images), "--out", str(ref), "--max-images", "5"]) == 0
    assert "5 of 6 images in arr_0, no statistics" in capsys.readouterr().out
    with np.load(ref) as npz:
        assert npz.files == ["arr_0"] and npz["arr_0"].shape == (5, 32, 32, 3)
    argv = ["eval", "gen", "--samples", str(ref), "--ref", str(ref), "--inception", "random-init:0"]
    assert main([*argv, "--batch-size", "5", "--device", "cpu", "--json", str(tmp_path / "gen.json")]) == 0
    result = json.loads((tmp_path / "gen.json").read_text())
    assert abs(result["fid"]) < 1e-3  # a set against itself; the weights are seeded random (compare with nothing)
    assert "RANDOM-INIT" in result["protocol"]["inception_weights"]


def test_eval_ref_may_be_an_image_folder_and_a_missing_inception_is_one_line(few_images, tmp_path, capsys):
    import warnings

    import torch

    from vfmvae.evaluation.inception import load_inception
    from vfmvae.latents.stats import LatentStats
    from vfmvae.training.eval_config import EvalConfig
    from vfmvae.training.online_eval import build_evaluator

    stats = LatentStats(torch.zeros(4), torch.ones(4))
    folder = few_images
    cfg = EvalConfig(enabled=True, ref=str(folder), inception="random-init:0", num_samples=10, batch_size=6)
    evaluator = build_evaluator(cfg, tmp_path / "run", kind="diffusion", tokenizer="unused", latent_stats=stats)
    reference = evaluator.task._reference_stats(load_inception("random-init:0")[0])
    assert reference["pool"].shape == (6, 2048) and reference["mu"].shape == (2048,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Python warning: one line on stderr
        off = EvalConfig(enabled=True, ref=str(folder), num_samples=10)
        build_evaluator(off, tmp_path / "run2", kind="diffusion", tokenizer="unused", latent_stats=stats)
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x]
    assert line.startswith("vfmvae: online evaluation: FID, sFID, IS, precision and recall need the Inception")


def test_evaluation_settings_can_be_turned_on_for_an_existing_run(tmp_path, capsys):
    from vfmvae.diffusion_training import DiffusionTrainConfig
    from vfmvae.training.run_folder import claim_run_folder, write_run_config

    def recipe(*overrides):
        argv = [f"data.cache={tmp_path}", f"run.dir={tmp_path / 'run'}", *overrides]
        return load_config(DiffusionTrainConfig, ROOT / "configs" / "diffusion" / "tiny.yaml", argv)

    run = tmp_path / "run"
    run.mkdir()
    write_run_config(run, recipe())
    on = recipe("eval.enabled=true", "eval.every_images=1600", "eval.inception=random-init:0")
    claim_run_folder(run, on, "auto").release()
    out = capsys.readouterr().out
    assert "evaluation settings changed for this run (eval.enabled: False -> True; eval.every" in out
    with pytest.raises(ConfigError, match="run.batch_size"):  # a change that alters the weights is still refused
        claim_run_folder(run, recipe("run.batch_size=4"), "auto")
