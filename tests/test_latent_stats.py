"""One `LatentStats` (vfmvae.latents.stats) for every place that normalises latents or reads their
statistics, with a check that the statistics belong to the tokenizer they are used with, and `vfmvae sample` from a
Hub id finding the statistics inside the downloaded snapshot."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from helpers import tiny_official_tokenizer
from safetensors.torch import save_file

from vfmvae.checkpoint.digest import model_folder_digest
from vfmvae.latents import LatentDataset
from vfmvae.latents.stats import LatentStats

MEAN = [0.1, -0.2, 0.30000001192092896, 1e-8, 123.456789]  # values that round when stored as float32
STD = [2.0, 1.5, 0.7, 0.5, 3.3333333333]


def _z(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _fake_tokenizer(folder: Path, weight: float) -> Path:
    """A folder with the two kinds of file a model digest covers (check_tokenizer never loads the model)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architecture": "VFMVAE", "config": {}}))
    save_file({"w": torch.full((3,), weight)}, str(folder / "model.safetensors"))
    return folder


def _cache(folder: Path, tokenizer: Path | None = None) -> Path:
    """A two-item latent cache written by hand: shard, manifest and the settings with the tokenizer digest."""
    folder.mkdir(parents=True)
    save_file(
        {"latents": _z(2, 5, 2, 2), "latents_std": _z(2, 5, 2, 2).abs(), "labels": torch.tensor([0, 1])},
        str(folder / "shard-r00-00000.safetensors"),
    )
    manifest = {
        "tokenizer": str(tokenizer or folder / "tok"),
        "latent_shape": [5, 2, 2],
        "num_items": 2,
        "shards": [{"file": "shard-r00-00000.safetensors", "count": 2}],
        "mean": MEAN,
        "std": STD,
    }
    (folder / "cache.json").write_text(json.dumps(manifest))
    if tokenizer is not None:
        (folder / "settings.json").write_text(json.dumps({"tokenizer_sha256": model_folder_digest(tokenizer)}))
    return folder


def test_every_normaliser_is_bit_identical_to_the_formulas_it_replaces(tmp_path):
    stats = LatentStats.load(_cache(tmp_path / "cache") / "cache.json")
    mean32, std32 = torch.tensor(MEAN), torch.tensor(STD)
    item, batch = _z(5, 2, 2), _z(3, 5, 2, 2)
    # LatentDataset (per item), the sampling pipeline (batches) and alignment's inline normalisation, as they were
    assert torch.equal(stats.normalize(item), (item - mean32.view(-1, 1, 1)) / std32.view(-1, 1, 1))
    assert torch.equal(stats.denormalize(item), item * std32.view(-1, 1, 1) + mean32.view(-1, 1, 1))
    assert torch.equal(stats.denormalize(batch), batch * std32.view(1, -1, 1, 1) + mean32.view(1, -1, 1, 1))
    assert torch.equal(stats.normalize(batch), (batch - mean32.view(1, -1, 1, 1)) / std32.view(1, -1, 1, 1))
    assert torch.equal(stats.normalize_scale(item.abs()), item.abs() / std32.view(-1, 1, 1))
    assert stats.normalize(batch.double()).dtype == torch.float64  # promotion as before


def test_latent_dataset_normalises_with_the_one_object(tmp_path):
    tok = _fake_tokenizer(tmp_path / "tok", 1.0)
    ds = LatentDataset(_cache(tmp_path / "cache", tok))
    raw = ds.column("latents")[1]
    item = ds[1]
    assert torch.equal(item["latents"], ds.stats.normalize(raw))
    assert torch.equal(item["latents_std"], ds.column("latents_std")[1] / torch.tensor(STD).view(-1, 1, 1))
    assert torch.equal(ds.denormalize(item["latents"]), ds.stats.denormalize(item["latents"]))
    assert ds.mean.shape == (5, 1, 1) and torch.equal(ds.std.flatten(), torch.tensor(STD))
    assert ds.stats.tokenizer == str(tok) and ds.stats.tokenizer_sha256 == model_folder_digest(tok)
    assert ds.stats.cache == str(tmp_path / "cache")


