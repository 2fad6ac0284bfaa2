"""Shared set-up for the parity-data scripts.

These scripts run in the separate reference environment built by ``setup_env.sh`` (never in the project's
environment) and import the official code from a folder given on the command line. Nothing from the
official repositories is copied into this repository.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any


def pin_runtime() -> None:
    """One CPU thread and deterministic kernels: the reference data were made this way (thread count moves
    float32 results by ~5e-6)."""
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # run @torch.compile-decorated code eagerly
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def parser(description: str, official_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--official", type=Path, required=True, help=official_help)
    p.add_argument("--out", type=Path, required=True, help="output folder (created; existing files are refused)")
    return p


def check_folder(path: Path, must_contain: str, option: str) -> Path:
    """Fail with one line when an official source folder is not what the script expects."""
    path = path.resolve()
    if not (path / must_contain).exists():
        raise SystemExit(f"{option} {path}: expected {must_contain} inside (see scripts/parity/README.md)")
    return path


def prepare_out(out: Path, names: list[str]) -> Path:
    """Create the output folder; never overwrite files this run did not write."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    clashes = [n for n in names if (out / n).exists()]
    if clashes:
        raise SystemExit(f"--out {out}: already holds {', '.join(clashes)}; choose an empty folder")
    return out


def import_from(folder: Path, module: str) -> Any:
    """Import ``module`` with ``folder`` first on sys.path (the official repositories are not packages)."""
    folder_str = str(folder)
    if folder_str not in sys.path:
        sys.path.insert(0, folder_str)
    return importlib.import_module(module)


def versions(*names: str) -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in names:
        out[name] = importlib.import_module(name).__version__
    return out


def perturb_parameters(model: Any, seed: int, std: float = 0.1, only_trainable: bool = True) -> list[str]:
    """Add a seeded N(0, std^2) to every parameter, in ``named_parameters()`` order, so that zero-initialised
    branches influence the outputs. Returns the names of the parameters that received a draw."""
    import torch

    torch.manual_seed(seed)
    touched = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if only_trainable and not p.requires_grad:
                continue
            if not p.is_floating_point():
                continue
            p.add_(std * torch.randn_like(p))
            touched.append(name)
    return touched


def save_tensors(path: Path, tensors: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items() if isinstance(v, torch.Tensor)}, tmp)
    os.replace(tmp, path)


def save_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
