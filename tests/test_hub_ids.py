"""Hub repo ids for `from_pretrained`, resolved through huggingface_hub's cache (offline: the test suite never
touches the network; conftest sets HF_HUB_OFFLINE=1)."""

import shutil
from pathlib import Path

import pytest
import torch

from vfmvae.checkpoint.pretrained import resolve_model_dir
from vfmvae.diffusion import DiffusionTransformer, create_diffusion_model

COMMITS = {"main": "a" * 40, "v1": "b" * 40}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A cache as huggingface_hub lays it out: models--OWNER--NAME/{refs/REF -> commit, snapshots/COMMIT/files}."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-dit"
    models = {}
    for ref, commit in COMMITS.items():
        torch.manual_seed(len(models))
        model = create_diffusion_model("lightningdit-tiny", in_channels=4, input_size=4, num_classes=3)
        model.save_pretrained(tmp_path / ref)
        shutil.copytree(tmp_path / ref, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        models[ref] = model
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache, models


def _equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_hub_id_loads_from_the_cache_offline_with_revisions(hub_cache):
    cache, models = hub_cache
    assert (
        resolve_model_dir("acme/tiny-dit")
        == (cache / "models--acme--tiny-dit" / "snapshots" / COMMITS["main"]).resolve()
    )
    assert _equal(DiffusionTransformer.from_pretrained("acme/tiny-dit"), models["main"])
    assert _equal(DiffusionTransformer.from_pretrained("acme/tiny-dit@v1"), models["v1"])  # a tag
    assert not _equal(models["main"], models["v1"])
    assert resolve_model_dir("acme/tiny-dit", revision=COMMITS["v1"]).name == COMMITS["v1"]  # a commit


def test_hub_id_not_in_the_cache_offline_is_one_clear_error(hub_cache):
    with pytest.raises(FileNotFoundError, match=r"HF_HUB_OFFLINE is set .* no copy of acme/other"):
        DiffusionTransformer.from_pretrained("acme/other")
    with pytest.raises(FileNotFoundError, match=r"no copy of acme/tiny-dit at revision 'v9'"):
        resolve_model_dir("acme/tiny-dit@v9")


def test_a_hub_id_given_as_a_path_resolves(hub_cache):
    """The CLI's --tokenizer/--diffusion options are argparse Paths: Path("acme/tiny-dit") must still resolve."""
    assert _equal(DiffusionTransformer.from_pretrained(Path("acme/tiny-dit")), hub_cache[1]["main"])
