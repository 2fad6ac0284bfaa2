"""`vfmvae sample`: many samples to a folder, split across ranks, resumable, with the ADM `.npz`.

Layout of OUT:

    settings.json       everything that determines the samples (checked on resume: no mixing of settings)
    images/000000.png   one PNG per sample index, written atomically; existing ones are kept on resume
    digests-rNN.txt     the sha256 of every PNG rank NN wrote (checked before packing and scoring; digests.py)
    .lock               held while a `sample` run writes here (a second one is refused)
    samples.npz         arr_0: uint8 (N, H, W, 3), arr_1: int64 labels (N,): the ADM evaluator's layout
    grid.png            the first 64 samples

Sample i has label `labels[i]` and seed (seed, i): its image does not depend on the batch size or the number
of processes (rank r of W draws the indices r, r + W, ...).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vfmvae import distributed as dist_utils
from vfmvae.checkpoint.atomic import atomic_write_text, write_npz_atomic
from vfmvae.checkpoint.digest import file_sha256
from vfmvae.checkpoint.folder_lock import LOCK_NAME, lock_output_folder
from vfmvae.checkpoint.sample_digests import DIGESTS_NOTE, DigestLog, check_sample_bytes, read_digests, sample_name
from vfmvae.data.labels import is_label
from vfmvae.limits import MAX_SAMPLES
from vfmvae.sampling.pipeline import SamplerConfig, VFMVAEPipeline
from vfmvae.seeding import derive_seed

__all__ = ["class_labels", "generate_samples", "write_npz"]

log = logging.getLogger(__name__)
LABEL_SEEDS = 'derive_seed(seed, "labels", i)'  # how `class_labels("random", ...)` seeds label i (in settings.json)


def class_labels(
    spec: str, num: int, num_classes: int, seed: int = 0, class_names: Sequence[str] | None = None
) -> list[int]:
    """`random` (uniform, seeded per index: the official sample.py files draw `torch.randint` labels),
    `balanced` (0, 1, ..., K-1, 0, 1, ...) or a comma list cycled (`1,5,9`, or recorded class names `cats,dogs`).

    Random label i is drawn from its own stream, `derive_seed(seed, "labels", i)`. (It used to be drawn from the seed
    `seed * 1_000_003 + i + 7919`, which is also the noise seed of sample i + 7919; sample folders written then record
    no `label_seeds` in settings.json, so resuming one is refused instead of mixing two label draws.)"""
    if spec == "balanced":
        return [i % num_classes for i in range(num)]
    if spec == "random":
        seeds = (derive_seed(seed, "labels", i) for i in range(num))
        return [int(torch.randint(num_classes, (1,), generator=torch.Generator().manual_seed(s))) for s in seeds]
    from vfmvae.sampling.classes import label_of

    words = [v for v in spec.split(",") if v.strip()]
    if not class_names and any(not is_label(w) for w in words):
        raise ValueError(
            f"--classes {spec!r}: use balanced, random or a comma-separated list of class ids (class names only "
            "for models that record them in class_names.json)"
        )
    values = [label_of(w, class_names) for w in words]
    bad = [v for v in values if not 0 <= v < num_classes]
    if not values or bad:
        raise ValueError(f"--classes {spec!r}: class ids must be in 0..{num_classes - 1} (bad: {bad or 'empty list'})")
    return [values[i % len(values)] for i in range(num)]


UINT8_CONVERSION = "trunc(255 * clamp(x, 0, 1)) in float32, as torchvision to_pil_image in the official decode tool"


def images_to_uint8(images01: torch.Tensor) -> np.ndarray:
    """As tianciB/VFM-VAE@b3a752a tools/decode/decode_latents_to_images.py saves samples: `to_pil_image` of the
    clamped float32 image, i.e. (x * 255).astype(uint8), truncation (not rounding; on average 0.5 levels darker)."""
    return (images01.float().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _write_pngs(images: Path, indices: list[int], arrays: np.ndarray, digests: DigestLog) -> None:
    """One batch of PNGs: written under temporary names, their digests recorded, then renamed into place."""
    tmps = []
    for i, array in zip(indices, arrays):
        tmp = images / f".{sample_name(i)}.tmp-{os.getpid()}"
        Image.fromarray(array).save(tmp, format="PNG")
        tmps.append(tmp)
    digests.record([(i, file_sha256(tmp)) for i, tmp in zip(indices, tmps)])
    for i, tmp in zip(indices, tmps):
        os.replace(tmp, images / sample_name(i))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC; always the last 12 bytes


def _is_whole_png(path: Path) -> bool:
    """A PNG that starts with the signature and ends with IEND: a file cut short (a kill mid-write by an older
    version, a torn disk, a zero-filled tail) fails; two small reads per file, so a resume checks 50k in seconds."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(-len(_PNG_END), os.SEEK_END)
            return head == _PNG_SIGNATURE and f.read() == _PNG_END
    except OSError:  # shorter than the two reads, unreadable
        return False


