"""`make gpu-check`: one command that proves the GPU paths on one CUDA GPU (budget: under 8 minutes).

Rows, each printed as one JSON line (row, pass, images_per_s, peak_memory_GiB, mfu, compile_s, seconds, detail):

  cuda-tests          pytest -m cuda (tests that need a GPU; skipped without one)
  tokenizer-stage0    torchrun --nproc-per-node=1 vfmvae train tokenizer, stage-0 recipe at full size (SigLIP2-L
                      VFM, f16d32 decoder, DINO discriminator, LPIPS, adaptive VF weight) with random weights
                      (nothing is downloaded), NCCL, bf16, run.compile
  cache-latents       torchrun vfmvae cache-latents with the stage-0 tokenizer (16x16x32 latents)
  diffusion-xl1       torchrun vfmvae train diffusion, LightningDiT-XL/1, NCCL, bf16, run.compile; MFU from the
                      FLOPs of one forward + backward (torch's FlopCounterMode) and the accelerator's bf16 peak
  reg-sit-xl1         REG-SiT-XL/1's training step (benchmarks/diffusion_train_step.py: the trainer's loss, fused
                      AdamW, EMA, regional compile, bf16) on random latents and REG targets; latents/s, MFU
  sample-lightningdit torchrun vfmvae sample --preset lightningdit (the XL/1 export, decoded by the stage-0
                      tokenizer); images/s, and the hours for 50,000 samples at that rate
  sample-reg-sde      the same with --preset reg-sde on a random REG-SiT-XL/1 export
  eval-gen            vfmvae eval ref-stats, then eval gen on 50,000 images (the samples tiled; seeded random
                      Inception weights): seconds

A row passes when its command succeeds and its outputs are finite; a row with non-finite outputs fails and
reports no speed. Every row has a time limit (ROW_LIMITS, `--limit-scale`); a row past it is stopped (its whole
process group) and reported with what it was doing: the compilation in progress (training/compile.py logs each
one) or the step it was in. Each command's output is streamed to the console, prefixed with its row, and to
OUT/ROW.log. `compile_s` sums the compilations the row's log reports.

`--dry-run` needs no CUDA: the same rows with tiny sizes on CPU (gloo, fp32, no compile), as run by the test suite;
`--rows` runs some rows only (those they depend on run first).

    python benchmarks/gpu_check.py                   # on a CUDA machine (make gpu-check)
    python benchmarks/gpu_check.py --dry-run --out runs/gpu-check-dry
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# per mode: data, tokenizer and diffusion sizes. Full: a few steps each, sized for one H100/H200 in < 8 minutes.
SIZES = {
    "full": {
        "images": 256,
        "stage0_batch": 8,
        "stage0_steps": 6,
        "dit_recipe": "lightningdit-xl1.yaml",
        "dit_batch": 64,
        "dit_steps": 30,
        "dit_log": 10,
        "reg_arch": "reg-sit-xl/1",
        "reg_batch": 64,
        "reg_steps": 10,
        "samples": 32,
        "sample_steps": None,  # the preset's (249 Euler steps, 250 SDE steps)
        "eval_images": 50_000,
        "precision": "bf16",
        "compile": True,
        "workers": 4,
        "cache_args": [],
    },
    "dry": {
        "images": 16,
        "stage0_batch": 2,
        "stage0_steps": 2,
        "dit_recipe": "tiny.yaml",
        "dit_batch": 4,
        "dit_steps": 4,
        "dit_log": 2,
        "reg_arch": "reg-sit-tiny",
        "reg_batch": 4,
        "reg_steps": 2,
        "samples": 8,
        "sample_steps": 2,
        "eval_images": 64,
        "precision": "fp32",
        "compile": False,
        "workers": 0,
        "cache_args": ["--vfm-features", "dinov2-test"],
    },  # the tiny recipe's REPA target (a random tiny DINOv2)
}


ROWS = [
    "cuda-tests",
    "tokenizer-stage0",
    "cache-latents",
    "diffusion-xl1",
    "reg-sit-xl1",
    "sample-lightningdit",
    "sample-reg-sde",
    "eval-gen",
]
# what a row needs from the rows before it
NEEDS = {
    "cache-latents": ["tokenizer-stage0"],
    "diffusion-xl1": ["cache-latents"],
    "sample-lightningdit": ["diffusion-xl1"],
    "sample-reg-sde": ["diffusion-xl1"],
    "eval-gen": ["sample-lightningdit"],
}
# seconds per row on one H100/H200: 460 s in all, so that even a row that stalls leaves the check inside about
# 8 minutes with the set-up. Design targets (no GPU run has measured them yet: docs/benchmarks.md); --limit-scale
# scales them.
ROW_LIMITS = {
    "cuda-tests": 40,
    "tokenizer-stage0": 110,
    "cache-latents": 30,
    "diffusion-xl1": 90,
    "reg-sit-xl1": 60,
    "sample-lightningdit": 35,
    "sample-reg-sde": 35,
    "eval-gen": 60,
}


class RowFailed(Exception):
    pass


def with_dependencies(rows: list[str]) -> list[str]:
    """`rows` and every row they need, in the check's order."""
    wanted = set(rows)
    for name in reversed(ROWS):
        if name in wanted:
            wanted.update(NEEDS.get(name, []))
    return [name for name in ROWS if name in wanted]


