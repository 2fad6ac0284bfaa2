"""Evaluation while training: the recipe's `eval:` section and the evaluator that the run calls after each step.

    evaluator = build_evaluator(cfg.eval, run_dir, kind="tokenizer", device=device)
    record = evaluator.maybe_run(model=ema_model, step=step, images=images)   # every rank; None when not due

* Tokenizer runs reconstruct a fixed held-out set (`eval.data`) with the EMA under the conventions of
  `vfmvae eval recon` (tianciB/VFM-VAE@b3a752a tools/reconstruct/reconstruct.py + evaluate.py: Resize + CenterCrop,
  a posterior sample, trunc-to-uint8, torch-fidelity rFID/rIS, torchmetrics SSIM on [-1, 1], LPIPS-VGG) and log
  rFID, rIS, PSNR, SSIM and LPIPS, plus a fixed reconstruction grid (RUN/eval/grids/).
* Diffusion runs sample `eval.num_samples` images (uniformly random labels drawn as `vfmvae sample --classes
  random`, the recipe's sampler preset), decode them with the run's tokenizer and log FID, sFID, IS, precision and
  recall against an ADM reference batch (`eval.ref`), as `vfmvae eval gen` computes them.

Both tasks call the library functions of the offline commands (`reconstruct_images`, `pixel_metrics`,
`reconstruction_summary`; `VFMVAEPipeline`, `generation_metrics`; `inception_features`; the same weight loaders), so
a logged number equals what `vfmvae eval recon --tokenizer` (or `vfmvae sample` + `vfmvae eval gen`) reports for the
same weights, images and seeds (tests/test_online_offline.py); none of them depends on the batch size.

Work is split across ranks by image index (rank r of W takes r, r + W, ...); per-image values and Inception
features are gathered in index order, so every rank computes the same metrics and the result does not depend on
the number of processes (up to float summation order inside batched kernels). Statistics of the reference
(the held-out originals, or the reference batch's images) are computed once and cached in RUN/eval/, under a key
made from the data and the network weights, so a changed setting is never mixed with an old cache.

Evaluation draws only from its own generators (seeded by `derive_seed(eval.seed, ...)`) and restores the global
python/numpy/torch RNG states and every module's train/eval mode afterwards: a run with evaluation on trains the
same weights as one without. Finished evaluation points are appended to RUN/eval/records.jsonl; a resumed run
skips the points found there and keeps them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vfmvae import distributed as dist_utils
from vfmvae.checkpoint.atomic import atomic_write_text
from vfmvae.checkpoint.training import capture_rng_state, restore_rng_state
from vfmvae.evaluation.weights import random_init_seed
from vfmvae.training.eval_config import (
    BEST_DIR,
    BEST_MARKER,
    DIFFUSION_METRICS,
    EVAL_DIR,
    LOWER_IS_BETTER,
    RECORDS,
    TOKENIZER_METRICS,
    EvalConfig,
)

__all__ = ["OnlineEvaluator", "build_evaluator", "read_eval_records"]


# ----------------------------------------------------------------------------------------------------------------
# small pieces


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


def gather_rows(local: torch.Tensor, total: int) -> torch.Tensor:
    """Rows of all ranks in global index order, on the CPU. Rank r of W holds the rows of indices r, r + W, ...
    (in that order); every rank receives the whole (total, ...) tensor."""
    world = dist_utils.world_size()
    if world == 1:
        return local.cpu()
    per = -(-total // world)
    device = dist_utils.collective_device()
    padded = torch.zeros((per, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(local)] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        out[r::world] = part[: len(range(r, total, world))].cpu()
    return out


def _pixel_digests(images: torch.Tensor) -> torch.Tensor:
    """A 63-bit digest of every uint8 image's pixels (to key the reference cache by the data itself)."""
    return torch.tensor(
        [
            int.from_bytes(hashlib.sha256(x.contiguous().numpy().tobytes()).digest()[:8], "little") >> 1
            for x in images.cpu()
        ],
        dtype=torch.int64,
    )


