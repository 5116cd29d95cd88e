"""Checksum-verified, cached, atomic downloads, done only when the user asks for them.

A file is streamed into a temporary file beside its target while its digest is computed, and
renamed into place only when the digest matches the published one, so a cut-off, oversized or
tampered download never looks like a finished one. Data sets and named models both use this.
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
MIN_PREFIX = 8  # hex digits of a checksum prefix: 32 bits, as torch.hub's file names carry
_NAMES = {"md5": "MD5", "sha256": "SHA-256"}


def cache_root() -> Path:
    """``$CONVLENS_CACHE``, else ``$XDG_CACHE_HOME/convlens``, else ``~/.cache/convlens``."""
    root = os.environ.get("CONVLENS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "convlens"
    )
    return Path(root)


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file (``md5`` where a data set's authors publish only that)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    url: str,
    target: Path,
    expected: str,
    *,
    algorithm: str = "sha256",
    max_bytes: int | None = None,
    timeout: float = 30.0,
    prefix: bool = False,
) -> Path:
    """``url`` saved at ``target`` once its digest equals ``expected``; a matching file already
    at ``target`` is kept as is. With ``prefix=True`` the digest must start with ``expected``
    (at least 8 hex digits): publishers such as the PyTorch project put the first digits of
    each file's SHA-256 in its name, and that is all they publish of it.

    Raises :class:`ConvlensError` when the server cannot be reached, the response is larger
    than ``max_bytes`` or the digest differs; nothing is left at ``target`` in those cases.
    """
    if prefix and len(expected) < MIN_PREFIX:
        raise ConvlensError(
            f"a checksum prefix needs at least {MIN_PREFIX} hex digits, got {expected!r}"
        )

    def matches(digest: str) -> bool:
        return digest.startswith(expected) if prefix else digest == expected

    if target.is_file() and matches(file_digest(target, algorithm)):
        return target
    ensure_writable_dir(target.parent)
    digest, size = hashlib.new(algorithm, usedforsecurity=False), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_write(target) as out:
            for chunk in iter(lambda: resp.read(CHUNK), b""):
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise ConvlensError(f"{url} is larger than {max_bytes} bytes; not kept")
                digest.update(chunk)
                out.write(chunk)
            if not matches(digest.hexdigest()):
                name = _NAMES.get(algorithm, algorithm)
                wanted = f"one starting with {expected}" if prefix else expected
                raise ConvlensError(
                    f"download of {url} has {name} checksum {digest.hexdigest()}, expected "
                    f"{wanted}: the file is damaged or not the published one; nothing was kept"
                )
    except ConvlensError:
        raise
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ConvlensError(f"cannot download {url}: {reason}") from None
    return target
