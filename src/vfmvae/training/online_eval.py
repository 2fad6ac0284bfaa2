"""Evaluation while training: the evaluator that the run hands the EMA model after each step.

    evaluator = build_evaluator(cfg.eval, run_dir, kind="tokenizer", device=device)
    record = evaluator.maybe_run(model=ema_model, step=step, images=images)   # every rank; None when not due

The evaluator owns when and what is kept; its task owns what is measured:

* tokenizer runs: `ReconstructionTask` (eval_reconstruction.py), held-out reconstructions scored as `vfmvae eval
  recon` scores them (rFID, rIS, PSNR, SSIM, LPIPS), plus a fixed reconstruction grid (RUN/eval/grids/);
* diffusion runs: `GenerationTask` (eval_generation.py), samples scored as `vfmvae eval gen` scores them (FID, sFID,
  IS, precision, recall against `eval.ref`).

An evaluation point is due each time the run's image count reaches a multiple of `eval.every_images`. Work is split
across ranks by image index and gathered in index order, so every rank computes the same metrics and the result does
not depend on the number of processes (up to float summation order inside batched kernels). Statistics of the
reference are computed once and cached in RUN/eval/, under a key made from the data and the network weights, so a
changed setting is never mixed with an old cache.

Both tasks call the library functions of the offline commands (`reconstruct_images`, `pixel_metrics`,
`reconstruction_summary`; `VFMVAEPipeline`, `generation_metrics`; `inception_features`; the same weight loaders), so
a logged number equals what `vfmvae eval recon --tokenizer` (or `vfmvae sample` + `vfmvae eval gen`) reports for the
same weights, images and seeds (tests/test_online_offline.py); none of them depends on the batch size.

Evaluation draws only from its own generators (seeded by `derive_seed(eval.seed, ...)`) and restores the global
python/numpy/torch RNG states and every module's train/eval mode afterwards: a run with evaluation on trains the
same weights as one without. Finished evaluation points are appended to RUN/eval/records.jsonl; a resumed run
skips the points found there and keeps them. `eval.keep_best` keeps the best model so far in RUN/best.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from vfmvae import distributed as dist_utils
from vfmvae.checkpoint.atomic import atomic_write_text
from vfmvae.checkpoint.training import capture_rng_state, restore_rng_state
from vfmvae.training.eval_config import BEST_DIR, BEST_MARKER, EVAL_DIR, LOWER_IS_BETTER, RECORDS, EvalConfig
from vfmvae.training.eval_generation import GenerationTask
from vfmvae.training.eval_reconstruction import ReconstructionTask

__all__ = ["GenerationTask", "OnlineEvaluator", "ReconstructionTask", "build_evaluator", "read_eval_records"]


def read_eval_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """Finished evaluation points of a run (RUN/eval/records.jsonl); a line cut by a kill is ignored."""
    path = Path(run_dir) / EVAL_DIR / RECORDS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            out.append(record)
    return out


def _append_record(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, flushed to disk; a torn last line (a kill mid-write) is ended first so this record stays whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record) + "\n").encode()
    with open(path, "ab+") as f:
        if f.seek(0, 2) > 0:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def isolated(*modules: nn.Module) -> Iterator[None]:
    """No gradients; afterwards the global RNG states and every module's train/eval flag are as they were."""
    rng = capture_rng_state()
    modes = [(m, m.training) for module in modules for m in module.modules()]
    try:
        with torch.no_grad():
            yield
    finally:
        restore_rng_state(rng)
        for m, mode in modes:
            m.training = mode