def test_the_three_files_give_the_same_statistics_and_save_round_trips(tmp_path):
    tok = _fake_tokenizer(tmp_path / "tok", 1.0)
    from_cache = LatentStats.load(_cache(tmp_path / "cache", tok) / "cache.json")
    assert LatentStats.load(tmp_path / "cache").tokenizer_sha256 == from_cache.tokenizer_sha256  # a cache folder
    torch.save(
        {
            "mean": torch.tensor(MEAN, dtype=torch.float64).view(1, -1, 1, 1),
            "std": torch.tensor(STD, dtype=torch.float64).view(1, -1, 1, 1),
        },
        tmp_path / "latents_stats.pt",
    )
    official = LatentStats.load(tmp_path / "latents_stats.pt")
    (tmp_path / "ours.json").write_text(json.dumps({"mean": MEAN, "std": STD, "tokenizer": "tok"}))
    ours = LatentStats.load(tmp_path / "ours.json")
    for stats in (official, ours):
        assert stats.mean.dtype == torch.float32 and torch.equal(stats.mean, from_cache.mean)
        assert torch.equal(stats.std, from_cache.std)
    assert official.tokenizer is None and official.tokenizer_sha256 is None
    assert ours.tokenizer_dir() == tmp_path / "tok"  # relative to the file's folder

    (tmp_path / "export").mkdir()
    saved = from_cache.save(tmp_path / "export")
    assert saved == tmp_path / "export" / "latent_stats.json" and sorted(p.name for p in saved.parent.iterdir()) == [
        "latent_stats.json"
    ]  # atomic: no temporary file left
    again = LatentStats.load(tmp_path / "export")  # an export folder
    assert torch.equal(again.mean, from_cache.mean) and torch.equal(again.std, from_cache.std)
    assert (again.tokenizer, again.tokenizer_sha256, again.cache) == (
        from_cache.tokenizer,
        from_cache.tokenizer_sha256,
        from_cache.cache,
    )


def test_a_cache_manifest_holds_its_statistics_with_the_tokenizer_digest(tiny_latent_cache, tmp_path):
    manifest = json.loads((tiny_latent_cache / "cache.json").read_text())
    settings = json.loads((tiny_latent_cache / "settings.json").read_text())
    assert manifest["tokenizer_sha256"] == settings["tokenizer_sha256"] == model_folder_digest(manifest["tokenizer"])
    # the manifest alone is enough: a copy without settings.json still knows its tokenizer's content
    shutil.copy(tiny_latent_cache / "cache.json", tmp_path / "cache.json")
    stats = LatentStats.load(tmp_path / "cache.json")
    assert stats.tokenizer_sha256 == settings["tokenizer_sha256"]
    assert stats.to_dict()["mean"] == [float(torch.tensor(m, dtype=torch.float32)) for m in manifest["mean"]]


