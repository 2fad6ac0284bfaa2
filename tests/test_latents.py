"""The latent cache: contents, stored statistics, flips, resume, rank split, damaged shards."""

import json
from pathlib import Path

import pytest
import torch

from vfmvae.latents import CacheError, LatentDataset, cache_latents

DATA = Path(__file__).parent / "data" / "official_tokenizer_tiny"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from vfmvae.tokenizer.convert import convert_official_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tok"
    convert_official_tokenizer(
        DATA / "config.yaml", DATA / "official_G.safetensors", DATA / "siglip2-tiny-patch16", out
    )
    return out


def _cache(tokenizer, data, out, **kw):
    kw = {"batch_size": 8, "shard_size": 16, "num_workers": 0, "device": "cpu", "progress": False, **kw}
    return cache_latents(tokenizer, data, out, **kw)


def test_cache_contents_statistics_and_flip(tmp_path, tokenizer, synthetic_dir):
    from vfmvae.data import ImageFolderDataset, ImageOptions, to_float01
    from vfmvae.tokenizer import VFMVAE

    info = _cache(tokenizer, synthetic_dir / "images", tmp_path / "c", flip=True, vfm_features="dinov2-test")
    assert info["num_items"] == 64 and info["latent_shape"] == [8, 4, 4] and len(info["shards"]) == 4
    ds = LatentDataset(tmp_path / "c")
    raw = torch.stack([ds.denormalize(ds[i]["latents"]) for i in range(64)])
    # the stored statistics are those of the cached latents, and loading applies them
    torch.testing.assert_close(torch.tensor(info["mean"]), raw.double().mean((0, 2, 3)).float(), rtol=1e-4, atol=1e-5)
    normed = torch.stack([ds[i]["latents"] for i in range(64)])
    assert normed.mean((0, 2, 3)).abs().max() < 1e-4 and (normed.std((0, 2, 3)) - 1).abs().max() < 0.02
    # item 0 is the tokenizer's posterior mean of the first image
    model = VFMVAE.from_pretrained(tokenizer)
    image = ImageFolderDataset(synthetic_dir / "images", ImageOptions(64))[0]["image"]
    with torch.no_grad():
        torch.testing.assert_close(raw[0], model.encode(to_float01(image)[None]).mean[0], rtol=1e-4, atol=1e-4)
    assert ds[0]["label"] == 0 and ds[0]["vfm_features"].shape == (64, 64) and ds[0]["vfm_cls"].shape == (64,)
    flipped = LatentDataset(tmp_path / "c", flip=True)
    changed = [i for i in range(16) if not torch.equal(flipped[i]["latents"], ds[i]["latents"])]
    assert changed
    # a flipped item carries the VFM features of the flipped image, not of the original
    from vfmvae.latents.targets import reg_dinov2_targets
    from vfmvae.vfm import VFMSpec, build_vfm

    # DINOv2 targets are cached as REG prepares them
    vfm = reg_dinov2_targets(build_vfm(VFMSpec("dinov2-test", layers=(-1,))), 64)
    image = to_float01(ImageFolderDataset(synthetic_dir / "images", ImageOptions(64))[changed[0]]["image"])[None]
    expected = vfm(image.flip(-1)).tokens[0][0].half().float()
    torch.testing.assert_close(flipped[changed[0]]["vfm_features"], expected)
    assert not torch.allclose(ds[changed[0]]["vfm_features"], expected)


def test_resume_and_rank_split(tmp_path, tokenizer, synthetic_dir, monkeypatch):
    from vfmvae import distributed as dist_utils

    full = _cache(tokenizer, synthetic_dir / "images", tmp_path / "full")
    # an interrupted run: only the first shard's progress survives; the re-run completes it without duplicates
    part = tmp_path / "part"
    _cache(tokenizer, synthetic_dir / "images", part)
    progress = json.loads((part / "progress-r00.json").read_text())
    for shard in progress["shards"][1:]:
        (part / shard["file"]).unlink()
    progress = {"shards": progress["shards"][:1], "items": progress["shards"][0]["count"]}
    (part / "progress-r00.json").write_text(json.dumps(progress))
    (part / "cache.json").unlink()
    resumed = _cache(tokenizer, synthetic_dir / "images", part)
    assert resumed["num_items"] == 64 and resumed["mean"] == pytest.approx(full["mean"])
    a, b = LatentDataset(tmp_path / "full"), LatentDataset(part)
    assert torch.equal(a.column("latents"), b.column("latents")) and torch.equal(a.column("labels"), b.column("labels"))
    # two ranks (simulated) take disjoint halves that cover everything
    for r in (1, 0):  # rank 0 writes the manifest once every rank has finished
        monkeypatch.setattr(dist_utils, "rank", lambda r=r: r)
        monkeypatch.setattr(dist_utils, "world_size", lambda: 2)
        monkeypatch.setattr(dist_utils, "barrier", lambda: None)
        out = tmp_path / "ranks"
        _cache(tokenizer, synthetic_dir / "images", out)
    merged = LatentDataset(tmp_path / "ranks")
    assert len(merged) == 64 and sorted(merged.column("labels").tolist()) == sorted(a.column("labels").tolist())
    assert {s["file"][:9] for s in merged.manifest["shards"]} == {"shard-r00", "shard-r01"}


def test_damaged_caches_give_clear_errors(tmp_path, tokenizer, synthetic_dir):
    _cache(tokenizer, synthetic_dir / "images", tmp_path / "c")
    with pytest.raises(CacheError, match="not a finished latent cache"):
        LatentDataset(tmp_path / "nothing")
    shard = sorted((tmp_path / "c").glob("shard-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CacheError, match="truncated shard"):
        LatentDataset(tmp_path / "c")
    with pytest.raises(CacheError, match="no flipped latents"):
        _cache(tokenizer, synthetic_dir / "images", tmp_path / "d")
        LatentDataset(tmp_path / "d", flip=True)


def test_cache_latents_command(tmp_path, tokenizer, synthetic_dir, capsys):
    from vfmvae.cli import main

    assert (
        main(
            [
                "cache-latents",
                "--tokenizer",
                str(tokenizer),
                "--data",
                str(synthetic_dir / "shards"),
                "--out",
                str(tmp_path / "c"),
                "--workers",
                "0",
                "--device",
                "cpu",
                "--batch-size",
                "16",
            ]
        )
        == 0
    )
    assert "cached 64 latents" in capsys.readouterr().out
