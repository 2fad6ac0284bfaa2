"""Crash-safe file writing: write to a temporary name beside the target, fsync, rename, fsync the folder.

A reader therefore sees either the old file or the complete new one, never a torn write, whether the
writer is killed, runs out of disk or the machine loses power (on file systems where rename is atomic,
which POSIX local file systems and the common network file systems guarantee for one directory).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_directory",
    "fsync_dir",
    "current_umask",
    "write_npz_atomic",
]


def current_umask() -> int:
    """The process umask: from /proc on Linux (no side effect), else by setting and restoring it (Python has no
    getter; that briefly changes it for other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(path: Path, mode: int) -> None:
    """`mkstemp`/`mkdtemp` create 0600/0700 entries; give the final file the mode a plain `open` would."""
    os.chmod(path, mode & ~current_umask())


def fsync_dir(path: str | Path) -> None:
    """Persist a directory entry change (a rename or a new file) on POSIX systems."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, then atomically move the result to `path`. On any error `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        _apply_umask(tmp, 0o666)  # after the write: some writers (safetensors) recreate the file
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


@contextlib.contextmanager
def atomic_directory(final: str | Path, *, replace_whole: bool = False, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success its content is moved into place.

    When `final` does not exist the temporary folder becomes `final` in one rename. When it exists, only the
    files written into the temporary folder replace their namesakes in `final` (one atomic rename each, the
    names in `last` at the end, so a marker file such as `config.json` or `meta.json` is the last to change);
    anything else in `final` is left alone: we never delete what we did not write. `replace_whole=True`
    swaps out the whole folder instead, for folders that are ours entirely (a checkpoint's step folder).

    Files written inside should be fsynced by the caller (the `atomic_*` helpers and
    `safetensors`-via-`atomic_write` do this). If the body raises, the temporary folder is removed and
    an existing `final` is left exactly as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        _apply_umask(tmp, 0o777)
        yield tmp
        fsync_dir(tmp)
        if not final.exists():
            os.rename(tmp, final)
        elif replace_whole:
            # Directories cannot be replaced atomically; park the old one, swap, then delete it.
            # A crash between the two renames leaves `final` missing but the old copy intact under
            # `.old`, which `latest_checkpoint` ignores and a human can restore.
            old = final.with_name(f".{final.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            names = sorted(p.name for p in tmp.iterdir())
            for name in [n for n in names if n not in last] + [n for n in last if n in names]:
                if (final / name).is_dir() and not (tmp / name).is_dir():
                    raise IsADirectoryError(f"{final / name} is a folder; cannot replace it with a file")
                os.replace(tmp / name, final / name)
            tmp.rmdir()
        fsync_dir(final.parent)
        fsync_dir(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_npz_atomic(path: str | Path, **arrays: np.ndarray) -> Path:
    """An .npz (numpy arrays, no pickles) written atomically: a reader sees the old file or the whole new one."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(Path(path), write)
