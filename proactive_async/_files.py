"""Writing a file whole or not at all: a temporary file beside it, renamed over it.

A reader never sees half a file under its name, and a writer stopped midway leaves the
earlier file as it was. A device or a pipe is written in place (a rename would take its
name away).
"""

from __future__ import annotations

import os
import secrets
import stat
from typing import IO

__all__ = ["open_beside", "replaceable", "write_whole"]


def replaceable(path: str | os.PathLike[str]) -> bool:
    """A missing path or a regular file is replaced by renaming; a device or a pipe is
    written in place."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True


def open_beside(path: str | os.PathLike[str]) -> tuple[IO[bytes], tuple[str, str]]:
    """A new temporary file in the directory of ``path`` (of the file a symlink names), with
    the mode the file has (or would get from ``open``); and (temporary, final)."""
    final = os.path.realpath(path)
    directory, name = os.path.split(final)
    try:
        mode: int | None = stat.S_IMODE(os.stat(final).st_mode)
    except FileNotFoundError:
        mode = None
    while True:
        temporary = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(temporary, flags, 0o666)  # the umask applies, as with open()
        except FileExistsError:
            continue
        break
    if mode is not None:
        os.chmod(temporary, mode)
    return os.fdopen(fd, "wb"), (temporary, final)


def write_whole(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` whole: to a temporary file beside it, renamed over it (a
    device or a pipe is written in place)."""
    if not replaceable(path):
        with open(path, "wb") as out:
            out.write(data)
        return
    handle, (temporary, final) = open_beside(path)
    try:
        with handle:
            handle.write(data)
        os.replace(temporary, final)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