def _cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_inception(spec: str, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    from vfmvae.evaluation.inception import load_inception

    return load_inception(spec, device)  # the network `vfmvae eval` loads (also `random-init:SEED`)


def _load_lpips(spec: str, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    from vfmvae.evaluation.image_metrics import load_lpips

    return load_lpips(spec, device)


def _check_weights(spec: str | None, key: str) -> None:
    """A named weights file that is not there stops the run at once (a typo must not silently switch metrics off)."""
    if spec is None or random_init_seed(spec) is not None or spec.startswith(("http://", "https://")):
        return
    if not Path(spec).is_file():
        raise FileNotFoundError(f"eval.{key}: weights file not found: {spec}")


def _cat_rows(parts: list[torch.Tensor], width: int) -> torch.Tensor:
    """The rows of `parts`, or an empty (0, width) block on a rank without images."""
    return torch.cat(parts) if parts else torch.zeros(0, width)


# ----------------------------------------------------------------------------------------------------------------
# the two tasks


class ReconstructionTask:
    """Held-out reconstruction metrics of a tokenizer (the conventions of `vfmvae eval recon`)."""

    kind = "tokenizer"
    metrics = TOKENIZER_METRICS

    def __init__(self, cfg: EvalConfig, eval_dir: Path, device: torch.device) -> None:
        if cfg.data is None:
            raise ValueError("eval.data: a held-out image folder or tar shards is required for tokenizer evaluation")
        if not Path(cfg.data).exists() and "{" not in str(cfg.data):
            raise FileNotFoundError(f"eval.data: held-out images not found: {cfg.data}")
        _check_weights(cfg.inception, "inception")
        _check_weights(cfg.lpips, "lpips")
        self.cfg, self.eval_dir, self.device = cfg, eval_dir, device
        self.skipped = [
            what
            for what, spec in (
                ("rfid and ris (no eval.inception)", cfg.inception),
                ("lpips (no eval.lpips)", cfg.lpips),
            )
            if spec is None
        ]
        self._share: tuple[torch.Tensor, int] | None = None  # (this rank's uint8 images, total)
        self._names: list[str] | None = None  # relative file names of a held-out folder, in index order
        self._reference: dict[str, np.ndarray] | None = None
        self._nets: dict[str, Any] | None = None

    def warning(self) -> str | None:
        return (
            f"online evaluation: {' and '.join(self.skipped)} skipped: give the weight files in the recipe's "
            "eval section"
            if self.skipped
            else None
        )

    def _nets_loaded(self) -> dict[str, Any]:
        if self._nets is None:
            nets, provenance = {}, {}
            if self.cfg.inception is not None:
                nets["inception"], info = _load_inception(self.cfg.inception, self.device)
                provenance.update(info)
            if self.cfg.lpips is not None:
                nets["lpips"], info = _load_lpips(self.cfg.lpips, self.device)
                provenance.update(info)
            self._nets = {**nets, "provenance": provenance}
        return self._nets

    def _held_out(self, resolution: int) -> tuple[torch.Tensor, int]:
        """This rank's share of the held-out set (uint8, loaded once and kept) and the set's size."""
        if self._share is None:
            images, total, self._names = load_held_out(
                self.cfg.data, self.cfg.num_images, resolution, self.cfg.crop, with_names=True
            )
            self._share = (images, total)
            if self._share[1] < 10:
                raise ValueError(
                    f"eval.data {self.cfg.data}: {self._share[1]} images; online evaluation needs at least 10"
                )
        return self._share

    def evaluate(self, model: nn.Module, step: int) -> tuple[dict[str, Any], int]:
        # the functions `vfmvae eval recon --tokenizer` runs, on the images in memory: the same numbers
        from vfmvae.evaluation.features import inception_features
        from vfmvae.evaluation.reconstruction import PER_IMAGE_METRICS, pixel_metrics, reconstruction_summary
        from vfmvae.tokenizer.reconstruct import reconstruct_images

        rank, world = dist_utils.rank(), dist_utils.world_size()
        images, total = self._held_out(model.config.image_size)
        mine = list(range(rank, total, world))
        nets = self._nets_loaded()
        inception, lpips = nets.get("inception"), nets.get("lpips")
        bs = self.cfg.batch_size
        per_image, pool, logits, grid = [], [], [], []
        for start in range(0, len(mine), bs):
            idx = mine[start : start + bs]
            real = images[start : start + bs]
            fake = reconstruct_images(model, real, idx, sample=self.cfg.latent == "sample", seed=self.cfg.seed)
            grid.append(fake[[j for j, i in enumerate(idx) if i < self.cfg.grid]])
            per_image.append(pixel_metrics(real, fake, lpips, self.device))
            if inception is not None:
                feats = inception_features(inception, fake, batch_size=bs, device=self.device, keys=("pool", "logits"))
                pool.append(feats["pool"])
                logits.append(feats["logits"])
        columns = len(PER_IMAGE_METRICS)
        per_image_all = gather_rows(
            torch.cat(per_image) if per_image else torch.zeros(0, columns, dtype=torch.float64), total
        )
        features: dict[str, Any] = {}
        if inception is not None:
            ref = self._reference_stats(inception, images, total)
            features = {
                "pool": gather_rows(_cat_rows(pool, 2048), total).numpy(),
                "logits": gather_rows(_cat_rows(logits, 1008), total).numpy(),
                "reference": (ref["mu"], ref["sigma"]),
                "order": self._fidelity_order(total),
            }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small sets: singular covariances (noted in the protocol)
            summary = reconstruction_summary(per_image_all, lpips=lpips is not None, **features)
        result: dict[str, Any] = {name: summary[name] for name in ("psnr", "ssim", "lpips", "rfid", "ris")}
        if self.cfg.grid:
            self._grid(images, torch.cat(grid) if grid else images[:0], min(self.cfg.grid, total), step)
        return result, total

    def _fidelity_order(self, total: int) -> list[int] | None:
        """rIS reads the reconstructions in the order `eval recon` does: torch-fidelity's listing of the folder that
        `reconstruct` writes (its sorted output names); a tar-shard set keeps its index order."""
        from vfmvae.evaluation.reconstruction import fidelity_order
        from vfmvae.tokenizer.reconstruct import output_names

        if self._names is None:
            return None
        outputs = output_names(self._names)
        return fidelity_order([outputs[name] for name in self._names[:total]])

    def _reference_stats(self, inception: nn.Module, images: torch.Tensor, total: int) -> dict[str, np.ndarray]:
        """Inception statistics of the held-out originals, computed once and cached in RUN/eval/ under a key of
        the pixels, the crop and the Inception weights."""
        if self._reference is not None:
            return self._reference
        from vfmvae.evaluation.features import inception_features
        from vfmvae.evaluation.stats import gaussian_stats

        digests = gather_rows(_pixel_digests(images), total)
        key = _cache_key(
            "held-out",
            digests.tolist(),
            self._nets_loaded()["provenance"].get("inception_sha256"),
            self.cfg.crop,
            list(images.shape[1:]),
        )
        path = self.eval_dir / f"reference-{key}.npz"
        if path.is_file():
            with np.load(path) as data:
                self._reference = {k: data[k] for k in ("mu", "sigma")}
            return self._reference
        kw = {"batch_size": self.cfg.batch_size, "device": self.device, "keys": ("pool",)}
        feats = inception_features(inception, images, **kw)
        mu, sigma = gaussian_stats(gather_rows(feats["pool"], total).numpy())
        self._reference = {"mu": mu, "sigma": sigma}
        if dist_utils.is_main_process():
            from vfmvae.checkpoint.atomic import write_npz_atomic

            write_npz_atomic(path, mu=mu, sigma=sigma)
        return self._reference

    def _grid(self, images: torch.Tensor, recon: torch.Tensor, n: int, step: int) -> None:
        """The first `n` held-out images beside their reconstructions (those of the metrics, gathered from the ranks
        that made them)."""
        from vfmvae.vis import save_grid

        mine = len(range(dist_utils.rank(), n, dist_utils.world_size()))  # indices below n are this rank's first
        real, fake = gather_rows(images[:mine], n), gather_rows(recon[:mine], n)
        if dist_utils.is_main_process():
            pairs = torch.stack([t for pair in zip(real, fake) for t in pair]).float() / 255.0
            save_grid(pairs, self.eval_dir / "grids" / f"step-{step:08d}.png", nrow=min(8, len(pairs)))

    def protocol(self) -> dict[str, Any]:
        nets = self._nets["provenance"] if self._nets else {}
        return {
            "task": "held-out reconstruction (EMA)",
            "data": str(self.cfg.data),
            "num_images": self._share[1] if self._share else self.cfg.num_images,
            "crop": self.cfg.crop,
            "latent": f"posterior {self.cfg.latent}"
            + (
                f" (per-image seeds derive_seed({self.cfg.seed}, 'eval-recon', i))"
                if self.cfg.latent == "sample"
                else ""
            ),
            "convention": "vfmvae eval recon: tianciB/VFM-VAE@b3a752a tools/reconstruct (trunc to uint8, "
            "torch-fidelity rFID/rIS, SSIM data range 2 on [-1, 1], LPIPS-VGG)",
            "rfid_comparable": self.cfg.inception is not None
            and random_init_seed(self.cfg.inception) is None
            and (self._share[1] if self._share else self.cfg.num_images) >= 2048,
            "skipped": self.skipped,
            **nets,
        }


def load_held_out(
    source: str,
    num: int,
    resolution: int,
    crop: str,
    *,
    rank: int | None = None,
    world: int | None = None,
    with_names: bool = False,
) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, list[str] | None]:
    """The first `num` images of a folder (sorted) or of tar shards (in shard order), cropped to `resolution`:
    this rank's share (indices rank, rank + world, ...) as uint8 (n, 3, H, W), and the set's size; `with_names`
    adds the relative file names of the whole set in index order (None for tar shards)."""
    from vfmvae.data import ImageFolderDataset, TarShardDataset, detect_format

    rank = dist_utils.rank() if rank is None else rank
    world = dist_utils.world_size() if world is None else world
    images: list[torch.Tensor] = []

    def bad(item: dict[str, Any]) -> ValueError:
        return ValueError(
            f"eval.data: held-out image {item['name']} cannot be read ({item['reason']}); the "
            "evaluation set must be readable as a whole"
        )

    if detect_format(source) == "folder":
        dataset = ImageFolderDataset(source, resolution, hflip=False, crop=crop)
        total = min(num, len(dataset))
        names = [str(f.relative_to(dataset.root)) for f in dataset.files[:total]]
        for i in range(rank, total, world):
            item = dataset[i]
            if item.get("bad"):
                raise bad(item)
            images.append(item["image"])
    else:
        dataset = TarShardDataset(source, resolution, hflip=False, loop=False, shuffle_shards=False, crop=crop)
        total, names = 0, None
        for item in dataset:
            if total >= num:
                break
            if item.get("bad"):
                raise bad(item)
            if total % world == rank:
                images.append(item["image"])
            total += 1
    empty = torch.zeros((0, 3, resolution, resolution), dtype=torch.uint8)  # more ranks than images
    share = torch.stack(images) if images else empty
    return (share, total, names) if with_names else (share, total)


class GenerationTask:
    """FID, sFID, IS, precision and recall of samples of the EMA (the conventions of `vfmvae eval gen`)."""

    kind = "diffusion"
    metrics = DIFFUSION_METRICS

    def __init__(
        self,
        cfg: EvalConfig,
        eval_dir: Path,
        device: torch.device,
        *,
        tokenizer: str | Path | nn.Module,
        latent_stats: Any,
        preset: str | None,
    ) -> None:
        from vfmvae.sampling.presets import resolve_sampler_config

        if cfg.ref is None:
            raise ValueError(
                "eval.ref: an ADM reference batch (.npz) or a folder of reference images is required for diffusion "
                "evaluation (`vfmvae eval ref-stats --data IMAGES --out REF.npz` writes one)"
            )
        if not Path(cfg.ref).exists():
            raise FileNotFoundError(f"eval.ref: reference batch or image folder not found: {cfg.ref}")
        _check_weights(cfg.inception, "inception")
        try:
            self.sampler = resolve_sampler_config(preset, **cfg.sampler)
        except (TypeError, ValueError) as err:
            raise ValueError(f"eval.sampler: {err}") from None
        self.cfg, self.eval_dir, self.device = cfg, eval_dir, device
        self.tokenizer, self.stats, self.preset = tokenizer, latent_stats, preset
        self.skipped = ["all diffusion metrics (no eval.inception)"] if cfg.inception is None else []
        self._inception: tuple[nn.Module, dict[str, Any]] | None = None
        self._reference: dict[str, Any] | None = None

    def warning(self) -> str | None:
        return (
            "online evaluation: FID, sFID, IS, precision and recall need the Inception weights (eval.inception); "
            "diffusion evaluation is skipped for this run"
            if self.skipped
            else None
        )

    @property
    def runnable(self) -> bool:
        return not self.skipped

    def _net(self) -> tuple[nn.Module, dict[str, Any]]:
        if self._inception is None:
            self._inception = _load_inception(self.cfg.inception, self.device)
        return self._inception

    def _decoder(self) -> nn.Module:
        if not isinstance(self.tokenizer, nn.Module):
            from vfmvae.tokenizer import VFMVAE

            self.tokenizer = VFMVAE.from_pretrained(self.tokenizer, device=self.device)
        return self.tokenizer

    def evaluate(self, model: nn.Module, step: int) -> tuple[dict[str, Any], int]:
        from vfmvae.evaluation.features import inception_features
        from vfmvae.evaluation.generation import generation_metrics
        from vfmvae.sampling.generate import class_labels, images_to_uint8
        from vfmvae.sampling.pipeline import VFMVAEPipeline

        rank, world, n = dist_utils.rank(), dist_utils.world_size(), self.cfg.num_samples
        net, _ = self._net()
        tokenizer = self._decoder()
        tokenizer_modes = [(m, m.training) for m in tokenizer.modules()]
        pipe = VFMVAEPipeline(model, tokenizer, self.stats, preset=self.preset)
        labels = class_labels("random", n, model.config.num_classes, self.cfg.seed)
        mine = list(range(rank, n, world))
        feats: dict[str, list[torch.Tensor]] = {"pool": [], "spatial": [], "logits": []}
        for start in range(0, len(mine), self.cfg.batch_size):
            chunk = mine[start : start + self.cfg.batch_size]
            images = pipe([labels[i] for i in chunk], seed=self.cfg.seed, indices=chunk, config=self.sampler)
            u8 = torch.from_numpy(images_to_uint8(images)).permute(0, 3, 1, 2)
            for k, v in inception_features(net, u8, batch_size=self.cfg.batch_size, device=self.device).items():
                feats[k].append(v)
        for m, mode in tokenizer_modes:
            m.training = mode
        widths = {"pool": 2048, "spatial": 2023, "logits": 1008}
        every = {k: gather_rows(_cat_rows(v, widths[k]), n).numpy() for k, v in feats.items()}
        ref = self._reference_stats(net)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small sample counts: singular covariances (noted in the protocol)
            metrics = generation_metrics(every, ref, ref.get("pool"))  # what `vfmvae eval gen` computes
        result = {"is" if k == "inception_score" else k: v for k, v in metrics.items()}
        return result, n

    def _reference_stats(self, net: nn.Module) -> dict[str, Any]:
        """The reference batch's statistics and, for precision/recall, the Inception features of its images:
        computed once (split across ranks) and cached in RUN/eval/ under a key of the file and the weights."""
        if self._reference is not None:
            return self._reference
        from vfmvae.checkpoint.atomic import write_npz_atomic
        from vfmvae.checkpoint.digest import file_sha256
        from vfmvae.evaluation.features import inception_features
        from vfmvae.evaluation.generation import _load_reference
        from vfmvae.evaluation.images import open_image_set
        from vfmvae.evaluation.stats import gaussian_stats

        ref_path = Path(self.cfg.ref)
        if ref_path.is_dir():  # a folder of reference images: statistics and features from its images
            files = open_image_set(ref_path).files
            content = _cache_key("folder", [[str(f.relative_to(ref_path)), file_sha256(f)] for f in files])
        else:
            content = file_sha256(ref_path)
        key = _cache_key("adm-reference", content, self._net()[1].get("inception_sha256"))
        path = self.eval_dir / f"reference-{key}.npz"
        if path.is_file():
            with np.load(path) as data:
                self._reference = {k: data[k] for k in data.files}
            self._reference.setdefault("pool", None)
            return self._reference
        stored = {"has_images": np.array(True)} if ref_path.is_dir() else _load_reference(ref_path)
        ref: dict[str, Any] = {k: stored[k] for k in ("mu", "sigma", "mu_s", "sigma_s") if k in stored}
        ref["pool"] = None
        if bool(stored["has_images"]):
            image_set = open_image_set(ref_path)
            rank, world, total = dist_utils.rank(), dist_utils.world_size(), len(image_set)
            mine: dict[str, list[torch.Tensor]] = {"pool": [], "spatial": []}
            offset = 0
            for batch in image_set.batches(self.cfg.batch_size):
                rows = [i for i in range(len(batch)) if (offset + i) % world == rank]
                offset += len(batch)
                if rows:
                    x = torch.from_numpy(np.ascontiguousarray(batch[rows])).permute(0, 3, 1, 2)
                    kw = {"batch_size": self.cfg.batch_size, "device": self.device, "keys": tuple(mine)}
                    for k, v in inception_features(net, x, **kw).items():
                        mine[k].append(v)
            pool = gather_rows(_cat_rows(mine["pool"], 2048), total).numpy()
            ref["pool"] = pool
            if "mu" not in ref:  # no stored statistics: from the images, as `vfmvae eval gen`
                spatial = gather_rows(_cat_rows(mine["spatial"], 2023), total).numpy()
                (ref["mu"], ref["sigma"]), (ref["mu_s"], ref["sigma_s"]) = gaussian_stats(pool), gaussian_stats(spatial)
        elif "mu" not in ref:
            raise ValueError(f"eval.ref {ref_path}: neither statistics (mu, sigma, mu_s, sigma_s) nor images (arr_0)")
        if dist_utils.is_main_process():
            write_npz_atomic(path, **{k: v for k, v in ref.items() if v is not None})
        self._reference = ref
        return ref

    def protocol(self) -> dict[str, Any]:
        return {
            "task": "samples of the EMA decoded by the run's tokenizer",
            "ref": str(self.cfg.ref),
            "num_samples": self.cfg.num_samples,
            "labels": f"uniform random, vfmvae.sampling.class_labels('random', seed={self.cfg.seed})",
            "preset": self.preset,
            "sampler": json.loads(json.dumps(asdict(self.sampler))),
            "convention": "vfmvae eval gen: ADM evaluator (FID/sFID stored reference statistics, IS in splits of "
            "5000, precision/recall k=3 against arr_0)",
            "fid_comparable": self.cfg.inception is not None
            and random_init_seed(self.cfg.inception) is None
            and self.cfg.num_samples >= 2048,
            "skipped": self.skipped,
            **(self._inception[1] if self._inception else {}),
        }


# ----------------------------------------------------------------------------------------------------------------
# the evaluator


class OnlineEvaluator:
    """Runs its task every `eval.every` steps, appends finished points to RUN/eval/records.jsonl and keeps the best
    model by `eval.keep_best` in RUN/best (see the module docstring)."""

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
        self.finished = {r["step"] for r in finished}
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

    def due(self, step: int) -> bool:
        return self.active and step > 0 and step % self.cfg.every == 0 and step not in self.finished

    def maybe_run(self, *, model: nn.Module, step: int, images: int) -> dict[str, Any] | None:
        """Evaluate `model` if `step` is an evaluation point not finished before; the record, else None. Call it on
        every rank (they split the work and all return the same record)."""
        if not self.due(step):
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
        self.finished.add(step)
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