def test_bad_statistics_files_are_one_clear_line(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad.json: not valid JSON"):
        LatentStats.load(tmp_path / "bad.json")
    (tmp_path / "short.json").write_text(json.dumps({"mean": [0.0, 1.0], "std": [1.0]}))
    with pytest.raises(ValueError, match=r"short.json: mean has shape \(2,\), std \(1,\)"):
        LatentStats.load(tmp_path / "short.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither latent_stats.json nor cache.json"):
        LatentStats.load(tmp_path / "empty")


def test_check_tokenizer_refuses_another_tokenizer_and_warns_without_a_record(tmp_path):
    tok = _fake_tokenizer(tmp_path / "tok", 1.0)
    other = _fake_tokenizer(tmp_path / "other", 2.0)
    copy = tmp_path / "copy"
    shutil.copytree(tok, copy)
    recorded_digest = LatentStats.load(_cache(tmp_path / "cache", tok))
    (tmp_path / "path-only.json").write_text(json.dumps({"mean": MEAN, "std": STD, "tokenizer": str(tok)}))
    recorded_path = LatentStats.load(tmp_path / "path-only.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for stats in (recorded_digest, recorded_path):
            stats.check_tokenizer(tok)
            stats.check_tokenizer(copy)  # same content elsewhere
    for stats in (recorded_digest, recorded_path):
        with pytest.raises(
            ValueError,
            match=r"belong to the tokenizer .*/tok \(sha256 \w{12}\), not to .*/other "
            r"\(sha256 \w{12}\).*--tokenizer.*--latent-stats",
        ):
            stats.check_tokenizer(other)
    shutil.rmtree(tok)
    with pytest.raises(ValueError, match="not to .*other"):  # the digest still tells
        recorded_digest.check_tokenizer(other)
    with pytest.warns(UserWarning, match="not on this machine: cannot check"):
        recorded_path.check_tokenizer(other)
    with pytest.warns(UserWarning, match="record no tokenizer"):
        LatentStats(torch.zeros(5), torch.ones(5)).check_tokenizer(other)


# --- the pipeline: statistics checked against its tokenizer, and found inside a Hub snapshot ----------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from vfmvae.diffusion import create_diffusion_model
    from vfmvae.tokenizer import VFMVAE

    root = tmp_path_factory.mktemp("latentstats")
    tiny_official_tokenizer(root / "tok")
    other = VFMVAE.from_pretrained(root / "tok")
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    other.save_pretrained(root / "other-tok")
    torch.manual_seed(0)
    dit = create_diffusion_model("lightningdit-tiny", in_channels=8, input_size=4, num_classes=4)
    dit.save_pretrained(root / "dit")
    LatentStats(
        torch.full((8,), 0.5),
        torch.full((8,), 2.0),
        tokenizer=str(root / "tok"),
        tokenizer_sha256=model_folder_digest(root / "tok"),
    ).save(root / "dit")
    (root / "dit" / "sampler.json").write_text(json.dumps({"preset": "lightningdit"}))
    return root


def test_pipeline_refuses_a_tokenizer_the_statistics_do_not_belong_to(models):
    from vfmvae.sampling.pipeline import LatentStats as ReExported
    from vfmvae.sampling.pipeline import VFMVAEPipeline

    assert ReExported is LatentStats
    pipe = VFMVAEPipeline.from_pretrained(models / "dit")
    assert pipe.tokenizer_dir == models / "tok" and pipe.stats.tokenizer_sha256 == model_folder_digest(models / "tok")
    with pytest.raises(ValueError, match=r"latent_stats.json belong to the tokenizer .*tok.*, not to .*other-tok"):
        VFMVAEPipeline.from_pretrained(models / "dit", tokenizer=models / "other-tok")


@pytest.fixture
def hub_cache(models, tmp_path, monkeypatch):
    """`acme/tiny-dit` in a huggingface_hub cache layout (offline): the export with its latent_stats.json."""
    from huggingface_hub import constants

    commit = "c" * 40
    repo = tmp_path / "hub" / "models--acme--tiny-dit"
    shutil.copytree(models / "dit", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    return repo / "snapshots" / commit


def test_pipeline_from_a_hub_id_reads_the_statistics_and_preset_of_the_snapshot(models, hub_cache):
    from vfmvae.sampling.pipeline import VFMVAEPipeline

    pipe = VFMVAEPipeline.from_pretrained("acme/tiny-dit")
    assert pipe.diffusion_dir == hub_cache.resolve() and pipe.preset == "lightningdit"
    assert pipe.stats.source == hub_cache.resolve() / "latent_stats.json"
    assert torch.equal(pipe.stats.mean, torch.full((8,), 0.5)) and pipe.tokenizer_dir == models / "tok"


@pytest.mark.slow  # one decode by the tiny official decoder: ~25 s on a busy 2-core CPU
def test_sample_command_takes_a_hub_id_without_latent_stats(models, hub_cache, tmp_path):
    from vfmvae.cli import main

    out = tmp_path / "s"
    assert (
        main(
            [
                "sample",
                "--diffusion",
                "acme/tiny-dit",
                "--num",
                "1",
                "--steps",
                "1",
                "--cfg",
                "1",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    settings = json.loads((out / "settings.json").read_text())
    assert settings["diffusion"] == "acme/tiny-dit" and settings["preset"] == "lightningdit"  # the snapshot's preset
    assert settings["diffusion_sha256"] == model_folder_digest(hub_cache)
    assert settings["tokenizer_sha256"] == model_folder_digest(models / "tok")
    assert (out / "images" / "000000.png").is_file()


def test_resuming_a_sample_folder_with_the_old_label_seeds_is_refused(models, tmp_path, capsys):
    from vfmvae.cli import main

    out = tmp_path / "s"
    args = [
        "sample",
        "--diffusion",
        str(models / "dit"),
        "--num",
        "2",
        "--steps",
        "1",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--preset",
        "none",
    ]
    (out / "images").mkdir(parents=True)
    # what an earlier version wrote: the same settings, minus the label stream
    from vfmvae.sampling.generate import UINT8_CONVERSION

    old = {"num": 2, "seed": 0, "classes": "random", "sampler": {}, "uint8": UINT8_CONVERSION}
    (out / "settings.json").write_text(json.dumps(old))
    assert main(args) == 2
    assert "label_seeds" in capsys.readouterr().err and not list((out / "images").iterdir())