class OnlineEvaluator:
    """Runs its task each time the image count reaches a multiple of `eval.every_images`, appends finished points to
    RUN/eval/records.jsonl and keeps the best model by `eval.keep_best` in RUN/best (see the module docstring)."""

    def __init__(
        self,
        cfg: EvalConfig,
        run_dir: str | Path,
        task: ReconstructionTask | GenerationTask | None,
        save_best: Callable[[nn.Module, Path], None] | None = None,
    ) -> None:
        self.cfg, self.task, self.run_dir = cfg, task, Path(run_dir)
        self.eval_dir = self.run_dir / EVAL_DIR
        self.records_path = self.eval_dir / RECORDS
        self.save_best = save_best or (lambda model, path: model.save_pretrained(path))
        finished = read_eval_records(self.run_dir)
        # evaluation point k is the first step at which the image count reaches k x every_images
        self.finished = {_point(r.get("images"), cfg.every_images) for r in finished}
        self.best = self._best_of(finished)
        self.keep_best = cfg.keep_best
        if task is not None and self.keep_best is not None and self.keep_best not in task.metrics:
            raise ValueError(
                f"eval.keep_best {self.keep_best!r} is not a {task.kind} metric "
                f"(choose one of {', '.join(task.metrics)})"
            )
        if self.keep_best is not None:
            self._check_best_folder()
        message = task.warning() if task is not None else None
        if message and dist_utils.is_main_process():  # one line on stderr, not a Python warning with its source line
            print(f"vfmvae: {message}", file=sys.stderr, flush=True)

    @property
    def active(self) -> bool:
        return self.task is not None and getattr(self.task, "runnable", True)

    def due(self, images: int) -> bool:
        """Whether `images` completes an evaluation point not finished before."""
        point = _point(images, self.cfg.every_images)
        return self.active and point > 0 and point not in self.finished

    def maybe_run(self, *, model: nn.Module, step: int, images: int) -> dict[str, Any] | None:
        """Evaluate `model` if `images` completes an evaluation point not finished before; the record, else None.
        Call it on every rank (they split the work and all return the same record)."""
        if not self.due(images):
            return None
        started = time.perf_counter()
        with isolated(model):
            model.eval()  # e.g. the mapping network tracks its mean w in training mode
            metrics, count = self.task.evaluate(model, step)
        seconds = time.perf_counter() - started
        record: dict[str, Any] = {"step": step, "images": images}
        record.update({f"eval/{k}": v for k, v in metrics.items()})
        record.update(
            {
                "eval/seconds": round(seconds, 3),
                "eval/images_per_s": round(count / max(seconds, 1e-9), 3),
                "eval/protocol": self.task.protocol(),
            }
        )
        if dist_utils.is_main_process():
            if self.keep_best is not None:
                self._maybe_keep_best(model, record)
            _append_record(self.records_path, record)
        self.finished.add(_point(images, self.cfg.every_images))
        dist_utils.barrier()
        return record

    # best model ------------------------------------------------------------------------------------------------

    def _best_of(self, records: list[dict[str, Any]]) -> tuple[int, float] | None:
        metric = self.cfg.keep_best
        values = [(r["step"], r.get(f"eval/{metric}")) for r in records]
        values = [(s, v) for s, v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if metric is None or not values:
            return None
        pick = min if metric in LOWER_IS_BETTER else max
        return pick(values, key=lambda sv: sv[1])

    def _check_best_folder(self) -> None:
        best = self.run_dir / BEST_DIR
        if not best.exists() and dist_utils.is_main_process():
            stranded = sorted(self.run_dir.glob(f".{BEST_DIR}.old-*"))  # a kill between the two renames
            if stranded and (stranded[-1] / BEST_MARKER).is_file():
                os.replace(stranded[-1], best)
        if best.exists() and not (best / BEST_MARKER).is_file():
            raise FileExistsError(
                f"{best} exists and was not written by eval.keep_best (no {BEST_MARKER}); move it "
                "away or set eval.keep_best: null"
            )

    def _maybe_keep_best(self, model: nn.Module, record: dict[str, Any]) -> None:
        metric = self.keep_best
        value = record.get(f"eval/{metric}")
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        if self.best is not None:
            better = value < self.best[1] if metric in LOWER_IS_BETTER else value > self.best[1]
            if not better:
                return
        best = self.run_dir / BEST_DIR
        for stale in self.run_dir.glob(f".{BEST_DIR}.tmp-*"):  # ours, left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.run_dir / f".{BEST_DIR}.tmp-{os.getpid()}"
        self.save_best(model, tmp)
        atomic_write_text(
            tmp / BEST_MARKER,
            json.dumps(
                {
                    "metric": metric,
                    "value": value,
                    "step": record["step"],
                    "images": record["images"],
                    "written_by": "vfmvae online evaluation (eval.keep_best)",
                },
                indent=2,
            )
            + "\n",
        )
        if best.exists():
            old = self.run_dir / f".{BEST_DIR}.old-{os.getpid()}"
            os.replace(best, old)
            os.replace(tmp, best)
            shutil.rmtree(old)
        else:
            os.replace(tmp, best)
        self.best = (record["step"], value)


def _point(images: Any, every_images: int) -> int:
    """The evaluation point that an image count completes (0: none yet); -1 for a record without a count."""
    return images // every_images if isinstance(images, int) else -1


def build_evaluator(
    cfg: EvalConfig | None,
    run_dir: str | Path,
    *,
    kind: Literal["tokenizer", "diffusion"],
    device: torch.device | str = "cpu",
    tokenizer: str | Path | nn.Module | None = None,
    latent_stats: Any = None,
    preset: str | None = None,
    save_best: Callable[[nn.Module, Path], None] | None = None,
) -> OnlineEvaluator:
    """The evaluator of a run (an inactive one when `eval.enabled` is false). Validates the section before any
    training work: missing data, reference or a named weights file stop the run with one line."""
    cfg = cfg or EvalConfig()
    device = torch.device(device)
    task = None
    if cfg.enabled:
        eval_dir = Path(run_dir) / EVAL_DIR
        if kind == "tokenizer":
            task = ReconstructionTask(cfg, eval_dir, device)
        elif kind == "diffusion":
            if tokenizer is None or latent_stats is None:
                raise ValueError("diffusion evaluation needs the run's tokenizer and latent statistics")
            task = GenerationTask(cfg, eval_dir, device, tokenizer=tokenizer, latent_stats=latent_stats, preset=preset)
        else:
            raise ValueError(f"unknown run kind {kind!r}")
    return OnlineEvaluator(cfg, run_dir, task, save_best)
