"""Decoding images defensively: a bad file is reported and counted, never a crash hours into a run.

`decode_image` turns bytes or a path into an RGB PIL image or raises `BadImage` with a short reason
(zero-byte, truncated, not an image, too large, too small). `SkipCounter` tallies those reasons and
logs the first few files by name so a run's log says what was skipped and why.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["BadImage", "decode_image", "SkipCounter", "IMAGE_EXTENSIONS", "DEFAULT_MAX_PIXELS"]

log = logging.getLogger("vfmvae.data")

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm"})
# Pixels above which an image is treated as a decompression bomb (PIL's own warning threshold is 89M).
DEFAULT_MAX_PIXELS = 89_478_485


class BadImage(Exception):
    """An input that cannot be used as an image. `reason` is a short category for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: the file's range is 0..65535 whatever its values (a dark 16-bit image whose values
        # are all <= 255 is near black, not an 8-bit image). PIL's 32-bit "I" is accepted in the 16-bit range.
        arr = np.asarray(img, dtype=np.float64)
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
            raise BadImage("unsupported-mode", f"{img.mode} image with values outside 0..65535")
        arr = np.clip(arr / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        # Float images (e.g. TIFF) are taken as intensities in [0, 1]; any other range has no agreed meaning.
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all() or arr.min(initial=0) < 0 or arr.max(initial=0) > 1:
            raise BadImage("unsupported-mode", "float image with values outside [0, 1]")
        return Image.fromarray((arr * 255.0 + 0.5).astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "RGB":
        return img
    return img.convert("RGB")  # L, LA, P, RGBA, CMYK, YCbCr: PIL's standard conversions


def decode_image(
    source: str | Path | bytes,
    *,
    min_size: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode fully (so truncation is caught here, not later) and return an RGB image."""
    if isinstance(source, (str, Path)):
        try:
            data = Path(source).read_bytes()
        except OSError as err:
            raise BadImage("unreadable", str(err)) from None
    else:
        data = source
    if len(data) == 0:
        raise BadImage("zero-byte")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise BadImage("too-large", f"{w}x{h} exceeds {max_pixels} pixels")
            img.load()
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not-an-image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImage("too-large", str(err)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # PIL's truncated/corrupt data errors
        raise BadImage("corrupt", str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    if min(w, h) < min_size:
        raise BadImage("too-small", f"{w}x{h} is below min_size={min_size}")
    try:
        return _to_rgb(img)
    except (OSError, ValueError) as err:
        raise BadImage("corrupt", str(err)) from None


class SkipCounter:
    """Counts skipped inputs by reason; logs the first `log_first` by name, then only counts."""

    def __init__(self, log_first: int = 10) -> None:
        self.counts: Counter[str] = Counter()
        self.log_first = log_first
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, name: str, reason: str, detail: str = "") -> None:
        with self._lock:
            self.counts[reason] += 1
            n = self.total
        if n <= self.log_first:
            more = " - further skips are only counted" if n == self.log_first else ""
            log.warning("skipped %s (%s)%s", name, detail or reason, more)

    def add_skipped(self, skipped: list[tuple[str, str, str]]) -> None:
        """Record the `(name, reason, detail)` triples that `collate_skip_bad` puts in a batch."""
        for name, reason, detail in skipped:
            self.add(name, reason, detail)

    def merge(self, counts: dict[str, int]) -> None:
        with self._lock:
            self.counts.update(counts)

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def summary(self) -> str:
        if not self.counts:
            return "0 skipped"
        return f"{self.total} skipped (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items())) + ")"
