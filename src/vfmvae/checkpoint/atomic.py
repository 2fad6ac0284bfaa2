"""Crash-safe file writing: write to a temporary name beside the target, fsync, rename, fsync the folder.

A reader therefore sees either the old file or the complete new one, never a torn write, whether the
writer is killed, runs out of disk or the machine loses power (on file systems where rename is atomic,
which POSIX local file systems and the common network file systems guarantee for one directory).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
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
    "DiskFullError",
    "disk_full",
    "human_bytes",
    "locked_temporary_directory",
    "remove_abandoned_directories",
]


class DiskFullError(OSError):
    """No space left on the device (or quota) while writing: one line naming the folder and the space needed."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")  # how safetensors' Rust I/O errors end


def _is_disk_full(err: BaseException) -> bool:
    """ENOSPC or EDQUOT, raised by Python (OSError) or by a library that reports it in its message (safetensors)."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    found = _OS_ERROR_IN_TEXT.search(str(err)) if isinstance(err, Exception) else None
    return found is not None and int(found.group(1)) in (errno.ENOSPC, errno.EDQUOT)


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def disk_full(folder: Path, what: str, needed: int | None) -> DiskFullError:
    """The one-line error for a full disk at `folder` while writing `what` (`needed` bytes, when known)."""
    try:
        free = f"{human_bytes(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    need = f"needs about {human_bytes(needed)}" if needed is not None else "needs more space"
    return DiskFullError(
        f"No space left on device in {folder}: {what} {need} ({free}); free some space (or write elsewhere) and "
        "re-run the same command"
    )


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


def atomic_write(path: str | Path, write: Callable[[Path], None], *, size: int | None = None) -> Path:
    """Call `write(tmp_path)`, then atomically move the result to `path`. On any error `path` is untouched.

    A full disk raises `DiskFullError` naming the folder and `size` (the bytes the file needs, when known), whatever
    the writer raised (safetensors reports it in its own exception type).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        _apply_umask(tmp, 0o666)  # after the write: some writers (safetensors) recreate the file
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if _is_disk_full(err) and not isinstance(err, DiskFullError):
            raise disk_full(path.parent, f"writing {path.name}", size) from None
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), size=len(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text), size=len(text.encode()))


# ---- temporary folders that a later run can tell from a living one ----------------------------------------------
# A folder being built holds an exclusive flock on itself; the kernel drops it when its process dies, however it
# dies (SIGKILL included). So a temporary folder of ours without that lock was left by a killed run and may be
# removed. A new folder is created and locked under a name no sweep looks at (`.new-...`) and only then renamed to
# its temporary name (a rename keeps the inode and so the lock): a sweep never sees it unlocked.


def _flock(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how)
        return True
    except BlockingIOError:
        return False


@contextlib.contextmanager
def _locked_mkdtemp(parent: Path, prefix: str, suffix: str) -> Iterator[Path]:
    """A new folder `parent/PREFIX*SUFFIX` that carries an exclusive flock until the context ends."""
    staging = Path(tempfile.mkdtemp(prefix=f".new-{prefix}", dir=parent))
    fd = os.open(staging, os.O_RDONLY)
    try:
        _flock(fd, fcntl.LOCK_EX)  # uncontended: no sweep looks at `.new-*`
        tmp = parent / f"{prefix}{staging.name[len(f'.new-{prefix}') :]}{suffix}"
        if tmp.exists():  # mkdtemp's random part made it unique among `.new-*` names only
            raise FileExistsError(f"{tmp} exists")
        os.rename(staging, tmp)
    except BaseException:
        os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        yield tmp
    finally:
        os.close(fd)


def remove_abandoned_directories(parent: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Remove the folders in `parent` whose names match `pattern` and that no living process holds (see above):
    what killed runs left. Folders of other users, and everything when the locks cannot be taken, are left alone."""
    removed = []
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return removed
    for path in entries:
        if not pattern.match(path.name) or path.is_symlink() or not path.is_dir():
            continue
        try:
            if path.stat().st_uid != os.getuid():
                continue
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        except OSError:  # a file system without flock: never delete when unsure
            pass
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def locked_temporary_directory(prefix: str, parent: str | Path | None = None) -> Iterator[Path]:
    """`tempfile.TemporaryDirectory` whose leftovers are removed by the next use: a run killed with SIGKILL leaves
    its folder behind, and the next call with the same prefix removes every such folder of ours first."""
    parent = Path(parent or tempfile.gettempdir())
    remove_abandoned_directories(parent, re.compile(rf"^{re.escape(prefix)}"))
    with _locked_mkdtemp(parent, prefix, "") as tmp:
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


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
    # what a killed build of the same folder left (`.NAME.*.tmp`, no longer locked by a living process)
    remove_abandoned_directories(final.parent, re.compile(rf"^\.{re.escape(final.name)}\.[A-Za-z0-9_]+\.tmp$"))
    with _locked_mkdtemp(final.parent, f".{final.name}.", ".tmp") as tmp:
        yield from _fill_directory(final, tmp, replace_whole=replace_whole, last=last)


def _fill_directory(final: Path, tmp: Path, *, replace_whole: bool, last: tuple[str, ...]) -> Iterator[Path]:
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
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_disk_full(err) and not isinstance(err, DiskFullError):
            raise disk_full(final.parent, f"writing {final.name}", None) from None
        raise


def write_npz_atomic(path: str | Path, **arrays: np.ndarray) -> Path:
    """An .npz (numpy arrays, no pickles) written atomically: a reader sees the old file or the whole new one."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(Path(path), write, size=sum(int(a.nbytes) for a in arrays.values()))
