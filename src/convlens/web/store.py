"""Where the server keeps images: the sample catalogue and a bounded store of uploads.

Samples (the model's own, plus the files of ``--images DIR``) are listed once at start-up and
addressed only by id (``sample-3``); a request can never name a path. Uploads are decoded in
memory and kept, as small display copies and the model-ready tensor, in a least-recently-used
store with a fixed number of slots, so memory stays bounded however many files are posted.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from convlens.errors import NotFoundError
from convlens.io.image import (
    FILE_FORMATS,
    IMAGE_SUFFIXES,
    DecodeLimits,
    decode_image,
    fit_to_spec,
    image_to_tensor,
)
from convlens.io.spec import InputSpec
from convlens.model.core import Model
from convlens.trace.encode import display_copy, png_data_url
from convlens.trace.model_doc import SAMPLE_PREFIX, SampleEntry, sample_entries
from convlens.web.cache import LRUCache

UPLOAD_PREFIX = "upload-"
DISPLAY_SIDE = 512  # longer side of the "original" copy sent back for display
SAMPLE_SIDE = 1024  # longer side of a sample served as PNG
SAMPLES_KEPT = 256  # decoded samples kept ready


@dataclass(frozen=True)
class StoredImage:
    """An image ready for the model: its display copy, what the model sees, and the tensor."""

    image_id: str
    width: int
    height: int
    original: Image.Image  # display copy, EXIF-rotated, longer side <= DISPLAY_SIDE
    processed: Image.Image  # resized/cropped/converted to the model's input spec
    tensor: torch.Tensor  # (1, C, H, W) in [0, 1]
    processed_url: str  # ``processed`` as a PNG data URL, encoded once


def prepare(image_id: str, img: Image.Image, spec: InputSpec) -> StoredImage:
    """Turn a decoded image into a :class:`StoredImage` for ``spec``."""
    processed = fit_to_spec(img, spec)
    return StoredImage(
        image_id=image_id,
        width=img.width,
        height=img.height,
        original=display_copy(img, DISPLAY_SIDE),
        processed=processed,
        tensor=image_to_tensor(processed).unsqueeze(0),  # (C, H, W) -> (1, C, H, W)
        processed_url=png_data_url(processed),
    )


def folder_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (sorted), never a link that leaves it."""
    root = folder.resolve()
    found = []
    for p in sorted(root.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        if not p.resolve().is_relative_to(root):
            continue  # a symlink pointing elsewhere: the server was not given that file
        found.append(p)
    return found


def sample_catalogue(model: Model, images_dir: Path | None = None) -> list[SampleEntry]:
    """The model's samples, then the images of ``images_dir``, numbered ``sample-0``, ..."""
    return sample_entries(model, folder_images(images_dir) if images_dir is not None else ())


class ImageStore:
    """Samples by id (decoded lazily, kept) and uploads in a bounded LRU; thread-safe."""

    def __init__(
        self,
        spec: InputSpec,
        samples: list[SampleEntry],
        capacity: int = 64,
        limits: DecodeLimits | None = None,
    ) -> None:
        self.spec = spec
        self.samples = {s.id: s for s in samples}
        self.capacity = capacity
        self.limits = limits or DecodeLimits()
        # samples are files the server was given: any format an image folder may hold
        self.sample_limits = replace(self.limits, formats=FILE_FORMATS)
        self._sample_decoding = threading.BoundedSemaphore(2)  # bounded like uploads' pool
        self._uploads: LRUCache[str, StoredImage] = LRUCache(capacity)
        # decoded samples: bounded too (a --images folder may hold thousands); re-decoded
        # from their files when evicted
        self._decoded: LRUCache[str, StoredImage] = LRUCache(max(capacity, SAMPLES_KEPT))

    def sample(self, sample_id: str) -> SampleEntry:
        try:
            return self.samples[sample_id]
        except KeyError:
            raise NotFoundError(
                f"unknown sample {sample_id!r}; the samples are {SAMPLE_PREFIX}0.."
                f"{SAMPLE_PREFIX}{len(self.samples) - 1}"
                if self.samples
                else f"unknown sample {sample_id!r}; this server has no samples"
            ) from None

    def sample_image(self, sample_id: str) -> Image.Image:
        """A sample decoded (EXIF-rotated, 8-bit) and shrunk to at most ``SAMPLE_SIDE``."""
        path = self.sample(sample_id).path
        with self._sample_decoding:
            return display_copy(decode_image(path, self.sample_limits), SAMPLE_SIDE)

    def add_upload(self, img: Image.Image) -> StoredImage:
        image_id = UPLOAD_PREFIX + secrets.token_hex(8)
        stored = prepare(image_id, img, self.spec)
        self._uploads.put(image_id, stored)
        return stored

    def check(self, image_id: str) -> None:
        """:class:`NotFoundError` when ``image_id`` is unknown or evicted (nothing decoded: cheap
        enough for the event loop)."""
        if image_id in self._uploads:
            return
        if image_id.startswith(SAMPLE_PREFIX):
            self.sample(image_id)
            return
        raise NotFoundError(
            f"unknown image id {image_id!r} (uploads are kept for the {self.capacity} most "
            f"recent images; upload it again, or use a sample id like {SAMPLE_PREFIX}0)"
        )

    def get(self, image_id: str) -> StoredImage:
        """An upload or a sample by id; :class:`NotFoundError` when unknown or evicted."""
        known = self._uploads.get(image_id) or self._decoded.get(image_id)
        if known is not None:
            return known
        self.check(image_id)  # a sample not decoded yet, or the error
        entry = self.sample(image_id)
        with self._sample_decoding:
            stored = prepare(image_id, decode_image(entry.path, self.sample_limits), self.spec)
        self._decoded.put(image_id, stored)
        return stored
