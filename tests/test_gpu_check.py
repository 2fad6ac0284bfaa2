"""`make gpu-check` rehearsed on CPU: benchmarks/gpu_check.py --dry-run runs every row (torchrun with one process,
tokenizer training at stage-0 recipe, latent caching, diffusion training, the REG-SiT step, sampling with both
presets, eval gen) at tiny sizes; and the parts that decide a row's fate (time limits, what a stalled row was
doing, row selection) on their own."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

ROWS = gpu_check.ROWS


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(1800)  # 8 rows of subprocesses; most of the time is process start-up
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
    assert "[tokenizer-stage0] " in proc.stdout  # each command's output is streamed, prefixed with its row


def test_gpu_check_dry_run_of_one_row_streams_its_log_and_reports_it(tmp_path):
    """The cheap rehearsal: the REG-SiT row alone (the tiny architecture on CPU, through the same script)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--dry-run",
            "--rows",
            "reg-sit-xl1",
            "--out",
            str(tmp_path / "work"),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["row"] for r in rows] == ["reg-sit-xl1"], proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.returncode == 0 and rows[0]["pass"] and rows[0]["images_per_s"] > 0, rows
    assert '[reg-sit-xl1]   "arch": "reg-sit-tiny",' in proc.stdout  # its output, streamed as it came
    assert (tmp_path / "work" / "reg-sit-xl1.log").read_text().count('"arch": "reg-sit-tiny"') == 1


def test_gpu_check_without_cuda_says_so_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real check")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--dry-run" in proc.stderr


def test_a_row_with_non_finite_losses_fails_and_reports_no_speed(tmp_path):
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


COMPILE_LOG = """\
12:00:01 INFO vfmvae.training.compile: compiling graph 1 (forward, compile id 0/0)
12:00:09 INFO vfmvae.training.compile: compiled graph 1 (forward) in 8.0 s; 8.0 s in 1 graphs in all
12:00:09 INFO vfmvae.training.compile: compiling graph 2 (backward, compile id 0/0)
12:00:21 INFO vfmvae.training.compile: compiled graph 2 (backward) in 12.5 s; 20.5 s in 2 graphs in all
12:00:22 INFO vfmvae.training.compile: compiling graph 3 (forward, compile id 1/0)
"""


def test_a_stalled_row_says_which_compilation_and_which_step_it_was_in(tmp_path):
    run_dir = tmp_path / "run"
    assert gpu_check.what_it_was_doing(COMPILE_LOG, run_dir) == (
        "compiling graph 3 (forward, compile id 1/0; 2 graphs compiled before it), in training step 1 (0 finished)"
    )
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "images": 8}\n{"step": 2, "images": 16}\n')
    finished = COMPILE_LOG + "12:00:30 INFO vfmvae.training.compile: compiled graph 3 (forward) in 8.0 s; x\n"
    assert gpu_check.what_it_was_doing(finished, run_dir) == "in training step 3 (2 finished)"
    assert gpu_check.what_it_was_doing("loading\nencoding 3/10\n") == "last output: encoding 3/10"
    assert gpu_check.compile_seconds(finished) == 28.5 and gpu_check.compile_seconds("no compile") is None


def test_a_row_past_its_limit_is_stopped_with_its_workers_and_says_so(tmp_path):
    """The command starts a worker (as torchrun does) that keeps the output pipe open: only stopping the whole
    process group ends the row (otherwise this test hangs until pytest's timeout)."""
    worker = "import threading; threading.Event().wait()"
    launcher = (
        "import subprocess, sys, threading; "
        f"subprocess.Popen([sys.executable, '-c', {worker!r}]); "
        "print('compiling graph 1 (forward, compile id 0/0)', flush=True); threading.Event().wait()"
    )
    log = tmp_path / "row.log"
    with pytest.raises(gpu_check.RowFailed, match=r"^timed out after 1 s, .*\(log: .*row\.log\)$"):
        gpu_check._run([sys.executable, "-c", launcher], log, limit=1, row="stuck")
    assert log.read_text().startswith(sys.executable)


def test_rows_run_with_the_rows_they_need_in_order():
    assert gpu_check.with_dependencies(["eval-gen"]) == [
        "tokenizer-stage0",
        "cache-latents",
        "diffusion-xl1",
        "sample-lightningdit",
        "eval-gen",
    ]
    assert gpu_check.with_dependencies(["reg-sit-xl1", "cuda-tests"]) == ["cuda-tests", "reg-sit-xl1"]
    assert gpu_check.with_dependencies(ROWS) == ROWS
    assert sum(gpu_check.ROW_LIMITS[name] for name in ROWS) <= 8 * 60 - 20  # the set-up and every row inside 8 min


def test_the_compile_log_lines_are_the_ones_gpu_check_reads(caplog):
    """training/compile.py's CompileWatch lines, as a real compilation logs them, give gpu_check its compile seconds
    and its 'compiling graph N' for a row stopped mid-compilation."""
    import logging

    import torch

    from vfmvae.training.compile import CompileSettings, compile_regions

    module = torch.nn.Linear(3, 2)
    compile_regions([module], CompileSettings(backend="aot_eager"))
    with caplog.at_level(logging.INFO, logger="vfmvae.training.compile"):
        module(torch.randn(4, 3, requires_grad=True)).sum().backward()  # a forward, then a backward graph
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert text.count("compiling graph") == 2 and text.count("compiled graph") == 2, text
    assert gpu_check.compile_seconds(text) is not None and gpu_check.compile_seconds(text) >= 0
    last_start = text.rindex("compiling graph")
    stalled = text[: text.index("\n", last_start)]  # as if the process stopped while compiling the backward
    assert gpu_check.what_it_was_doing(stalled).startswith("compiling graph ")
    assert "(backward, compile id" in gpu_check.what_it_was_doing(stalled)
