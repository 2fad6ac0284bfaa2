import os

# numpy's OpenBLAS threads spin while they wait: on 2 busy cores a 2048x2048 eigh (FID, sFID) then takes 10x longer
# (measured 15 s vs 1.6 s under load 5). One BLAS thread; set before numpy is first imported (by torch below).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# The same for OpenMP (torch): idle threads sleep instead of spinning, so two pytest-xdist workers and the processes
# that tests start share 2 cores without starving each other.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import pytest
import torch

# Nothing is ever fetched in tests: transformers/huggingface_hub fail at once instead of trying the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# one thread per pytest-xdist worker (`make test` runs two), else up to 2
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """64 synthetic 32-px images of 4 classes, as a folder tree and as 4 tar shards of 16."""
    from vfmvae.data.synthetic import SyntheticConfig, write_synthetic_dataset

    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(
        SyntheticConfig(out=out, num=64, classes=4, size=32, shards=True, shard_size=16), progress=False
    )
    return out


@pytest.fixture(scope="session")
def tiny_latent_cache(tmp_path_factory, synthetic_dir) -> Path:
    """Latents (8x4x4) of the 64 synthetic images by the tiny official tokenizer, with flips and dinov2-test
    features (64 tokens, 64-d, + CLS). Read-only for the tests that share it."""
    from helpers import tiny_official_tokenizer

    from vfmvae.latents import cache_latents

    root = tmp_path_factory.mktemp("latent-cache")
    cache_latents(
        tiny_official_tokenizer(root / "tok"),
        synthetic_dir / "images",
        root / "cache",
        flip=True,
        vfm_features="dinov2-test",
        batch_size=16,
        shard_size=32,
        num_workers=0,
        device="cpu",
        progress=False,
    )
    return root / "cache"


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a GPU; without one they are skipped (make gpu-check runs them on a GPU)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (make gpu-check)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
