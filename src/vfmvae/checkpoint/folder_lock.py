"""One process writes into an output folder at a time: an exclusive `flock` on FOLDER/.lock.

Run folders (`vfmvae train`), latent caches (`cache-latents --out`) and sample folders (`sample --out`) are locked
alike, so the lock lives here, below the stages that write those folders. The kernel releases the lock when the
process dies, so a killed run never leaves a stale one.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from vfmvae.config import ConfigError

__all__ = ["LOCK_NAME", "RunFolderError", "RunFolderLock", "lock_output_folder"]


class RunFolderError(ConfigError):
    """The run folder holds another run, is in use, or cannot be resumed as asked."""


LOCK_NAME = ".lock"  # in a run, cache or sample folder: never counted as content of the folder


class RunFolderLock:
    """An exclusive, non-blocking `flock` on FOLDER/.lock, held until `release()` (or the process ends).

    Run folders, latent caches (`cache-latents --out`) and sample folders (`sample --out`) are locked alike: a second
    process writing into the same folder is refused with `advice`."""

    def __init__(self, run_dir: Path, advice: str = "wait for it to finish or use another run.dir") -> None:
        self.path = run_dir / LOCK_NAME
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 64).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise RunFolderError(f"{run_dir} is in use by {holder} (lock {self.path}); {advice}") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"process {os.getpid()}\n".encode())

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = -1


def lock_output_folder(folder: Path, option: str) -> RunFolderLock:
    """Create `folder` if needed and lock it for this process, as a run folder is locked; `option` names it in the
    message (`--out`)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{option} {folder} is a file; pass a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return RunFolderLock(folder, f"wait for it to finish or use another {option}")
