import os
from pathlib import Path

import pytest
import torch

# Nothing is ever fetched in tests: transformers/huggingface_hub fail at once instead of trying the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """64 synthetic 32-px images of 4 classes, as a folder tree and as 4 tar shards of 16."""
    from vfmvae.data.synthetic import SyntheticConfig, write_synthetic_dataset

    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(
        SyntheticConfig(out=out, num=64, classes=4, size=32, shards=True, shard_size=16), progress=False
    )
    return out


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a GPU; without one they are skipped (make gpu-check runs them on a GPU)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (make gpu-check)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
