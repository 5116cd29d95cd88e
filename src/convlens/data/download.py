"""Checksum-verified, cached, atomic downloads, done only when the user asks (``--download``).

A file is fetched into the cache folder under a temporary name, its MD5 (the checksum the data
set's authors publish) is checked while streaming, and only then is it renamed into place, so
a cut-off or tampered download never looks like a finished one.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from convlens.errors import ConvlensError
from convlens.io.atomic import atomic_write, ensure_writable_dir

CHUNK = 1 << 20


def cache_dir(name: str) -> Path:
    """Where downloaded data set ``name`` lives: ``$CONVLENS_CACHE`` or ``~/.cache/convlens``."""
    root = os.environ.get("CONVLENS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "convlens"
    )
    return Path(root) / "datasets" / name


def file_md5(path: str | os.PathLike[str]) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, target: Path, md5: str, timeout: float = 30.0) -> Path:
    """Fetch ``url`` to ``target`` unless a file with checksum ``md5`` is already there.

    Raises :class:`ConvlensError` when the server cannot be reached or the checksum differs;
    nothing is left at ``target`` in either case.
    """
    if target.is_file() and file_md5(target) == md5:
        return target
    ensure_writable_dir(target.parent)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_write(target) as out:
            for chunk in iter(lambda: resp.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
            if digest.hexdigest() != md5:
                raise ConvlensError(
                    f"download of {url} has checksum {digest.hexdigest()}, expected {md5}: "
                    "the file is damaged or not the published one; nothing was kept"
                )
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        raise ConvlensError(f"cannot download {url}: {reason}") from None
    return target