def write_npz(out: Path, num: int, labels: list[int]) -> Path:
    """Collect images/000000.png ... into the ADM layout (uint8 NHWC `arr_0`, labels `arr_1`); every PNG must be
    the one `sample` recorded (digests-rNN.txt), so no foreign or damaged image is packed."""
    recorded = read_digests(out)

    def read(i: int) -> np.ndarray:
        path = out / "images" / sample_name(i)
        data = path.read_bytes()
        check_sample_bytes(path, data, recorded.get(i))
        try:
            return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        except OSError as err:  # damaged inside, past what the resume check reads: name it, say how to fix it
            raise ValueError(
                f"{path} is damaged ({err}); delete it and re-run the same command to regenerate it"
            ) from None

    first = read(0)
    arr = np.empty((num, *first.shape), dtype=np.uint8)
    for i in range(num):
        arr[i] = read(i)
    return write_npz_atomic(out / "samples.npz", arr_0=arr, arr_1=np.asarray(labels, dtype=np.int64))


def generate_samples(
    pipe: VFMVAEPipeline,
    out: str | Path,
    num: int,
    *,
    config: SamplerConfig | None = None,
    classes: str = "random",
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    sources: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Sample `num` images into `out` (see the module docstring). Collective under torchrun; rank 0 holds the lock of
    `out` while sampling, so a second `sample` into the same folder is refused."""
    if not 1 <= num <= MAX_SAMPLES:
        raise ValueError(f"--num-samples must be in 1..{MAX_SAMPLES:,}, got {num:,}")
    with contextlib.ExitStack() as held:
        return _generate_samples(pipe, Path(out), num, config, classes, seed, batch_size, progress, sources, held)


def _claim_sample_folder(out: Path, settings: dict[str, Any], rank: int, held: contextlib.ExitStack) -> None:
    """Check `out` on every rank (empty, or ours with the same settings but `num`), then rank 0 locks it until `held`
    closes, records the settings and removes the temporary files of a killed run."""
    settings_path = out / "settings.json"
    if (
        not settings_path.is_file()
        and out.is_dir()
        and any(
            entry.name not in ("images", LOCK_NAME) or (entry.is_dir() and any(entry.iterdir()))
            for entry in out.iterdir()
        )
    ):
        raise ValueError(
            f"{out} is not empty and holds no settings.json (not a sample folder of ours); its files "
            "would be mixed with the new samples: use a new or empty --out"
        )
    if settings_path.is_file():  # a resumed run must use the same settings; only `num` may grow
        old = json.loads(settings_path.read_text())
        now = json.loads(json.dumps(settings))  # tuples as lists, as they were stored
        if {k: v for k, v in old.items() if k != "num"} != {k: v for k, v in now.items() if k != "num"}:
            raise ValueError(
                f"{settings_path} was written with other settings; use a new --out or the same options "
                f"(differences: {sorted(k for k in now if old.get(k) != now[k])})"
            )
    if rank == 0:  # checked, so nothing is written into a folder that is refused; then locked as run folders are
        held.callback(lock_output_folder(out, "--out").release)
        (out / "images").mkdir(exist_ok=True)
    dist_utils.barrier()  # every rank has checked the old settings
    if rank == 0:
        atomic_write_text(settings_path, json.dumps(settings, indent=2) + "\n")
        for stale in (out / "images").glob(".*.tmp-*"):  # left by a killed run; never counted as samples
            stale.unlink(missing_ok=True)
    dist_utils.barrier()  # before any rank writes new temporary files


def _samples_to_make(out: Path, num: int, rank: int, world: int) -> list[int]:
    """This rank's sample indices without a whole PNG in `out/images` (missing, or torn by a kill)."""
    ours = [out / "images" / f"{i:06d}.png" for i in range(rank, num, world)]
    torn = {png for png in ours if png.is_file() and not _is_whole_png(png)}
    if torn:  # ours (named by index, in a folder with our settings.json): regenerated, replaced atomically
        log.warning(
            "%d incomplete PNG(s) in %s (e.g. %s) will be regenerated", len(torn), out / "images", min(torn).name
        )
    return [index for index, png in zip(range(rank, num, world), ours) if not png.is_file() or png in torn]


def _generate_samples(
    pipe: VFMVAEPipeline,
    out: Path,
    num: int,
    config: SamplerConfig | None,
    classes: str,
    seed: int,
    batch_size: int,
    progress: bool,
    sources: dict[str, str] | None,
    held: contextlib.ExitStack,
) -> dict[str, Any]:
    config = config if config is not None else SamplerConfig()
    from tqdm.auto import tqdm

    from vfmvae.vis import save_grid

    rank, world = dist_utils.rank(), dist_utils.world_size()
    labels = class_labels(classes, num, pipe.diffusion.config.num_classes, seed, pipe.class_names)
    settings = {
        "num": num,
        "seed": seed,
        "classes": classes,
        "sampler": asdict(config),
        "uint8": UINT8_CONVERSION,
        "png_digests": DIGESTS_NOTE,  # folders written before digests were recorded cannot be resumed
        **({"label_seeds": LABEL_SEEDS} if classes == "random" else {}),
        **(sources or {}),
    }
    _claim_sample_folder(out, settings, rank, held)
    mine = _samples_to_make(out, num, rank, world)
    started, done = time.perf_counter(), 0
    digests = DigestLog(out, rank)
    with (
        contextlib.closing(digests),
        tqdm(total=len(mine), desc="sampling", unit="img", disable=not (progress and rank == 0)) as bar,
    ):
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            images = pipe([labels[i] for i in chunk], seed=seed, indices=chunk, config=config)
            if not torch.isfinite(images).all():  # NaN latent statistics or weights give black images otherwise
                raise ValueError(
                    f"non-finite values in samples {chunk[0]}..{chunk[-1]}; nothing was written for them: "
                    "check the diffusion weights and the latent statistics (mean/std)"
                )
            _write_pngs(out / "images", chunk, images_to_uint8(images), digests)
            done += len(chunk)
            bar.update(len(chunk))
    dist_utils.barrier()
    result = {
        "out": str(out),
        "num": num,
        "new_on_rank0": done if rank == 0 else None,
        "images_per_s": done / max(1e-9, time.perf_counter() - started),
    }
    if rank == 0:
        result["npz"] = str(write_npz(out, num, labels))
        first = torch.from_numpy(np.load(out / "samples.npz")["arr_0"][:64]).permute(0, 3, 1, 2).float() / 255
        save_grid(first, out / "grid.png", nrow=8)
        result["grid"] = str(out / "grid.png")
    dist_utils.barrier()
    return result
