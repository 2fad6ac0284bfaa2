"""Compare a regenerated parity folder with the committed one, tensor by tensor.

    python scripts/parity/compare.py NEW_DIR tests/data/lightningdit_reference

For every ``*.safetensors`` file found (recursively) in either folder, prints one line per tensor:
``file key  dtype shape  max_abs_diff  bitwise``; tensors or files present on one side only are reported as
such. JSON files present on both sides get one line each: their numbers, compared where both documents
have the same key path (metadata strings are not compared). Exit status 0 when every tensor exists on both
sides with equal dtype and shape (whatever the differences), 1 otherwise; ``--require-bitwise`` also fails on
any value difference.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def tensor_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*.safetensors")}


def compare_tensors(a: torch.Tensor, b: torch.Tensor) -> tuple[float, bool]:
    same_layout = a.dtype == b.dtype and a.shape == b.shape
    bitwise = same_layout and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    if a.shape != b.shape:
        return float("nan"), False
    if a.is_floating_point() or b.is_floating_point():
        diff = (a.double() - b.double()).abs()
        # NaN in the same places counts as equal; elsewhere it is an infinite difference.
        same_nan = a.isnan() & b.isnan()
        diff = torch.where(same_nan, torch.zeros_like(diff), diff.nan_to_num(nan=float("inf")))
    else:
        diff = (a.long() - b.long()).abs().double()
    return (diff.max().item() if diff.numel() else 0.0), bitwise


def numeric_leaves(value: object, prefix: str = "") -> dict[str, float]:
    """Flatten the numbers of a JSON document to {"a.b.0": x} (booleans and strings are skipped)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in numeric_leaves(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in numeric_leaves(item, f"{prefix}{i}.").items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix.rstrip("."): float(value)}
    return {}


def compare_json(new: Path, ref: Path) -> str:
    """One summary line for a JSON file: its numbers are compared where both sides have the same path
    (metadata such as version strings and call descriptions is not compared)."""
    a, b = numeric_leaves(json.loads(new.read_text())), numeric_leaves(json.loads(ref.read_text()))
    shared = sorted(a.keys() & b.keys())
    diffs = [abs(a[k] - b[k]) if not (math.isnan(a[k]) and math.isnan(b[k])) else 0.0 for k in shared]
    worst = max(diffs, default=0.0)
    identical = all(d == 0.0 for d in diffs)
    return (f"{new.name} (json)  {len(shared)} shared numbers  max_abs_diff={worst:.3e}  identical={identical}  "
            f"only_in_new={len(a.keys() - b.keys())} only_in_reference={len(b.keys() - a.keys())}")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("new", type=Path, help="regenerated folder")
    p.add_argument("reference", type=Path, help="committed folder (tests/data/...)")
    p.add_argument("--require-bitwise", action="store_true", help="exit 1 unless every tensor is bitwise equal")
    args = p.parse_args()
    for option, folder in (("new", args.new), ("reference", args.reference)):
        if not folder.is_dir():
            raise SystemExit(f"{option} {folder}: not a folder")

    ok, all_bitwise, worst, count = True, True, 0.0, 0
    new_files, ref_files = tensor_files(args.new), tensor_files(args.reference)
    for name in sorted(new_files | ref_files):
        if name not in new_files or name not in ref_files:
            print(f"{name}: only in {'new' if name in new_files else 'reference'}")
            ok = False
            continue
        new, ref = load_file(args.new / name), load_file(args.reference / name)
        for key in sorted(new.keys() | ref.keys()):
            if key not in new or key not in ref:
                print(f"{name} {key}: only in {'new' if key in new else 'reference'}")
                ok = False
                continue
            a, b = new[key], ref[key]
            if a.dtype != b.dtype or a.shape != b.shape:
                print(f"{name} {key}: dtype/shape {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}")
                ok = False
                continue
            max_diff, bitwise = compare_tensors(a, b)
            count += 1
            worst = max(worst, max_diff)
            all_bitwise &= bitwise
            print(f"{name} {key}  {str(a.dtype).removeprefix('torch.')} {tuple(a.shape)}  "
                  f"max_abs_diff={max_diff:.3e}  bitwise={bitwise}")  # fmt: skip
    for name in sorted({p.name for p in args.new.glob("*.json")} & {p.name for p in args.reference.glob("*.json")}):
        print(compare_json(args.new / name, args.reference / name))
    print(f"summary: {count} tensors compared, max_abs_diff={worst:.3e}, all_bitwise={all_bitwise}, "
          f"structure_ok={ok}")  # fmt: skip
    return 0 if ok and (all_bitwise or not args.require_bitwise) else 1


if __name__ == "__main__":
    sys.exit(main())
