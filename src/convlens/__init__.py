"""convlens: see what a convolutional network does.

>>> import convlens
>>> model = convlens.load_model("tiny-vgg")
>>> model.graph.total_params
19920
"""

from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.methods import Attribution, explain
from convlens.model import Model, load_model

__version__ = "0.1.0"


def show(model: object, image: object = None, **options: object) -> object:
    """The interactive explainer inline in a notebook (see :func:`convlens.notebook.show`);
    imported at the first call, so ``import convlens`` needs no notebook packages."""
    from convlens.notebook import show as _show

    return _show(model, image, **options)  # type: ignore[arg-type]


__all__ = [
    "Attribution",
    "ConvlensError",
    "InputSpec",
    "Model",
    "__version__",
    "explain",
    "load_model",
    "show",
]
