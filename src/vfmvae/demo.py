"""The end-to-end CPU demo behind `make demo`: each step is a `vfmvae` command, printed as it runs.

It grows with the pipeline. Today: the synthetic dataset (folders and tar shards) and its inspection; then,
on held-out synthetic images, the tokenizer path with an UNTRAINED tiny VFM-VAE (the random-weight model
that the official code produced for our parity tests, converted with `vfmvae convert`): reconstruction,
reconstruction metrics and an SE-CKNNA report. Numbers from random weights only show that the tools work.
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
    heldout = out / "heldout"
    _step("4. held-out synthetic images (another seed)",
          ["data", "synthetic", "--out", str(heldout), "--num", "64", "--classes", "8", "--size", "64", "--seed", "1"])
    official = Path("tests/data/official_tokenizer_tiny")
    tokenizer = out / "tokenizer-untrained"
    _step("5. import a VFM-VAE checkpoint in the official format (an UNTRAINED tiny random model, for the demo)",
          ["convert", "official-tokenizer", "--config", str(official / "config.yaml"), "--weights",
           str(official / "official_G.safetensors"), "--vfm", str(official / "siglip2-tiny-patch16"), "--out", str(tokenizer)])
    _step("6. reconstruct the held-out images and measure PSNR/SSIM (rFID and LPIPS need weight files: skipped)",
          ["eval", "recon", "--tokenizer", str(tokenizer), "--data", str(heldout / "images"), "--out", str(out / "recon"),
           "--json", str(out / "recon.json")])
    _step("7. the semantic-equivariant image set for SE-CKNNA",
          ["align", "transforms", "--images", str(heldout / "images"), "--out", str(out / "align"), "--size", "64"])
    config = out / "align_report.yaml"
    config.write_text(f"images: {out / 'align'}\nout: {out / 'align_report'}\nreference: vfm:dinov2-test\n"
                      f"models: [vfm:siglip2-test, 'tokenizer:{tokenizer}']\n")
    _step("8. SE-CKNNA of a tiny random SigLIP2 and the untrained tokenizer against a tiny random DINOv2",
          ["align", "report", "--config", str(config)])
    print(f"\nDemo finished. Look at {data / 'preview.png'}, {out / 'shards_grid.png'}, "
          f"{out / 'recon' / 'comparison.png'} and {out / 'align_report' / 'se_cknna.png'}.")


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
