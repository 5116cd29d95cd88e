"""Checks every model reader makes before it reads, parses or allocates: validate, then allocate.

A model file is treated as written by an attacker. Readers open only regular files (a FIFO or
a device would hang or never end), read at most a stated number of bytes, check each declared
shape against a size budget with overflow-free arithmetic before any array is built, and judge
archive members by their declared sizes and full paths before extracting anything.

>>> checked_elements((3, 3, 64, 128), what="kernel")
73728
>>> checked_elements((10**6, 10**7), what="Dense kernel")
Traceback (most recent call last):
...
convlens.errors.ConvlensError: Dense kernel declares shape (1000000, 10000000) = 10000000000000 \
values, over the budget of 1000000000 values per tensor (set CONVLENS_MAX_MODEL_MB to raise \
the model budget)
"""

from __future__ import annotations

import json
import math
import os
import stat
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from convlens.errors import ConvlensError

MAX_TENSOR_ELEMENTS = 10**9  # no CNN layer has a billion weights; VGG-16's largest has 103 M
MAX_JSON_BYTES = 64 << 20  # a model topology or config is far smaller
MAX_JSON_DEPTH = 64  # Keras/TF.js configs nest about 10 deep; Python's parser recurses


def model_budget_bytes() -> int:
    """Total bytes of weights a model may declare: ``CONVLENS_MAX_MODEL_MB`` (default 4096)."""
    raw = os.environ.get("CONVLENS_MAX_MODEL_MB", "4096")
    try:
        mb = float(raw)
    except ValueError:
        raise ConvlensError(
            f"CONVLENS_MAX_MODEL_MB is {raw!r}; accepted: a positive number of megabytes"
        ) from None
    if not mb > 0 or mb == float("inf"):
        raise ConvlensError(f"CONVLENS_MAX_MODEL_MB is {raw!r}; accepted: a positive number")
    return int(mb * (1 << 20))


def regular_file(path: str | os.PathLike[str], what: str = "model file") -> Path:
    """``path`` if it names a regular file (symlinks followed); else a clear error.

    FIFOs, sockets and devices are refused before anything opens them: opening a FIFO for
    reading blocks until a writer appears, and ``/dev/zero`` never ends.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConvlensError(f"{what} {str(p)!r} does not exist") from None
    except OSError as e:
        raise ConvlensError(f"{what} {str(p)!r} cannot be read: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConvlensError(f"{what} {str(p)!r} is not a regular file; accepted: a plain file")
    return p


def read_bounded(path: str | os.PathLike[str], limit: int, what: str = "model file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes."""
    p = regular_file(path, what)
    size = p.stat().st_size
    if size > limit:
        raise ConvlensError(f"{what} {str(p)!r} is {size} bytes; at most {limit} are accepted")
    with p.open("rb") as f:
        data = f.read(size + 1)  # the stat size, not the limit: no 64 MB buffer per small file
    if len(data) > size:
        raise ConvlensError(f"{what} {str(p)!r} grew while it was read; refused")
    return data


def _depth(obj: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, iteratively (a recursive walk is itself a hazard)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if d > limit:
            return d
        deepest = max(deepest, d)
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def _raw_depth(text: str) -> int:
    """Deepest bracket nesting in JSON text, outside strings, in one linear pass."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_json(text: str | bytes, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON whose nesting is at most ``max_depth``, with a clear error otherwise.

    The depth is measured on the text before parsing, so a deeply nested document cannot
    exhaust the parser's recursion.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ConvlensError(f"{what} is not UTF-8 text; accepted: a JSON document") from None
    if _raw_depth(text) > max_depth:
        raise ConvlensError(f"{what} nests deeper than {max_depth} levels; refused")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ConvlensError(f"{what} is not valid JSON: {e}") from None


def read_json(path: str | os.PathLike[str], what: str = "model JSON") -> Any:
    """A bounded, depth-checked JSON file from a regular file."""
    return parse_json(read_bounded(path, MAX_JSON_BYTES, what), f"{what} {str(path)!r}")


def finite_or_none(value: Any, where: str) -> float | None:
    """A JSON value that must be a finite number or null (JSON allows NaN/Infinity literals
    through Python's parser, and a bool is an int there: both are refused)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConvlensError(f"{where} is {str(value)[:40]!r}; accepted: a finite number or null")
    return float(value)


def checked_elements(shape: Iterable[Any], what: str = "tensor") -> int:
    """The number of values of ``shape``, after checking each dim is a small non-negative int.

    Python integers do not overflow, so the product is exact; it is compared with
    :data:`MAX_TENSOR_ELEMENTS` before any caller allocates.
    """
    dims: list[int] = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int | float) or d != int(d) or d < 0:
            raise ConvlensError(
                f"{what} declares shape {tuple(shape)!r}; accepted: non-negative integers"
            )
        dims.append(int(d))
    count = 1
    for d in dims:
        count *= d
    if count > MAX_TENSOR_ELEMENTS:
        raise ConvlensError(
            f"{what} declares shape {tuple(dims)} = {count} values, over the budget of "
            f"{MAX_TENSOR_ELEMENTS} values per tensor (set CONVLENS_MAX_MODEL_MB to raise the "
            "model budget)"
        )
    return count


class Budget:
    """Running total of bytes a model's weights declare, refused past the model budget."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = model_budget_bytes() if limit is None else limit
        self.used = 0

    def take(self, nbytes: int, what: str) -> None:
        self.used += nbytes
        if self.used > self.limit:
            raise ConvlensError(
                f"{what} brings the model's weights to {self.used} bytes, over the budget of "
                f"{self.limit} bytes (CONVLENS_MAX_MODEL_MB={self.limit >> 20})"
            )


def check_zip(path: str | os.PathLike[str], max_total: int | None = None) -> zipfile.ZipFile:
    """Open a zip archive after checking its members' declared sizes and names.

    Refuses absolute or ``..`` member paths, a total uncompressed size over the model budget,
    and a compression ratio over 1000 (a zip bomb). Callers still read members with a bound.
    """
    p = regular_file(path)
    limit = model_budget_bytes() if max_total is None else max_total
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        raise ConvlensError(f"{str(p)!r} is not a readable zip archive: {e}") from None
    total = 0
    for info in zf.infolist():
        name = info.filename
        if name.startswith(("/", "\\")) or ".." in Path(name).parts:
            zf.close()
            raise ConvlensError(f"archive member {name!r} points outside the archive; refused")
        total += info.file_size
        if info.compress_size and info.file_size > 1000 * max(info.compress_size, 1):
            zf.close()
            raise ConvlensError(
                f"archive member {name!r} expands {info.file_size // info.compress_size}-fold; "
                "refused as a zip bomb"
            )
    if total > limit:
        zf.close()
        raise ConvlensError(
            f"{str(p)!r} unpacks to {total} bytes, over the model budget of {limit} bytes"
        )
    return zf


def read_member(zf: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """One archive member's bytes, refusing one whose real size passes ``limit``."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise ConvlensError(f"the archive has no member {name!r}") from None
    if info.file_size > limit:
        raise ConvlensError(f"archive member {name!r} is {info.file_size} bytes; limit {limit}")
    try:
        with zf.open(info) as f:
            data = f.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as e:
        # a bad CRC, a truncated or corrupt deflate stream, an unsupported compression method
        raise ConvlensError(f"archive member {name!r} cannot be read: {e}") from None
    if len(data) > limit:
        raise ConvlensError(f"archive member {name!r} is larger than its header says; refused")
    return data
