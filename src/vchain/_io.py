"""File access of run folders: atomic writes (a reader never sees a half-written artifact, a crash never
leaves one), bounded reads of regular files only, and the check that keeps artifact paths inside a folder."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = True) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; artifacts are meant to be shared like any other file.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), binary=False)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# The largest record vchain reads back (manifest.json, chain.json, scores.json): far above a real one,
# which holds a few hundred request records, yet small enough that a planted file cannot exhaust memory.
MAX_RECORD_BYTES = 64 * 2**20


def regular_file_error(path: str | os.PathLike) -> str | None:
    """Why `path` is not a plain file vchain may read (a link, a device, a FIFO, a folder), or None."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symlink"
    if stat.S_ISDIR(info.st_mode):
        return "is a folder"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a device, FIFO or socket)"
    return None


def read_regular(path: str | os.PathLike, *, limit: int = MAX_RECORD_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; an `OSError` saying why not otherwise.

    Links, devices and FIFOs are refused without opening them (a FIFO would block, `/dev/zero` never
    ends), and the size is checked before reading, so no planted file can hang or exhaust vchain.
    """
    problem = regular_file_error(path)
    if problem is not None:
        raise OSError(f"{os.fspath(path)!r} {problem}")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):  # swapped between the check and the open
            raise OSError(f"{os.fspath(path)!r} is not a regular file")
        if info.st_size > limit:
            raise OSError(f"{os.fspath(path)!r} is {info.st_size} bytes, over vchain's limit of {limit}")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{os.fspath(path)!r} is over vchain's limit of {limit} bytes")
    return data


def check_path(value: object, argument: str) -> Path:
    """`value` as a `Path`; a `ConfigurationError` naming `argument` unless it is a non-empty path."""
    from vchain.errors import ConfigurationError

    if not isinstance(value, (str, os.PathLike)) or not str(value).strip() or "\0" in str(value):
        raise ConfigurationError(f"{argument} must be a path, got {value!r}")
    return Path(value).expanduser()


def safe_relative(name: object) -> str | None:
    """Why `name` cannot be an artifact path inside a run folder, or None when it can.

    An artifact path is relative, in `/` form, with no empty, `.` or `..` part and no backslash or null
    byte: joined to the folder it can only name something inside it.
    """
    if not isinstance(name, str) or not name:
        return "is not a non-empty path"
    if "\0" in name or "\\" in name:
        return "holds a null byte or a backslash"
    if name.startswith("/") or PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive:
        return "is absolute"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "holds an empty, '.' or '..' part"
    return None
