"""Write files so that a crash or a bad input never leaves one half-written.

Everything convlens writes goes to a temporary file in the target's folder first and is then
renamed over the target (``os.replace`` is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from convlens.errors import ConvlensError


def _file_mode_from_umask() -> int:
    # mkstemp creates files 0600; the files we write should get the user's usual permissions.
    # Read the umask once, at import, because setting it is process-wide.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode_from_umask()


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if needed and check it is a writable folder."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConvlensError(f"cannot create output folder {str(p)!r}: {e.strerror or e}") from e
    if not p.is_dir():
        raise ConvlensError(f"output path {str(p)!r} exists and is not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConvlensError(f"output folder {str(p)!r} is not writable")
    return p


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it to ``path``, else delete it.

    >>> with atomic_write("/tmp/convlens-doctest.txt", "w") as f:
    ...     _ = f.write("hello")
    """
    target = Path(path)
    folder = ensure_writable_dir(target.parent if str(target.parent) else ".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)
