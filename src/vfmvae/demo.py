"""The end-to-end CPU demo behind `make demo`: each step is a `vfmvae` command, printed as it runs.

The whole pipeline at toy size: the synthetic dataset (folders and tar shards) and its inspection; the import
of an official-format checkpoint; a tiny tokenizer trained on CPU around a tiny RANDOM-INIT SigLIP2-architecture
VFM (clearly not the pretrained model); its reconstruction PSNR/SSIM on held-out synthetic images, before and
after training; a latent cache; a tiny LightningDiT with REPA trained on it; class-conditional samples; SE-CKNNA
of the VFMs, the tokenizer and a diffusion block; and an HTML report (`vfmvae report`). Every step is recorded
in OUT/commands.json with its full-scale counterpart.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import time
from pathlib import Path

from vfmvae.cli import main as vfmvae_main

_LOG: list[dict] = []


def _step(title: str, argv: list[str], full_scale: str = "") -> None:
    print(f"\n== {title}\n$ vfmvae {shlex.join(argv)}", flush=True)
    start = time.perf_counter()
    code = vfmvae_main(argv)
    if code:
        raise SystemExit(f"demo step failed with exit code {code}: vfmvae {shlex.join(argv)}")
    seconds = time.perf_counter() - start
    _LOG.append(
        {
            "title": title,
            "command": f"vfmvae {shlex.join(argv)}",
            "full_scale": full_scale,
            "seconds": round(seconds, 1),
        }
    )
    print(f"   ({seconds:.1f} s)", flush=True)


# The same steps at full scale (8 GPUs; paths are placeholders for your data and model folders).
FULL = {
    "tokenizer": "torchrun --nproc-per-node=8 -m vfmvae train tokenizer --recipe configs/tokenizer/stage0.yaml "
    "--set data.source=/data/imagenet-wds/train --set model.vfm.path=/models/siglip2-large-patch16-512 "
    "--set loss.lpips_weights=/models/vgg16-397923af.pth --set disc.weights=/models/dino-vits16.safetensors",
    "recon": "vfmvae eval recon --tokenizer runs/vfmvae-stage3/export --data /data/imagenet/val "
    "--inception /models/pt_inception-2015-12-05.pth --lpips /models/vgg16-397923af.pth --json recon.json",
    "cache": "torchrun --nproc-per-node=8 -m vfmvae cache-latents --tokenizer runs/vfmvae-stage3/export "
    "--data /data/imagenet-wds/train --out runs/imagenet-latents --flip",
    "diffusion": "torchrun --nproc-per-node=8 -m vfmvae train diffusion "
    "--recipe configs/diffusion/lightningdit-xl1.yaml "
    "--set data.cache=runs/imagenet-latents",
    "sample": "torchrun --nproc-per-node=8 -m vfmvae sample --diffusion runs/lightningdit-xl1/export "
    "--num-samples 50000 "
    "--out runs/samples --preset lightningdit",
    "eval": "vfmvae eval gen --samples runs/samples/samples.npz --ref VIRTUAL_imagenet256_labeled.npz "
    "--inception /models/pt_inception-2015-12-05.pth",
}


def run(out: Path, tokenizer_steps: int = 300, diffusion_steps: int = 400) -> None:
    _LOG.clear()
    data = out / "data"
    _step(
        "1. synthetic class-conditional dataset (8 classes, 64 px; folders + WebDataset shards)",
        ["data", "synthetic", "--recipe", "configs/data/synthetic-demo.yaml", "--set", f"out={data}"],
    )
    _step(
        "2. read the tar shards back through the training pipeline (counts, skipped files, grid)",
        [
            "data",
            "inspect",
            "--data",
            str(data / "shards"),
            "--resolution",
            "64",
            "--grid",
            str(out / "shards_grid.png"),
            "--json",
            str(out / "shards_report.json"),
        ],
    )
    dirty = _make_dirty_copy(data / "images", out / "dirty")
    _step(
        "3. the same pipeline on a folder with a truncated, an empty and a non-image file: skipped and counted",
        ["data", "inspect", "--data", str(dirty), "--resolution", "64"],
    )
    heldout = out / "heldout"
    _step(
        "4. held-out synthetic images (another seed)",
        ["data", "synthetic", "--out", str(heldout), "--num", "64", "--classes", "8", "--size", "64", "--seed", "1"],
    )
    reference = _reference_batch(heldout / "images", out / "heldout-ref.npz", 32)
    official = Path("tests/data/official_tokenizer_tiny")
    _step(
        "5. import a checkpoint in the official VFM-VAE format (a tiny random model made by the official code)",
        [
            "convert",
            "official-tokenizer",
            "--config",
            str(official / "config.yaml"),
            "--weights",
            str(official / "official_G.safetensors"),
            "--vfm",
            str(official / "siglip2-tiny-patch16"),
            "--out",
            str(out / "tokenizer-imported"),
        ],
    )
    tokenizer = out / "tokenizer"
    train = [
        "train",
        "tokenizer",
        "--recipe",
        "configs/tokenizer/tiny.yaml",
        "--set",
        f"data.source={data / 'images'}",
        "--set",
        f"run.dir={tokenizer}",
    ]
    _step(
        "6. the untrained starting point (0 steps), for comparison",
        train[:-1] + [f"run.dir={out / 'tokenizer-step0'}", "--set", "run.total_images=0"],
    )
    evaluate, note = _evaluation(
        tokenizer_steps,
        8,  # the tiny recipe's batch
        3,
        "16 held-out images (RANDOM-INIT Inception/LPIPS)",
        f"eval.data={heldout / 'images'}",
        "eval.num_images=16",
        "eval.lpips=random-init:0",
    )
    _step(
        f"7. train a tiny tokenizer for {tokenizer_steps} steps (stage-0 style; tiny RANDOM-INIT SigLIP2-architecture "
        f"VFM, not pretrained){note}",
        train + ["--set", f"run.total_images={8 * tokenizer_steps}", *evaluate],
        FULL["tokenizer"],
    )
    psnr = {}
    for name, folder in (("before", out / "tokenizer-step0"), ("after", tokenizer)):
        shutil.rmtree(out / f"recon-{name}", ignore_errors=True)  # the demo's own earlier reconstructions (a re-run)
        _step(
            f"8. reconstruction metrics on held-out images, {name} training (rFID/LPIPS need weight files: skipped)",
            [
                "eval",
                "recon",
                "--tokenizer",
                str(folder / "export"),
                "--data",
                str(heldout / "images"),
                "--out",
                str(out / f"recon-{name}"),
                "--json",
                str(out / f"recon-{name}.json"),
                "--mode",
            ],
            FULL["recon"],
        )
        psnr[name] = json.loads((out / f"recon-{name}.json").read_text())["psnr"]
    print(
        f"\n   held-out PSNR: {psnr['before']:.2f} dB before, {psnr['after']:.2f} dB after {tokenizer_steps} steps "
        f"({psnr['after'] - psnr['before']:+.2f} dB)"
    )
    latents, diffusion, samples = out / "latents", out / "diffusion", out / "samples"
    _step(
        "9. encode the training images into a latent cache (with flips and tiny-DINOv2 features for REPA)",
        [
            "cache-latents",
            "--tokenizer",
            str(tokenizer / "export"),
            "--data",
            str(data / "images"),
            "--out",
            str(latents),
            "--flip",
            "--vfm-features",
            "dinov2-test",
            "--workers",
            "0",
        ],
        FULL["cache"],
    )
    evaluate, note = _evaluation(
        diffusion_steps,
        32,  # the tiny recipe's batch
        4,
        "FID etc. of 16 samples against 32 held-out images (RANDOM-INIT Inception)",
        f"eval.ref={reference}",
        "eval.num_samples=16",
    )
    _step(
        f"10. train a tiny LightningDiT with REPA on the latents ({diffusion_steps} steps){note}",
        [
            "train",
            "diffusion",
            "--recipe",
            "configs/diffusion/tiny.yaml",
            "--set",
            f"data.cache={latents}",
            "--set",
            f"run.dir={diffusion}",
            "--set",
            f"run.total_images={32 * diffusion_steps}",
            *evaluate,
        ],
        FULL["diffusion"],
    )
    _step(
        "11. class-conditional samples (8 per class, Euler, 25 steps, guidance 2): PNGs, ADM .npz, grid",
        [
            "sample",
            "--diffusion",
            str(diffusion / "export"),
            "--num-samples",
            "64",
            "--out",
            str(samples),
            "--steps",
            "25",
            "--cfg",
            "2",
            "--batch-size",
            "32",
            "--classes",
            "balanced",
        ],
        FULL["sample"],
    )
    _step(
        "12. the semantic-equivariant image set for SE-CKNNA",
        ["align", "transforms", "--data", str(heldout / "images"), "--out", str(out / "align"), "--size", "64"],
    )
    config = out / "align_report.yaml"
    config.write_text(
        f"images: {out / 'align'}\nout: {out / 'align_report'}\nreference: vfm:dinov2-test\n"
        f"models: [vfm:siglip2-test, 'tokenizer:{tokenizer / 'export'}', 'diffusion:{diffusion / 'export'}@1']\n"
        "transformations: [clean, equivariance, noise_0.100, noise_0.200]\n"
    )
    _step(
        "13. SE-CKNNA of a tiny random SigLIP2, the tokenizer latents and diffusion block 1 "
        "against a tiny random DINOv2",
        ["align", "report", "--recipe", str(config)],
    )
    (out / "commands.json").write_text(json.dumps(_LOG, indent=2) + "\n")
    _step("14. the HTML report of everything above", ["report", str(out)])
    print(
        f"\nDemo finished: open {out / 'report' / 'index.html'} (held-out PSNR {psnr['before']:.2f} -> "
        f"{psnr['after']:.2f} dB). Grids: {out / 'recon-after' / 'comparison.png'}, {samples / 'grid.png'}, "
        f"{out / 'align_report' / 'se_cknna.png'}."
    )


MIN_EVAL_STEPS = 10


def _evaluation(steps: int, batch_size: int, points: int, what: str, *settings: str) -> tuple[list[str], str]:
    """`--set` options for evaluation while training, `points` times over `steps` of `batch_size` images (the
    cadence is in images), with a seeded RANDOM-INIT Inception
    (the curves show the pipeline working; the values compare with nothing, and the report says so), and a note for
    the step's title. None for a run of fewer than MIN_EVAL_STEPS steps (a wiring check such as tests/test_demo.py:
    a curve needs points, and the Inception alone costs more than such a run)."""
    if steps < MIN_EVAL_STEPS:
        return [], ""
    every = steps // points
    options = [
        "eval.enabled=true",
        "eval.inception=random-init:0",
        f"eval.every_images={every * batch_size}",
        *settings,
    ]
    return [arg for option in options for arg in ("--set", option)], f"; evaluated every {every} steps: {what}"


def _reference_batch(images: Path, path: Path, count: int) -> Path:
    """The first `count` held-out images as an ADM-layout reference batch (arr_0 only: the evaluator computes the
    statistics with its own Inception)."""
    from vfmvae.checkpoint.atomic import write_npz_atomic
    from vfmvae.evaluation.images import open_image_set

    arr = next(open_image_set(images).batches(count))
    print(f"\n   reference batch for evaluation while training: {path} ({len(arr)} held-out images)", flush=True)
    return write_npz_atomic(path, arr_0=arr)


def _make_dirty_copy(images: Path, dirty: Path) -> Path:
    """Two classes of good images plus three broken files, to show that bad inputs never stop a run."""
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
    parser.add_argument("--tokenizer-steps", type=int, default=300, help="tiny tokenizer training steps (default 300)")
    parser.add_argument("--diffusion-steps", type=int, default=400, help="tiny diffusion training steps (default 400)")
    args = parser.parse_args()
    run(args.out, args.tokenizer_steps, args.diffusion_steps)


if __name__ == "__main__":
    main()
