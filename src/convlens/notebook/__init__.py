"""convlens in a notebook: :func:`show` displays the interactive explainer inline.

Imported lazily (``convlens.show`` loads it at its first call), so ``import convlens`` needs
neither anywidget nor the web extra.
"""

from __future__ import annotations

import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from convlens.errors import ConvlensError

ACCEPTS_MODEL = (
    "a convlens Model, a torch nn.Module (with input_spec=InputSpec(...)), a zoo name such as "
    "'tiny-vgg' or a model file/folder"
)
ACCEPTS_IMAGE = "an image file path, a PIL image, a (C, H, W) or (1, C, H, W) tensor in [0, 1]"
NOTEBOOK_HINT = "pip install 'convlens[notebook,web]'"


def _model(source: Any, input_spec: Any, classes: Any) -> Any:
    import torch.nn as nn

    from convlens.model import Model, load_model

    if isinstance(source, Model):
        return source
    if isinstance(source, nn.Module | str | Path):
        return load_model(source, input_spec=input_spec, classes=classes)
    raise ConvlensError(
        f"convlens.show cannot display an object of type {type(source).__name__}; it shows "
        f"{ACCEPTS_MODEL}, "
        f"with optional images ({ACCEPTS_IMAGE}, or a list of them)"
    )


def _image_files(images: Any, folder: Path) -> list[Path]:
    """Each image as a file: paths as given, in-memory images written as PNG into ``folder``."""
    import torch
    from PIL import Image

    from convlens.io.image import tensor_to_image

    items: Sequence[Any] = images if isinstance(images, list | tuple) else [images]
    paths: list[Path] = []
    for k, item in enumerate(items):
        if isinstance(item, str | Path):
            paths.append(Path(item))
            continue
        if isinstance(item, torch.Tensor):
            t = item[0] if item.dim() == 4 and item.shape[0] == 1 else item
            if t.dim() != 3 or t.shape[0] not in (1, 3):
                raise ConvlensError(
                    f"convlens.show: image {k} is a tensor of shape {tuple(item.shape)}; give "
                    f"(C, H, W) or (1, C, H, W) with C 1 or 3, values in [0, 1]"
                )
            item = tensor_to_image(t.detach().float().cpu().clamp(0, 1))
        if isinstance(item, Image.Image):
            path = folder / f"image-{k}.png"
            item.save(path)
            paths.append(path)
            continue
        raise ConvlensError(
            f"convlens.show cannot use a {type(item).__name__} as image {k}; it takes "
            f"{ACCEPTS_IMAGE}, or a list of them"
        )
    return paths


def show(
    model: Any,
    image: Any = None,
    *,
    input_spec: Any = None,
    classes: Sequence[str] | None = None,
    height: int = 780,
) -> Any:
    """The interactive explainer for ``model`` on ``image`` (or a list of images; the model's
    own samples when ``None``), inline in a notebook: overview, detail views, playground,
    explanations and units, computed by this kernel with no server.

    ``model`` may be a live ``nn.Module`` from a notebook cell (then give ``input_spec``, and
    ``classes`` if it has names), wrapped as :func:`convlens.load_model` does. The model is put
    in eval mode, as the server does.
    """
    try:
        from convlens.notebook.widget import ExplainerWidget
        from convlens.offline.bridge import InProcessApi, with_samples
    except ImportError as e:
        raise ConvlensError(f"convlens.show needs {e.name or e}: {NOTEBOOK_HINT}") from None
    from convlens.offline.export import check_images

    m = _model(model, input_spec, classes)
    folder = Path(tempfile.mkdtemp(prefix="convlens-show-"))
    try:
        paths = check_images(_image_files(image, folder)) if image is not None else []
        view = with_samples(m, paths, keep_own=True) if paths else m
        api = InProcessApi(view)
    except BaseException:
        _remove(folder)
        raise
    widget = ExplainerWidget(api, image="sample-0" if view.samples else "", height=height)
    weakref.finalize(widget, _remove, folder)
    return widget


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


__all__ = ["show"]
