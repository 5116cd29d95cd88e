"""Named models fetched on request: ``load_model("cnn-explainer", download=True)``.

CNN Explainer (Wang et al., "CNN Explainer: Learning Convolutional Neural Networks with
Interactive Visualization", IEEE VIS 2020, MIT licence) publishes its Tiny VGG as a
TensorFlow.js layers model and 20 sample images in the GitHub repository
``poloclub/cnn-explainer``. Each file has a SHA-256 checksum here; a file is fetched once into
the cache (``$CONVLENS_CACHE`` or ``~/.cache/convlens``, folder ``models/cnn-explainer``),
written atomically after its checksum matched, and read from the cache afterwards. Nothing
touches the network unless ``download=True`` (the CLI passes it when the user names the
model). ``$CONVLENS_CNN_EXPLAINER_URL`` (or ``base_url=``) replaces the GitHub address, e.g.
with a mirror or a local file server.

>>> m = load_model("cnn-explainer", download=True)  # doctest: +SKIP
>>> m.classes[:2]  # doctest: +SKIP
['lifeboat', 'ladybug']
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from convlens.errors import ConvlensError
from convlens.io.download import cache_root, file_digest
from convlens.io.download import fetch as io_fetch
from convlens.model.core import Model
from convlens.model.load import FORMATS, LoadOptions, ModelFormat

MAX_BYTES = 64 << 20  # no file of a named model is near this; stop a runaway response

CNN_EXPLAINER_CLASSES = [
    "lifeboat", "ladybug", "pizza", "bell pepper", "school bus",
    "koala", "espresso", "red panda", "orange", "sport car",
]  # fmt: skip
CNN_EXPLAINER_BASE = "https://raw.githubusercontent.com/poloclub/cnn-explainer/master/public/assets"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a named model: where it is under the base URL, where it goes, its hash."""

    url_path: str
    local: str
    sha256: str


_IMAGES = {
    "boat_1.jpeg": "767cd685408cfd255c3486edb017bd75ab4097beb478826f780617f4f603d75f",
    "bug_1.jpeg": "02f52ceeb1e5edc8f7b1162966021b9d157ea6f83277de54b9586f7a8354f938",
    "bug_3.jpeg": "ad4cdbde1c63db2edbf287501e50fef41c7036d092addaa5527e305dfa79f060",
    "bus_1.jpeg": "ff7ccbdb78b5da7c791378f02d3cc6d3e79d9bb4dc47d68898234da55376ec14",
    "bus_2.jpeg": "5e3ed877d90c2a4771de7020a0305ee6ee5dc86c8a54bcd165ff396781444aba",
    "car_1.jpeg": "469384feee8381213dc8b52503fc42ab4708cdf452bcf219335538f5a03647d7",
    "espresso_1.jpeg": "9307c85667470cdb22557ebcf77a573dac5df83e360b6e339f47627b5871b3df",
    "koala_1.jpeg": "7d159407825f48c16bcd5293d21ed5064306c4d32dfcda64c52b3a3bc5b20365",
    "koala_2.jpeg": "774b0ed1a6f34f882c6bad788879bfebd0f771282ff5440e9d1ed2ccfd2f36c9",
    "koala_3.jpeg": "de99125be09f333a4fa57535375b9defc6d661acce1c9aefaaa302dc9326cb07",
    "orange_1.jpeg": "ac1e3266da220b12f62098f91146a7b22417f3b32bdc3547c091cb82721cf5d8",
    "orange_3.jpeg": "e25ba8f59e051b7e9ed7b6b12316b81735c447e07ab58575c5dd2d69e9912b4f",
    "panda_1.jpeg": "aa027684fb8ca5c3faf6dfcf0152bdeb06865aa4eb5da7e18004ba4d344d6273",
    "panda_2.jpeg": "b9f78292b29df2ecb13d5bebf3f4d4f73c87957ee63eb812ec6bcd3e8d174077",
    "panda_3.jpeg": "41314470054cf09e7f91ab07b8d1b7a55cf138edcf523538f574054bce8afc55",
    "panda_5.jpeg": "b4e4d4403bdc9f65553aa85d12aeb46d258cff97d76b031846cbc03fa1651a99",
    "pepper_1.jpeg": "074afc1c4b93b7b9e6489e320d9f4656f8f00e12ef4a2f2157f61c8668a0e25e",
    "pepper_2.jpeg": "5e24a9b9f9f2ea58def8a04f395cf7abd26e06c9007d33d00f9ec00886fe68f3",
    "pizza_1.jpeg": "2508a03666aea814c2e51ec82265388c14e430773da7a6e43e7256b4162922d3",
    "pizza_2.jpeg": "6adeb1124e2ec3b726a1ce6951ff0457fdd1306521443679cc88ec28f1870303",
}
MODEL_JSON_SHA256 = "85706d2d99841eb6270ddbf912bcf43c4d1bf76bc68a0a56af49561a69589627"
CNN_EXPLAINER_FILES: tuple[RemoteFile, ...] = (
    RemoteFile("data/model.json", "model.json", MODEL_JSON_SHA256),
    RemoteFile(
        "data/group1-shard1of1.bin",
        "group1-shard1of1.bin",
        "306666f2a1cc2a0a8f7b3422617daac5ecdca20c707ab44b721522be1fe3f630",
    ),
    *(RemoteFile(f"img/{name}", f"images/{name}", sha) for name, sha in _IMAGES.items()),
)


