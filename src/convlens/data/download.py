"""Where downloaded data sets are cached, and their MD5-checked download (``--download``).

The data sets' authors publish MD5 sums, so those are what is checked; the streaming,
checking and atomic rename are :func:`convlens.io.download.fetch`.
"""

from __future__ import annotations

from pathlib import Path

from convlens.io.download import cache_root, fetch


def cache_dir(name: str) -> Path:
    """Where downloaded data set ``name`` lives: ``<cache>/datasets/<name>``."""
    return cache_root() / "datasets" / name


def download(url: str, target: Path, md5: str, timeout: float = 30.0) -> Path:
    """Fetch ``url`` to ``target`` unless a file with checksum ``md5`` is already there."""
    return fetch(url, target, md5, algorithm="md5", timeout=timeout)
