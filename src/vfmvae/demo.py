"""The end-to-end CPU demo behind `make demo`: each step is a `vfmvae` command, printed as it runs.

It grows with the pipeline. Today: write the synthetic dataset (folders and tar shards), read the shards
back through the training data pipeline, and save preview grids to look at.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from vfmvae.cli import main as vfmvae_main


def _step(title: str, argv: list[str]) -> None:
    print(f"\n== {title}\n$ vfmvae {shlex.join(argv)}", flush=True)
    start = time.perf_counter()
    code = vfmvae_main(argv)
    if code:
        raise SystemExit(f"demo step failed with exit code {code}: vfmvae {shlex.join(argv)}")
    print(f"   ({time.perf_counter() - start:.1f} s)", flush=True)


def run(out: Path) -> None:
    data = out / "data"
    _step("1. synthetic class-conditional dataset (8 classes, 64 px; folders + WebDataset shards)",
          ["data", "synthetic", "--recipe", "configs/data/synthetic-demo.yaml", "--set", f"out={data}"])
    _step("2. read the tar shards back through the training pipeline (counts, skipped files, grid)",
          ["data", "inspect", "--data", str(data / "shards"), "--resolution", "64",
           "--grid", str(out / "shards_grid.png"), "--json", str(out / "shards_report.json")])
    dirty = _make_dirty_copy(data / "images", out / "dirty")
    _step("3. the same pipeline on a folder with a truncated, an empty and a non-image file: skipped and counted",
          ["data", "inspect", "--data", str(dirty), "--resolution", "64"])
    print(f"\nDemo finished. Look at {data / 'preview.png'} and {out / 'shards_grid.png'}.")


def _make_dirty_copy(images: Path, dirty: Path) -> Path:
    """Two classes of good images plus three broken files, to show that bad inputs never stop a run."""
    import shutil

    shutil.rmtree(dirty, ignore_errors=True)
    for class_dir in sorted(images.iterdir())[:2]:
        shutil.copytree(class_dir, dirty / class_dir.name)
    target = sorted(dirty.iterdir())[0]
    good = next(iter(sorted(target.glob("*.png")))).read_bytes()
    (target / "truncated.png").write_bytes(good[: len(good) // 2])
    (target / "empty.png").write_bytes(b"")
    (target / "notes.txt").write_text("not an image")
    return dirty


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the vfmvae end-to-end CPU demo.")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    run(parser.parse_args().out)


if __name__ == "__main__":
    main()
