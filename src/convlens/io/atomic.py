"""Write files so that a crash, a full disk or a bad input never leaves one half-written.

Everything convlens writes goes to a temporary file in the target's folder first and is then
renamed over the target (``os.replace`` is atomic on POSIX within one file system).

A command that writes a *set* of files (one PNG per image and method, a patch figure per
unit) stages the whole set in a hidden sibling folder with :func:`output_set` and moves the
files into place only once every one of them is written: a full disk or an error half-way
leaves the previous good set untouched and no new, empty output folder behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
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


def _move_tree(staged: Path, target: Path) -> None:
    """Move every file under ``staged`` to the same place under ``target`` (renames only)."""
    for root, _dirs, files in os.walk(staged):
        dest = target / Path(root).relative_to(staged)
        dest.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.replace(Path(root) / name, dest / name)


def _nearest_existing(path: Path) -> Path:
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    return existing


@contextlib.contextmanager
def output_set(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Stage a set of output files, then move them into ``folder`` together.

    Yields a temporary folder in ``folder``'s nearest existing ancestor (same file system,
    so the final moves are renames that need no free space). On success every staged file
    is renamed into ``folder`` (created with its parents if needed; files already there and
    not rewritten are kept); on any error the staging folder is deleted and nothing else
    changes: no new folder appears and the previous good files stay as they were.

    >>> with output_set("/tmp/convlens-doctest-set") as stage:
    ...     write_text_atomic(stage / "a.txt", "a")
    """
    target = Path(folder)
    if target.exists() and not target.is_dir():
        raise ConvlensError(f"output path {str(target)!r} exists and is not a folder")
    home = _nearest_existing(target if target.exists() else target.parent)
    if not home.is_dir():
        raise ConvlensError(f"cannot create output folder {str(target)!r}: {str(home)!r} is a file")
    if not os.access(home, os.W_OK | os.X_OK):
        raise ConvlensError(f"cannot write {str(target)!r}: no write permission on {str(home)!r}")
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=home))
    except OSError as e:
        raise ConvlensError(f"cannot write {str(target)!r}: {e.strerror or e}") from e
    try:
        yield stage
        _move_tree(stage, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
