"""The diffusion model's evaluation while training: `eval.num_samples` samples of the EMA model (uniformly random
labels drawn as `vfmvae sample --classes random`, the recipe's sampler preset), decoded by the run's tokenizer and
scored as `vfmvae eval gen` scores them (`generation_metrics`, `inception_features`): FID, sFID, IS, precision and
recall against an ADM reference batch or a folder of reference images (`eval.ref`).

Rank r of W samples images r, r + W, ... (every sample has its own seed, so the images do not depend on the ranks);
Inception features are gathered in index order, so every rank computes the same metrics. The reference batch's
statistics (and its images' features, for precision/recall) are computed once and cached in RUN/eval/.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vfmvae import distributed as dist_utils
from vfmvae.checkpoint.atomic import write_npz_atomic
from vfmvae.checkpoint.digest import file_sha256
from vfmvae.distributed import gather_rows
from vfmvae.evaluation.features import inception_features
from vfmvae.evaluation.generation import generation_metrics, load_reference
from vfmvae.evaluation.images import open_image_set
from vfmvae.evaluation.inception import load_inception
from vfmvae.evaluation.stats import gaussian_stats
from vfmvae.evaluation.weights import random_init_seed
from vfmvae.sampling.generate import class_labels, images_to_uint8
from vfmvae.sampling.pipeline import VFMVAEPipeline
from vfmvae.sampling.presets import resolve_sampler_config
from vfmvae.tokenizer import VFMVAE
from vfmvae.training import eval_networks as networks
from vfmvae.training.eval_config import DIFFUSION_METRICS, EvalConfig

__all__ = ["GenerationTask"]


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
        if cfg.ref is None:
            raise ValueError(
                "eval.ref: an ADM reference batch (.npz) or a folder of reference images is required for diffusion "
                "evaluation (`vfmvae eval ref-stats --data IMAGES --out REF.npz` writes one)"
            )
        if not Path(cfg.ref).exists():
            raise FileNotFoundError(f"eval.ref: reference batch or image folder not found: {cfg.ref}")
        networks.check_weights(cfg.inception, "inception")
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

    # ---- the evaluation -----------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, step: int) -> tuple[dict[str, Any], int]:
        """The metrics of `model` (every rank takes part) and the number of samples they cover."""
        n, net = self.cfg.num_samples, self._net()[0]
        every = {k: gather_rows(v, n).numpy() for k, v in self._sample_features(model, net).items()}
        ref = self._reference_stats(net)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small sample counts: singular covariances (noted in the protocol)
            metrics = generation_metrics(every, ref, ref.get("pool"))  # what `vfmvae eval gen` computes
        return {"is" if k == "inception_score" else k: v for k, v in metrics.items()}, n

    def _sample_features(self, model: nn.Module, net: nn.Module) -> dict[str, torch.Tensor]:
        """Inception features (pool, spatial, logits) of this rank's samples, in index order."""
        n, size = self.cfg.num_samples, self.cfg.batch_size
        tokenizer = self._decoder()
        tokenizer_modes = [(m, m.training) for m in tokenizer.modules()]  # the pipeline sets eval mode
        pipe = VFMVAEPipeline(model, tokenizer, self.stats, preset=self.preset)
        labels = class_labels("random", n, model.config.num_classes, self.cfg.seed)
        mine = list(range(dist_utils.rank(), n, dist_utils.world_size()))
        feats: dict[str, list[torch.Tensor]] = {k: [] for k in networks.FEATURE_WIDTHS}
        for start in range(0, len(mine), size):
            chunk = mine[start : start + size]
            images = pipe([labels[i] for i in chunk], seed=self.cfg.seed, indices=chunk, config=self.sampler)
            u8 = torch.from_numpy(images_to_uint8(images)).permute(0, 3, 1, 2)
            for k, v in inception_features(net, u8, batch_size=size, device=self.device, keys=tuple(feats)).items():
                feats[k].append(v)
        for m, mode in tokenizer_modes:
            m.training = mode
        return {k: networks.cat_rows(v, networks.FEATURE_WIDTHS[k]) for k, v in feats.items()}

    # ---- what is loaded once ------------------------------------------------------------------------------------
    def _net(self) -> tuple[nn.Module, dict[str, Any]]:
        if self._inception is None:
            self._inception = load_inception(self.cfg.inception, self.device)  # also random-init:SEED
        return self._inception

    def _decoder(self) -> nn.Module:
        if not isinstance(self.tokenizer, nn.Module):
            self.tokenizer = VFMVAE.from_pretrained(self.tokenizer, device=self.device)
        return self.tokenizer

    def _reference_stats(self, net: nn.Module) -> dict[str, Any]:
        """The reference's statistics and, for precision/recall, the Inception features of its images: computed once
        (split across ranks) and cached in RUN/eval/ under a key of the file (or the folder's files) and the weights."""
        if self._reference is not None:
            return self._reference
        ref_path = Path(self.cfg.ref)
        if ref_path.is_dir():  # a folder of reference images: statistics and features from its images
            files = open_image_set(ref_path).files
            content = networks.cache_key("folder", [[str(f.relative_to(ref_path)), file_sha256(f)] for f in files])
        else:
            content = file_sha256(ref_path)
        key = networks.cache_key("adm-reference", content, self._net()[1].get("inception_sha256"))
        path = self.eval_dir / f"reference-{key}.npz"
        if path.is_file():
            with np.load(path) as data:
                self._reference = {k: data[k] for k in data.files}
            self._reference.setdefault("pool", None)
            return self._reference
        stored = {"has_images": np.array(True)} if ref_path.is_dir() else load_reference(ref_path)
        ref: dict[str, Any] = {k: stored[k] for k in ("mu", "sigma", "mu_s", "sigma_s") if k in stored}
        ref["pool"] = None
        if bool(stored["has_images"]):
            pool, spatial = self._reference_features(net, ref_path)
            ref["pool"] = pool
            if "mu" not in ref:  # no stored statistics: from the images, as `vfmvae eval gen`
                (ref["mu"], ref["sigma"]), (ref["mu_s"], ref["sigma_s"]) = gaussian_stats(pool), gaussian_stats(spatial)
        elif "mu" not in ref:
            raise ValueError(f"eval.ref {ref_path}: neither statistics (mu, sigma, mu_s, sigma_s) nor images (arr_0)")
        if dist_utils.is_main_process():
            write_npz_atomic(path, **{k: v for k, v in ref.items() if v is not None})
        self._reference = ref
        return ref

    def _reference_features(self, net: nn.Module, ref_path: Path) -> tuple[np.ndarray, np.ndarray]:
        """Pool and spatial Inception features of the reference batch's images, split across ranks by index."""
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
        widths = networks.FEATURE_WIDTHS
        return tuple(gather_rows(networks.cat_rows(mine[k], widths[k]), total).numpy() for k in ("pool", "spatial"))

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
