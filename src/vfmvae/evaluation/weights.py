"""Locating and safely loading metric-network weights (Inception, VGG16 for LPIPS). Never downloads in tests.

A weights argument is a local file, or an http(s) URL when the machine is online (downloaded once into the
torch hub cache). `.pth` files are read with `weights_only=True`; `.safetensors` as such. `random-init:SEED` asks
for seeded random weights of the architecture (demos and tests: the pipeline runs, the values compare with nothing).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vfmvae.checkpoint.serialize import CheckpointFormatError, load_tensors
from vfmvae.checkpoint.torch_files import load_weights_only

__all__ = [
    "RANDOM_INIT",
    "random_init_seed",
    "resolve_weights",
    "load_weights",
    "INCEPTION_FILE",
    "INCEPTION_SHA256_PREFIX",
    "INCEPTION_URL",
    "VGG16_FILE",
    "VGG16_URL",
]

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
# torch.hub file-name convention: the part after the last '-' is the start of the file's sha256
INCEPTION_SHA256_PREFIX = "6726825d"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
RANDOM_INIT = "random-init:"  # `random-init:0`: seeded random weights (demo and tests only)


def random_init_seed(spec: str | Path | None) -> int | None:
    """The seed of a `random-init:SEED` weights argument; None for anything else (a file, a URL)."""
    text = str(spec) if spec is not None else ""
    if not text.startswith(RANDOM_INIT):
        return None
    try:
        return int(text[len(RANDOM_INIT) :])
    except ValueError:
        raise ValueError(f"{text!r}: write {RANDOM_INIT}SEED with an integer seed") from None


def resolve_weights(spec: str | Path, *, what: str, expected_file: str, url: str) -> Path:
    text = str(spec)
    if text.startswith(("http://", "https://")):
        target = Path(torch.hub.get_dir()) / "checkpoints" / text.rsplit("/", 1)[-1]
        if not target.is_file():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(text, str(target), progress=True)
            except Exception as err:  # offline, DNS failure, HTTP error
                raise FileNotFoundError(
                    f"could not download the {what} weights from {text} ({type(err).__name__}); download "
                    f"{expected_file} on a machine with internet and pass its local path"
                ) from None
        return target
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} weights not found at {path}. Get {expected_file} from {url} (on a machine with internet) "
            f"and pass its path"
        )
    return path


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_tensors(path)
    state = load_weights_only(path, "weights file")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointFormatError(f"{path}: expected a state dict")
    return state
