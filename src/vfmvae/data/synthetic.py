"""A deterministic, class-conditional synthetic image set for demos and tests (no downloads).

Class c is visible at a glance: it fixes a shape (circle, square, triangle, ...), a hue and a
background texture (plain, stripes, checker, dots). Each image then varies position, size, rotation,
colour jitter, background and a little noise, drawn from a generator seeded by (seed, index), so the
same arguments always give byte-identical files, whatever the number of processes.
"""

from __future__ import annotations

import colorsys
import io
import json
import math
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vfmvae.limits import MAX_IMAGE_SIDE

__all__ = ["SyntheticConfig", "class_names", "render_image", "write_synthetic_dataset", "SHAPES", "TEXTURES"]

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "hexagon")
TEXTURES = ("plain", "stripes", "checker", "dots")
_SUPERSAMPLE = 3  # draw at 3x and downsample for anti-aliased edges


@dataclass(frozen=True)
class SyntheticConfig:
    """What `vfmvae data synthetic` writes."""

    out: Path
    num: int = 512
    classes: int = 8
    size: int = 64
    seed: int = 0
    shards: bool = False
    shard_size: int = 128

    def __post_init__(self) -> None:
        if self.num <= 0:
            raise ValueError("num must be positive")
        if not 1 <= self.classes <= len(SHAPES) * len(TEXTURES) * 4:
            raise ValueError(f"classes must be between 1 and {len(SHAPES) * len(TEXTURES) * 4}")
        if not 16 <= self.size <= MAX_IMAGE_SIDE:
            raise ValueError(f"size must be 16 to {MAX_IMAGE_SIDE} pixels, got {self.size}")
        if self.shard_size <= 0:
            raise ValueError("shard_size must be positive")


def _class_style(c: int) -> tuple[str, str, float]:
    shape = SHAPES[c % len(SHAPES)]
    # Texture also cycles with c, so even 8 classes show several textures; (shape, texture) stays unique.
    texture = TEXTURES[(c + c // len(SHAPES)) % len(TEXTURES)]
    hue = (c * 0.618033988749895) % 1.0  # golden-ratio steps keep neighbouring classes' hues apart
    return shape, texture, hue


def class_names(num_classes: int) -> list[str]:
    """Folder names that sort in class order, e.g. '003-diamond-plain'."""
    return [f"{c:03d}-{_class_style(c)[0]}-{_class_style(c)[1]}" for c in range(num_classes)]


def _polygon(
    cx: float, cy: float, r: float, n: int, rot: float, inner: float | None = None
) -> list[tuple[float, float]]:
    pts = []
    steps = n * 2 if inner is not None else n
    for k in range(steps):
        radius = r if inner is None or k % 2 == 0 else r * inner
        a = rot + 2 * math.pi * k / steps
        pts.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
    return pts


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    return tuple(int(round(255 * x)) for x in colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1)))


def render_image(label: int, index: int, size: int, seed: int = 0) -> Image.Image:
    """One RGB image of class `label`; a pure function of its arguments."""
    rng = np.random.default_rng([seed, index, label])
    shape, texture, hue = _class_style(label)
    big = size * _SUPERSAMPLE
    bg_v = rng.uniform(0.15, 0.35) if rng.random() < 0.5 else rng.uniform(0.7, 0.9)
    bg = _rgb(rng.random(), rng.uniform(0.0, 0.15), bg_v)
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    pattern = _rgb(hue + 0.5, 0.35, 1.0 - bg_v)  # texture in a contrasting, class-dependent colour
    period = big / rng.uniform(5, 8)
    if texture == "stripes":
        for k in range(-2, int(big / period) + 3):
            x = k * period
            draw.polygon(
                [(x, 0), (x + period / 2, 0), (x + period / 2 - big * 0.3, big), (x - big * 0.3, big)], fill=pattern
            )
    elif texture == "checker":
        n = int(big / period) + 1
        for i in range(n):
            for j in range(n):
                if (i + j) % 2 == 0:
                    draw.rectangle([i * period, j * period, (i + 1) * period, (j + 1) * period], fill=pattern)
    elif texture == "dots":
        n = int(big / period) + 1
        for i in range(n):
            for j in range(n):
                cx, cy, rr = (i + 0.5) * period, (j + 0.5) * period, period * 0.18
                draw.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=pattern)
    colour = _rgb(hue + rng.normal(0, 0.02), rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0))
    r = big * rng.uniform(0.22, 0.36)
    cx, cy = (big / 2 + rng.uniform(-1, 1) * (big / 2 - r) * 0.8 for _ in range(2))
    rot = rng.uniform(0, 2 * math.pi)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        draw.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=bg)
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, r * 1.1, 4, rot), fill=colour)
    elif shape == "diamond":
        pts = _polygon(cx, cy, r * 1.15, 4, rot)
        draw.polygon(
            [
                (cx + (x - cx) * (0.6 if k % 2 else 1.0), cy + (y - cy) * (0.6 if k % 2 else 1.0))
                for k, (x, y) in enumerate(pts)
            ],
            fill=colour,
        )
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r * 1.2, 3, rot), fill=colour)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r * 1.05, 6, rot), fill=colour)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r * 1.25, 5, rot, inner=0.45), fill=colour)
    elif shape == "cross":
        w = r * 0.38
        for a in (rot, rot + math.pi / 2):
            dx, dy = math.cos(a), math.sin(a)
            px, py = -dy * w, dx * w
            draw.polygon(
                [
                    (cx - dx * r + px, cy - dy * r + py),
                    (cx + dx * r + px, cy + dy * r + py),
                    (cx + dx * r - px, cy + dy * r - py),
                    (cx - dx * r - px, cy - dy * r - py),
                ],
                fill=colour,
            )
    img = img.resize((size, size), resample=Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 4.0, (size, size, 3))
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def _labels(num: int, classes: int, seed: int) -> np.ndarray:
    """Balanced labels (counts differ by at most one) in a seeded order."""
    labels = np.arange(num) % classes
    return np.random.default_rng([seed, 7]).permutation(labels)


