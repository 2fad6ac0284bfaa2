"""Small models and data shared by the tests (no weights, no downloads)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vfmvae.checkpoint import PretrainedMixin


@dataclass(frozen=True)
class TinyNetConfig:
    channels: int = 8
    num_classes: int = 4


class TinyNet(PretrainedMixin, nn.Module):
    """A classifier on uint8 images: enough parameters and a buffer to exercise checkpoints and DDP."""

    config_class = TinyNetConfig

    def __init__(self, config: TinyNetConfig) -> None:
        super().__init__()
        self.config = config
        self.conv = nn.Conv2d(3, config.channels, 3, padding=1)
        self.head = nn.Linear(config.channels, config.num_classes)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1.0
        x = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.head(x)


def classification_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch["image"]), batch["label"])


READBACK_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def on_tensor_readback(hook: Callable[[str], None]) -> Iterator[None]:
    """Calls `hook(method)` before every way of reading a tensor back to Python (each a host sync on a GPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    saved = {name: getattr(torch.Tensor, name) for name in READBACK_METHODS}

    class ScalarReads(TorchDispatchMode):
        # Reads that no Python method shows: a device tensor passed where an op takes a host Scalar (e.g. the
        # weight of `torch._foreach_lerp_`) is converted inside torch through `aten._local_scalar_dense`.
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                hook("scalar conversion")
            return func(*args, **(kwargs or {}))

    def wrap(name, original):
        def wrapped(self, *args, **kwargs):
            hook(name)
            return original(self, *args, **kwargs)

        return wrapped

    try:
        for name, original in saved.items():
            setattr(torch.Tensor, name, wrap(name, original))
        with ScalarReads():
            yield
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


def sets(*overrides: str) -> list[str]:
    """`--set` before each recipe override: the command-line form of `load_config`'s override list."""
    return [arg for override in overrides for arg in ("--set", override)]


def train_argv(kind: str, recipe: str | Path, *overrides: str) -> list[str]:
    """The arguments of `vfmvae train KIND --recipe RECIPE --set OVERRIDE ...` (for `vfmvae.cli.main` or
    `python_m_vfmvae`)."""
    return ["train", kind, "--recipe", str(recipe), *sets(*overrides)]


def python_m_vfmvae(args: list[str], processes: int = 0) -> list[str]:
    """`python -m vfmvae ARGS` as a subprocess command; under torchrun with `processes` processes when > 0."""
    launcher = [sys.executable]
    if processes:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return [*launcher, "-m", "vfmvae", *args]


TINY_TOKENIZER = Path(__file__).parent / "data" / "official_tokenizer_tiny"


def tiny_official_tokenizer(out: Path) -> Path:
    """The tiny official-format tokenizer (tests/data/official_tokenizer_tiny) converted into our folder `out`."""
    from vfmvae.tokenizer.convert import convert_official_tokenizer

    convert_official_tokenizer(
        TINY_TOKENIZER / "config.yaml",
        TINY_TOKENIZER / "official_G.safetensors",
        TINY_TOKENIZER / "siglip2-tiny-patch16",
        out,
    )
    return out


def perturbed_reg_export(out: Path, tokenizer: Path, stats: dict) -> Path:
    """A tiny REG model on that tokenizer's 8x4x4 latents, weights perturbed (seed 0) so samples are not trivial,
    saved like a training export: the model folder plus latent_stats.json naming the tokenizer."""
    import json

    from vfmvae.diffusion import create_diffusion_model

    torch.manual_seed(0)
    model = create_diffusion_model("reg-sit-tiny", in_channels=8, input_size=4, num_classes=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out)
    (out / "latent_stats.json").write_text(json.dumps({**stats, "tokenizer": str(tokenizer)}))
    return out
