"""`make gpu-check`: one command that proves the GPU paths on one CUDA GPU (budget: under 8 minutes).

Rows, each printed as one JSON line (row, pass, images_per_s, peak_memory_GiB, mfu, seconds, detail):

  cuda-tests       pytest -m cuda (tests that need a GPU; skipped without one)
  tokenizer-tiny   torchrun --nproc-per-node=1 vfmvae train tokenizer, tiny recipe, NCCL, bf16, torch.compile
  tokenizer-stage0 the same at full size (stage-0 recipe: SigLIP2-L VFM, f16d32 decoder, DINO discriminator,
                   LPIPS, adaptive VF weight) with random weights (nothing is downloaded)
  cache-latents    torchrun vfmvae cache-latents with the stage-0 tokenizer (16x16x32 latents)
  diffusion-xl1    torchrun vfmvae train diffusion, LightningDiT-XL/1, NCCL, bf16, torch.compile; MFU from the
                   FLOPs of one forward + backward (torch's FlopCounterMode) and the accelerator's bf16 peak
  sample           torchrun vfmvae sample (Euler, the XL/1 export decoded by the stage-0 tokenizer)
  eval-gen         vfmvae eval ref-stats + eval gen on the samples (seeded random Inception weights)

A row passes when its command succeeds and its outputs are finite; a row with non-finite outputs fails and
reports no speed. `--dry-run` needs no CUDA: the same rows with tiny sizes on CPU (gloo, fp32, no compile), as
run by the test suite.

    python benchmarks/gpu_check.py                   # on a CUDA machine (make gpu-check)
    python benchmarks/gpu_check.py --dry-run --out runs/gpu-check-dry
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# per mode: data, tokenizer and diffusion sizes. Full: a few steps each, sized for one H100/H200 in < 8 minutes.
SIZES = {
    "full": {
        "images": 256,
        "tiny_batch": 32,
        "tiny_steps": 8,
        "stage0_batch": 8,
        "stage0_steps": 6,
        "dit_recipe": "lightningdit-xl1.yaml",
        "dit_batch": 64,
        "dit_steps": 30,
        "dit_log": 10,
        "samples": 16,
        "sample_steps": 10,
        "precision": "bf16",
        "compile": True,
        "workers": 4,
        "cache_args": [],
    },
    "dry": {
        "images": 16,
        "tiny_batch": 4,
        "tiny_steps": 2,
        "stage0_batch": 2,
        "stage0_steps": 2,
        "dit_recipe": "tiny.yaml",
        "dit_batch": 4,
        "dit_steps": 4,
        "dit_log": 2,
        "samples": 8,
        "sample_steps": 2,
        "precision": "fp32",
        "compile": False,
        "workers": 0,
        "cache_args": ["--vfm-features", "dinov2-test"],
    },  # the tiny recipe's REPA target (a random tiny DINOv2)
}


class RowFailed(Exception):
    pass


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m", "vfmvae", *args]


def _run(cmd: list[str], log: Path, timeout: float) -> str:
    """Run `cmd`, its output streamed into `log` as it comes (so a row that times out leaves what it printed)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as handle:
        handle.write(" ".join(cmd) + "\n\n")
        handle.flush()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RowFailed(f"timed out after {timeout:.0f} s (log: {log})") from None
    output = log.read_text()
    if proc.returncode != 0:
        tail = output.strip().splitlines()[-3:]
        raise RowFailed(f"exit {proc.returncode}: {' | '.join(tail)} (log: {log})")
    return output


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _finite_losses(records: list[dict]) -> None:
    for record in records:
        bad = [k for k, v in record.items() if k.startswith("loss") and isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise RowFailed(f"non-finite {bad} at step {record['step']}")


def _steady_rate(records: list[dict], batch: int) -> float:
    """Images/s after the first logged interval (compilation and warm-up); sec_per_step is cumulative."""
    first, last = records[0], records[-1]
    elapsed = last["sec_per_step"] * last["step"] - first["sec_per_step"] * first["step"]
    return batch * (last["step"] - first["step"]) / elapsed


def _common_sets(run_dir: Path, s: dict) -> list[str]:
    sets = {
        "run.dir": run_dir,
        "run.precision": s["precision"],
        "run.compile": str(s["compile"]).lower(),
        "data.num_workers": s["workers"],
    }
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def _write_random_weights(out: Path) -> dict[str, Path]:
    """A random VGG16 trunk (LPIPS) and seeded random Inception weights with torch-fidelity's keys."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    from vfmvae.evaluation.inception import InceptionV3

    torch.manual_seed(0)
    vgg = {f"features.{k}": v for k, v in torchvision.models.vgg16().features.state_dict().items()}
    save_file(vgg, out / "vgg16-random.safetensors")
    state = {}
    for key, value in InceptionV3().net.state_dict().items():
        if key.endswith("conv.weight"):  # He init and unit batch norm keep activations O(1)
            state[key] = torch.randn(value.shape) * (2.0 / value[0].numel()) ** 0.5
        elif key.endswith(("bn.running_var", "bn.weight")):
            state[key] = torch.ones_like(value)
        elif key.endswith(("bn.running_mean", "bn.bias")):
            state[key] = torch.zeros_like(value)
        else:
            state[key] = torch.randn(value.shape) * 0.02 if value.is_floating_point() else value
    torch.save(state, out / "weights-inception-random.pth")
    return {"vgg": out / "vgg16-random.safetensors", "inception": out / "weights-inception-random.pth"}


def _tiny_model_sets() -> list[str]:
    """The tiny recipe's model and discriminator, as --set overrides of the stage-0 recipe (dry run)."""
    import yaml

    tiny = yaml.safe_load((ROOT / "configs" / "tokenizer" / "tiny.yaml").read_text())
    sets = {"data.resolution": tiny["data"]["resolution"]}
    sets.update({f"model.{k}": v for k, v in tiny["model"].items()})  # model.vfm included: the tiny random VFM
    sets.update({f"disc.{k}": v for k, v in tiny["disc"].items()})
    return [
        a
        for k, v in sets.items()
        for a in ("--set", f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}")
    ]


def _dit_flops_per_image(arch_cache: Path, recipe: Path, device: str) -> float:
    """FLOPs of one forward + backward per latent, as benchmarks/diffusion_train_step.py counts them."""
    import torch
    from common import count_flops

    from vfmvae.config import load_config
    from vfmvae.diffusion import training_loss
    from vfmvae.diffusion_training.config import DiffusionTrainConfig
    from vfmvae.diffusion_training.trainer import build_model
    from vfmvae.latents import LatentDataset

    cfg = load_config(DiffusionTrainConfig, recipe, [f"data.cache={arch_cache}"])
    model = build_model(cfg, LatentDataset(arch_cache)).to(device)
    c, b = model.config, 2
    x = torch.randn(b, c.in_channels, c.input_size, c.input_size, device=device)
    y = torch.zeros(b, dtype=torch.long, device=device)
    transport = replace(cfg.transport, align_weight=0.0, cls_weight=0.0)  # the heads' few FLOPs are left out
    t, noise = torch.rand(b, device=device), torch.randn_like(x)
    flops = count_flops(lambda: training_loss(model, x, y, transport, t=t, noise=noise).loss.mean().backward())
    return flops / b


def run_row(name: str, fn) -> dict:
    """One row: `fn()` returns its figures; a failure (or non-finite outputs, raised as RowFailed) gives pass
    false and no speed."""
    start = time.perf_counter()
    result = {"row": name, "pass": False, "images_per_s": None, "peak_memory_GiB": None, "mfu": None}
    try:
        result.update(fn() or {})
        result["pass"] = True
    except (RowFailed, subprocess.TimeoutExpired, FileNotFoundError, KeyError, ValueError) as err:
        result.update(images_per_s=None, mfu=None, detail=str(err)[-500:])
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def run_rows(out: Path, dry: bool, timeout: float = 600) -> list[dict]:
    import torch
    from common import peak_tflops

    from vfmvae.data.synthetic import SyntheticConfig, write_synthetic_dataset

    s = SIZES["dry" if dry else "full"]
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if dry else "cuda"
    rows: list[dict] = []
    state: dict = {}

    def row(name: str, fn) -> None:
        result = run_row(name, fn)
        print(json.dumps(result), flush=True)
        rows.append(result)

    size = 64 if dry else 256
    write_synthetic_dataset(SyntheticConfig(out=out / "data", num=s["images"], classes=4, size=size), progress=False)
    images = out / "data" / "images"
    weights = _write_random_weights(out)

    def cuda_tests():
        args = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_gpu_paths.py"]
        text = _run(args, out / "cuda-tests.log", timeout)
        return {"detail": text.strip().splitlines()[-1] if text.strip() else ""}

    def tokenizer(name: str, recipe: str, batch: int, steps: int, extra: list[str]):
        run_dir = out / name
        _run(
            _torchrun(
                "train",
                "tokenizer",
                "--recipe",
                str(ROOT / "configs" / "tokenizer" / recipe),
                "--set",
                f"data.source={images}",
                "--set",
                f"run.batch_size={batch}",
                "--set",
                f"run.total_images={batch * steps}",
                "--set",
                f"run.log_every_images={batch}",
                "--set",
                f"run.grid_every_images={batch * 100_000}",
                "--set",
                f"run.checkpoint_every_images={batch * 100_000}",
                *_common_sets(run_dir, s),
                *extra,
            ),
            out / f"{name}.log",
            timeout,
        )
        records = _records(run_dir)
        _finite_losses(records)
        return {
            "images_per_s": round(_steady_rate(records, batch), 2),
            "peak_memory_GiB": records[-1].get("peak_memory_GiB"),
            "steps": records[-1]["step"],
        }

    def stage0():
        extra = [
            "--set",
            "model.vfm.random_init=true",
            "--set",
            "disc.weights=null",
            "--set",
            f"loss.lpips_weights={weights['vgg']}",
            "--set",
            f"data.resolution={size}",
        ]
        if dry:
            extra += _tiny_model_sets()
        result = tokenizer("tokenizer-stage0", "stage0.yaml", s["stage0_batch"], s["stage0_steps"], extra)
        state["tokenizer"] = out / "tokenizer-stage0" / "export"
        return result

    def cache():
        start = time.perf_counter()
        _run(
            _torchrun(
                "cache-latents",
                "--tokenizer",
                str(state["tokenizer"]),
                "--data",
                str(images),
                "--out",
                str(out / "cache"),
                "--batch-size",
                "16",
                "--workers",
                str(s["workers"]),
                "--device",
                device,
                *s["cache_args"],
            ),
            out / "cache-latents.log",
            timeout,
        )
        manifest = json.loads((out / "cache" / "cache.json").read_text())
        if not all(math.isfinite(v) for v in manifest["mean"] + manifest["std"]):
            raise RowFailed("non-finite latent statistics")
        return {
            "images_per_s": round(manifest["num_items"] / (time.perf_counter() - start), 2),
            "detail": f"latents {manifest['latent_shape']}",
        }

    def diffusion():
        run_dir, recipe = out / "diffusion", ROOT / "configs" / "diffusion" / s["dit_recipe"]
        _run(
            _torchrun(
                "train",
                "diffusion",
                "--recipe",
                str(recipe),
                "--set",
                f"data.cache={out / 'cache'}",
                "--set",
                "data.flip=false",
                "--set",
                f"run.batch_size={s['dit_batch']}",
                "--set",
                f"run.total_images={s['dit_steps'] * s['dit_batch']}",
                "--set",
                f"run.log_every_images={s['dit_log'] * s['dit_batch']}",
                "--set",
                "run.grid_every_images=0",
                "--set",
                f"run.checkpoint_every_images={100_000 * s['dit_batch']}",
                *_common_sets(run_dir, s),
            ),
            out / "diffusion.log",
            timeout,
        )
        records = _records(run_dir)
        _finite_losses(records)
        rate = _steady_rate(records, s["dit_batch"])
        flops = _dit_flops_per_image(out / "cache", recipe, device)
        peak = peak_tflops(torch.device(device))
        state["diffusion"] = run_dir / "export"
        return {
            "images_per_s": round(rate, 2),
            "peak_memory_GiB": records[-1].get("peak_memory_GiB"),
            "mfu": round(rate * flops / 1e12 / peak, 4) if peak else None,
            "tflops_per_image": float(f"{flops / 1e12:.4g}"),
        }

    def sample():
        import numpy as np

        text = _run(
            _torchrun(
                "sample",
                "--diffusion",
                str(state["diffusion"]),
                "--num-samples",
                str(s["samples"]),
                "--steps",
                str(s["sample_steps"]),
                "--sampler",
                "euler",
                "--batch-size",
                str(s["samples"]),
                "--out",
                str(out / "samples"),
                "--device",
                device,
            ),
            out / "sample.log",
            timeout,
        )
        arr = np.load(out / "samples" / "samples.npz")["arr_0"]
        if len(arr) != s["samples"] or arr.std() == 0:
            raise RowFailed(f"{len(arr)} samples, std {arr.std():.3f} (non-finite decodes come out constant)")
        rate = re.search(r"\(([\d.]+) images/s", text)
        return {"images_per_s": float(rate.group(1)) if rate else None}

    def eval_gen():
        start = time.perf_counter()
        ref, result = out / "ref.npz", out / "gen.json"
        _run(
            [
                sys.executable,
                "-m",
                "vfmvae",
                "eval",
                "ref-stats",
                "--data",
                str(images),
                "--out",
                str(ref),
                "--inception",
                str(weights["inception"]),
                "--device",
                device,
            ],
            out / "ref-stats.log",
            timeout,
        )
        _run(
            [
                sys.executable,
                "-m",
                "vfmvae",
                "eval",
                "gen",
                "--samples",
                str(out / "samples" / "samples.npz"),
                "--ref",
                str(ref),
                "--inception",
                str(weights["inception"]),
                "--json",
                str(result),
                "--device",
                device,
            ],
            out / "eval-gen.log",
            timeout,
        )
        metrics = json.loads(result.read_text())
        if not all(math.isfinite(metrics[k]) for k in ("fid", "sfid", "inception_score")):
            raise RowFailed(f"non-finite metrics {metrics}")
        return {
            "images_per_s": round((s["images"] + s["samples"]) / (time.perf_counter() - start), 2),
            "detail": f"fid {metrics['fid']:.2f} (random Inception weights: a plumbing check, not a score)",
        }

    row("cuda-tests", cuda_tests)
    row(
        "tokenizer-tiny",
        lambda: tokenizer(
            "tokenizer-tiny", "tiny.yaml", s["tiny_batch"], s["tiny_steps"], ["--set", f"data.resolution={64}"]
        ),
    )
    row("tokenizer-stage0", stage0)
    row("cache-latents", cache)
    row("diffusion-xl1", diffusion)
    row("sample", sample)
    row("eval-gen", eval_gen)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="no CUDA needed: tiny sizes on CPU (gloo, fp32, eager)")
    p.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here, one JSON object a line")
    p.add_argument("--timeout", type=float, default=600, help="seconds per command")
    args = p.parse_args()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device; run on a GPU machine, or pass --dry-run for the CPU rehearsal", file=sys.stderr
        )
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_rows(args.out or Path(tmp), args.dry_run, args.timeout)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
