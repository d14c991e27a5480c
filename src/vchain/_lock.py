"""Run folders as places: the checked output folder and its lock, in a light module (no numpy, pydantic or
torch), so the command line locks a folder, and refuses one, within a fraction of a second of starting."""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from vchain.errors import ConfigurationError

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_output_dir(output_dir: object, *, create: bool = True) -> Path:
    """The run folder as a path; a `ConfigurationError` naming it and the OS reason if it cannot be one.

    With `create=False` nothing is made: the path is only checked (a file, an unreachable or unwritable
    parent), so a command can refuse a bad folder before it loads any model.
    """
    if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir).strip():
        raise ConfigurationError(f"output_dir must be a folder path, got {output_dir!r}")
    if "\0" in str(output_dir):
        raise ConfigurationError(f"output_dir holds a null byte, which no file system allows: {output_dir!r}")
    path = Path(output_dir).expanduser()
    try:
        is_file = path.exists() and not path.is_dir()
    except OSError as e:  # a name too long for the file system, say
        raise ConfigurationError(f"output_dir {str(path)!r} cannot be used: {e.strerror or e}") from None
    if is_file:
        raise ConfigurationError(f"output_dir {str(path)!r} is a file, not a folder; choose another path")
    if not create:
        existing = next(p for p in (path, *path.absolute().parents) if p.exists())
        if existing != path and not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
            reason = "is not a folder" if not existing.is_dir() else "is not writable"
            raise ConfigurationError(f"output_dir {str(path)!r} cannot be created: {str(existing)!r} {reason}")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigurationError(f"output_dir {str(path)!r} cannot be created: {e.strerror or e}") from None
    return path


class _FolderLock:
    """An exclusive OS lock (`flock`) on `<folder>/.lock`, released when closed or when the process dies."""

    def __init__(self, folder: Path):
        self.fd: int | None = None
        self.folder = folder
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            logger.warning("No folder lock on this platform: do not run two processes on %s", folder)
            return
        path = folder / LOCK_FILE
        try:  # O_NOFOLLOW: a planted link must not make vchain write its pid line elsewhere
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise PermissionError(e.errno, e.strerror) from None
            what = "a symlink" if e.errno == errno.ELOOP else "a folder" if e.errno == errno.EISDIR else e.strerror
            raise ConfigurationError(
                f"output_dir {str(folder)!r} holds {LOCK_FILE} that is {what}; vchain locks the folder with a "
                f"plain file of that name: remove it"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # The holder writes its pid line just after taking the lock: give it a moment to appear.
            holder = ""
            for _ in range(50):
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                if holder:
                    break
                time.sleep(0.01)
            holder = holder or "an unknown process"
            os.close(fd)
            raise ConfigurationError(
                f"output_dir {str(folder)!r} is in use by another vchain process ({holder}); wait for it to "
                "finish, or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


_HELD: dict[Path, _FolderLock] = {}


@contextmanager
def hold(output_dir: str | Path) -> Iterator[Path]:
    """Take a run folder's lock for the whole block, before any slow start-up (the CLI's first step).

    Run folders opened inside the block in this process use this lock instead of taking their own, so a
    second process fails within a second of starting rather than after loading its models. A folder
    made for the block and left holding nothing but the lock is removed again.
    """
    path = check_output_dir(output_dir, create=False)
    created = not path.exists()
    path = check_output_dir(path)
    key = path.resolve()
    if key in _HELD:  # this process holds it already (a judge on a tree that is itself a run folder)
        yield path
        return
    try:
        lock = _FolderLock(path)
    except PermissionError:  # a read-only folder: RunDirectory reads it as is, or says why not
        yield path
        return
    _HELD[key] = lock
    try:
        yield path
    finally:
        del _HELD[key]
        lock.release()
        if created and [p.name for p in path.iterdir()] == [LOCK_FILE]:
            (path / LOCK_FILE).unlink()
            path.rmdir()