def model_cache(name: str) -> Path:
    return cache_root() / "models" / name


def known_classes(model_json: Path) -> list[str] | None:
    """Class names of a published model recognised by its ``model.json`` checksum."""
    try:
        return CNN_EXPLAINER_CLASSES if file_digest(model_json) == MODEL_JSON_SHA256 else None
    except OSError:
        return None


def fetch(url: str, target: Path, sha256: str, timeout: float = 30.0) -> Path:
    """``url`` saved at ``target`` once its SHA-256 matched; a matching file is kept as is."""
    return io_fetch(url, target, sha256, max_bytes=MAX_BYTES, timeout=timeout)


def ensure_cnn_explainer(download: bool, base_url: str | None = None) -> Path:
    """The cache folder holding CNN Explainer's files, fetching the missing ones if allowed."""
    folder = model_cache("cnn-explainer")
    missing = [f for f in CNN_EXPLAINER_FILES if not (folder / f.local).is_file()]
    if not missing:
        return folder
    if not download:
        raise ConvlensError(
            f"the CNN Explainer model is not in the cache ({folder}). Fetch it once with "
            "download=True (the CLI does this when you name it), or point --model at a local "
            "copy of its model.json (with group1-shard1of1.bin beside it)"
        )
    base = (base_url or os.environ.get("CONVLENS_CNN_EXPLAINER_URL") or CNN_EXPLAINER_BASE).rstrip(
        "/"
    )
    try:
        for f in missing:
            fetch(f"{base}/{f.url_path}", folder / f.local, f.sha256)
    except ConvlensError as e:
        raise ConvlensError(
            f"{e}. Are you offline? Download model.json, group1-shard1of1.bin and images/ from "
            f"{CNN_EXPLAINER_BASE} (data/ and img/) by hand and pass --model path/to/model.json, "
            "or set CONVLENS_CNN_EXPLAINER_URL to a mirror"
        ) from None
    return folder


def _load_cnn_explainer(source: str, opts: LoadOptions) -> Model:
    from convlens.model.formats import tfjs

    folder = ensure_cnn_explainer(opts.download)
    return tfjs.load(str(folder / "model.json"), opts)  # recognised by checksum: named, classes


FORMATS.add(
    "cnn-explainer",
    ModelFormat(
        lambda s: s == "cnn-explainer",
        _load_cnn_explainer,
        "CNN Explainer's Tiny VGG, fetched once from GitHub into the cache",
    ),
)
