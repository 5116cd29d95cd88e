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
__all__ = [
    "Attribution",
    "ConvlensError",
    "InputSpec",
    "Model",
    "__version__",
    "explain",
    "load_model",
]
