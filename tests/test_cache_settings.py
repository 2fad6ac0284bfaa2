"""A latent cache records the settings that define it and refuses a re-run or resume that differs
(tokenizer content, data listing, flags, batch size); non-finite latents are never written."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import tiny_official_tokenizer

from vfmvae.latents import CacheError, cache_latents


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_official_tokenizer(tmp_path_factory.mktemp("cachesettings") / "tok")


@pytest.fixture
def images(tmp_path, synthetic_dir):
    """A copy of 2 classes of the synthetic set (32 images), so a test can add a class folder."""
    src = synthetic_dir / "images"
    for d in sorted(src.iterdir())[:2]:
        shutil.copytree(d, tmp_path / "images" / d.name)
    return tmp_path / "images"


def _cache(tok, data, out, **kw):
    kw = {"batch_size": 8, "shard_size": 16, "num_workers": 0, "device": "cpu", "progress": False, **kw}
    return cache_latents(tok, data, out, **kw)


def _listing(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_rerun_with_another_tokenizer_at_the_same_path_is_refused(tok, images, tmp_path):
    from vfmvae.tokenizer import VFMVAE

    other = tmp_path / "tok"
    shutil.copytree(tok, other)
    _cache(other, images, tmp_path / "cache")
    before = _listing(tmp_path / "cache")
    model = VFMVAE.from_pretrained(other)
    with torch.no_grad():
        next(p for p in model.trainable_parameters()).add_(0.01)
    model.save_pretrained(other)  # the tokenizer folder is replaced at the same path
    with pytest.raises(CacheError, match="other settings.*tokenizer_sha256"):
        _cache(other, images, tmp_path / "cache")
    assert _listing(tmp_path / "cache") == before


def test_resume_with_another_batch_size_or_flags_is_refused(tok, images, tmp_path):
    out = tmp_path / "cache"
    _cache(tok, images, out)
    (out / "cache.json").unlink()  # as if killed before the end
    with pytest.raises(CacheError, match=r"batch_size: 8 -> 12"):
        _cache(tok, images, out, batch_size=12)
    with pytest.raises(CacheError, match=r"flip: False -> True"):
        _cache(tok, images, out, flip=True)
    info = _cache(tok, images, out)  # the same command finishes it
    assert info["num_items"] == 32


def test_an_added_class_folder_is_detected(tok, images, tmp_path, synthetic_dir):
    out = tmp_path / "cache"
    _cache(tok, images, out)
    (out / "cache.json").unlink()
    shutil.copytree(sorted((synthetic_dir / "images").iterdir())[2], images / "zz-new-class")
    with pytest.raises(CacheError, match="data_listing_sha256"):
        _cache(tok, images, out)


def test_a_foreign_non_empty_out_is_refused(tok, images, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    with pytest.raises(CacheError, match="not empty and holds no settings.json"):
        _cache(tok, images, out)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_non_finite_latents_are_never_written(tok, images, tmp_path):
    from vfmvae.tokenizer import VFMVAE

    model = VFMVAE.from_pretrained(tok)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.fill_(float("nan"))
    model.save_pretrained(tmp_path / "nan-tok")
    with pytest.raises(CacheError, match="non-finite values in latents"):
        _cache(tmp_path / "nan-tok", images, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("shard-*")) and not (tmp_path / "cache" / "cache.json").exists()
