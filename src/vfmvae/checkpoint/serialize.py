"""Pickle-free serialisation of nested training state: tensors go to safetensors, the rest to JSON.

`flatten_state(obj)` walks dicts, lists and tuples; every torch tensor or numpy array is replaced by a
reference into a flat tensor dict, and everything else must be JSON-safe (None, bool, int, float, str).
`unflatten_state` reverses it exactly, restoring tuples, integer dict keys and numpy arrays. This is how
optimizer states, grad-scaler states and RNG states are stored without pickle.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vfmvae.checkpoint.atomic import atomic_write, atomic_write_text

__all__ = [
    "flatten_state",
    "unflatten_state",
    "save_tensors",
    "load_tensors",
    "save_state",
    "load_state",
    "CheckpointFormatError",
]


class CheckpointFormatError(ValueError):
    """A checkpoint file is missing, truncated, or does not match what is being loaded into."""


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor] | None = None, prefix: str = "s") -> tuple[Any, dict]:
    tensors = {} if tensors is None else tensors

    def walk(x: Any, key: str) -> Any:
        if isinstance(x, torch.Tensor):
            tensors[key] = x.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(x, np.ndarray):
            tensors[key] = torch.from_numpy(np.ascontiguousarray(x))
            return {"__ndarray__": key}
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, dict):
            keys = list(x)
            if all(isinstance(k, str) for k in keys):
                return {"__dict__": {k: walk(v, f"{key}.{k}") for k, v in x.items()}}
            if all(isinstance(k, int) and not isinstance(k, bool) for k in keys):
                return {"__intdict__": [[k, walk(v, f"{key}.{k}")] for k, v in x.items()]}
            raise TypeError(f"cannot serialise dict with keys {keys[:3]} at {key}")
        if isinstance(x, tuple):
            return {"__tuple__": [walk(v, f"{key}.{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(x)]
        if isinstance(x, float) and not math.isfinite(x):
            return {"__float__": repr(x)}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot serialise {type(x).__name__} at {key} without pickle")

    return walk(obj, prefix), tensors


def unflatten_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    def walk(x: Any) -> Any:
        if isinstance(x, list):
            return [walk(v) for v in x]
        if not isinstance(x, dict):
            return x
        if "__tensor__" in x:
            return tensors[x["__tensor__"]]
        if "__ndarray__" in x:
            return tensors[x["__ndarray__"]].numpy()
        if "__dict__" in x:
            return {k: walk(v) for k, v in x["__dict__"].items()}
        if "__intdict__" in x:
            return {int(k): walk(v) for k, v in x["__intdict__"]}
        if "__tuple__" in x:
            return tuple(walk(v) for v in x["__tuple__"])
        if "__float__" in x:
            return float(x["__float__"])
        raise CheckpointFormatError(f"unknown node in serialised state: {sorted(x)}")

    return walk(tree)


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights, views); give each its own copy."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ident = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) if t.numel() else None
        if ident is not None and ident in seen:
            t = t.clone()
        elif ident is not None:
            seen.add(ident)
        out[name] = t
    return out


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Atomically write a safetensors file."""
    tensors = _unshare(tensors)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), size=size)


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"missing tensor file: {path}")
    try:
        return load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({err})") from None


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a safetensors file, from its header alone (nothing is loaded)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"missing tensor file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({err})") from None


def save_state(stem: str | Path, state: Any) -> None:
    """Write `stem.json` (structure) and `stem.safetensors` (tensors) for arbitrary nested state."""
    stem = Path(stem)
    tree, tensors = flatten_state(state)
    save_tensors(stem.with_suffix(".safetensors"), tensors)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(tree))


def load_state(stem: str | Path) -> Any:
    stem = Path(stem)
    json_path = stem.with_suffix(".json")
    if not json_path.is_file():
        raise CheckpointFormatError(f"missing state file: {json_path}")
    try:
        tree = json.loads(json_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointFormatError(f"{json_path}: corrupt JSON ({err})") from None
    return unflatten_state(tree, load_tensors(stem.with_suffix(".safetensors")))
