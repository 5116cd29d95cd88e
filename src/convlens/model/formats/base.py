"""What every file format shares: sidecar metadata, class-name files, sample images.

A model file rarely says everything convlens needs. Class names and the input spec come, in
order of precedence, from the user's flags (``--classes``, ``--input-size``, ``--mean``,
``--std``, ``--channels``), then a sidecar JSON beside the file, then the file itself. The
sidecar is ``<file stem>.convlens.json`` or ``convlens.json`` in the same folder::

    {"classes": ["lifeboat", "ladybug", ...],
     "input_spec": {"height": 64, "width": 64, "mean": [0.0], "std": [1.0]},
     "name": "tiny-vgg"}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from convlens.errors import ConvlensError
from convlens.io.image import WEB_SUFFIXES
from convlens.io.spec import InputSpec
from convlens.model.core import Model, OutputKind, Sample
from convlens.model.formats.safety import parse_json, read_bounded, read_json

MAX_CLASSES_BYTES = 16 << 20  # ImageNet-21k's names take 0.5 MB


def sidecar_path(source: str | os.PathLike[str]) -> Path | None:
    p = Path(source)
    folder = p if p.is_dir() else p.parent
    stem = p.name.split(".")[0] if p.is_file() else p.name
    for cand in (folder / f"{stem}.convlens.json", folder / "convlens.json"):
        if cand.is_file():
            return cand
    return None


def read_sidecar(source: str | os.PathLike[str]) -> dict[str, Any]:
    """The sidecar JSON beside ``source`` (see the module docstring), or ``{}``."""
    path = sidecar_path(source)
    if path is None:
        return {}
    # The sidecar travels with the (untrusted) model file: bounded, depth-checked, regular.
    doc = read_json(path, what="sidecar")
    if isinstance(doc, list):
        doc = {"classes": doc}
    if not isinstance(doc, dict):
        raise ConvlensError(f"sidecar {str(path)!r} must hold an object with 'classes'")
    return doc


def read_classes(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a file: a JSON list, a JSON object with ``classes``, or one per line.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.txt"; _ = p.write_text("cat\\ndog\\n")
    >>> read_classes(p)
    ['cat', 'dog']
    """
    p = Path(path)
    data = read_bounded(p, MAX_CLASSES_BYTES, what="class-names file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConvlensError(f"class-names file {str(p)!r} is not UTF-8 text") from None
    if p.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        doc = parse_json(text, f"class-names file {str(p)!r}")
        if isinstance(doc, dict):
            doc = doc.get("classes")
        if not isinstance(doc, list) or not all(isinstance(c, str) for c in doc):
            raise ConvlensError(
                f"class-names file {str(p)!r} must be a JSON list of strings, an object with "
                "'classes', or a text file with one name per line"
            )
        return doc
    return [line.strip() for line in text.splitlines() if line.strip()]


def label_from_name(path: Path, classes: list[str]) -> int | None:
    """The class whose name contains the file-name prefix (``boat_1.jpeg`` → ``lifeboat``)."""
    prefix = path.stem.split("_")[0].lower()
    if prefix.isdigit() or not prefix:
        return None
    exact = [i for i, c in enumerate(classes) if c.lower() == prefix]
    if exact:
        return exact[0]
    hits = [i for i, c in enumerate(classes) if prefix in c.lower()]
    return hits[0] if len(hits) == 1 else None


def find_samples(folder: Path, classes: list[str] | None) -> list[Sample]:
    """Images in ``folder/images`` (a TF.js or Keras model's sample pictures), with labels."""
    images = folder / "images"
    if not images.is_dir():
        return []
    return [
        Sample(p, label_from_name(p, classes) if classes else None)
        for p in sorted(images.iterdir())
        if p.suffix.lower() in WEB_SUFFIXES and p.is_file()
    ]


def make_model(
    net: nn.Module,
    spec: InputSpec,
    source: str | os.PathLike[str],
    classes: list[str] | None,
    *,
    name: str,
    outputs: OutputKind = "logits",
    input_overrides: dict[str, Any] | None = None,
    file_classes: list[str] | None = None,
) -> Model:
    """A :class:`Model` for a converted file, with sidecar classes/spec and sample images.

    The user's flags (``classes``, ``input_overrides``) win over the sidecar, which wins over
    what the file said (``spec``, ``file_classes``).
    """
    side = read_sidecar(source)
    if side.get("input_spec"):
        spec = InputSpec.from_dict(spec.to_dict() | dict(side["input_spec"]))
    if input_overrides:
        merged = spec.to_dict() | input_overrides
        if "size" in merged:
            merged["height"] = merged["width"] = merged.pop("size")
        spec = InputSpec.from_dict(merged)
    names = classes or side.get("classes") or file_classes
    folder = Path(source) if Path(source).is_dir() else Path(source).parent
    net.eval()
    return Model(
        net,
        spec,
        names,
        name=str(side.get("name") or name),
        outputs=outputs,
        samples=find_samples(folder, names),
    )


def parse_class_list(value: Any) -> list[str] | None:
    """Class names stored in a file's metadata: a list, a JSON list, or one name per line.

    >>> parse_class_list('["cat", "dog"]'), parse_class_list("cat\\ndog")
    (['cat', 'dog'], ['cat', 'dog'])
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:  # metadata strings come from the model file: depth-checked like any JSON
                value = parse_json(text, "class list")
            except ConvlensError:
                return None
        else:
            value = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def input_size_override(opts_spec: dict[str, Any]) -> tuple[int, int] | None:
    """``(height, width)`` when the user gave ``--input-size`` (size, or height and width)."""
    if "size" in opts_spec:
        s = int(opts_spec["size"])
        return (s, s)
    if "height" in opts_spec and "width" in opts_spec:
        return (int(opts_spec["height"]), int(opts_spec["width"]))
    return None