def iter_synthetic(cfg: SyntheticConfig) -> Iterator[tuple[int, int, bytes]]:
    """(index, label, PNG bytes) for every image."""
    for index, label in enumerate(_labels(cfg.num, cfg.classes, cfg.seed).tolist()):
        buf = io.BytesIO()
        render_image(label, index, cfg.size, cfg.seed).save(buf, format="PNG", optimize=False, compress_level=6)
        yield index, label, buf.getvalue()


def _remove_previous_synthetic(out: Path) -> None:
    """Files of an earlier synthetic set in `out` would be listed with the new ones: remove exactly those (the files
    its `dataset.json` names); a non-empty folder that is not a synthetic set is refused, nothing deleted."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        old = json.loads((out / "dataset.json").read_text())
        if old.get("kind") != "vfmvae-synthetic":
            raise ValueError
    except (OSError, ValueError):
        raise FileExistsError(
            f"{out} is not empty and is not a synthetic data set of ours (no dataset.json); "
            "refusing to write into it: use a new or empty --out"
        ) from None
    (out / "dataset.json").unlink()
    for name in old.get("class_names", []):
        folder = out / "images" / name
        for f in folder.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"):
            f.unlink()
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    for shard in old.get("shards", []):
        (out / shard).unlink(missing_ok=True)
    (out / "preview.png").unlink(missing_ok=True)


def write_synthetic_dataset(cfg: SyntheticConfig, progress: bool = True) -> dict:
    """Write `out/images/<class>/<index>.png`, optionally `out/shards/*.tar`, and `out/dataset.json`."""
    from tqdm.auto import tqdm

    from vfmvae.checkpoint.atomic import atomic_write_text

    out = Path(cfg.out)
    _remove_previous_synthetic(out)
    names = class_names(cfg.classes)
    for name in names:
        (out / "images" / name).mkdir(parents=True, exist_ok=True)
    records = []
    for index, label, png in tqdm(iter_synthetic(cfg), total=cfg.num, desc="synthetic images", disable=not progress):
        rel = f"images/{names[label]}/{index:06d}.png"
        (out / rel).write_bytes(png)
        records.append((index, label, rel))
    shard_paths = []
    if cfg.shards:
        (out / "shards").mkdir(parents=True, exist_ok=True)
        order = np.random.default_rng([cfg.seed, 11]).permutation(cfg.num).tolist()  # mix classes across shards
        for s, start in enumerate(range(0, cfg.num, cfg.shard_size)):
            path = out / "shards" / f"synthetic-{s:06d}.tar"
            tmp = path.with_suffix(".tar.tmp")
            with tarfile.open(tmp, "w") as tar:
                for index in order[start : start + cfg.shard_size]:
                    _, label, rel = records[index]
                    for ext, data in (("png", (out / rel).read_bytes()), ("cls", str(label).encode())):
                        info = tarfile.TarInfo(f"{index:08d}.{ext}")
                        info.size, info.mtime, info.mode = len(data), 0, 0o644
                        tar.addfile(info, io.BytesIO(data))
            tmp.replace(path)
            shard_paths.append(str(path.relative_to(out)))
    manifest = {
        "kind": "vfmvae-synthetic",
        "num": cfg.num,
        "classes": cfg.classes,
        "class_names": names,
        "size": cfg.size,
        "seed": cfg.seed,
        "images": "images",
        "shards": shard_paths,
    }
    atomic_write_text(out / "dataset.json", json.dumps(manifest, indent=2) + "\n")
    return manifest
