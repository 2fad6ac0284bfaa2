"""`vfmvae info`: versions, devices and the distributed environment, for bug reports."""

from __future__ import annotations

import argparse
import os
import platform


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="print versions, devices and torchrun environment (for bug reports)",
        description="Print the vfmvae, Python and library versions, available devices and the "
        "torchrun variables this process sees.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from vfmvae import __version__

    lines = [
        f"vfmvae {__version__}",
        f"python {platform.python_version()} ({platform.platform()})",
        f"torch {torch.__version__}",
    ]
    for name in ("torchvision", "transformers", "timm", "safetensors", "torch_fidelity", "numpy", "PIL"):
        try:
            module = __import__(name)
            lines.append(f"{name} {getattr(module, '__version__', '?')}")
        except ImportError:
            lines.append(f"{name} not installed")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            lines.append(f"cuda:{i} {torch.cuda.get_device_name(i)}")
    else:
        lines.append(f"no CUDA device; CPU threads: {torch.get_num_threads()}")
    env = {
        k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k in os.environ
    }
    lines.append(f"torchrun environment: {env or 'none (single process)'}")
    print("\n".join(lines))
    return 0
