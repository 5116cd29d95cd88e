"""Published ImageNet weights for zoo architectures: ``load_model("resnet18", weights="imagenet")``.

The PyTorch project publishes ImageNet-1K weights for its torchvision models at
``https://download.pytorch.org/models/<file>``, each file named after the first hex digits of
its own SHA-256 (``resnet18-f37072fd.pth``: torch.hub's ``check_hash`` convention). Asking for
``weights="imagenet"`` is the request to fetch that file once: it is streamed into the cache
(``$CONVLENS_CACHE`` or ``~/.cache/convlens``, folder ``models/torchvision``), kept only when
its SHA-256 starts with the prefix in its name, and read from there afterwards. The file is
read with ``torch.load(weights_only=True)``, which rebuilds tensors and nothing else, and its
names and shapes are checked against the zoo architecture before a value is copied. The model
then carries the 1,000 ImageNet class names torchvision lists and the publisher's evaluation
preprocessing (shorter side to 256 with antialiased bilinear resampling, centre crop 224,
ImageNet mean and std).

``weights`` may instead name a local file (a copy of the published file, or any state dict or
``.safetensors`` for the architecture). A file name that carries a checksum prefix is checked
against it; a file whose SHA-256 starts with the published prefix gets the class names and
preprocessing too. ``$CONVLENS_WEIGHTS_URL`` (or ``base_url=``) replaces the publisher's
address, e.g. with a mirror or a local file server.

>>> m = load_model("resnet18", weights="imagenet")  # doctest: +SKIP
>>> m.classes[:2]  # doctest: +SKIP
['tench', 'goldfish']
"""

from __future__ import annotations

import functools
import os
import re
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from convlens.errors import ConvlensError
from convlens.io.download import MIN_PREFIX, cache_root, fetch, file_digest
from convlens.io.spec import InputSpec
from convlens.model.checkpoint import load_state_dict_into, read_safetensors
from convlens.model.core import Model
from convlens.model.formats.safety import check_zip, model_budget_bytes, regular_file
from convlens.model.zoo import IMAGENET_MEAN, IMAGENET_STD, ZOO, build, parse_arch

PUBLISHER_URL = "https://download.pytorch.org/models"
URL_ENV = "CONVLENS_WEIGHTS_URL"
WEIGHT_SETS = ("imagenet",)
CLASSES_FILE = "imagenet_classes.txt"
NUM_CLASSES = 1000
# torchvision's evaluation transform for these weights: Resize(256) then CenterCrop(224)
CROP_SIZE, RESIZE_SIZE = 224, 256
# Arguments that change neither the weights' names nor their shapes; any other must be as
# published (num_classes=1000, width=64, ...).
_FREE_ARGS = frozenset({"input_size", "dropout"})
_PREFIX_IN_NAME = re.compile(rf"-([0-9a-f]{{{MIN_PREFIX},64}})$")


@dataclass(frozen=True)
class PublishedWeights:
    """One published weight file: the zoo architecture it fits, its file name (checksum prefix
    included), parameter count, size and the publisher's ImageNet-1K top-1 accuracy."""

    arch: str
    file_name: str
    num_params: int
    megabytes: float
    top1: float

    @property
    def sha256_prefix(self) -> str:
        prefix = sha256_prefix(self.file_name)
        assert prefix is not None, self.file_name  # every entry below carries one
        return prefix

    def url(self, base_url: str | None = None) -> str:
        base = base_url or os.environ.get(URL_ENV) or PUBLISHER_URL
        return f"{base.rstrip('/')}/{self.file_name}"

    @property
    def max_bytes(self) -> int:
        """A bound on the download: the published size plus 5 % and 1 MiB of slack."""
        return int(self.megabytes * 1.05 * (1 << 20)) + (1 << 20)


