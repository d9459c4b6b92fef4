"""Crash-safe file replacement, shared by identities, allow-lists, checkpoints and status files."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write via a same-directory temp file (created with ``mode``), fsync, then rename over ``path``.

    A crash leaves either the old file or the new one, never a torn one, and the temp file is
    created with its final permissions so a secret is never briefly world-readable.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = -1, ""
    for _ in range(100):
        tmp = str(directory / f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
            break
        except FileExistsError:
            continue
    if fd < 0:
        raise OSError(f"could not create a temporary file in {directory}")
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable; not possible on every platform
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
