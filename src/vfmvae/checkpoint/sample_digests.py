"""What `vfmvae sample` wrote, recorded so that packing and scoring use exactly those files.

Every PNG's sha256 is appended to `OUT/digests-rNN.txt` (one line `INDEX SHA256` per sample, per rank) before the
PNG is renamed into place, so a kill between the two leaves a record without a file (regenerated on resume), never
a file without a record. A sample may be recorded more than once (regenerated after a kill, by another number of
processes); any recorded digest is the sample's. A PNG whose digest is not recorded (a foreign image saved under a
sample's name, a file damaged after it was written) is refused by the `.npz` packing and by `eval gen`, and files in
`images/` that are no sample of the folder are left out of scoring with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

__all__ = ["DIGESTS_NOTE", "DigestLog", "read_digests", "sample_name", "recorded_sample_files", "check_sample_bytes"]

log = logging.getLogger(__name__)

DIGESTS_NOTE = "sha256 of every PNG, recorded in digests-rNN.txt before the PNG is renamed into place"
_LINE = re.compile(r"^(\d{6,}) ([0-9a-f]{64})$")


def sample_name(index: int) -> str:
    return f"{index:06d}.png"


class DigestLog:
    """This rank's digest file, opened for appending (a torn last line of a killed run is ended first)."""

    def __init__(self, out: Path, rank: int) -> None:
        self.path = out / f"digests-r{rank:02d}.txt"
        self.file = open(self.path, "ab")  # noqa: SIM115 - held for the run, closed by close()
        if self.file.tell() and _last_byte(self.path) != b"\n":
            self.file.write(b"\n")

    def record(self, entries: list[tuple[int, str]]) -> None:
        """Append and persist the digests of one batch (before its PNGs are renamed into place)."""
        self.file.write("".join(f"{index:06d} {digest}\n" for index, digest in entries).encode())
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def read_digests(out: Path) -> dict[int, set[str]]:
    """Every recorded digest of the sample folder `out`, by sample index (malformed lines are skipped)."""
    found: dict[int, set[str]] = {}
    for path in sorted(out.glob("digests-r*.txt")):
        for line in path.read_text(errors="replace").splitlines():
            match = _LINE.match(line)
            if match:
                found.setdefault(int(match.group(1)), set()).add(match.group(2))
    return found


def check_sample_bytes(path: Path, data: bytes, recorded: set[str] | None) -> None:
    """Refuse a sample PNG whose content is not what `sample` recorded for it."""
    if recorded is None or hashlib.sha256(data).hexdigest() not in recorded:
        raise ValueError(
            f"{path} is not the image `vfmvae sample` wrote there (its sha256 is not recorded in "
            f"{path.parent.parent}/digests-r*.txt): move it away (or delete it) and re-run the same sample command "
            "to regenerate it"
        )


def recorded_sample_files(folder: str | Path) -> list[Path] | None:
    """The verified sample PNGs of a sample folder (OUT) or of its `images/`, in index order; None when `folder`
    is not a sample folder with recorded digests (then it is scored as any image folder).

    Every sample 0..N-1 (N from settings.json) must exist with a recorded digest; other files under `images/` are
    left out with a warning. Reads every file once (as scoring does anyway)."""
    import json

    folder = Path(folder)
    out = folder.parent if folder.name == "images" and (folder.parent / "settings.json").is_file() else folder
    settings = out / "settings.json"
    if not settings.is_file() or not any(out.glob("digests-r*.txt")):
        return None
    try:
        num = json.loads(settings.read_text())["num"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{settings}: not the settings of a sample folder (no 'num')") from None
    from vfmvae.limits import MAX_SAMPLES

    if not isinstance(num, int) or isinstance(num, bool) or not 0 <= num <= MAX_SAMPLES:  # not trusted: a list of N
        raise ValueError(f"{settings}: 'num' {num!r} is not a number of samples in 0..{MAX_SAMPLES:,}")
    images, recorded = out / "images", read_digests(out)
    files = [images / sample_name(i) for i in range(num)]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise ValueError(
            f"{len(missing)} of the {num} samples of {out} are missing (e.g. {missing[0].name}); re-run the same "
            "sample command to finish them"
        )
    for index, path in enumerate(files):
        check_sample_bytes(path, path.read_bytes(), recorded.get(index))
    expected = {p.name for p in files}
    extra = sorted(p for p in images.rglob("*") if p.is_file() and str(p.relative_to(images)) not in expected)
    if extra or folder == out:
        log.warning(
            "%s is a sample folder: scoring its %d recorded samples%s",
            out,
            num,
            f"; left out {len(extra)} other file(s) in images/ (e.g. {extra[0].name})" if extra else "",
        )
    return files
