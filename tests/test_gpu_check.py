"""`make gpu-check` rehearsed on CPU: benchmarks/gpu_check.py --dry-run runs every row (torchrun with one process,
tokenizer training tiny and stage-0 recipes, latent caching, diffusion training, sampling, eval gen) at tiny sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["cuda-tests", "tokenizer-tiny", "tokenizer-stage0", "cache-latents", "diffusion-xl1", "sample", "eval-gen"]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(1800)  # 7 rows of subprocesses; measured 680 s on 2 cores under a load average of 10-13
def test_gpu_check_dry_run_passes_every_row(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--dry-run",
            "--out",
            str(tmp_path / "work"),
            "--json",
            str(tmp_path / "rows.jsonl"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1700,
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["row"] for r in rows] == ROWS, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.returncode == 0 and all(r["pass"] for r in rows), rows
    assert rows == [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    speeds = {r["row"]: r["images_per_s"] for r in rows}
    assert all(speeds[name] > 0 for name in ROWS[1:]), speeds  # every row but the tests reports a speed
    assert "skipped" in rows[0]["detail"] or "deselected" in rows[0]["detail"]  # no CUDA here: the cuda tests skip


def test_gpu_check_without_cuda_says_so_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real check")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--dry-run" in proc.stderr


def test_a_row_with_non_finite_losses_fails_and_reports_no_speed(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import _finite_losses, run_row

    def training_row(records):
        def fn():
            _finite_losses(records)
            return {"images_per_s": 123.0}

        return fn

    good = run_row("x", training_row([{"step": 1, "loss/g": 0.5, "images": 4}]))
    bad = run_row("x", training_row([{"step": 1, "loss/g": 0.5}, {"step": 2, "loss/g": float("nan")}]))
    assert good["pass"] and good["images_per_s"] == 123.0
    assert not bad["pass"] and bad["images_per_s"] is None and "non-finite ['loss/g'] at step 2" in bad["detail"]