# torchvision's IMAGENET1K_V1 weights (torchvision/models/*.py, checked against 0.29.1)
PUBLISHED: dict[str, PublishedWeights] = {
    "alexnet": PublishedWeights("alexnet:variant=owt", "alexnet-owt-7be5be79.pth",
                                61_100_840, 233.087, 56.522),
    "vgg16": PublishedWeights("vgg16", "vgg16-397923af.pth", 138_357_544, 527.796, 71.592),
    "resnet18": PublishedWeights("resnet18", "resnet18-f37072fd.pth",
                                 11_689_512, 44.661, 69.758),
    "resnet50": PublishedWeights("resnet50", "resnet50-0676ba61.pth",
                                 25_557_032, 97.781, 76.130),
    "mobilenet_v2": PublishedWeights("mobilenet_v2", "mobilenet_v2-b0353104.pth",
                                     3_504_872, 13.555, 71.878),
    "mobilenet_v3_small": PublishedWeights("mobilenet_v3_small", "mobilenet_v3_small-047dcff4.pth",
                                           2_542_856, 9.829, 67.668),
}  # fmt: skip


def sha256_prefix(file_name: str) -> str | None:
    """The checksum prefix a file name carries, torch.hub style: ``-<hex>`` before the suffix.

    >>> sha256_prefix("alexnet-owt-7be5be79.pth")
    '7be5be79'
    >>> sha256_prefix("my-weights.pth") is None
    True
    """
    found = _PREFIX_IN_NAME.search(Path(file_name).stem)
    return found.group(1) if found else None


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet-1K class names in index order, as torchvision lists them."""
    text = (resources.files("convlens.model") / CLASSES_FILE).read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != NUM_CLASSES:  # a damaged installation, not a user error
        raise ConvlensError(f"{CLASSES_FILE} lists {len(names)} classes, not {NUM_CLASSES}")
    return names


def imagenet_spec(size: int = CROP_SIZE) -> InputSpec:
    """The publisher's evaluation preprocessing: shorter side to 256, centre crop 224, bilinear,
    ImageNet mean and std. Another ``size`` keeps the same 224/256 crop fraction."""
    return InputSpec(
        3, size, size, IMAGENET_MEAN, IMAGENET_STD,
        resize_size=size * RESIZE_SIZE // CROP_SIZE, interpolation="bilinear",
    )  # fmt: skip


def weights_cache() -> Path:
    return cache_root() / "models" / "torchvision"


def published_for(name: str) -> PublishedWeights:
    if name not in PUBLISHED:
        raise ConvlensError(
            f"no published ImageNet weights for {name!r}; published for: "
            f"{', '.join(PUBLISHED)}. For other weights pass a file: --weights PATH"
        )
    return PUBLISHED[name]


def fetch_published(name: str, *, base_url: str | None = None, timeout: float = 30.0) -> Path:
    """The cached published weight file of zoo model ``name``, downloaded first if missing."""
    pub = published_for(name)
    url = pub.url(base_url)
    try:
        return fetch(
            url, weights_cache() / pub.file_name, pub.sha256_prefix,
            max_bytes=pub.max_bytes, timeout=timeout, prefix=True,
        )  # fmt: skip
    except ConvlensError as e:
        if not str(e).startswith("cannot download"):
            raise  # a wrong checksum or size: the message says so already
        raise ConvlensError(
            f"{e}. Offline? Fetch {PUBLISHER_URL}/{pub.file_name} by another route and pass its "
            f"path: --weights /path/to/{pub.file_name} (weights=...), or set {URL_ENV} to a mirror"
        ) from None


def check_named_prefix(path: Path) -> str | None:
    """The file's SHA-256 when its name carries a checksum prefix, after checking it matches."""
    prefix = sha256_prefix(path.name)
    if prefix is None:
        return None
    digest = file_digest(path)
    if not digest.startswith(prefix):
        raise ConvlensError(
            f"weights file {str(path)!r} has SHA-256 {digest}, but its name says it starts with "
            f"{prefix}: the file is damaged or not the one its name claims"
        )
    return digest


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or from a ``.pth`` read ``weights_only`` (which
    rebuilds tensors and plain containers and runs no code), its size checked first."""
    path = regular_file(path, "weights file")
    size, budget = path.stat().st_size, model_budget_bytes()
    if size > budget:
        raise ConvlensError(
            f"weights file {str(path)!r} is {size} bytes, over the model budget of {budget} "
            "(set CONVLENS_MAX_MODEL_MB to raise it)"
        )
    if path.suffix.lower() == ".safetensors":
        return read_safetensors(str(path))
    if zipfile.is_zipfile(path):  # torch's own format: judge the members before torch reads
        check_zip(path, budget).close()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvlensError(
            f"cannot read {str(path)!r} as PyTorch weights (read weights_only, nothing is "
            f"unpickled): {first}"
        ) from None
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ConvlensError(
            f"{str(path)!r} does not hold a state dict (a mapping of names to tensors)"
        )
    odd = [k for k, v in obj.items() if v.is_complex() or not (v.is_floating_point() or
           k.endswith("num_batches_tracked"))]  # fmt: skip
    if odd:
        raise ConvlensError(
            f"{str(path)!r} holds non-float weights at {', '.join(odd[:3])} "
            f"({obj[odd[0]].dtype}); accepted: floating-point tensors"
        )
    return obj


def _published_arch(name: str, args: dict[str, Any]) -> str:
    """The zoo spec to build for published weights: the published one plus the free args."""
    pub_name, pub_args = parse_arch(published_for(name).arch)
    for key, value in args.items():
        if key not in _FREE_ARGS and pub_args.get(key, ZOO.get(name).defaults[key]) != value:
            raise ConvlensError(
                f"the ImageNet weights of {name} fit {PUBLISHED[name].arch} as published; "
                f"{key}={value} changes the network (accepted beside them: "
                f"{', '.join(sorted(_FREE_ARGS & set(ZOO.get(name).defaults)))})"
            )
    merged = pub_args | args
    return pub_name + (":" + ",".join(f"{k}={v}" for k, v in merged.items()) if merged else "")


def _is_published_file(name: str, path: Path, digest: str | None) -> bool:
    if name not in PUBLISHED:
        return False
    digest = digest or file_digest(path)
    return digest.startswith(PUBLISHED[name].sha256_prefix)


def load_pretrained(
    spec: str,
    weights: str | os.PathLike[str],
    classes: list[str] | None = None,
    *,
    base_url: str | None = None,
) -> Model:
    """Zoo architecture ``spec`` with ``weights``: ``"imagenet"`` (the published file, fetched
    once) or the path of a weights file. Published weights bring the ImageNet class names and
    the publisher's preprocessing."""
    name, args = parse_arch(spec)
    weights = os.fspath(weights)
    if weights.lower() in WEIGHT_SETS:
        arch = _published_arch(name, args)  # refuse a mismatched architecture before fetching
        path, published = fetch_published(name, base_url=base_url), True
    elif (
        Path(weights).exists()
        or os.sep in weights
        or weights.endswith((".pth", ".pt", ".bin", ".safetensors"))
    ):
        path = regular_file(weights, "weights file")
        published = _is_published_file(name, path, check_named_prefix(path))
        arch = _published_arch(name, args) if published else spec
    else:
        raise ConvlensError(
            f"weights {weights!r} is neither a published set ({', '.join(WEIGHT_SETS)}) nor an "
            "existing weights file (.pth, .pt, .bin, .safetensors)"
        )
    model = build(arch, classes)
    load_state_dict_into(model, read_weights(path), str(path))
    if not published:
        return model.eval()
    return Model(
        model.net, imagenet_spec(model.spec.height), classes or list(imagenet_classes()),
        name=name, arch=model.arch,
    ).eval()  # fmt: skip
