"""Reading an uploaded image safely: bounded bytes, in memory, decoded with pixel limits.

The body is read chunk by chunk and refused (413) as soon as it passes the byte limit, so a
huge upload never fills memory. The body must be ``multipart/form-data`` (the guard answers
415 to anything else); it is parsed in memory with python-multipart's streaming parser
(Starlette's form parser would spool big files to the system's temporary folder). The
client's file name is ignored. Decoding (:func:`convlens.io.image.decode_image`, with the
server's limits: PNG, JPEG, BMP, GIF and WebP only) answers 415 for a non-image, 413 for too
many pixels or too elongated an image (decompression bombs included) and 400 for an empty,
truncated or corrupt file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from PIL import Image
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from convlens.io.image import DecodeLimits, ImageError, ImageProblem, decode_image
from convlens.web.errors import ApiError

FIELD = b"file"
MULTIPART_OVERHEAD = 64 * 1024  # room for boundaries and part headers around the file


async def read_body(stream: AsyncIterator[bytes], limit: int, declared: int | None) -> bytes:
    """The request body, refusing (413) as soon as it exceeds ``limit`` bytes."""
    too_big = f"upload is larger than the limit of {limit:,} bytes"
    if declared is not None and declared > limit:
        raise ApiError(413, f"upload is {declared:,} bytes; the limit is {limit:,}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise ApiError(413, too_big)
        chunks.append(chunk)
    return b"".join(chunks)


def multipart_file(body: bytes, content_type: str) -> bytes:
    """The bytes of the form field ``file`` in a ``multipart/form-data`` body."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart body without a boundary; send the form field 'file'")
    parts: list[tuple[bytes, bytearray]] = []
    header: dict[str, bytearray] = {"field": bytearray(), "value": bytearray()}
    disposition = bytearray()

    def on_part_begin() -> None:
        disposition.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        if bytes(header["field"]).lower() == b"content-disposition":
            disposition[:] = header["value"]
        header["field"].clear()
        header["value"].clear()

    def on_headers_finished() -> None:
        _, disp = parse_options_header(bytes(disposition))
        parts.append((disp.get(b"name", b""), bytearray()))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        raise ApiError(400, f"malformed multipart body: {e}") from None
    for name, data in parts:
        if name == FIELD:
            return bytes(data)
    names = ", ".join(repr(n.decode("latin-1")) for n, _ in parts) or "none"
    raise ApiError(400, f"no form field 'file' in the upload (fields sent: {names})")


STATUS = {ImageProblem.TOO_LARGE: 413, ImageProblem.NOT_AN_IMAGE: 415}  # others: 400


def decode_upload(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Decode uploaded bytes to an 8-bit ``L``/``RGB`` image, or raise :class:`ApiError`."""
    try:
        return decode_image(data, limits)
    except ImageError as e:
        raise ApiError(STATUS.get(e.kind, 400), str(e)) from None