_COMPILING = re.compile(r"compiling graph (\d+) \(([^)]*)\)")
_COMPILED = re.compile(r"compiled graph (\d+) \(([^)]*)\) in ([\d.]+) s")


def compile_seconds(log_text: str) -> float | None:
    """The seconds of the compilations a log reports (training/compile.py CompileWatch lines); None if none."""
    seconds = [float(match.group(3)) for match in _COMPILED.finditer(log_text)]
    return round(sum(seconds), 1) if seconds else None


def what_it_was_doing(log_text: str, run_dir: Path | None = None) -> str:
    """For a row stopped at its time limit: the compilation in progress (a 'compiling graph N' line with no
    'compiled graph N' after it) and the training step it was in (from RUN/metrics.jsonl, logged every step),
    else the log's last line."""
    started = list(_COMPILING.finditer(log_text))
    finished = {match.group(1) for match in _COMPILED.finditer(log_text)}
    parts = []
    if started and started[-1].group(1) not in finished:
        graph, what = started[-1].group(1), started[-1].group(2)
        parts.append(f"compiling graph {graph} ({what}; {len(finished)} graphs compiled before it)")
    if run_dir is not None:
        steps = 0
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file():
            lines = [line for line in metrics.read_text().splitlines() if line.strip()]
            steps = json.loads(lines[-1])["step"] if lines else 0
        parts.append(f"in training step {steps + 1} ({steps} finished)")
    if not parts:
        lines = [line.strip() for line in log_text.splitlines() if line.strip()]
        parts.append(f"last output: {lines[-1][:200]}" if lines else "no output yet")
    return ", ".join(parts)


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m", "vfmvae", *args]


def _run(cmd: list[str], log: Path, limit: float, row: str = "", run_dir: Path | None = None) -> str:
    """Run `cmd` in its own process group, its output streamed line by line to `log` and to the console (prefixed
    with the row). Past `limit` seconds the whole group is stopped (torchrun's workers included) and the row fails
    with what it was doing (`what_it_was_doing`)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as handle:
        handle.write(" ".join(cmd) + "\n\n")
        handle.flush()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )

        def stream() -> None:
            for line in proc.stdout:
                handle.write(line)
                handle.flush()
                print(f"[{row}] {line}", end="", flush=True)

        reader = threading.Thread(target=stream, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this Popen started, nothing else
            proc.wait()
            reader.join()
            doing = what_it_was_doing(log.read_text(), run_dir)
            raise RowFailed(f"timed out after {limit:.0f} s, {doing} (log: {log})") from None
        reader.join()
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


def _dit_flops_per_image(export: Path) -> float:
    """FLOPs of one forward + backward per latent of an exported diffusion model, counted from its architecture
    (benchmarks/flops.py: torch's FlopCounterMode misses attention on some backends)."""
    from flops import dit_training_flops

    from vfmvae.diffusion import DiffusionTransformer

    return dit_training_flops(DiffusionTransformer.from_pretrained(export).config).training


def _random_reg_export(lightningdit_export: Path, arch: str, out: Path) -> Path:
    """A REG-SiT export for the reg-sde sampler: the LightningDiT export's latent statistics, tokenizer and class
    names with a random REG-SiT of the same latent shape and classes (small random weights: the zero-initialised
    output layers would give constant samples)."""
    import shutil

    import torch

    from vfmvae.diffusion import DiffusionTransformer, create_diffusion_model

    source = DiffusionTransformer.from_pretrained(lightningdit_export).config
    if out.exists():
        shutil.rmtree(out)  # ours: written by an earlier run of this check into its own working folder
    shutil.copytree(lightningdit_export, out)
    torch.manual_seed(0)
    model = create_diffusion_model(
        arch, in_channels=source.in_channels, input_size=source.input_size, num_classes=source.num_classes
    )
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    model.save_pretrained(out)
    return out


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


def run_rows(out: Path, dry: bool, rows: list[str] | None = None, limit_scale: float = 1.0) -> list[dict]:
    import torch
    from common import peak_tflops

    from vfmvae.data.synthetic import SyntheticConfig, write_synthetic_dataset

    s = SIZES["dry" if dry else "full"]
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if dry else "cuda"
    peak = peak_tflops(torch.device(device))
    results: list[dict] = []
    state: dict = {}

    def limit(name: str) -> float:
        return ROW_LIMITS[name] * limit_scale

    size = 64 if dry else 256
    write_synthetic_dataset(SyntheticConfig(out=out / "data", num=s["images"], classes=4, size=size), progress=False)
    images = out / "data" / "images"
    weights = _write_random_weights(out)

    def cuda_tests():
        args = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_gpu_paths.py"]
        text = _run(args, out / "cuda-tests.log", limit("cuda-tests"), "cuda-tests")
        return {"detail": text.strip().splitlines()[-1] if text.strip() else ""}

    def stage0():
        name, run_dir, batch = "tokenizer-stage0", out / "tokenizer-stage0", s["stage0_batch"]
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
        cmd = _torchrun(
            "train",
            "tokenizer",
            "--recipe",
            str(ROOT / "configs" / "tokenizer" / "stage0.yaml"),
            "--set",
            f"data.source={images}",
            "--set",
            f"run.batch_size={batch}",
            "--set",
            f"run.total_images={batch * s['stage0_steps']}",
            "--set",
            f"run.log_every_images={batch}",  # every step
            "--set",
            f"run.grid_every_images={batch * 100_000}",
            "--set",
            f"run.checkpoint_every_images={batch * 100_000}",
            *_common_sets(run_dir, s),
            *extra,
        )
        text = _run(cmd, out / f"{name}.log", limit(name), name, run_dir)
        records = _records(run_dir)
        _finite_losses(records)
        state["tokenizer"] = run_dir / "export"
        return {
            "images_per_s": round(_steady_rate(records, batch), 2),
            "peak_memory_GiB": records[-1].get("peak_memory_GiB"),
            "compile_s": compile_seconds(text),
            "steps": records[-1]["step"],
        }

    def cache():
        start = time.perf_counter()
        cmd = _torchrun(
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
        )
        _run(cmd, out / "cache-latents.log", limit("cache-latents"), "cache-latents")
        manifest = json.loads((out / "cache" / "cache.json").read_text())
        if not all(math.isfinite(v) for v in manifest["mean"] + manifest["std"]):
            raise RowFailed("non-finite latent statistics")
        return {
            "images_per_s": round(manifest["num_items"] / (time.perf_counter() - start), 2),
            "detail": f"latents {manifest['latent_shape']}",
        }

    def diffusion():
        run_dir, recipe = out / "diffusion", ROOT / "configs" / "diffusion" / s["dit_recipe"]
        cmd = _torchrun(
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
        )
        text = _run(cmd, out / "diffusion.log", limit("diffusion-xl1"), "diffusion-xl1", run_dir)
        records = _records(run_dir)
        _finite_losses(records)
        rate = _steady_rate(records, s["dit_batch"])
        state["diffusion"] = run_dir / "export"
        flops = _dit_flops_per_image(state["diffusion"])
        return {
            "images_per_s": round(rate, 2),
            "peak_memory_GiB": records[-1].get("peak_memory_GiB"),
            "mfu": round(rate * flops / 1e12 / peak, 4) if peak else None,
            "compile_s": compile_seconds(text),
            "tflops_per_image": float(f"{flops / 1e12:.4g}"),
        }

    def reg_step():
        result_file = out / "reg-sit-xl1.json"
        cmd = [
            sys.executable,
            str(ROOT / "benchmarks" / "diffusion_train_step.py"),
            "--arch",
            s["reg_arch"],
            "--batch",
            str(s["reg_batch"]),
            "--steps",
            str(s["reg_steps"]),
            "--device",
            device,
            "--precision",
            s["precision"],
            "--json",
            str(result_file),
            *(["--compile"] if s["compile"] else []),
        ]
        _run(cmd, out / "reg-sit-xl1.log", limit("reg-sit-xl1"), "reg-sit-xl1")
        result = json.loads(result_file.read_text())
        if not math.isfinite(result["loss"]):
            raise RowFailed(f"non-finite loss {result['loss']}")
        return {
            "images_per_s": result["latents_per_s"],
            "peak_memory_GiB": result.get("peak_memory_GiB"),
            "mfu": result["mfu"],
            "compile_s": result["compile_s"],
            "tflops_per_image": result["tflops_per_latent"],
        }

    def sample(preset: str):
        import numpy as np

        name = f"sample-{preset}"
        export = state["diffusion"]
        if preset == "reg-sde":
            export = _random_reg_export(state["diffusion"], s["reg_arch"], out / "reg-export")
        folder = out / f"samples-{preset}"
        steps = ["--steps", str(s["sample_steps"])] if s["sample_steps"] else []
        cmd = _torchrun(
            "sample",
            "--diffusion",
            str(export),
            "--preset",
            preset,
            *steps,
            "--num-samples",
            str(s["samples"]),
            "--batch-size",
            str(s["samples"]),
            "--out",
            str(folder),
            "--device",
            device,
        )
        text = _run(cmd, out / f"{name}.log", limit(name), name)
        arr = np.load(folder / "samples.npz")["arr_0"]
        if len(arr) != s["samples"] or arr.std() == 0:
            raise RowFailed(f"{len(arr)} samples, std {arr.std():.3f} (non-finite decodes come out constant)")
        state.setdefault("samples", folder / "samples.npz")
        found = re.search(r"\(([\d.]+) images/s", text)
        rate = float(found.group(1)) if found else None
        return {
            "images_per_s": rate,
            "detail": f"50,000 samples: {50_000 / rate / 3600:.2f} h at this rate on this device" if rate else "",
        }

    def eval_gen():
        import numpy as np

        from vfmvae.checkpoint.atomic import write_npz_atomic

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
            limit("eval-gen"),
            "eval-gen",
        )
        # the samples tiled to eval_images (Inception's cost depends on the count, not on the content)
        samples = np.load(state["samples"])["arr_0"]
        tiled = out / "samples-eval.npz"
        write_npz_atomic(tiled, arr_0=np.resize(samples, (s["eval_images"], *samples.shape[1:])))
        start = time.perf_counter()
        _run(
            [
                sys.executable,
                "-m",
                "vfmvae",
                "eval",
                "gen",
                "--samples",
                str(tiled),
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
            limit("eval-gen"),
            "eval-gen",
        )
        seconds = time.perf_counter() - start
        metrics = json.loads(result.read_text())
        if not all(math.isfinite(metrics[k]) for k in ("fid", "sfid", "inception_score")):
            raise RowFailed(f"non-finite metrics {metrics}")
        return {
            "images_per_s": round(s["eval_images"] / seconds, 2),
            "detail": f"eval gen on {s['eval_images']:,} images: {seconds:.1f} s; fid {metrics['fid']:.2f} "
            "(random Inception weights: a plumbing check, not a score)",
        }

    functions = {
        "cuda-tests": cuda_tests,
        "tokenizer-stage0": stage0,
        "cache-latents": cache,
        "diffusion-xl1": diffusion,
        "reg-sit-xl1": reg_step,
        "sample-lightningdit": lambda: sample("lightningdit"),
        "sample-reg-sde": lambda: sample("reg-sde"),
        "eval-gen": eval_gen,
    }
    failed: set[str] = set()
    for name in with_dependencies(rows or ROWS):
        missing = [need for need in NEEDS.get(name, []) if need in failed]
        if missing:
            result = {"row": name, "pass": False, "images_per_s": None, "peak_memory_GiB": None, "mfu": None}
            result.update(detail=f"not run: needs {', '.join(missing)}", seconds=0.0)
        else:
            print(f"gpu_check: {name} (limit {limit(name):.0f} s)", flush=True)
            result = run_row(name, functions[name])
        if not result["pass"]:
            failed.add(name)
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="no CUDA needed: tiny sizes on CPU (gloo, fp32, eager)")
    p.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here, one JSON object a line")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=None, help="these rows (and those they need) only")
    p.add_argument(
        "--limit-scale",
        type=float,
        default=None,
        help="multiply each row's time limit (default 1; 20 with --dry-run)",
    )
    args = p.parse_args()
    scale = args.limit_scale if args.limit_scale is not None else (20.0 if args.dry_run else 1.0)
    if not scale > 0:
        p.error("--limit-scale must be positive")
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device; run on a GPU machine, or pass --dry-run for the CPU rehearsal", file=sys.stderr
        )
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_rows(args.out or Path(tmp), args.dry_run, args.rows, scale)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
